"""A pinned component's whole package set: the Depends closure of its top packages, read from
an apt repository's Packages index and kept within the component's package family.

Pure: parses the text of a Packages file (python-debian's deb822 and relation parser, Debian's
version comparison) and walks Depends and Pre-Depends the way apt does without Recommends
(the roles install with --no-install-recommends): in each relation the first alternative that
is already in the set, else the first one the index can satisfy. A dependency outside the
family (libc6, dkms, iptables: the OS's own packages) ends the walk there; a family member the
index cannot satisfy is a problem naming it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from debian.deb822 import Packages, PkgRelation
from debian.debian_support import version_compare

_OPS = {
    "<<": lambda c: c < 0, "<=": lambda c: c <= 0, "=": lambda c: c == 0,
    ">=": lambda c: c >= 0, ">>": lambda c: c > 0,
}


@dataclass(frozen=True)
class Stanza:
    name: str
    version: str
    #: Pre-Depends and Depends: one list of alternatives (name, op, version) per relation
    depends: tuple[tuple[tuple[str, str, str], ...], ...]
    #: provided name -> provided version ("" when unversioned)
    provides: tuple[tuple[str, str], ...] = ()


@dataclass
class Index:
    """Every stanza of one or more Packages files, by package name."""

    packages: dict[str, list[Stanza]] = field(default_factory=dict)

    def add(self, stanza: Stanza) -> None:
        same = self.packages.setdefault(stanza.name, [])
        if all(s.version != stanza.version for s in same):
            same.append(stanza)

    def providers(self, name: str) -> list[tuple[Stanza, str]]:
        return [(s, ver) for versions in self.packages.values() for s in versions
                for pname, ver in s.provides if pname == name]


class ClosureError(ValueError):
    """A member the index cannot give (the message names it and what needs it)."""


def _relations(raw: str) -> tuple[tuple[tuple[str, str, str], ...], ...]:
    out: list[tuple[tuple[str, str, str], ...]] = []
    if not raw.strip():
        return ()
    for group in PkgRelation.parse_relations(raw):
        alts = []
        for alt in group:
            ver = alt.get("version")
            op, v = ver if ver else ("", "")
            alts.append((str(alt["name"]), str(op), str(v)))
        out.append(tuple(alts))
    return tuple(out)


def parse_index(texts: Iterable[str]) -> Index:
    """The Packages files' text (uncompressed) as one index."""
    index = Index()
    for text in texts:
        for para in Packages.iter_paragraphs(text.splitlines(keepends=True), use_apt_pkg=False):
            name, version = para.get("Package"), para.get("Version")
            if not name or not version:
                continue
            deps = _relations(", ".join(x for x in (para.get("Pre-Depends"), para.get("Depends"))
                                        if x))
            provides = tuple((n, v) for group in _relations(para.get("Provides") or "")
                             for n, _op, v in group)
            index.add(Stanza(str(name), str(version), deps, provides))
    return index


def satisfies(version: str, op: str, wanted: str) -> bool:
    return not op or _OPS[op](version_compare(version, wanted))


def in_family(name: str, family: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, glob) for glob in family)


def _candidates(index: Index, name: str, op: str, wanted: str) -> list[Stanza]:
    """Real packages called `name` at a satisfying version (highest first), then providers."""
    real = sorted((s for s in index.packages.get(name, []) if satisfies(s.version, op, wanted)),
                  key=lambda s: _Key(s.version), reverse=True)
    provided = [s for s, pver in index.providers(name)
                if not op or (pver and satisfies(pver, op, wanted))]
    return real + provided


class _Key:
    def __init__(self, version: str) -> None:
        self.version = version

    def __lt__(self, other: _Key) -> bool:
        return version_compare(self.version, other.version) < 0


def resolve(index: Index, roots: Sequence[tuple[str, str]], family: Sequence[str],
            exclude: Iterable[str] = ()) -> dict[str, str]:
    """name -> exact version of every package of the set: the roots (at their pinned versions)
    and every family member their Depends / Pre-Depends reach. `exclude`: packages another
    component pins (the walk stops there)."""
    chosen: dict[str, Stanza] = {}
    for name, version in roots:
        match = [s for s in index.packages.get(name, []) if s.version == version]
        if not match:
            served = ", ".join(sorted(s.version for s in index.packages.get(name, []))) or "none"
            raise ClosureError(f"{name} {version} is not in the apt index (it serves: {served})")
        chosen[name] = match[0]
    others = set(exclude)
    todo = list(chosen.values())
    while todo:
        stanza = todo.pop(0)
        for group in stanza.depends:
            picked = _pick(index, group, chosen, family, others, stanza)
            if picked is not None and picked.name not in chosen:
                chosen[picked.name] = picked
                todo.append(picked)
    return {name: s.version for name, s in sorted(chosen.items())}


def _pick(index: Index, group: Sequence[tuple[str, str, str]], chosen: Mapping[str, Stanza],
          family: Sequence[str], others: set[str], needed_by: Stanza) -> Stanza | None:
    """The package that satisfies one relation, None when it lies outside the family."""
    for name, op, wanted in group:  # already in the set (or provided by a member)
        have = chosen.get(name)
        if have is not None and satisfies(have.version, op, wanted):
            return have
        if any(p == name and (not op or (v and satisfies(v, op, wanted)))
               for s in chosen.values() for p, v in s.provides):
            return None
        if name in others:
            return None
    for name, op, wanted in group:
        for cand in _candidates(index, name, op, wanted):
            if cand.name in others:
                return None
            if not in_family(cand.name, family):
                return None  # apt would take it from the OS: outside this set
            return cand
        if not in_family(name, family) and not index.providers(name):
            return None  # not served here: the OS's own package
    text = " | ".join(f"{n} ({op} {v})" if op else n for n, op, v in group)
    raise ClosureError(f"{needed_by.name} {needed_by.version} depends on {text}, which the apt "
                       "index does not serve")
