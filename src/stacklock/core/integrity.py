"""The files class: what the controller expects of the files that decide how the stack runs,
and the comparison with what a node reports (docs/facts.md, "The files class").

A *tree* is a set of files with one owner: a pinned apt package (`deb:NAME`, its files from
the locked .deb), a locked Python distribution of the serving venv (`wheel:NAME`, from the
locked wheel), or the files the roles write (`role:ROLE`). The controller computes each
tree's lines (`PATH<TAB>DIGEST`, sorted; see `tree_hash`) from its own copies, keeps them in a
content-addressed store (`<hash>.lines`, so a stored reference proves itself) and sends the
node only the hashes; the node (ansible/module_utils/stacklock_facts/files.py) returns each
tree's actual hash and, only for a tree that differs, its lines. The comparison then names each
changed, missing or unexpected file. Separately, the node lists the files of the managed
directories that nothing owns (`file.unowned`).

Pure: reads and writes only the reference store.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: the facts' and the option's schema of the files class
PREFIX = "files."
UNOWNED = "files.unowned"
#: the component of one file's finding (also the waiver item: parity.waivers `file:PATH`);
#: its class (file.unowned, file.changed, file.missing, package.file.changed, ...) starts the
#: detail
FILE = "file:"

#: a distribution's .dist-info files pip writes itself (owned, never compared)
PIP_GENERATED = ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")

#: what a tree that could not be checked says (no .deb / wheel on the controller)
NOT_CHECKED = "not checked: "

#: the finding classes, by tree kind
CLASSES = {
    "dpkg": "package.file",
    "record": "wheel.file",
    "paths": "file",
}


def tree_hash(lines: Iterable[str]) -> str:
    """sha256 over the sorted lines, each ended by a newline (the node computes the same)."""
    return hashlib.sha256("".join(f"{x}\n" for x in sorted(lines)).encode()).hexdigest()


def norm_dist(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def is_pyc(path: str) -> bool:
    return path.endswith(".pyc") or "/__pycache__/" in path


@dataclass(frozen=True)
class Tree:
    """One tree: its id (`deb:docker.io`), what the node is told to enumerate, its lines."""

    id: str
    kind: str
    spec: Mapping[str, Any]
    lines: tuple[str, ...] = ()
    #: why the controller could not build it (then nothing is sent to the node)
    unchecked: str = ""
    #: extra words per path for the report (`conffile`)
    notes: Mapping[str, str] = field(default_factory=dict)

    @property
    def hash(self) -> str:
        return tree_hash(self.lines)

    def option(self) -> dict[str, Any]:
        if self.unchecked:
            return {"tree": self.id, "unchecked": self.unchecked}
        return {"tree": self.id, "kind": self.kind, **self.spec, "hash": self.hash}


# --------------------------------------------------------------------------- building trees


def wheel_tree(dist: str, site: str, venv: str, python: str,
               members: Mapping[str, str], entry_points: str = "") -> Tree:
    """The lines of a locked wheel installed in `site` (its RECORD, recomputed from the
    wheel's own members: `members` maps a member name to its sha256 or `l:TARGET`).

    Policy (docs/facts.md): RECORD, INSTALLER, REQUESTED and direct_url.json are pip's own
    files (owned, not compared); `*.pyc` and `__pycache__/` are not compared (a `.pyc` is
    owned where its `.py` is); console scripts and `.data/scripts` are rewritten by pip (their
    shebang names the venv's python): owned and compared by presence (`*`)."""
    site = site.rstrip("/")
    lines: list[str] = []
    for member, digest in members.items():
        if member.endswith("/") or is_pyc(member):
            continue
        top, _, rest = member.partition("/")
        if top.endswith(".dist-info") and rest in (*PIP_GENERATED, "RECORD.jws", "RECORD.p7s"):
            continue
        if top.endswith(".data") and rest:
            scheme, _, sub = rest.partition("/")
            if scheme in ("purelib", "platlib"):
                path = f"{site}/{sub}"
            elif scheme == "scripts":
                lines.append(f"{venv}/bin/{sub}\t*")
                continue
            elif scheme == "headers":
                path = f"{venv}/include/site/python{python}/{dist}/{sub}"
            else:  # data
                path = f"{venv}/{sub}"
            lines.append(f"{posixpath.normpath(path)}\t{digest}")
            continue
        lines.append(f"{site}/{member}\t{digest}")
    scripts = console_scripts(entry_points)
    if "pip" in scripts:  # pip writes pipX and pipX.Y for the python it installs into
        scripts = [s for s in scripts if not re.fullmatch(r"pip\d(\.\d+)?", s)]
        scripts += [f"pip{python.split('.')[0]}", f"pip{python}"]
    for name in scripts:
        lines.append(f"{venv}/bin/{name}\t*")
    spec = {"site": site, "dist": norm_dist(dist)}
    return Tree(f"wheel:{norm_dist(dist)}", "record", spec, tuple(sorted(set(lines))))


def console_scripts(entry_points: str) -> list[str]:
    """The script names of entry_points.txt's [console_scripts] and [gui_scripts]."""
    out: list[str] = []
    section = ""
    for raw in entry_points.splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line.strip("[]").strip()
        elif "=" in line and section in ("console_scripts", "gui_scripts"):
            out.append(line.split("=", 1)[0].strip())
    return out


def deb_tree(package: str, entries: Mapping[str, str], conffiles: Sequence[str] = (),
             exclude: Sequence[str] = ()) -> Tree:
    """The lines of a pinned package from its locked .deb (`entries`: absolute path ->
    sha256 or `l:TARGET`; directories left out). `exclude`: paths a role rewrites (role-owned,
    compared in the role's tree)."""
    skip = set(exclude)
    lines = tuple(sorted(f"{p}\t{d}" for p, d in entries.items() if p not in skip))
    notes = {p: "conffile" for p in conffiles}
    spec: dict[str, Any] = {"package": package}
    if skip:
        spec["exclude"] = sorted(skip)
    return Tree(f"deb:{package}", "dpkg", spec, lines, notes=notes)


#: the note of a file that may be absent (RoleFile.optional); present, it is compared
OPTIONAL = "optional: may be absent; where present, as the role wrote it, else remove it"


@dataclass(frozen=True)
class RoleFile:
    """A file a role writes: sha256 when the controller knows its bytes, else None (then its
    presence, owner, group and mode are compared). `optional`: a file a role no longer writes
    but left behind (container mode: the torchserve role's Java pins from host mode); owned and
    compared where present, its absence no finding."""

    path: str
    owner: str
    group: str
    mode: str
    sha256: str | None = None
    optional: bool = False


def role_tree(role: str, files: Sequence[RoleFile], attrs: bool = True) -> Tree:
    """`attrs`: compare owner, group and mode too (lines end `<TAB>OWNER:GROUP<TAB>MODE`).
    Optional files carry the note OPTIONAL (kept with the reference, read by the comparison)."""
    lines = []
    paths, names = [], []
    notes = {f.path: OPTIONAL for f in files if f.optional}
    for f in files:
        tail = f"\t{f.owner}:{f.group}\t{int(f.mode, 8):04o}" if attrs else ""
        if f.sha256:
            paths.append(f.path)
            lines.append(f"{f.path}\t{f.sha256}{tail}")
        else:
            names.append(f.path)
            lines.append(f"{f.path}\t*{tail}")
    spec = {"paths": sorted(paths), "names": sorted(names), "attrs": attrs}
    return Tree(f"role:{role}", "paths", spec, tuple(sorted(lines)), notes=notes)


def unchecked_tree(tree_id: str, kind: str, reason: str) -> Tree:
    return Tree(tree_id, kind, {}, unchecked=reason)


# --------------------------------------------------------------------------- reference store


def default_store() -> Path:
    """Where the controller keeps tree references: $STACKLOCK_CACHE_DIR/trees, else
    ~/.cache/stacklock/trees."""
    base = os.environ.get("STACKLOCK_CACHE_DIR")
    root = Path(base) if base else Path.home() / ".cache" / "stacklock"
    return root / "trees"


def store(trees: Iterable[Tree], where: Path | None = None) -> None:
    """Keep each tree's lines under its hash (written once; content-addressed)."""
    folder = where or default_store()
    folder.mkdir(parents=True, exist_ok=True)
    for t in trees:
        if t.unchecked:
            continue
        path = folder / f"{t.hash}.lines"
        if not path.exists():
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text("".join(f"{x}\n" for x in t.lines), "utf-8")
            tmp.replace(path)
        if t.notes:
            notes = folder / f"{t.hash}.notes"
            if not notes.exists():
                notes.write_text("".join(f"{p}\t{n}\n" for p, n in sorted(t.notes.items())),
                                 "utf-8")


#: verified references already read in this process: (folder, digest) -> (lines by path,
#: notes). Content-addressed and checked once, so a comparison of many nodes that deviate
#: from one tree (a fleet that lost a package) reads and hashes its reference once.
_LOADED: dict[tuple[str, str], tuple[dict[str, str], dict[str, str]]] = {}


def _reference(digest: str, where: Path | None) -> tuple[dict[str, str], dict[str, str]] | None:
    folder = where or default_store()
    key = (str(folder), digest)
    if key not in _LOADED:
        found = load(digest, folder)
        if found is None:
            return None  # not kept: the store may get it later
        _LOADED[key] = (_split(found[0]), found[1])
    return _LOADED[key]


def load(digest: str, where: Path | None = None) -> tuple[list[str], dict[str, str]] | None:
    """The stored lines of a tree hash, None when absent or when they do not hash to it."""
    folder = where or default_store()
    try:
        text = (folder / f"{digest}.lines").read_text("utf-8")
    except OSError:
        return None
    lines = text.splitlines()
    if tree_hash(lines) != digest:
        return None
    notes: dict[str, str] = {}
    try:
        for row in (folder / f"{digest}.notes").read_text("utf-8").splitlines():
            p, _, n = row.partition("\t")
            notes[p] = n
    except OSError:
        pass
    return lines, notes


# --------------------------------------------------------------------------- the option


#: files a daemon writes itself in a managed directory: owned when present (policy)
GENERATED = {
    "/etc/docker": ("/etc/docker/key.json",),  # dockerd's identity key (Docker < 23)
}


def option(trees: Sequence[Tree], dirs: Sequence[tuple[str, bool]]) -> list[dict[str, Any]]:
    """The facts module's `files` option: every tree, then every managed directory."""
    out = [t.option() for t in sorted(trees, key=lambda t: t.id)]
    for d, r in dirs:
        entry: dict[str, Any] = {"dir": d, "recurse": r}
        if d in GENERATED:
            entry["generated"] = list(GENERATED[d])
        out.append(entry)
    return out


def expected_components(files_option: Any) -> dict[str, str | None]:
    """`files.TREE` -> expected tree hash (or `not checked: ...`), and `files.unowned` ->
    `none` when directories are watched. From the `files` option (stacklock_files)."""
    exp: dict[str, str | None] = {}
    for entry in files_option or []:
        if not isinstance(entry, Mapping):
            continue
        if "tree" in entry:
            if entry.get("unchecked"):
                exp[f"{PREFIX}{entry['tree']}"] = f"{NOT_CHECKED}{entry['unchecked']}"
            else:
                exp[f"{PREFIX}{entry['tree']}"] = str(entry.get("hash"))
        elif "dir" in entry:
            exp[UNOWNED] = "none"
    return exp


# --------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class Finding:
    """One check of the files class (parity wraps it in a Check)."""

    component: str
    expected: str | None
    actual: str | None
    status: str  # match | deviation | could-not-look
    detail: str = ""


def _split(lines: Iterable[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines:
        path, _, rest = str(line).partition("\t")
        out[path] = rest
    return out


def _show(value: str) -> str:
    digest, _, attrs = value.partition("\t")
    if re.fullmatch(r"[0-9a-f]{64}", digest):
        digest = f"sha256:{digest[:12]}"
    return f"{digest} {attrs.replace(chr(9), ' ')}".strip()


def _tree_findings(tree: str, want: str, got: Mapping[str, Any] | None,
                   where: Path | None) -> list[Finding]:
    comp = f"{PREFIX}{tree}"
    kind = "dpkg" if tree.startswith("deb:") else "record" if tree.startswith(
        "wheel:") else "paths"
    klass = CLASSES[kind]
    owner = tree.split(":", 1)[1]
    if want.startswith(NOT_CHECKED):
        return [Finding(comp, want, want, "match", want[len(NOT_CHECKED):])]
    if not isinstance(got, Mapping):
        return [Finding(comp, want, None, "could-not-look",
                        "the facts module returned no hash for this tree (an older module?)")]
    if got.get("error"):
        return [Finding(comp, want, None, "could-not-look", str(got["error"]))]
    actual = str(got.get("hash"))
    if actual == want:
        return [Finding(comp, want, actual, "match")]
    ref = _reference(want, where)
    lines = got.get("lines")
    if ref is None or not isinstance(lines, list):
        why = ("no reference for this hash on this controller (run verify from the controller "
               "that holds the mirror)" if ref is None else "the node sent no lines")
        return [Finding(comp, want, actual, "deviation", why)]
    exp, notes = ref
    label = f"{'package' if kind == 'dpkg' else 'wheel' if kind == 'record' else 'role'}"
    if kind != "paths" and len(lines) == 1 and str(lines[0]).endswith("\tnot installed"):
        # the whole package or distribution is absent: one fact, not one per locked file (a
        # bare node would otherwise report every file of torch; the version check names it too)
        return [Finding(comp, want, "not installed", "deviation",
                        f"{klass}.missing: {label} {owner} is not installed "
                        f"({len(exp):,} locked file(s) absent)")]
    act = _split(lines)
    out: list[Finding] = []
    absent: list[str] = []  # optional files that are not there: no finding
    for path in sorted(set(exp) | set(act)):
        e, a = exp.get(path), act.get(path)
        if e == a:
            continue
        if notes.get(path) == OPTIONAL and e is not None and a == "missing":
            absent.append(path)
            continue
        note = f" ({notes[path]})" if path in notes else ""
        if e is None:
            out.append(Finding(f"{FILE}{path}", "absent", _show(a or ""), "deviation",
                               f"file.unowned: the node's own list for {label} {owner} names "
                               f"it; the locked {label} does not"))
        elif a is None or a == "missing" or a.endswith("not installed"):
            out.append(Finding(f"{FILE}{path}", _show(e), a or "missing", "deviation",
                               f"{klass}.missing: {label} {owner}{note}"))
        else:
            out.append(Finding(f"{FILE}{path}", _show(e), _show(a), "deviation",
                               f"{klass}.changed: {label} {owner}{note}"))
    if not out and absent:
        return [Finding(comp, want, actual, "match",
                        f"absent, and optional: {', '.join(absent)}")]
    count = len(out)
    out.insert(0, Finding(comp, want, actual, "deviation",
                          f"{count} file(s) differ from the locked {owner}"))
    return out


def findings(expected: Mapping[str, str | None], facts: Mapping[str, Any],
             where: Path | None = None) -> list[Finding]:
    """Every files-class check of one node: one per tree (and per differing file), and one
    per unowned file of a managed directory (else one `files.unowned: none`)."""
    wanted = {c: v for c, v in expected.items() if c.startswith(PREFIX)}
    if not wanted:
        return []
    section = facts.get("files")
    if not isinstance(section, Mapping) or section.get("error"):
        why = (str(section.get("error")) if isinstance(section, Mapping) else
               "the facts have no `files` section: the facts module was not given the "
               "`files` option (an older play or module?)")
        return [Finding(c, v, None, "could-not-look", why) for c, v in sorted(wanted.items())
                if not str(v).startswith(NOT_CHECKED)] + [
            Finding(c, v, v, "match", str(v)[len(NOT_CHECKED):])
            for c, v in sorted(wanted.items()) if str(v).startswith(NOT_CHECKED)]
    trees = section.get("trees") or {}
    out: list[Finding] = []
    for comp, want in sorted(wanted.items()):
        if comp == UNOWNED:
            continue
        tree = comp[len(PREFIX):]
        out += _tree_findings(tree, str(want), trees.get(tree), where)
    if UNOWNED in wanted:
        unowned = [str(p) for p in section.get("unowned") or []]
        for path in unowned:
            out.append(Finding(f"{FILE}{path}", "absent", "present", "deviation",
                               "file.unowned: no package, locked distribution, model or role "
                               "owns it: "
                               "stacklock configure removes it from stacklock's own "
                               "directories; elsewhere remove it, or waive it (parity.waivers: "
                               f"file:{path})"))
        if not unowned:  # each unowned file is its own deviation above (and its waiver item)
            out.append(Finding(UNOWNED, "none", "none", "match"))
    return out


__all__ = ["OPTIONAL", "Finding", "RoleFile", "Tree", "console_scripts", "deb_tree", "default_store",
           "expected_components", "findings", "load", "option", "role_tree", "store",
           "tree_hash", "unchecked_tree", "wheel_tree"]
