# Copyright: stacklock contributors. Apache-2.0.
"""``files``: the files that decide how the stack runs, as tree hashes, and the unowned files
of the managed directories (the FILES class of docs/facts.md).

The controller (``stacklock.core.integrity``) sends, in the ``files`` option, one entry per
*tree* -- a pinned apt package (``dpkg``), a locked Python distribution in the serving venv
(``record``), the files the roles write (``paths``) -- each with the hash of the lines it
expects, and one entry per managed directory (``dir``). This collector enumerates each tree on
the node (dpkg's file list, the installed RECORD, the given paths: enumeration only, the
expected bytes are the controller's), computes the same lines over what is really there, and
returns every tree's hash, with its lines only when the hash differs from the expected one.
Then it lists every file of the managed directories that no installed package, no tree and no
alternatives link owns (``unowned``).

A line is ``PATH<TAB>DIGEST`` (sorted, hashed with sha256; ``tree_hash``): DIGEST is the file's
sha256, ``l:TARGET`` for a symlink, ``*`` where only presence is compared (pip-generated console
scripts), ``missing``, or ``type:dir`` / ``type:other``; ``paths`` trees with ``attrs`` append
``<TAB>OWNER:GROUP<TAB>MODE``. Digests are cached by file identity (device, inode, size, mtime,
ctime) in a root-only file that only speeds up, never decides; ``deep`` hashes everything."""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import re
import stat
from collections.abc import Iterable
from typing import Any

from ansible.module_utils.stacklock_facts.common import CANNOT_LOOK
from ansible.module_utils.stacklock_facts.node import read_private, write_private
from ansible.module_utils.stacklock_facts.run import Run

FILES_CACHE_SCHEMA = "stacklock.file-digests/v1"
DEFAULT_FILES_CACHE = "/var/cache/stacklock/file-digests.json"

#: files of a distribution's .dist-info that pip writes itself: owned, never compared
PIP_GENERATED = ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")

_DPKG_INFO = "/var/lib/dpkg/info"
_DIVERSIONS = "/var/lib/dpkg/diversions"
_ALTERNATIVES = "/var/lib/dpkg/alternatives"


def tree_hash(lines: Iterable[str]) -> str:
    """sha256 over the sorted lines, each ended by a newline (the same in core.integrity)."""
    return hashlib.sha256("".join(f"{x}\n" for x in sorted(lines)).encode()).hexdigest()


def norm_dist(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def is_pyc(path: str) -> bool:
    return path.endswith(".pyc") or "/__pycache__/" in path


class Disk:
    """The node's file system under `root` ("" on a node; a recorded tree in tests)."""

    def __init__(self, root: str = "") -> None:
        self.root = root.rstrip("/")

    def p(self, path: str) -> str:
        return self.root + path

    def lstat(self, path: str) -> os.stat_result | None:
        try:
            return os.lstat(self.p(path))
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            return None

    def readlink(self, path: str) -> str:
        return os.readlink(self.p(path))

    def read(self, path: str) -> str | None:
        try:
            with open(self.p(path), encoding="utf-8", errors="surrogateescape") as fh:
                return fh.read()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def sha256(self, path: str) -> str:
        digest = hashlib.sha256()
        with open(self.p(path), "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def listdir(self, path: str) -> list[str] | None:
        try:
            return sorted(os.listdir(self.p(path)))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def walk(self, top: str, recurse: bool) -> Iterable[str]:
        """Every non-directory entry below `top` (symlinked directories are not followed)."""
        names = self.listdir(top)
        for name in names or []:
            path = f"{top.rstrip('/')}/{name}"
            st = self.lstat(path)
            if st is None:
                continue
            if stat.S_ISDIR(st.st_mode):
                if recurse:
                    yield from self.walk(path, recurse)
            else:
                yield path


def _owner(uid: int, gid: int) -> str:
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = str(gid)
    return f"{user}:{group}"


class Hasher:
    """sha256 of files, reusing a cached digest while the file's identity is unchanged."""

    def __init__(self, disk: Disk, cached: dict[str, Any]) -> None:
        self.disk = disk
        self.cached = cached
        self.fresh: dict[str, Any] = {}
        self.hashed = 0
        self.reused = 0

    def digest(self, path: str, attrs: bool = False) -> str:
        st = self.disk.lstat(path)
        if st is None:
            return "missing"
        if stat.S_ISLNK(st.st_mode):
            value = f"l:{self.disk.readlink(path)}"
        elif stat.S_ISDIR(st.st_mode):
            value = "type:dir"
        elif not stat.S_ISREG(st.st_mode):
            value = "type:other"
        else:
            identity = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
            entry = self.cached.get(path)
            if (isinstance(entry, list) and len(entry) == 2 and entry[0] == identity
                    and re.fullmatch(r"[0-9a-f]{64}", str(entry[1]))):
                value = str(entry[1])
                self.reused += 1
            else:
                value = self.disk.sha256(path)
                self.hashed += 1
            self.fresh[path] = [identity, value]
        if attrs:
            value += f"\t{_owner(st.st_uid, st.st_gid)}\t{stat.S_IMODE(st.st_mode):04o}"
        return value


def _dpkg_list(disk: Disk, package: str) -> list[str] | None:
    for name in (package, *(f"{package}:{a}" for a in ("amd64", "arm64", "all", "i386"))):
        text = disk.read(f"{_DPKG_INFO}/{name}.list")
        if text is not None:
            return [x for x in text.splitlines() if x.startswith("/")]
    return None


def _diversions(disk: Disk) -> dict[str, tuple[str, str]]:
    """diverted path -> (where it went, the diverting package)."""
    lines = (disk.read(_DIVERSIONS) or "").splitlines()
    out: dict[str, tuple[str, str]] = {}
    for i in range(0, len(lines) - 2, 3):
        out[lines[i]] = (lines[i + 1], lines[i + 2])
    return out


def _dpkg_lines(h: Hasher, disk: Disk, tree: dict[str, Any],
                diversions: dict[str, tuple[str, str]], owned: set[str]) -> list[str]:
    package = str(tree["package"])
    listed = _dpkg_list(disk, package)
    if listed is None:
        return [f"{package}\tnot installed"]
    exclude = set(tree.get("exclude") or [])
    parents = {os.path.dirname(x) for x in listed}
    lines = []
    for path in listed:
        owned.add(path)
        st = disk.lstat(path)
        if path in parents or (st is not None and stat.S_ISDIR(st.st_mode)):
            continue  # directories (also /lib -> usr/lib on merged /usr): not compared
        if path in exclude:
            continue
        where = path
        div = diversions.get(path)
        if div and div[1] != package:  # another package diverted it: ours is at div[0]
            where = div[0]
            owned.add(where)
        lines.append(f"{path}\t{h.digest(where)}")
    return lines


def _dist_info(disk: Disk, site: str, dist: str) -> str | None:
    for name in disk.listdir(site) or []:
        if name.endswith(".dist-info") and norm_dist(name[:-10].split("-")[0]) == dist:
            return f"{site}/{name}"
    return None


def _record_lines(h: Hasher, disk: Disk, tree: dict[str, Any], owned: set[str]) -> list[str]:
    site = str(tree["site"]).rstrip("/")
    scripts = os.path.normpath(f"{site}/../../../bin") + "/"
    info = _dist_info(disk, site, norm_dist(str(tree["dist"])))
    if info is None:
        return [f"{tree['dist']}\tnot installed"]
    text = disk.read(f"{info}/RECORD") or ""
    lines = []
    for row in text.splitlines():
        rel = row.rsplit(",", 2)[0] if row.count(",") >= 2 else row
        if rel.startswith('"') and rel.endswith('"'):
            rel = rel[1:-1]
        if not rel:
            continue
        path = os.path.normpath(f"{site}/{rel}")
        owned.add(path)
        if is_pyc(path) or (os.path.dirname(path) == info
                            and os.path.basename(path) in PIP_GENERATED):
            continue  # pip's own files and compiled bytecode: owned, not compared
        if path.startswith(scripts):  # console scripts (bin/): pip writes them
            lines.append(f"{path}\t{'*' if disk.lstat(path) else 'missing'}")
            continue
        lines.append(f"{path}\t{h.digest(path)}")
    return lines


def _paths_lines(h: Hasher, tree: dict[str, Any], owned: set[str]) -> list[str]:
    attrs = bool(tree.get("attrs"))
    lines = []
    for path in tree.get("paths") or []:
        owned.add(str(path))
        lines.append(f"{path}\t{h.digest(str(path), attrs)}")
    for path in tree.get("names") or []:  # owned; presence (and attrs) compared, not bytes
        owned.add(str(path))
        st = h.disk.lstat(str(path))
        if st is None:
            lines.append(f"{path}\tmissing")
        elif attrs:
            lines.append(f"{path}\t*\t{_owner(st.st_uid, st.st_gid)}"
                         f"\t{stat.S_IMODE(st.st_mode):04o}")
        else:
            lines.append(f"{path}\t*")
    return lines


def _all_dpkg_paths(disk: Disk) -> set[str]:
    out: set[str] = set()
    for name in disk.listdir(_DPKG_INFO) or []:
        if name.endswith(".list"):
            out.update(x for x in (disk.read(f"{_DPKG_INFO}/{name}") or "").splitlines()
                       if x.startswith("/"))
    return out


def _alternative_links(disk: Disk) -> set[str]:
    """The links update-alternatives manages (master and slaves of every alternative)."""
    out: set[str] = set()
    for name in disk.listdir(_ALTERNATIVES) or []:
        lines = (disk.read(f"{_ALTERNATIVES}/{name}") or "").splitlines()
        # mode, master link, then (slave name, slave link) pairs up to an empty line
        head = lines[1:lines.index("")] if "" in lines else lines[1:]
        if head:
            out.add(head[0])
            out.update(head[2::2])
    return out


def probe(opts: dict[str, Any], disk: Disk) -> dict[str, Any]:
    entries = [e for e in opts.get("files") or [] if isinstance(e, dict)]
    deep = bool(opts.get("deep"))
    cache_path = opts.get("files_cache")
    if cache_path is None:
        cache_path = DEFAULT_FILES_CACHE
    cached: dict[str, Any] = {}
    if cache_path and not deep:
        text = read_private(disk.p(cache_path))
        try:
            doc = json.loads(text or "{}")
        except ValueError:
            doc = {}
        if isinstance(doc, dict) and doc.get("schema") == FILES_CACHE_SCHEMA:
            cached = doc.get("files") or {}
    h = Hasher(disk, cached)
    owned: set[str] = set()
    diversions = _diversions(disk)
    trees: dict[str, Any] = {}
    for tree in entries:
        if "tree" not in tree or tree.get("unchecked"):
            continue
        kind = tree.get("kind")
        if kind == "dpkg":
            lines = _dpkg_lines(h, disk, tree, diversions, owned)
        elif kind == "record":
            lines = _record_lines(h, disk, tree, owned)
        elif kind == "paths":
            lines = _paths_lines(h, tree, owned)
        else:
            trees[str(tree["tree"])] = {"error": f"unknown tree kind {kind!r}"}
            continue
        actual = tree_hash(lines)
        entry: dict[str, Any] = {"hash": actual, "count": len(lines)}
        if actual != tree.get("hash"):
            entry["lines"] = sorted(lines)
        trees[str(tree["tree"])] = entry
    dirs = [e for e in entries if "dir" in e]
    unowned: list[str] = []
    listed: dict[str, int] = {}
    if dirs:
        owned |= _all_dpkg_paths(disk) | _alternative_links(disk)
        seen: set[str] = set()
        for d in dirs:
            top = str(d["dir"]).rstrip("/") or "/"
            # what a daemon writes there itself (dockerd's key.json): owned when present
            owned.update(str(x) for x in d.get("generated") or [])
            st = disk.lstat(top)
            if st is None:
                listed[top] = 0
                continue
            files = [top] if not stat.S_ISDIR(st.st_mode) else list(
                disk.walk(top, bool(d.get("recurse"))))
            listed[top] = len(files)
            for path in files:
                if path in seen or path in owned:
                    continue
                seen.add(path)
                if is_pyc(path) and _pyc_source(path) in owned:
                    continue  # bytecode of an owned module (policy: existence of its source)
                unowned.append(path)
    out: dict[str, Any] = {"trees": trees, "unowned": sorted(unowned), "dirs": listed,
                           "hashed": h.hashed, "reused": h.reused, "deep": deep}
    if cache_path and not opts.get("_check_mode") and h.fresh != cached:
        try:
            write_private(disk.p(cache_path), json.dumps(
                {"schema": FILES_CACHE_SCHEMA, "files": h.fresh}, sort_keys=True))
        except OSError as exc:
            out["cache_error"] = f"{cache_path}: {exc}"
    return out


def _pyc_source(path: str) -> str:
    """`.../pkg/__pycache__/mod.cpython-311.pyc` -> `.../pkg/mod.py`."""
    folder, name = os.path.split(path)
    if os.path.basename(folder) == "__pycache__":
        folder = os.path.dirname(folder)
    return f"{folder}/{name.split('.')[0]}.py"


def _probe_safely(opts: dict[str, Any], disk: Disk) -> dict[str, Any]:
    try:
        return probe(opts, disk)
    except PermissionError as exc:
        return {"error": f"{CANNOT_LOOK}{exc}"}


def collect(run: Run) -> None:
    """`files` (only when the controller sent the `files` option)."""
    if not run.opts.get("files"):
        return
    disk = getattr(run.sy, "disk", None) or Disk()
    run.facts["files"] = run.section("files", _probe_safely, run.opts, disk)
