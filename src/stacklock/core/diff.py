"""Diff environments on everything: the pinned stack, every OS package, every Python
distribution of the serving venv. Pure: facts in, a `stacklock.diff/v1` report out.

Each node's facts (gathered with `inventory: true`) are flattened into three groups:

* ``stack``  — the parity components (`stacklock.core.parity.actual_values`) other than `pip.*`:
  driver, CUDA, Docker, toolkit, Java, torch, TorchServe, models, services, pins and holds;
* ``os``     — every installed dpkg package: name -> version (`name:arch` where a package is
  installed for several architectures);
* ``python`` — every distribution of the serving venv: normalized name -> version.

Container mode (the facts hold a `container` section: the facts module reads one only for an
environment that serves from a container): ``stack`` holds the container class too
(`container.image.digest`, `container.image.id`, `container.running`, the settings; two
environments that run different images differ there), and ``python`` is the closure read
inside the running container (`container.python.*`, which therefore is not repeated in
``stack``), so a host-mode and a container-mode environment compare on the same names. A
serving container that is missing or stopped, or whose closure could not be read, makes the
node incomplete (exit 3), as a host venv that could not be read does: nothing stands in for
what was not read.

Environments are compared with each other (the value set of each environment must be the
same), and the nodes of one environment with each other. Names that match a glob of the
manifest's `parity.diff_ignore` are left out (and counted). A node that could not be looked
at (unreachable, or its inventory could not be read) makes the report incomplete: exit 3.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from stacklock.core.parity import Unreachable, actual_values

SCHEMA = "stacklock.diff/v1"
STACK, OS, PYTHON = "stack", "os", "python"
#: groups in report order, with their titles
GROUPS = {STACK: "pinned stack", OS: "OS packages", PYTHON: "Python"}
ABSENT = "(absent)"
ENVIRONMENTS, NODES = "environments", "nodes"
#: the container class's closure components: the ``python`` group in container mode
CLOSURE = "container.python."


class NotInventoried(ValueError):
    """A node's facts lack a part of the inventory (why, for the report)."""


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def inventory(facts: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """group -> name -> value for one node; NotInventoried when a part could not be read."""
    blocked = facts.get("blocked") if isinstance(facts.get("blocked"), Mapping) else {}
    if blocked:
        raise NotInventoried("could not look at " + ", ".join(sorted(blocked)))
    stack = {k: v if v is not None else ABSENT for k, v in actual_values(facts).items()
             if not k.startswith(("pip.", CLOSURE))}
    packages = facts.get("os_packages")
    if not isinstance(packages, list):
        raise NotInventoried("no OS package list (facts not gathered with inventory: true, "
                             "or dpkg could not be read)")
    names = Counter(str(p.get("name")) for p in packages)
    os_pkgs: dict[str, str] = {}
    for p in packages:
        name = str(p.get("name"))
        key = name if names[name] == 1 else f"{name}:{p.get('architecture')}"
        os_pkgs[key] = str(p.get("version"))
    dists: Mapping[str, Any] | None
    if isinstance(facts.get("container"), Mapping):
        dists = container_closure(facts["container"])
    else:
        venv = facts.get("torchserve", {}).get("venv") if isinstance(facts.get("torchserve"),
                                                                      Mapping) else None
        dists = (venv or {}).get("distributions")
        if not isinstance(dists, Mapping):
            dists = (venv or {}).get("packages")
        if not isinstance(dists, Mapping) or (venv or {}).get("error"):
            raise NotInventoried("the serving venv's distributions could not be read"
                                 + (f": {venv.get('error')}" if venv and venv.get("error")
                                    else ""))
    python = {_norm(str(n)): str(v) for n, v in dists.items() if v is not None}
    return {STACK: stack, OS: os_pkgs, PYTHON: python}


def container_closure(c: Mapping[str, Any]) -> Mapping[str, Any]:
    """The distributions read inside the running serving container; NotInventoried (why)
    when the container could not be read, is not there, is stopped, or its closure could
    not be read."""
    name = c.get("name") or "(unnamed)"
    if c.get("error"):
        raise NotInventoried(f"the serving container could not be read: {c['error']}")
    if not c.get("found"):
        raise NotInventoried(f"no serving container {name} on the node: no Python closure "
                             "to read")
    if not c.get("running"):
        raise NotInventoried(f"the serving container {name} is not running "
                             f"({c.get('status') or 'stopped'}, exit code {c.get('exit_code')}):"
                             " its Python closure could not be read")
    raw = c.get("python")
    py: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    dists = py.get("distributions")
    if not isinstance(dists, Mapping) or py.get("error"):
        raise NotInventoried("the Python closure in the serving container could not be read"
                             + (f": {py['error']}" if py.get("error") else ""))
    return dists


def ignored(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatchcase(name, p) for p in patterns)


@dataclass(frozen=True)
class Difference:
    """One name whose values differ: between environments (`values` by environment) or
    between the nodes of `environment` (`values` by node)."""

    group: str
    name: str
    scope: str
    values: Mapping[str, str]
    reference: str
    environment: str | None = None

    def differing(self) -> list[str]:
        """The environments (or nodes) whose value is not the reference."""
        return [k for k, v in self.values.items() if v != self.reference]

    def as_dict(self) -> dict[str, Any]:
        return {"group": self.group, "name": self.name, "scope": self.scope,
                "environment": self.environment, "values": dict(self.values),
                "reference": self.reference, "differing": self.differing()}


@dataclass(frozen=True)
class Incomplete:
    environment: str
    node: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"environment": self.environment, "node": self.node, "reason": self.reason}


@dataclass(frozen=True)
class DiffReport:
    environments: tuple[str, ...]
    nodes: Mapping[str, tuple[str, ...]]
    ignore: tuple[str, ...]
    differences: tuple[Difference, ...]
    incomplete: tuple[Incomplete, ...] = ()
    ignored: Mapping[str, int] = field(default_factory=dict)
    compared: Mapping[str, int] = field(default_factory=dict)

    @property
    def identical(self) -> bool:
        return not self.differences

    def exit_code(self, fail_on_drift: bool = False) -> int:
        """3 when a node could not be looked at, else 1 on a difference with
        `fail_on_drift`, else 0."""
        if self.incomplete or not self.environments:
            return 3
        return 1 if fail_on_drift and self.differences else 0

    def of_group(self, group: str) -> list[Difference]:
        return [d for d in self.differences if d.group == group]

    def as_dict(self, fail_on_drift: bool = False) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "environments": list(self.environments),
            "nodes": {e: list(n) for e, n in self.nodes.items()},
            "ignore": list(self.ignore),
            "identical": self.identical,
            "exit_code": self.exit_code(fail_on_drift),
            "counts": {g: len(self.of_group(g)) for g in GROUPS},
            "compared": dict(self.compared),
            "ignored": dict(self.ignored),
            "differences": [d.as_dict() for d in self.differences],
            "incomplete": [i.as_dict() for i in self.incomplete],
        }


def _reference(values: Mapping[str, str]) -> str:
    """The value most environments (nodes) have; ties: the first one's."""
    counts = Counter(values.values())
    best = max(counts.values())
    return next(v for v in values.values() if counts[v] == best)


def compare(facts_by_env: Mapping[str, Mapping[str, Any]],
            ignore: Sequence[str] = ()) -> DiffReport:
    """Compare the inventories of `facts_by_env` (env -> node -> facts or Unreachable/None),
    in the given environment order."""
    envs = tuple(facts_by_env)
    inv: dict[str, dict[str, dict[str, dict[str, str]]]] = {}
    incomplete: list[Incomplete] = []
    for env in envs:
        inv[env] = {}
        nodes = facts_by_env[env]
        if not nodes:
            incomplete.append(Incomplete(env, "*", "no nodes in this environment"))
        for node in sorted(nodes):
            facts = nodes[node]
            if facts is None or isinstance(facts, Unreachable) or not isinstance(facts, Mapping):
                reason = facts.error if isinstance(facts, Unreachable) else "no facts"
                incomplete.append(Incomplete(env, node, f"unreachable: {reason}"))
                continue
            try:
                inv[env][node] = inventory(facts)
            except NotInventoried as exc:
                incomplete.append(Incomplete(env, node, str(exc)))
    differences: list[Difference] = []
    skipped: dict[str, set[str]] = {g: set() for g in GROUPS}
    compared: dict[str, set[str]] = {g: set() for g in GROUPS}
    for group in GROUPS:
        names = sorted({n for e in inv.values() for node in e.values() for n in node[group]})
        for name in names:
            if ignored(name, ignore):
                skipped[group].add(name)
                continue
            compared[group].add(name)
            per_env: dict[str, str] = {}
            for env in envs:
                if not inv[env]:
                    continue
                by_node = {node: data[group].get(name, ABSENT)
                           for node, data in sorted(inv[env].items())}
                if len(set(by_node.values())) > 1:
                    differences.append(Difference(group, name, NODES, by_node,
                                                  _reference(by_node), environment=env))
                per_env[env] = ", ".join(sorted(set(by_node.values())))
            if len(set(per_env.values())) > 1:
                differences.append(Difference(group, name, ENVIRONMENTS, per_env,
                                              _reference(per_env)))
    return DiffReport(
        environments=envs,
        nodes={e: tuple(sorted(facts_by_env[e])) for e in envs},
        ignore=tuple(ignore),
        differences=tuple(differences),
        incomplete=tuple(incomplete),
        ignored={g: len(s) for g, s in skipped.items()},
        compared={g: len(s) for g, s in compared.items()},
    )


__all__ = ["ABSENT", "CLOSURE", "ENVIRONMENTS", "GROUPS", "NODES", "OS", "PYTHON", "SCHEMA",
           "STACK", "DiffReport", "Difference", "Incomplete", "NotInventoried", "compare",
           "container_closure", "ignored", "inventory"]
