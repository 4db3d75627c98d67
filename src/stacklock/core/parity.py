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
counts as matching; an environment without nodes is unreachable too. A component whose probe
could not look (permission denied, a timeout, TorchServe refusing the key, a probe crash: the
facts' `blocked` sections) is `could-not-look`, never a deviation: exit 1 only for a value that
was read and differs, exit 3 for everything that means "could not look".

Where the lock pins it, a single environment is checked as strictly as several: a GPU visible
and the pinned driver loaded (NVML, nvidia-smi or /proc, not the package) when the environment
has GPUs, Docker and TorchServe active, and every pinned model registered with all its workers
ready. A model with a smoke test (`models[].smoke`) must give the locked answer to the locked
input (`model.NAME.smoke`: the response's sha256, or its numbers within the tolerance).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from stacklock.core import container, integrity, runtime
from stacklock.core import endpoint as endpoint_client
from stacklock.core import waivers as waiverlib
from stacklock.core.values import text as _s
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
    "container.",
    "nvidia_container_toolkit.",
    "java.",
    "python.",
    "torch.",
    "torchserve.",
    "torch-model-archiver.",
    "pip.",
    "venv.",
    "model_store.",
    "archive.",
    "model.",
    "service.",
    "endpoint.",
    "package.",
    "hold.",
    "apt_pin.",
    "apt_blacklist.",
    "apt.",
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
    ("venv.", ("torchserve_venv",)),
    ("torchserve.config_sha256", ("torchserve.config",)),
    ("torchserve.", ("torchserve", "torchserve_venv")),
    ("model_store.", ("torchserve.model_store",)),
    ("archive.", ("torchserve.model_store",)),
    ("model.", ("torchserve",)),
    ("service.torchserve", ("services.torchserve", "services")),
    ("service.docker", ("services.docker", "services")),
    ("package.", ("packages",)),
    ("hold.", ("packages",)),
    ("apt_pin.", ("apt_protection",)),
    ("apt_blacklist.", ("apt_protection",)),
    ("apt.unpinned", ("packages",)),
    ("endpoint.", ("endpoint",)),
    # the runtime class (core/runtime.py)
    ("unit.", ("units",)),
    ("process.", ("processes", "units")),
    ("systemd.environment.", ("units",)),
    ("docker.runtime.", ("docker",)),
    ("command.", ("commands", "units")),
    ("nvidia_driver.param.", ("nvidia_driver",)),
    # the container class (core/container.py)
    ("container.", ("container",)),
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
    "serving_endpoint_packages",  # the serving endpoint's nginx (role serving_endpoint)
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
    "nvidia_driver_require_gpu",
    "nvidia_driver_kernel_module",
    "stacklock_os_distribution",
    "stacklock_os_release",
    *APT_PIN_VARS,
    *runtime.GROUP_VAR_KEYS,
    "stacklock_files",  # the files class (core/integrity.py), set on the controller
    "serving_endpoint_enabled",  # the serving endpoint answers (role serving_endpoint)
    "serving_container",  # container mode (core/container.py; serving_runtime: runtime's)
)


class Status(StrEnum):
    MATCH = "match"
    DEVIATION = "deviation"
    UNREACHABLE = "unreachable"
    #: the node answered, but this value could not be read (permission, timeout, auth, crash)
    UNVERIFIED = "could-not-look"
    #: a deviation a waiver in force accepts (parity.waivers; core/waivers.py)
    WAIVED = "waived"


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
        if self.status is Status.UNVERIFIED:
            return f"{where} {self.component}: {self.detail or 'could not look'}"
        text = (
            f"{where} {self.component}: expected {show(self.expected)}, "
            f"actual {show(self.actual)}"
        )
        if self.kind is Kind.CROSS:
            text += " (differs between environments)"
        if self.detail:
            text += f" [{self.detail}]"
        return text

    def next_step(self) -> str:
        """What to do about this finding (deviations)."""
        env = self.environment
        if self.kind is Kind.CROSS and self.node == "*":
            return (f"the {env} lock differs: promote the same stack revision to {env} "
                    f"(stacklock lock && stacklock render && stacklock provision {env}), or "
                    f"list {self.component} in parity.may_differ if it may differ")
        if self.kind is Kind.CROSS:
            return (f"make {self.node} like the others, or list {self.component} in "
                    "parity.may_differ if it may differ")
        return (f"stacklock configure {env} puts the lock back on {self.node}; if the node is "
                "right and the lock is wrong, change the manifest and run stacklock lock")

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
    #: the waivers in force for this run (parity.waivers), in their plain form
    waivers: tuple[Mapping[str, Any], ...] = ()

    @property
    def waived(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status is Status.WAIVED)

    @property
    def deviations(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status is Status.DEVIATION)

    @property
    def unreachable(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status is Status.UNREACHABLE)

    @property
    def unverified(self) -> tuple[Check, ...]:
        """Checks whose value could not be read on a reachable node."""
        return tuple(c for c in self.checks if c.status is Status.UNVERIFIED)

    @property
    def unreachable_nodes(self) -> tuple[NodeResult, ...]:
        return tuple(n for n in self.nodes if not n.reachable)

    @property
    def exit_code(self) -> ExitCode:
        """3 if any node is unreachable, any value could not be read, or there is no node at
        all; else 1 on any deviation."""
        if (not self.nodes or not self.checks or self.unreachable or self.unreachable_nodes
                or self.unverified):
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
            + (f", {len(self.unverified)} value(s) that could not be read"
               if self.unverified else "")
            + (f", {len(self.waived)} waived" if self.waived else "")
        )

    def problems(self) -> list[str]:
        """One line per deviation, one per unreachable node (or empty environment), each
        saying what to do next."""
        lines = [_with_next(f"{n.environment}/{n.node} unreachable: {n.error or 'no facts'}",
                            _next_unreachable(n.environment))
                 for n in self.unreachable_nodes]
        known = {(n.environment, n.node) for n in self.unreachable_nodes}
        for c in self.unreachable:
            if (c.environment, c.node) not in known:
                known.add((c.environment, c.node))
                lines.append(_with_next(c.describe(), _next_unreachable(c.environment)))
        lines += [c.describe() for c in self.unverified]  # the detail says what to do
        lines += [_with_next(c.describe(), c.next_step()) for c in self.deviations]
        lines += [f"WAIVED {c.describe()}" for c in self.waived]
        if not self.nodes and not lines:
            lines.append("no nodes were verified")
        return lines


def _with_next(line: str, step: str) -> str:
    return line if ("stacklock trust" in line or not step) else f"{line} -- next: {step}"


def _next_unreachable(env: str) -> str:
    if env and env != "*":
        return (f"check that the host is up and answers SSH as its inventory user "
                f"(inventories/{env}/hosts.yml), then run stacklock verify {env} again")
    return "check the inventory and the hosts, then run verify again"


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
    if gv.get("nvidia_driver_require_gpu") and gv.get("nvidia_driver_version"):
        # the driver that runs, not the package: no GPU, not loaded, or another loaded version
        # (a kernel update that broke the DKMS module, a reboot pending) are deviations
        exp["gpu.present"] = "true"
        exp["nvidia_driver.loaded"] = _s(gv["nvidia_driver_version"])
        # an installed kernel the driver module was not built for boots without a driver
        exp["nvidia_driver.kernels_without_module"] = "none"
        module = gv.get("nvidia_driver_kernel_module")
        if module in ("open", "proprietary"):
            exp["nvidia_driver.kernel_module"] = str(module)
    put("cuda.version", "cuda_version", lambda v: _major_minor(str(v)) or str(v))
    put("docker.version", "docker_version")
    if gv.get("docker_version"):
        exp["service.docker"] = "active"
    put("nvidia_container_toolkit.version", "nvidia_container_toolkit_version")
    put("java.version", "torchserve_java_version")
    put("python.version", "torchserve_python_version")
    for pin in gv.get("torchserve_pip_packages") or []:
        name = str(pin["name"])
        exp[_PIP_NAMED.get(name, f"pip.{name}")] = _s(pin["version"])
    put("torch.version", "torchserve_torch_version")
    if any(pin.get("sha256") for pin in gv.get("torchserve_pip_packages") or []):
        # the lock holds the whole closure: nothing else may be in the serving venv
        exp["venv.unlocked"] = "none"
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
            exp[f"model.{m['name']}.ready"] = "true"
            if isinstance(m.get("smoke"), Mapping):
                exp[f"model.{m['name']}.smoke"] = smoke_expectation(m["smoke"])
    for var in APT_PIN_VARS:
        for pin in gv.get(var) or []:
            exp[f"package.{pin['name']}"] = _s(pin["version"])
            exp[f"hold.{pin['name']}"] = "held"
            # the files that protect the pin: apt preferences and the unattended-upgrades
            # blacklist the roles write (removed or edited: a deviation naming the file)
            exp[f"apt_pin.{pin['name']}"] = _s(pin["version"])
            exp[f"apt_blacklist.{pin['name']}"] = "listed"
    if apt_family_globs(gv):
        # the lock holds these sets whole: no other package of their families may be installed
        exp["apt.unpinned"] = "none"
    if "stacklock_os_distribution" in gv:
        put("os.distribution", "stacklock_os_distribution")
        put("os.release", "stacklock_os_release")
    if gv.get("serving_endpoint_enabled"):
        # the serving endpoint (role serving_endpoint): nginx answers the health check (from
        # TorchServe's /ping) and refuses a prediction without a client token
        exp["endpoint.health"] = "200"
        exp["endpoint.without_token"] = "401"
    exp.update(runtime.expected_from_vars(gv))  # the runtime class
    exp.update(integrity.expected_components(gv.get("stacklock_files")))  # the files class
    if container.spec_of(gv) is not None:
        # container mode: the serving venv, TorchServe's config, its model store and its unit
        # are in the image (pinned by its digest) and the container, not on the host; so is
        # Java, at the lock's pin: the host needs none, and one left installed and held by
        # host mode is neither required nor a deviation (its pin files: the files class)
        java = host_java_packages(gv)
        exp = {c: v for c, v in exp.items() if not c.startswith(HOST_SERVING)
               and not (c.startswith(PIN_PREFIXES) and c.split(".", 1)[1] in java)}
        exp.update(container.expected_from_vars(gv))  # the container class
    return exp


#: the components of host-mode serving that container mode replaces with the container class
HOST_SERVING = ("pip.", "torch.", "torchserve.version", "torch-model-archiver.", "python.",
                "venv.", "java.", "torchserve.config_sha256", "model_store.", "archive.",
                "service.torchserve")

#: the components of one apt pin (`package.NAME`, `hold.NAME`, `apt_pin.NAME`,
#: `apt_blacklist.NAME`)
PIN_PREFIXES = ("package.", "hold.", "apt_pin.", "apt_blacklist.")

#: what the host still reports of host-mode serving in container mode: the torchserve unit's
#: commands (the runtime class's `java=torchserve`, `python=torchserve`), besides HOST_SERVING
_HOST_SERVING_COMMANDS = ("command.java.", "command.python.")


def host_java_packages(gv: Mapping[str, Any]) -> frozenset[str]:
    """The apt packages only the torchserve role pins on the host (Java:
    torchserve_java_packages, less any name another role's list pins too). In container mode
    they are in the image, not expected on the host."""
    java = {str(p["name"]) for p in gv.get("torchserve_java_packages") or []}
    others = {str(p["name"]) for var in APT_PIN_VARS if var != "torchserve_java_packages"
              for p in gv.get(var) or []}
    return frozenset(java - others)


def container_mode(exp: Mapping[str, str | None]) -> bool:
    """An environment's expectation is of container mode (it has the container class)."""
    return any(c.startswith(container.PREFIX) for c in exp)


def host_mode_leftover(component: str, exp: Mapping[str, str | None]) -> bool:
    """In a container-mode expectation `exp` (`container_mode`), a component of host-mode
    serving the node may still report (a venv, Java installed and held, kept from host mode
    for a quick way back; none on a node that never was in host mode): not expected, and not
    compared across nodes or environments either, so that nodes with and without such
    leftovers agree."""
    return component not in exp and component.startswith(
        (*HOST_SERVING, *_HOST_SERVING_COMMANDS, *PIN_PREFIXES))


# --------------------------------------------------------------------------- smoke tests

_WITHIN = " within "


def _numbers_text(numbers: Sequence[Any]) -> str:
    return json.dumps([float(n) for n in numbers])


def smoke_expectation(smoke: Mapping[str, Any]) -> str:
    """`sha256:HEX` (of the whole response body), or `[3.0, 5.0, 7.0] within 1e-06`."""
    if smoke.get("sha256"):
        return f"sha256:{smoke['sha256']}"
    raw = smoke.get("tolerance")
    tolerance = float(raw) if raw is not None else 1e-6
    return _numbers_text(smoke.get("expected") or []) + _WITHIN + repr(tolerance)


def smoke_actual(entry: Any, check: str | None = None) -> str | None:
    """What the model answered, in the form of its expectation (`check`: sha256 | numbers):
    `sha256:HEX`, `[3.0, 5.0, 7.0]`, `HTTP 503: ...`, `not numbers: ...`; None when it was not
    asked (the facts' error says why)."""
    if not isinstance(entry, Mapping) or entry.get("error") or entry.get("status") is None:
        return None
    excerpt = str(entry.get("excerpt") or "")
    if entry.get("status") != 200:
        return f"HTTP {entry['status']}: {excerpt}".rstrip(": ")
    check = check or entry.get("check")
    if check == "sha256":
        return f"sha256:{entry.get('sha256')}"
    numbers = entry.get("numbers")
    if not isinstance(numbers, list):
        return f"not numbers: {excerpt}"
    return _numbers_text(numbers)


def smoke_matches(want: str | None, got: str | None) -> bool:
    """`got` meets `want`: the same sha256, or as many numbers, each within the tolerance."""
    if want is None or got is None or _WITHIN not in want:
        return want == got
    numbers, _, tolerance = want.rpartition(_WITHIN)
    try:
        expected, actual, tol = json.loads(numbers), json.loads(got), float(tolerance)
    except ValueError:
        return False
    if not (isinstance(expected, list) and isinstance(actual, list)
            and len(expected) == len(actual)):
        return False
    return all(isinstance(a, int | float) and not isinstance(a, bool) and math.isfinite(a)
               and abs(float(a) - float(e)) <= tol for a, e in zip(actual, expected, strict=True))


def _smoke_model(component: str) -> str | None:
    """`model.NAME.smoke` -> NAME (model names carry no dots)."""
    m = re.fullmatch(r"model\.([^.]+)\.smoke", component)
    return m.group(1) if m else None


def apt_package_names(group_vars: Mapping[str, Any]) -> list[str]:
    """The apt packages the facts module must report (for its `packages` option)."""
    names = {str(p["name"]) for var in APT_PIN_VARS for p in group_vars.get(var) or []}
    return sorted(names)


def apt_family_globs(group_vars: Mapping[str, Any]) -> list[str]:
    """The package-family globs of the sets the lock holds whole (`package_families` option)."""
    families = group_vars.get("stacklock_apt_families") or []
    return sorted({str(g) for f in families if isinstance(f, Mapping)
                   for g in f.get("globs") or []})


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
    act["nvidia_driver.loaded"] = _s(_get(facts, "nvidia_driver", "running_version")) or (
        "not loaded")
    missing = _get(facts, "nvidia_driver", "kernels_without_module")
    act["nvidia_driver.kernels_without_module"] = (
        ",".join(str(k) for k in missing) or "none") if isinstance(missing, list) else None
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
    # the build torch reports (torch/version.py: 2.11.0+cu130), not the distribution's
    # metadata version (PyPI's builds carry no local label there)
    if _get(torch, "version") is not None:
        act["torch.version"] = _s(_get(torch, "version"))
    unlocked = _get(venv, "unlocked")
    if isinstance(unlocked, Mapping):
        act["venv.unlocked"] = ", ".join(f"{n}=={v}" for n, v in sorted(unlocked.items())) or (
            "none")
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
            act[f"model.{name}.ready"] = _ready(desc)
    smoke = _get(ts, "smoke")
    if isinstance(smoke, Mapping):
        for name, entry in smoke.items():
            act[f"model.{name}.smoke"] = smoke_actual(entry)
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
    protection = _get(facts, "apt_protection")
    if isinstance(protection, Mapping) and not protection.get("error"):
        pins = protection.get("pins") or {}
        listed = protection.get("blacklisted") or {}
        for name in _get(facts, "packages") or {}:
            pin = pins.get(name)
            if not isinstance(pin, Mapping):
                act[f"apt_pin.{name}"] = "not pinned"
            elif not isinstance(pin.get("priority"), int) or pin["priority"] < APT_PIN_PRIORITY:
                act[f"apt_pin.{name}"] = (f"{pin.get('version')} at priority "
                                          f"{pin.get('priority')} (below {APT_PIN_PRIORITY}: "
                                          "a newer version would win)")
            else:
                act[f"apt_pin.{name}"] = _s(pin.get("version"))
            act[f"apt_blacklist.{name}"] = "listed" if name in listed else "not listed"
    packages = _get(facts, "packages") or {}
    family = _get(facts, "family_packages")
    if isinstance(family, Mapping) and isinstance(packages, Mapping):
        # installed members of the pinned families that no set of the lock pins
        extra = sorted((str(n), _s(_get(e, "version"))) for n, e in family.items()
                       if n not in packages)
        act["apt.unpinned"] = ", ".join(f"{n}={v}" for n, v in extra) or "none"
    if isinstance(packages, Mapping):
        for name, entry in packages.items():
            act[f"package.{name}"] = _s(_get(entry, "version"))
            held = _get(entry, "held")
            act[f"hold.{name}"] = None if held is None else ("held" if held else "not held")
    endpoint = _get(facts, "endpoint")
    if isinstance(endpoint, Mapping) and not endpoint.get("error"):
        for key in ("health", "without_token"):
            act[f"endpoint.{key}"] = _s(endpoint.get(key))
    act.update(runtime.actual_values(facts))  # the runtime class
    act.update(container.actual_values(facts))  # the container class
    return act


#: the lowest apt preferences priority that keeps a pinned version against a newer one
APT_PIN_PRIORITY = 1000
_PREFERENCES = "/etc/apt/preferences.d/stacklock-*.pref"
_BLACKLIST = "/etc/apt/apt.conf.d/51stacklock-*-unattended-upgrades"


def _protection_detail(component: str, facts: Mapping[str, Any]) -> str:
    """Which file protects (or should protect) the pin of an `apt_pin.`/`apt_blacklist.` check."""
    protection = _get(facts, "apt_protection") or {}
    name = component.split(".", 1)[1] if "." in component else component
    if component.startswith("apt_pin."):
        pin = (protection.get("pins") or {}).get(name) if isinstance(protection, Mapping) else None
        if isinstance(pin, Mapping) and pin.get("file"):
            return f"pinned in {pin['file']} (edited?); stacklock configure writes it again"
        return (f"no {_PREFERENCES} pins {name} (removed or edited): apt may install another "
                "version; stacklock configure writes it again")
    if component.startswith("apt_blacklist."):
        return (f"no {_BLACKLIST} lists {name} (removed or edited): unattended-upgrades may "
                "upgrade it; stacklock configure writes it again")
    if component == "apt.unpinned":
        return ("installed packages of a pinned set's family that the lock does not pin "
                "(configure does not remove them): purge them on the node (apt-get purge NAME), "
                "or make them part of the stack and lock again (lock --apt-index)")
    return ""


def _ready(desc: Any) -> str:
    """`true` when a model has workers and every one is READY, else `N/M workers ready`."""
    workers = _get(desc, "workers")
    ready = _get(desc, "workers_ready")
    if not isinstance(workers, int) or not isinstance(ready, int):
        return "unknown"
    if workers > 0 and ready == workers:
        return "true"
    return f"{ready}/{workers} workers ready"


def _error_for(component: str, errors: Mapping[str, Any]) -> str:
    if not errors:
        return ""
    model = _smoke_model(component)
    if model is not None:  # the smoke test's own error, not the management API's
        for key in (f"torchserve.smoke.{model}", "torchserve.smoke"):
            if errors.get(key):
                return f"{key}: {errors[key]}"
        return ""
    for prefix, keys in _ERROR_SOURCES:
        if component.startswith(prefix):
            for key in keys:
                if errors.get(key):
                    return f"{key}: {errors[key]}"
            return ""
    return ""


def _reason_unqueried(facts: Any, run_id: str | None = None) -> str | None:
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
    if run_id is not None and str(facts.get("run_id")) != run_id:
        return (f"stale facts: gathered by another run ({facts.get('run_id') or 'no run id'}, "
                f"this run is {run_id}), e.g. from a fact cache; the node was not queried now: "
                "check that it is reachable and that the facts task ran")
    return None


# --------------------------------------------------------------------------- comparison


def compare(
    expected: Mapping[str, Mapping[str, str | None]],
    facts: Mapping[str, Mapping[str, Any]],
    may_differ: Sequence[str] = (),
    run_id: str | None = None,
    waivers: Sequence[Mapping[str, Any]] | None = None,
    today: _dt.date | None = None,
) -> ParityReport:
    """Compare every node with its environment's expectation, and environments with each other.

    `expected`: environment -> component -> value (`expected_from_vars`).
    `facts`: environment -> node -> facts dict, or None / `Unreachable` / {"unreachable": true}.
    `run_id`: when given, facts that do not carry it are stale (not gathered by this run).
    `waivers`: parity.waivers (core/waivers.py) -- a deviation one in force names is WAIVED;
    one past its expiry (`today`: the date it is checked on) is a deviation of its own.
    Environment order: `expected` first, then environments only in `facts`.
    """
    envs = list(expected) + [e for e in facts if e not in expected]
    nodes: list[NodeResult] = []
    checks: list[Check] = []
    actuals: dict[str, dict[str, dict[str, str | None]]] = {}
    #: what the cross-environment comparison may use: values that were really read
    readable: dict[str, dict[str, dict[str, str | None]]] = {}

    for env in envs:
        exp = dict(expected.get(env) or {})
        cmode = container_mode(exp)  # host-mode leftovers are not compared (container mode)
        env_facts = facts.get(env) or {}
        actuals[env] = {}
        readable[env] = {}
        if not env_facts:
            checks.append(Check(env, "(none)", REACHABLE, "at least one node", "no nodes",
                                Status.UNREACHABLE, Kind.NODE,
                                "the environment has no nodes in the inventory"))
            continue
        for node in sorted(env_facts):
            node_facts = env_facts[node]
            reason = _reason_unqueried(node_facts, run_id)
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
            blocked = node_facts.get("blocked") or {}
            readable[env][node] = {c: v for c, v in act.items() if not _error_for(c, blocked)
                                   and not (cmode and host_mode_leftover(c, exp))}
            node_exp = runtime.node_expected(exp, act, "units" in node_facts)  # runtime class
            node_exp = container.node_expected(node_exp, act)  # the container class
            for comp in sort_components(node_exp):
                if comp.startswith(integrity.PREFIX):
                    continue  # the files class, below
                want, got = node_exp[comp], act.get(comp)
                ok = smoke_matches(want, got) if _smoke_model(comp) else want == got
                status = Status.MATCH if ok else Status.DEVIATION
                detail = "" if ok else (_protection_detail(comp, node_facts)
                                        or _error_for(comp, errors)
                                        or runtime.detail(comp, act)
                                        or container.detail(comp, act))
                if not ok and (cause := _error_for(comp, blocked)):
                    status, detail = Status.UNVERIFIED, cause + _HINT
                elif not ok and comp not in act and _smoke_model(comp):
                    status, detail = Status.UNVERIFIED, _NOT_ASKED
                checks.append(Check(env, node, comp, want, got, status, Kind.LOCK, detail))
            checks += [Check(env, node, f.component, f.expected, f.actual, Status(f.status),
                             Kind.LOCK, f.detail)
                       for f in integrity.findings(node_exp, node_facts)]  # the files class
            # the serving endpoint as a client sees it, from the controller (core/endpoint.py)
            checks += [Check(env, node, f.component, f.expected, f.actual, Status(f.status),
                             Kind.LOCK, f.detail)
                       for f in endpoint_client.findings(node_exp, node_facts)]

    checks += _cross_environment(envs, expected, readable, may_differ)
    checks, in_force = _apply_waivers(checks, waivers, today or _dt.date.today())
    return ParityReport(
        environments=tuple(envs),
        nodes=tuple(nodes),
        checks=tuple(checks),
        may_differ=tuple(may_differ),
        expected={e: dict(expected.get(e) or {}) for e in envs},
        observed=actuals,
        waivers=tuple(w.as_dict() for w in in_force),
    )


def _apply_waivers(checks: list[Check], entries: Sequence[Mapping[str, Any]] | None,
                   today: _dt.date) -> tuple[list[Check], list[waiverlib.Waiver]]:
    """Deviations a waiver in force names become WAIVED; an expired waiver waives nothing
    and is a deviation naming it (exit 1)."""
    parsed = waiverlib.parse(entries)
    if not parsed:
        return checks, []
    live = waiverlib.in_force(parsed, today)
    out = []
    for c in checks:
        w = waiverlib.find(live, c.environment, c.node, c.component) \
            if c.status is Status.DEVIATION else None
        if w is not None:
            c = Check(c.environment, c.node, c.component, c.expected, c.actual, Status.WAIVED,
                      c.kind, f"waived until {w.expires.isoformat()}: {w.reason}")
        out.append(c)
    for w in waiverlib.expired(parsed, today):
        out.append(Check(w.environment or "*", w.node or "*", f"waiver.{w.item}",
                         f"in force (until {w.expires.isoformat()})",
                         f"expired on {w.expires.isoformat()}", Status.DEVIATION, Kind.NODE,
                         waiverlib.describe_expired(w)))
    return out, live


#: a smoke test the facts did not run (the module was not given it): nothing was asked
_NOT_ASKED = ("the facts module did not run this smoke test: it was not given one (the verify "
              "play passes the models' smoke tests as `smoke`; an older play or module?)")

#: what to do about a value that could not be read
_HINT = (" -- run verify again; if it persists, check the facts task's privilege escalation "
         "(stacklock_verify_become), the probe timeout (stacklock_verify_probe_timeout) and the "
         "service on the node")


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
    if len(live) == 1:
        return _within_environment(live[0], expected, actuals, may_differ)
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
                sets[env] = frozenset(a.get(comp) for a in actuals[env].values() if comp in a)
                if not sets[env]:  # no node of this environment could read it
                    del sets[env]
                    continue
        if len(set(sets.values())) <= 1:
            continue
        live_here = [e for e in live if e in sets]
        ref = _reference(sets, live_here)
        ref_envs = [e for e in live_here if sets[e] == ref]
        expected_text = f"{_fmt_set(ref)} (as in {', '.join(ref_envs)})"
        for env in live_here:
            if sets[env] == ref:
                continue
            if pinned:  # the locks differ: one finding for the environment ("*": all its nodes)
                out.append(Check(env, "*", comp, expected_text, _fmt_set(sets[env]),
                                 Status.DEVIATION, Kind.CROSS,
                                 f"the {env} lock differs from {', '.join(ref_envs)}"))
                continue
            flagged = False
            for node, act in sorted(actuals[env].items()):
                if comp not in act:
                    continue
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


def _within_environment(
    env: str,
    expected: Mapping[str, Mapping[str, str | None]],
    actuals: Mapping[str, Mapping[str, Mapping[str, str | None]]],
    may_differ: Sequence[str],
) -> list[Check]:
    """With one environment, its nodes must agree on what no lock pins (kernel, GPU model,
    default runtime, ...), as environments must agree with each other when there are several:
    a single-environment verify is as strict as a multi-environment one."""
    nodes = actuals[env]
    if len(nodes) < 2:
        return []
    pinned = set(expected.get(env) or {})
    out: list[Check] = []
    components = sorted({c for act in nodes.values() for c in act} - pinned - {REACHABLE})
    for comp in sort_components(components):
        if may_differ_matches(comp, may_differ):
            continue
        values = {n: act[comp] for n, act in nodes.items() if comp in act}
        counts: dict[str | None, int] = {}
        for v in values.values():
            counts[v] = counts.get(v, 0) + 1
        if len(counts) <= 1:
            continue
        best = max(counts.values())
        ref = next(v for n, v in sorted(values.items()) if counts[v] == best)
        for node, value in sorted(values.items()):
            if value != ref:
                out.append(Check(env, node, comp, f"{show(ref)} (as on the other {env} nodes)",
                                 value, Status.DEVIATION, Kind.CROSS,
                                 f"differs between the nodes of {env}"))
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
