"""The one parity comparison: live stack facts against the lock and across environments. Pure.

Used by `stacklock verify` and by the verify playbook (through the `stacklock_parity` action
plugin), so both reach the same verdict.

Components are flat dotted names (`docker.version`, `package.docker.io`, `hold.docker.io`,
`archive.tiny-linear.mar.sha256`, `model.tiny-linear.version`, ...); every value is a string,
or None when the node did not report it ("missing"). Two kinds of checks:

* lock: every node of an environment against that environment's expectation
  (`expected_from_vars`, built from the rendered group_vars);
* cross-environment: for every component not listed in `may_differ`, the set of values seen in
  each environment must be the same everywhere. For pinned components that means the
  environments' locks must agree (a node that deviates from its lock is already reported by the
  lock check); for observed-only components (kernel, GPU model, default runtime, ...) the
  nodes' values are compared. The environments holding the most common value set are the
  reference; the others are reported.

A node that could not be reached or queried is `unreachable` for each of its checks and never
counts as matching; an environment without nodes is unreachable too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from stacklock.errors import ExitCode

FACTS_SCHEMA = "stacklock.facts/v1"

#: the component every node gets, so an unreachable node always shows up
REACHABLE = "node.reachable"

#: components compared only across environments (no lock value exists for them)
OBSERVED_ONLY = (
    "os.distribution",
    "os.release",
    "os.kernel",
    "os.architecture",
    "gpu.present",
    "gpu.count",
    "gpu.name",
    "gpu.compute_capability",
    "gpu.memory_mib",
    "nvidia_driver.kernel_module",
    "docker.default_runtime",
    "service.docker",
)

#: display order of components (prefixes), the rest sorted after them
_ORDER = (
    REACHABLE,
    "os.",
    "gpu.",
    "nvidia_driver.",
    "cuda.",
    "docker.",
    "nvidia_container_toolkit.",
    "java.",
    "python.",
    "torch.",
    "torchserve.",
    "torch-model-archiver.",
    "pip.",
    "model_store.",
    "archive.",
    "model.",
    "service.",
    "package.",
    "hold.",
)

#: which facts `errors` key explains a missing value of a component (by prefix)
_ERROR_SOURCES = (
    ("os.", ("os",)),
    ("gpu.", ("gpu",)),
    ("nvidia_driver.", ("gpu", "nvidia_driver", "packages")),
    ("cuda.", ("cuda", "packages")),
    ("docker.", ("docker",)),
    ("nvidia_container_toolkit.", ("nvidia_container_toolkit",)),
    ("java.", ("java",)),
    ("python.", ("torchserve_venv", "python")),
    ("torch.", ("torchserve_venv",)),
    ("torch-model-archiver.", ("torchserve_venv",)),
    ("pip.", ("torchserve_venv",)),
    ("torchserve.config_sha256", ("torchserve.config",)),
    ("torchserve.", ("torchserve", "torchserve_venv")),
    ("model_store.", ("torchserve.model_store",)),
    ("archive.", ("torchserve.model_store",)),
    ("model.", ("torchserve",)),
    ("service.torchserve", ("services.torchserve", "services")),
    ("service.docker", ("services.docker", "services")),
    ("package.", ("packages",)),
    ("hold.", ("packages",)),
)

#: named components for these pip distributions; other pins are `pip.<name>`
_PIP_NAMED = {
    "torch": "torch.version",
    "torchserve": "torchserve.version",
    "torch-model-archiver": "torch-model-archiver.version",
}

#: group_vars lists of apt pins ({name, version}) checked for version and hold
APT_PIN_VARS = (
    "nvidia_driver_packages",
    "cuda_packages",
    "docker_packages",
    "nvidia_container_toolkit_packages",
    "torchserve_java_packages",
)


#: the group_vars `expected_from_vars` reads (docs/internals.md)
GROUP_VAR_KEYS = (
    "nvidia_driver_version",
    "cuda_version",
    "docker_version",
    "nvidia_container_toolkit_version",
    "torchserve_java_version",
    "torchserve_python_version",
    "torchserve_pip_packages",
    "torchserve_torch_version",
    "torchserve_version",
    "torchserve_model_archiver_version",
    "torchserve_torch_cuda",
    "torchserve_config_sha256",
    "torchserve_models",
    "stacklock_os_distribution",
    "stacklock_os_release",
    *APT_PIN_VARS,
)


class Status(StrEnum):
    MATCH = "match"
    DEVIATION = "deviation"
    UNREACHABLE = "unreachable"


class Kind(StrEnum):
    LOCK = "lock"
    CROSS = "cross-environment"
    NODE = "node"


@dataclass(frozen=True)
class Unreachable:
    """Marker for a node that could not be reached or queried, with the reason."""

    error: str = "unreachable"


@dataclass(frozen=True)
class Check:
    environment: str
    node: str
    component: str
    expected: str | None
    actual: str | None
    status: Status
    kind: Kind = Kind.LOCK
    detail: str = ""

    def describe(self) -> str:
        """`prod/node-1 docker.version: expected 20.10.24, actual 24.0.5`."""
        where = f"{self.environment}/{self.node}"
        if self.status is Status.UNREACHABLE:
            return f"{where} unreachable: {self.detail or 'no facts'}"
        text = (
            f"{where} {self.component}: expected {show(self.expected)}, "
            f"actual {show(self.actual)}"
        )
        if self.kind is Kind.CROSS:
            text += " (differs between environments)"
        if self.detail:
            text += f" [{self.detail}]"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "node": self.node,
            "component": self.component,
            "expected": self.expected,
            "actual": self.actual,
            "status": self.status.value,
            "kind": self.kind.value,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class NodeResult:
    environment: str
    node: str
    reachable: bool
    error: str = ""
    facts_seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "node": self.node,
            "reachable": self.reachable,
            "error": self.error,
            "facts_seconds": self.facts_seconds,
        }


@dataclass(frozen=True)
class ParityReport:
    environments: tuple[str, ...]
    nodes: tuple[NodeResult, ...]
    checks: tuple[Check, ...]
    may_differ: tuple[str, ...] = ()
    #: environment -> component -> expected value
    expected: Mapping[str, Mapping[str, str | None]] = field(default_factory=dict)
    #: environment -> node -> component -> actual value (reachable nodes only)
    observed: Mapping[str, Mapping[str, Mapping[str, str | None]]] = field(default_factory=dict)

    @property
    def deviations(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status is Status.DEVIATION)

    @property
    def unreachable(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status is Status.UNREACHABLE)

    @property
    def unreachable_nodes(self) -> tuple[NodeResult, ...]:
        return tuple(n for n in self.nodes if not n.reachable)

    @property
    def exit_code(self) -> ExitCode:
        """3 if any node is unreachable or there is no node at all, else 1 on any deviation."""
        if not self.nodes or not self.checks or self.unreachable or self.unreachable_nodes:
            return ExitCode.FAILED
        if self.deviations:
            return ExitCode.DEVIATION
        return ExitCode.OK

    def components(self) -> list[str]:
        return sort_components({c.component for c in self.checks})

    def summary(self) -> str:
        reachable = sum(1 for n in self.nodes if n.reachable)
        return (
            f"{len(self.environments)} environment(s), {len(self.nodes)} node(s) "
            f"({reachable} reached), {len(self.checks)} checks: "
            f"{len(self.deviations)} deviation(s), "
            f"{len(self.unreachable_nodes)} unreachable node(s)"
        )

    def problems(self) -> list[str]:
        """One line per deviation, one per unreachable node (or empty environment)."""
        lines = [f"{n.environment}/{n.node} unreachable: {n.error or 'no facts'}"
                 for n in self.unreachable_nodes]
        known = {(n.environment, n.node) for n in self.unreachable_nodes}
        for c in self.unreachable:
            if (c.environment, c.node) not in known:
                known.add((c.environment, c.node))
                lines.append(c.describe())
        lines += [c.describe() for c in self.deviations]
        if not self.nodes and not lines:
            lines.append("no nodes were verified")
        return lines


def show(value: str | None) -> str:
    return "(missing)" if value is None else (value if value != "" else "(none)")


def sort_components(names: Iterable[str]) -> list[str]:
    def key(name: str) -> tuple[int, str]:
        for i, prefix in enumerate(_ORDER):
            if name == prefix or (prefix.endswith(".") and name.startswith(prefix)):
                return (i, name)
        return (len(_ORDER), name)

    return sorted(set(names), key=key)


def may_differ_matches(component: str, may_differ: Sequence[str]) -> bool:
    """`gpu` allows `gpu.*`, `os.kernel` allows exactly that component."""
    return any(component == m or component.startswith(m + ".") for m in may_differ)


# --------------------------------------------------------------------------- expectations


def _s(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _major_minor(version: str | None) -> str | None:
    if not version:
        return None
    m = re.match(r"^(\d+)\.(\d+)", version)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def expected_from_vars(group_vars: Mapping[str, Any]) -> dict[str, str | None]:
    """The expectation of one environment, from its rendered group_vars (docs/internals.md).

    Only the keys that are present are expected, so a partial group_vars gives a partial
    expectation (never a made-up value).
    """
    gv = group_vars
    exp: dict[str, str | None] = {}

    def put(component: str, key: str, transform: Any = None) -> None:
        if key in gv and gv[key] is not None:
            value = gv[key]
            exp[component] = transform(value) if transform else _s(value)

    put("nvidia_driver.version", "nvidia_driver_version")
    put("cuda.version", "cuda_version", lambda v: _major_minor(str(v)) or str(v))
    put("docker.version", "docker_version")
    put("nvidia_container_toolkit.version", "nvidia_container_toolkit_version")
    put("java.version", "torchserve_java_version")
    put("python.version", "torchserve_python_version")
    for pin in gv.get("torchserve_pip_packages") or []:
        name = str(pin["name"])
        exp[_PIP_NAMED.get(name, f"pip.{name}")] = _s(pin["version"])
    put("torch.version", "torchserve_torch_version")
    put("torchserve.version", "torchserve_version")
    put("torch-model-archiver.version", "torchserve_model_archiver_version")
    if "torchserve_torch_cuda" in gv or "torch.version" in exp:
        exp["torch.cuda"] = _s(gv.get("torchserve_torch_cuda")) or "none"
    put("torchserve.config_sha256", "torchserve_config_sha256")
    if "torchserve_models" in gv or "torchserve_version" in gv:
        models = list(gv.get("torchserve_models") or [])
        exp["torchserve.running"] = "true"
        exp["service.torchserve"] = "active"
        exp["torchserve.models"] = ",".join(sorted(str(m["name"]) for m in models))
        exp["model_store.archives"] = ",".join(
            sorted(str(m.get("file") or f"{m['name']}.mar") for m in models)
        )
        for m in models:
            file = str(m.get("file") or f"{m['name']}.mar")
            exp[f"archive.{file}.sha256"] = _s(m.get("sha256"))
            exp[f"model.{m['name']}.version"] = _s(m.get("version"))
    for var in APT_PIN_VARS:
        for pin in gv.get(var) or []:
            exp[f"package.{pin['name']}"] = _s(pin["version"])
            exp[f"hold.{pin['name']}"] = "held"
    if "stacklock_os_distribution" in gv:
        put("os.distribution", "stacklock_os_distribution")
        put("os.release", "stacklock_os_release")
    return exp


def apt_package_names(group_vars: Mapping[str, Any]) -> list[str]:
    """The apt packages the facts module must report (for its `packages` option)."""
    names = {str(p["name"]) for var in APT_PIN_VARS for p in group_vars.get(var) or []}
    return sorted(names)


# --------------------------------------------------------------------------- actual values


def _get(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data


def actual_values(facts: Mapping[str, Any]) -> dict[str, str | None]:
    """Flatten one node's `stacklock.facts/v1` into component -> value."""
    act: dict[str, str | None] = {}
    for key in ("distribution", "release", "kernel", "architecture"):
        act[f"os.{key}"] = _s(_get(facts, "os", key))
    gpu = _get(facts, "gpu") or {}
    act["gpu.present"] = _s(bool(_get(gpu, "present")))
    act["gpu.count"] = _s(_get(gpu, "count") or 0)
    for key in ("name", "compute_capability", "memory_mib"):
        act[f"gpu.{key}"] = _s(_get(gpu, key))
    act["nvidia_driver.version"] = _s(_get(facts, "nvidia_driver", "version"))
    act["nvidia_driver.kernel_module"] = _s(_get(facts, "nvidia_driver", "kernel_module"))
    act["cuda.version"] = _s(_get(facts, "cuda", "version"))
    act["docker.version"] = _s(_get(facts, "docker", "version"))
    act["docker.default_runtime"] = _s(_get(facts, "docker", "default_runtime"))
    act["nvidia_container_toolkit.version"] = _s(
        _get(facts, "nvidia_container_toolkit", "version")
    )
    act["java.version"] = _s(_get(facts, "java", "major"))
    venv = _get(facts, "torchserve", "venv") or {}
    act["python.version"] = _major_minor(_s(_get(venv, "python")))
    pkgs = _get(venv, "packages") or {}
    if isinstance(pkgs, Mapping):
        for name, version in pkgs.items():
            act[_PIP_NAMED.get(str(name), f"pip.{name}")] = _s(version)
    torch = _get(venv, "torch") or {}
    if act.get("torch.version") is None:
        act["torch.version"] = _s(_get(torch, "version"))
    if _get(torch, "version") is not None:
        act["torch.cuda"] = _s(_get(torch, "cuda")) or "none"
    else:
        act["torch.cuda"] = None
    ts = _get(facts, "torchserve") or {}
    act["torchserve.config_sha256"] = _s(_get(ts, "config", "sha256"))
    running = bool(_get(ts, "running"))
    act["torchserve.running"] = _s(running)
    models = _get(ts, "models") or {}
    act["torchserve.models"] = ",".join(sorted(str(m) for m in models)) if running else None
    if isinstance(models, Mapping):
        for name, desc in models.items():
            act[f"model.{name}.version"] = _s(_get(desc, "version"))
    archives = _get(ts, "model_store", "archives")
    if isinstance(archives, Mapping) and not _get(ts, "model_store", "error"):
        act["model_store.archives"] = ",".join(sorted(str(a) for a in archives))
        for file, digest in archives.items():
            act[f"archive.{file}.sha256"] = _s(digest)
    else:
        act["model_store.archives"] = None
    services = _get(facts, "services") or {}
    if isinstance(services, Mapping):
        for name, svc in services.items():
            act[f"service.{name}"] = _s(_get(svc, "active"))
    packages = _get(facts, "packages") or {}
    if isinstance(packages, Mapping):
        for name, entry in packages.items():
            act[f"package.{name}"] = _s(_get(entry, "version"))
            held = _get(entry, "held")
            act[f"hold.{name}"] = None if held is None else ("held" if held else "not held")
    return act


def _error_for(component: str, errors: Mapping[str, Any]) -> str:
    if not errors:
        return ""
    for prefix, keys in _ERROR_SOURCES:
        if component.startswith(prefix):
            for key in keys:
                if errors.get(key):
                    return f"{key}: {errors[key]}"
            return ""
    return ""


def _reason_unqueried(facts: Any) -> str | None:
    """None when `facts` is a usable facts dict, else why the node counts as unreachable."""
    if facts is None:
        return "no facts (host unreachable or not queried)"
    if isinstance(facts, Unreachable):
        return facts.error
    if not isinstance(facts, Mapping):
        return f"facts of an unexpected type {type(facts).__name__}"
    if facts.get("unreachable"):
        return str(facts.get("error") or facts.get("msg") or "unreachable")
    schema = facts.get("schema")
    if schema != FACTS_SCHEMA:
        return f"facts schema {schema!r} is not {FACTS_SCHEMA!r}"
    return None


# --------------------------------------------------------------------------- comparison


def compare(
    expected: Mapping[str, Mapping[str, str | None]],
    facts: Mapping[str, Mapping[str, Any]],
    may_differ: Sequence[str] = (),
) -> ParityReport:
    """Compare every node with its environment's expectation, and environments with each other.

    `expected`: environment -> component -> value (`expected_from_vars`).
    `facts`: environment -> node -> facts dict, or None / `Unreachable` / {"unreachable": true}.
    Environment order: `expected` first, then environments only in `facts`.
    """
    envs = list(expected) + [e for e in facts if e not in expected]
    nodes: list[NodeResult] = []
    checks: list[Check] = []
    actuals: dict[str, dict[str, dict[str, str | None]]] = {}

    for env in envs:
        exp = dict(expected.get(env) or {})
        env_facts = facts.get(env) or {}
        actuals[env] = {}
        if not env_facts:
            checks.append(Check(env, "(none)", REACHABLE, "at least one node", "no nodes",
                                Status.UNREACHABLE, Kind.NODE,
                                "the environment has no nodes in the inventory"))
            continue
        for node in sorted(env_facts):
            node_facts = env_facts[node]
            reason = _reason_unqueried(node_facts)
            if reason is not None:
                nodes.append(NodeResult(env, node, False, reason))
                checks.append(Check(env, node, REACHABLE, "true", "false",
                                    Status.UNREACHABLE, Kind.NODE, reason))
                for comp in sort_components(exp):
                    checks.append(Check(env, node, comp, exp[comp], None, Status.UNREACHABLE,
                                        Kind.LOCK, reason))
                continue
            assert isinstance(node_facts, Mapping)
            seconds = node_facts.get("seconds")
            nodes.append(NodeResult(env, node, True, "",
                                    float(seconds) if isinstance(seconds, int | float) else None))
            checks.append(Check(env, node, REACHABLE, "true", "true", Status.MATCH, Kind.NODE))
            act = actual_values(node_facts)
            actuals[env][node] = act
            errors = node_facts.get("errors") or {}
            for comp in sort_components(exp):
                want, got = exp[comp], act.get(comp)
                ok = want == got
                checks.append(Check(
                    env, node, comp, want, got,
                    Status.MATCH if ok else Status.DEVIATION, Kind.LOCK,
                    "" if ok else _error_for(comp, errors),
                ))

    checks += _cross_environment(envs, expected, actuals, may_differ)
    return ParityReport(
        environments=tuple(envs),
        nodes=tuple(nodes),
        checks=tuple(checks),
        may_differ=tuple(may_differ),
        expected={e: dict(expected.get(e) or {}) for e in envs},
        observed=actuals,
    )


def _reference(sets: Mapping[str, frozenset[str | None]], order: Sequence[str]) -> frozenset[
    str | None
]:
    """The value set held by the most environments (ties: the earliest environment)."""
    counts: dict[frozenset[str | None], int] = {}
    for env in order:
        if env in sets:
            counts[sets[env]] = counts.get(sets[env], 0) + 1
    best = max(counts.values())
    for env in order:
        if env in sets and counts[sets[env]] == best:
            return sets[env]
    raise AssertionError("no environment")  # pragma: no cover


def _fmt_set(values: Iterable[str | None]) -> str:
    return " | ".join(show(v) for v in sorted(values, key=lambda v: "" if v is None else v))


def _cross_environment(
    envs: Sequence[str],
    expected: Mapping[str, Mapping[str, str | None]],
    actuals: Mapping[str, Mapping[str, Mapping[str, str | None]]],
    may_differ: Sequence[str],
) -> list[Check]:
    live = [e for e in envs if actuals.get(e)]
    if len(live) < 2:
        return []
    out: list[Check] = []
    components: set[str] = set()
    for env in live:
        components.update(expected.get(env) or {})
        for act in actuals[env].values():
            components.update(act)
    for comp in sort_components(components):
        if comp == REACHABLE or may_differ_matches(comp, may_differ):
            continue
        pinned = any(comp in (expected.get(e) or {}) for e in live)
        sets: dict[str, frozenset[str | None]] = {}
        for env in live:
            if pinned:
                exp = expected.get(env) or {}
                sets[env] = frozenset([exp.get(comp, "(not pinned)")])
            else:
                sets[env] = frozenset(a.get(comp) for a in actuals[env].values())
        if len(set(sets.values())) <= 1:
            continue
        ref = _reference(sets, live)
        ref_envs = [e for e in live if sets[e] == ref]
        expected_text = f"{_fmt_set(ref)} (as in {', '.join(ref_envs)})"
        for env in live:
            if sets[env] == ref:
                continue
            if pinned:  # the locks differ: one finding for the environment ("*": all its nodes)
                out.append(Check(env, "*", comp, expected_text, _fmt_set(sets[env]),
                                 Status.DEVIATION, Kind.CROSS,
                                 f"the {env} lock differs from {', '.join(ref_envs)}"))
                continue
            flagged = False
            for node, act in sorted(actuals[env].items()):
                value = act.get(comp)
                if value not in ref:
                    flagged = True
                    several = sets[env] != frozenset([value])
                    detail = f"{env} has {_fmt_set(sets[env])}" if several else ""
                    out.append(Check(env, node, comp, expected_text, value, Status.DEVIATION,
                                     Kind.CROSS, detail))
            if not flagged:
                out.append(Check(env, "*", comp, expected_text, _fmt_set(sets[env]),
                                 Status.DEVIATION, Kind.CROSS,
                                 f"{env} lacks {_fmt_set(ref - sets[env])}"))
    return out


def facts_by_env_from_hostvars(
    groups: Mapping[str, Sequence[str]],
    environments: Sequence[str],
    host_facts: Mapping[str, Any],
) -> dict[str, dict[str, Any]]:
    """env -> host -> facts (or Unreachable) from Ansible-style `groups` and per-host facts."""
    out: dict[str, dict[str, Any]] = {}
    for env in environments:
        out[env] = {h: host_facts.get(h) for h in groups.get(env, [])}
    return out
