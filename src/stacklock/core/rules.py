"""Compatibility rules: the checks `stacklock validate` runs after the schema.

`check(manifest)` is pure: it reads only the packaged data file `data/compatibility.yaml`
(every fact there names its source) and returns every finding as a `Problem`, errors and
warnings together, in a stable order (stacks, then environments, in manifest order).

Rule ids (the `rule` of each Problem):

======================== ======== ==========================================================
rule                     severity what it checks
======================== ======== ==========================================================
cuda-known               error    the stack's CUDA major.minor is in the table
cuda-min-driver          error    the driver is at least the CUDA release's minimum driver
torch-cuda-major         error    a CUDA torch build has the stack's CUDA major
torch-cuda-minor         warning  ... and its minor (a different minor runs, but is not the pin)
torch-build-published    error    PyTorch published that release for that CUDA variant
torch-release-known      warning  the torch release is in the table (else: cannot check)
torch-driver             error    the driver supports the torch build's CUDA
toolkit-cve              error    nvidia-container-toolkit is at or past every CVE fix
driver-branch-eol        warning  the driver branch is still supported `today`
torchserve-java          error    TorchServe >= 0.7.0 needs Java 17
apt-version-matches      error    an `apt_version` installs the release its `version` names
java-package             error    java.package and java.apt_version are of java.version's major
torchserve-tested-torch  warning  torch is the release TorchServe was tested with
torchserve-token-auth    error    token_authorization is on
torchserve-loopback      error    management and metrics APIs listen on loopback only
torchserve-plain-http    error    the inference API stays on loopback unless the stack opts out
                                  (allow_plain_http_inference): clients call the endpoint
torchserve-model-api     warning  enable_model_api is off
torchserve-allowed-urls  error    allowed_urls are valid regexes and not catch-alls
aws-instance-family      error    an AWS instance type's family is a known GPU family
gpu-driver-branch        error    the driver branch supports the GPU architecture
gpu-kernel-module        error    open/proprietary kernel modules fit the GPU
gpu-cuda                 error    the CUDA version supports the GPU architecture
gpu-torch-build          error    the torch CUDA build carries kernels for the GPU
endpoint-upstream        error    an environment's endpoint proxies to TorchServe on loopback
endpoint-parity          warning  every environment has the same endpoint (present, port)
======================== ======== ==========================================================

GPU rules apply only where the GPU is known: AWS environments (from the instance type).
Static and lab hosts declare no GPU, so only the stack-level rules apply to them.

Every rule reads the release that is really installed: where a component's `apt_version`
installs another release than its `version` (`apt-version-matches` says so), the rules run
again on the installed release and report at `...apt_version` (a CVE-listed toolkit or another
driver branch cannot slip in through `apt_version`).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from stacklock.core.grammar import debian_upstream
from stacklock.core.schema import AwsEnvironment, Environment, Manifest, Stack
from stacklock.core.suggest import closest
from stacklock.errors import Problem

ERROR = "error"
WARNING = "warning"


def _vt(version: str) -> tuple[int, ...]:
    """`580.95.05` -> (580, 95, 5): versions compare as integer tuples."""
    return tuple(int(x) for x in re.findall(r"\d+", version))


def _mm(version: str) -> str:
    """`13.0.2` -> `13.0`."""
    return ".".join(version.split(".")[:2])


# --------------------------------------------------------------------------- the data


@dataclass(frozen=True)
class Fact:
    """One row of the data file: its values, where it comes from, and whether it is certain."""

    values: dict[str, Any]
    source: str
    uncertain: bool = False

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)


class Compatibility:
    """The parsed `data/compatibility.yaml`, with look-ups the rules use."""

    SCHEMA = "stacklock.compatibility/v1"

    def __init__(self, raw: dict[str, Any]) -> None:
        if raw.get("schema") != self.SCHEMA:
            raise ValueError(f"compatibility data: schema must be {self.SCHEMA}")
        self.raw = raw
        self.sources: dict[str, dict[str, str]] = raw["sources"]
        self.cuda_min_driver = {str(r["cuda"]): self._fact(r) for r in raw["cuda_min_driver"]}
        self.cuda_floor = {
            int(r["cuda_major"]): self._fact(r) for r in raw["cuda_minor_version_floor"]
        }
        self.torch_builds = {str(r["torch"]): self._fact(r) for r in raw["torch_cuda_builds"]}
        self.torch_archs = [self._fact(r) for r in raw["torch_build_archs"]]
        ts = raw["torchserve"]
        self.ts_java = [self._fact(r) for r in ts["min_java_since"]]
        self.ts_tested = {str(r["series"]): self._fact(r) for r in ts["tested_torch"]}
        self.ts_probes: list[str] = list(ts["allowed_urls_probes"]["urls"])
        self.ts_probe_fact = self._fact(ts["allowed_urls_probes"])
        self.toolkit_cves = [self._fact(r) for r in raw["container_toolkit_cves"]]
        self.branches = {int(r["branch"]): self._fact(r) for r in raw["driver_branches"]}
        self.archs = {str(k): self._fact(v) for k, v in raw["architectures"].items()}
        self.gpus = {str(k): self._fact(v) for k, v in raw["gpus"].items()}
        self.families = {str(k): self._fact(v) for k, v in raw["ec2_families"].items()}
        for fam, fact in self.families.items():
            if fact["gpu"] not in self.gpus:
                raise ValueError(f"compatibility data: family {fam} names unknown GPU")
        for gpu, fact in self.gpus.items():
            if fact["arch"] not in self.archs:
                raise ValueError(f"compatibility data: GPU {gpu} names unknown architecture")

    def _fact(self, row: dict[str, Any]) -> Fact:
        key = str(row["source"])
        if key not in self.sources:
            raise ValueError(f"compatibility data: unknown source {key!r}")
        values = {k: v for k, v in row.items() if k not in ("source", "uncertain")}
        return Fact(values, self.cite(key), bool(row.get("uncertain", False)))

    def cite(self, key: str) -> str:
        src = self.sources[key]
        return f"{src['title']} <{src['url']}>"

    def torch_arch_range(self, cuda: str) -> Fact | None:
        v = _vt(cuda)
        for fact in self.torch_archs:
            lo = _vt(str(fact["cuda_from"]))
            hi = fact["cuda_to"]
            if v >= lo and (hi is None or v <= _vt(str(hi))):
                return fact
        return None

    def family_of(self, instance_type: str) -> str:
        return instance_type.split(".", 1)[0]


@lru_cache(maxsize=1)
def load_compatibility() -> Compatibility:
    """Read the packaged data file once."""
    text = resources.files("stacklock").joinpath("data/compatibility.yaml").read_text("utf-8")
    return Compatibility(yaml.safe_load(text))


# --------------------------------------------------------------------------- the rules


class _Findings:
    def __init__(self) -> None:
        self.items: list[Problem] = []

    def add(
        self,
        severity: str,
        rule: str,
        path: str,
        message: str,
        hint: str,
        *facts: Fact,
        cite: str = "",
    ) -> None:
        cites = sorted({f.source for f in facts} | ({cite} if cite else set()))
        source = "; ".join(cites)
        if any(f.uncertain for f in facts):
            source += " (uncertain: single or secondary source)"
        self.items.append(
            Problem(path=path, message=message, hint=hint, severity=severity, rule=rule,
                    source=source)
        )


def check(
    manifest: Manifest, *, today: date | None = None, data: Compatibility | None = None
) -> list[Problem]:
    """Every compatibility error and warning of the manifest (empty: all clear)."""
    data = data or load_compatibility()
    today = today or date.today()
    return (_check_parts(dict(manifest.stacks), dict(manifest.environments), data, today)
            + _expired_waivers(manifest, today))


def _expired_waivers(manifest: Manifest, today: date) -> list[Problem]:
    """A warning for each waiver past its expiry (verify fails on it: exit 1)."""
    return [Problem(path=f"parity.waivers[{i}].expires",
                    message=f"the waiver of {w.item} expired on {w.expires.isoformat()}",
                    hint="fix the deviation, or renew the waiver with a new expiry date",
                    severity="warning", rule="waiver-expired")
            for i, w in enumerate(manifest.parity.waivers) if w.expires < today]


def check_raw(raw: dict[str, Any], *, today: date | None = None,
              data: Compatibility | None = None) -> list[Problem]:
    """The findings for the stacks and environments of a raw manifest mapping that validate on
    their own: `validate` reports them beside the schema errors of the other parts."""
    stacks: dict[str, Stack] = {}
    envs: dict[str, Any] = {}
    raw_stacks = raw.get("stacks")
    raw_envs = raw.get("environments")
    for name, body in (raw_stacks.items() if isinstance(raw_stacks, dict) else []):
        stack = _validate_part(Stack.model_validate, body)
        if stack is not None:
            stacks[str(name)] = stack
    adapter: TypeAdapter[Any] = TypeAdapter(Environment)
    for name, body in (raw_envs.items() if isinstance(raw_envs, dict) else []):
        env = _validate_part(adapter.validate_python, body)
        if env is not None:
            envs[str(name)] = env
    return _check_parts(stacks, envs, data or load_compatibility(), today or date.today())


def _validate_part(validate: Any, body: Any) -> Any:
    """One stack or environment, validated on its own; unknown keys (reported by the schema)
    set aside, so that a misspelt key does not hide a rule error beside it. A required key
    that is missing while an unknown key beside it is its near spelling (`pythn` for
    `python`) takes that key's value: the typo hides no rule error of the rest either."""
    try:
        return validate(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if not all(e["type"] in ("extra_forbidden", "missing") for e in errors):
            return None
        trimmed = copy.deepcopy(body)
        extras = [tuple(e["loc"]) for e in errors if e["type"] == "extra_forbidden"]
        for e in errors:
            if e["type"] != "missing":
                continue
            parent, key = tuple(e["loc"][:-1]), str(e["loc"][-1])
            near = closest(key, [str(x[-1]) for x in extras if x[:-1] == parent])
            node = _node(trimmed, parent)
            if near is None or not isinstance(node, dict) or near not in node:
                return None
            node[key] = node.pop(near)
            extras.remove((*parent, near))
        for loc in extras:
            node = _node(trimmed, loc[:-1])
            if isinstance(node, dict):
                node.pop(loc[-1], None)
    try:
        return validate(trimmed)
    except (ValidationError, KeyError, IndexError, TypeError):
        return None


def _node(data: Any, loc: tuple[Any, ...]) -> Any:
    """The value at a validation error's location; a union's tag in the location (`aws`),
    not a key of the input, is skipped."""
    node = data
    for key in loc:
        if (isinstance(node, dict) and key in node) or (
                isinstance(node, list) and isinstance(key, int) and key < len(node)):
            node = node[key]
    return node


_APT_COMPONENTS = ("nvidia_driver", "cuda", "docker", "nvidia_container_toolkit")


def _installed(s: Stack) -> tuple[Stack, list[str]]:
    """The stack as apt will install it (each `version` replaced by its `apt_version`'s
    release where they differ), and the components that differ."""
    update: dict[str, Any] = {}
    for comp in _APT_COMPONENTS:
        pinned = getattr(s, comp)
        if pinned.apt_version is None:
            continue
        release = debian_upstream(pinned.apt_version)
        if release != pinned.version and not release.startswith(pinned.version + "."):
            update[comp] = pinned.model_copy(update={"version": release})
    return (s.model_copy(update=update) if update else s), sorted(update)


def _check_parts(stacks: dict[str, Stack], envs: dict[str, Any], data: Compatibility,
                 today: date) -> list[Problem]:
    out = _Findings()
    for name, stack in stacks.items():
        p = f"stacks.{name}"
        _check_stack(out, data, p, stack, today)
        _apt_versions(out, data, p, stack)
        _java_package(out, data, p, stack)
        installed, differ = _installed(stack)
        if differ:
            _again(out, differ, lambda o, st=installed, pp=p: _check_stack(o, data, pp, st, today))
    _endpoints(out, stacks, envs)
    for env_name, env in envs.items():
        stack_obj = stacks.get(env.stack)
        if isinstance(env, AwsEnvironment) and stack_obj is not None:
            _check_aws(out, data, env_name, env, env.stack, stack_obj)
            installed, differ = _installed(stack_obj)
            if differ:
                _again(out, differ, lambda o, st=installed, e=env, n=env_name:
                       _check_aws(o, data, n, e, e.stack, st))
    return out.items


def _again(out: _Findings, differ: list[str], run: Any) -> None:
    """Run rules on the installed stack; keep what they add, at the apt_version paths."""
    extra = _Findings()
    run(extra)
    seen = {(p.rule, p.path, p.message) for p in out.items}
    for p in extra.items:
        path = p.path
        for comp in differ:
            if path.endswith(f".{comp}.version"):
                path = path[: -len("version")] + "apt_version"
        if (p.rule, p.path, p.message) in seen:
            continue
        out.items.append(Problem(path=path, message=f"{p.message} (as installed by apt_version)",
                                 hint=p.hint, severity=p.severity, rule=p.rule, source=p.source))


def _apt_versions(out: _Findings, data: Compatibility, p: str, s: Stack) -> None:
    for comp in _APT_COMPONENTS:
        pinned = getattr(s, comp)
        if pinned.apt_version is None:
            continue
        release = debian_upstream(pinned.apt_version)
        if release != pinned.version and not release.startswith(pinned.version + "."):
            out.add(
                ERROR, "apt-version-matches", f"{p}.{comp}.apt_version",
                f"apt_version {pinned.apt_version} installs {comp} {release}, but version "
                f"says {pinned.version}",
                f"use an apt_version of release {pinned.version} (or change version to "
                f"{release}, and let every rule check it)",
                cite=data.cite("debian-policy"),
            )


def _java_package(out: _Findings, data: Compatibility, p: str, s: Stack) -> None:
    java = s.java
    if java.package is not None:
        m = re.search(r"(?:jdk|jre|java|temurin|corretto|zulu)-?(\d+)", java.package)
        if m is None or m.group(1) != java.version:
            found = f"Java {m.group(1)}" if m else "no Java major version in its name"
            out.add(
                ERROR, "java-package", f"{p}.java.package",
                f"package {java.package} is {found}, but java.version is {java.version}",
                f"use openjdk-{java.version}-jre-headless (or another Java {java.version} "
                "package)",
                cite=data.cite("torchserve-releases"),
            )
    if java.apt_version is not None:
        release = debian_upstream(java.apt_version)
        if release.split(".")[0] != java.version:
            out.add(
                ERROR, "java-package", f"{p}.java.apt_version",
                f"apt_version {java.apt_version} installs Java {release.split('.')[0]}, but "
                f"java.version is {java.version}",
                f"use the apt version of a Java {java.version} package",
                cite=data.cite("debian-policy"),
            )


def _check_stack(out: _Findings, data: Compatibility, p: str, s: Stack, today: date) -> None:
    _cuda_driver(out, data, p, s)
    _torch(out, data, p, s)
    _toolkit(out, data, p, s)
    _driver_eol(out, data, p, s, today)
    _torchserve(out, data, p, s)


def _max_cuda_for_driver(data: Compatibility, driver: str) -> str | None:
    ok = [c for c, f in data.cuda_min_driver.items() if _vt(driver) >= _vt(str(f["min_driver"]))]
    return max(ok, key=_vt) if ok else None


def _driver_supports(
    out: _Findings, data: Compatibility, rule: str, path: str, s: Stack, cuda: str, what: str
) -> None:
    fact = data.cuda_min_driver[cuda]
    need = str(fact["min_driver"])
    have = s.nvidia_driver.version
    if _vt(have) >= _vt(need):
        return
    top = _max_cuda_for_driver(data, have)
    upto = f"; driver {have} supports CUDA up to {top}" if top else ""
    floor = data.cuda_floor.get(int(cuda.split(".")[0]))
    facts = [fact]
    extra = ""
    if floor is not None and s.nvidia_driver.branch < int(floor["min_driver_branch"]):
        extra = (f" (below R{floor['min_driver_branch']}, no CUDA "
                 f"{cuda.split('.')[0]}.x runs at all)")
        facts.append(floor)
    out.add(
        ERROR, rule, path,
        f"{what} needs NVIDIA driver >= {need}{upto}{extra}",
        f"raise nvidia_driver.version to {need} or later, or use a CUDA version "
        f"the driver supports",
        *facts,
    )


def _cuda_driver(out: _Findings, data: Compatibility, p: str, s: Stack) -> None:
    cuda = s.cuda.major_minor
    if cuda not in data.cuda_min_driver:
        known = ", ".join(sorted(data.cuda_min_driver, key=_vt))
        out.add(
            ERROR, "cuda-known", f"{p}.cuda.version",
            f"CUDA {s.cuda.version} is not a CUDA release stacklock knows",
            f"use one of {known} (or add it to data/compatibility.yaml with its source)",
            cite=data.cite("cuda-release-notes"),
        )
        return
    _driver_supports(out, data, "cuda-min-driver", f"{p}.nvidia_driver.version", s, cuda,
                     f"cuda.version {s.cuda.version} (CUDA {cuda})")


def _torch(out: _Findings, data: Compatibility, p: str, s: Stack) -> None:
    tcuda = s.torch.cuda
    path = f"{p}.torch.version"
    if tcuda is None:
        return  # a CPU build runs anywhere
    release = _mm(s.torch.release)
    stack_cuda = s.cuda.major_minor
    builds = data.torch_builds.get(release)
    cite = data.cite("pytorch-versions")
    if tcuda.split(".")[0] != stack_cuda.split(".")[0]:
        out.add(
            ERROR, "torch-cuda-major", path,
            f"torch build +{s.torch.variant} is for CUDA {tcuda}, but the stack pins "
            f"CUDA {s.cuda.version} (a different major version)",
            f"use a torch build for CUDA {stack_cuda.split('.')[0]}.x "
            f"(e.g. +cu{stack_cuda.replace('.', '')}), or change cuda.version",
            cite=cite,
        )
    elif tcuda != stack_cuda:
        out.add(
            WARNING, "torch-cuda-minor", path,
            f"torch build +{s.torch.variant} is for CUDA {tcuda}, the stack pins "
            f"CUDA {s.cuda.version}: it runs with its own CUDA runtime, but the pins differ",
            f"use torch {s.torch.release}+cu{stack_cuda.replace('.', '')}"
            if builds is not None and stack_cuda in builds["cuda"]
            else f"pin cuda {tcuda} (PyTorch has no torch {release} build for CUDA {stack_cuda})",
            cite=cite,
        )
    if builds is None:
        out.add(
            WARNING, "torch-release-known", path,
            f"torch {release} is not in stacklock's table of published CUDA builds: "
            f"the build +{s.torch.variant} cannot be checked",
            "add the release to data/compatibility.yaml with its source",
            cite=data.cite("pytorch-versions"),
        )
    elif tcuda not in builds["cuda"]:
        variants = ", ".join(f"+cu{c.replace('.', '')}" for c in builds["cuda"])
        out.add(
            ERROR, "torch-build-published", path,
            f"PyTorch published no torch {release} build for CUDA {tcuda} "
            f"(+{s.torch.variant})",
            f"use one of {variants} or +cpu",
            builds,
        )
    if tcuda != stack_cuda and tcuda in data.cuda_min_driver:
        _driver_supports(out, data, "torch-driver", path, s, tcuda,
                         f"torch {s.torch.version} (built for CUDA {tcuda})")


def _toolkit(out: _Findings, data: Compatibility, p: str, s: Stack) -> None:
    have = s.nvidia_container_toolkit.version
    for fact in data.toolkit_cves:
        fixed = str(fact["fixed_in"])
        if _vt(have) < _vt(fixed):
            out.add(
                ERROR, "toolkit-cve", f"{p}.nvidia_container_toolkit.version",
                f"nvidia-container-toolkit {have} is affected by {fact['cve']} "
                f"({fact['summary']}), fixed in {fixed}",
                f"use nvidia-container-toolkit {fixed} or later",
                fact,
            )


def _driver_eol(out: _Findings, data: Compatibility, p: str, s: Stack, today: date) -> None:
    fact = data.branches.get(s.nvidia_driver.branch)
    if fact is None:
        return
    eol = date.fromisoformat(str(fact["eol"]))
    if today > eol:
        current = sorted(
            (b for b, f in data.branches.items() if date.fromisoformat(str(f["eol"])) >= today)
        )
        alt = ", ".join(f"R{b}" for b in current) or "a supported branch"
        out.add(
            WARNING, "driver-branch-eol", f"{p}.nvidia_driver.version",
            f"driver branch R{s.nvidia_driver.branch} ({fact['kind']}) reached end of life "
            f"on {eol.isoformat()}: no more security fixes",
            f"move to a supported branch: {alt}",
            fact,
        )


def _torchserve(out: _Findings, data: Compatibility, p: str, s: Stack) -> None:
    ts = s.torchserve
    for fact in data.ts_java:
        if _vt(ts.version) >= _vt(str(fact["torchserve"])) and int(s.java.version) < int(
            fact["java"]
        ):
            out.add(
                ERROR, "torchserve-java", f"{p}.java.version",
                f"TorchServe {ts.version} needs Java {fact['java']} or later "
                f"(since {fact['torchserve']}); the stack pins Java {s.java.version}",
                f"set java.version to \"{fact['java']}\"",
                fact,
            )
    series = _mm(ts.version)
    tested = data.ts_tested.get(series)
    if tested is None:
        known = ", ".join(f"{k}.x" for k in sorted(data.ts_tested, key=_vt))
        out.add(
            WARNING, "torchserve-tested-torch", f"{p}.torchserve.version",
            f"TorchServe {ts.version} is not in stacklock's table of tested torch releases",
            f"use a TorchServe release stacklock knows ({known})",
            cite=data.cite("torchserve-releases"),
        )
    elif _mm(str(tested["tested_torch"])) != _mm(s.torch.release):
        out.add(
            WARNING, "torchserve-tested-torch", f"{p}.torch.version",
            f"TorchServe {ts.version} was tested with torch {tested['tested_torch']}, "
            f"not {s.torch.release}; TorchServe is in limited maintenance",
            f"run the stack's own model tests, or pin torch {tested['tested_torch']}",
            tested,
        )
    _hardening(out, data, f"{p}.torchserve_config", s)


def _hardening(out: _Findings, data: Compatibility, p: str, s: Stack) -> None:
    cfg = s.torchserve_config
    probe = data.ts_probe_fact
    if not cfg.token_authorization:
        out.add(
            ERROR, "torchserve-token-auth", f"{p}.token_authorization",
            "token authorization is off: anyone who reaches the APIs can use them",
            "set token_authorization: true (the default since TorchServe 0.11.1)",
            probe,
        )
    for field, on_loopback in (
        ("management_address", cfg.management_on_loopback),
        ("metrics_address", cfg.metrics_on_loopback),
    ):
        if not on_loopback:
            addr = getattr(cfg, field)
            port = addr.rsplit(":", 1)[1]
            out.add(
                ERROR, "torchserve-loopback", f"{p}.{field}",
                f"{addr} is not a loopback address: the {field.split('_')[0]} API must not "
                "be reachable from the network",
                f"use http://127.0.0.1:{port} (reach it over SSH or a local scraper)",
                probe,
            )
    if not cfg.inference_on_loopback and not cfg.allow_plain_http_inference:
        port = cfg.inference_address.rsplit(":", 1)[1]
        out.add(
            ERROR, "torchserve-plain-http", f"{p}.inference_address",
            f"{cfg.inference_address} is not a loopback address: clients would reach the model "
            "over plain HTTP, with a key TorchServe replaces every "
            f"{cfg.token_expiration_min or 60} minutes",
            f"keep http://127.0.0.1:{port} and give the environments an endpoint (TLS and a "
            "token clients keep: environments.ENV.endpoint, docs/serving.md), or accept plain "
            "HTTP explicitly: torchserve_config.allow_plain_http_inference: true",
            probe,
        )
    if cfg.enable_model_api:
        out.add(
            WARNING, "torchserve-model-api", f"{p}.enable_model_api",
            "the model management API (register/delete models) is enabled",
            "set enable_model_api: false; stacklock deploys models from the manifest",
            probe,
        )
    for i, pattern in enumerate(cfg.allowed_urls):
        path = f"{p}.allowed_urls[{i}]"
        try:
            rx = re.compile(pattern)
        except re.error as exc:
            out.add(
                ERROR, "torchserve-allowed-urls", path,
                f"{pattern!r} is not a valid regular expression: {exc}",
                "write a regex matching only your model host, e.g. "
                r"https://models\.example\.com/.*",
                probe,
            )
            continue
        hits = [u for u in data.ts_probes if rx.fullmatch(u)]
        if hits:
            out.add(
                ERROR, "torchserve-allowed-urls", path,
                f"{pattern!r} allows models from any host (it matches {hits[0]}); "
                f"see {probe['cve']}",
                "restrict it to your model host, e.g. https://models\\.example\\.com/.*, "
                "or leave allowed_urls empty (the model store only)",
                probe,
            )


# --------------------------------------------------------------------------- the endpoint


#: where the endpoint rules come from (stacklock's own design, not a vendor fact)
_SERVING_DOC = "stacklock docs/serving.md (the serving endpoint)"


def _endpoints(out: _Findings, stacks: dict[str, Stack], envs: dict[str, Any]) -> None:
    """The environments' inference endpoints (docs/serving.md): nginx proxies to TorchServe on
    loopback, and every environment serves clients the same way (verify compares the proxy's
    package, config and answers across environments like any other component)."""
    for env_name, env in envs.items():
        ep = getattr(env, "endpoint", None)
        stack = stacks.get(env.stack)
        if ep is None or stack is None:
            continue
        cfg = stack.torchserve_config
        if not cfg.inference_on_loopback:
            ts_port = cfg.inference_address.rsplit(":", 1)[1]
            out.add(
                ERROR, "endpoint-upstream", f"stacks.{env.stack}.torchserve_config.inference_address",
                f"environment {env_name!r} has an endpoint, which proxies to TorchServe on "
                f"loopback, but TorchServe listens on {cfg.inference_address}",
                f"set inference_address: http://127.0.0.1:{ts_port} (clients call the endpoint)",
                cite=_SERVING_DOC,
            )
    shapes = {name: (None if getattr(env, "endpoint", None) is None else env.endpoint.port)
              for name, env in envs.items()}
    if len(set(shapes.values())) > 1:
        def label(port: int | None) -> str:
            return "no endpoint" if port is None else f"an endpoint on port {port}"

        seen = ", ".join(f"{name}: {label(port)}" for name, port in shapes.items())
        first = next(iter(shapes))
        for name, port in shapes.items():
            if port == shapes[first]:
                continue
            out.add(
                WARNING, "endpoint-parity", f"environments.{name}.endpoint",
                f"the environments serve clients differently ({seen}); verify reports the "
                "proxy's package, config and answers as differences between environments",
                f"give every environment the same endpoint port ({label(shapes[first])} as in "
                f"{first}), so that what clients call is tested before prod",
                cite=_SERVING_DOC,
            )


# --------------------------------------------------------------------------- AWS: the GPU


def _arch_label(arch: str, fact: Fact) -> str:
    return f"{arch.capitalize()}, sm_{fact['sm']}"


def _check_aws(
    out: _Findings, data: Compatibility, env_name: str, env: AwsEnvironment, stack_name: str,
    s: Stack,
) -> None:
    family = data.family_of(env.instance_type)
    fam = data.families.get(family)
    if fam is None:
        known = ", ".join(sorted(data.families))
        out.add(
            ERROR, "aws-instance-family", f"environments.{env_name}.instance_type",
            f"{env.instance_type}: {family!r} is not a GPU instance family stacklock knows",
            f"use an instance type of one of: {known}",
            cite=data.cite("ec2-accelerated"),
        )
        return
    gpu = data.gpus[str(fam["gpu"])]
    arch_name = str(gpu["arch"])
    arch = data.archs[arch_name]
    sm = int(gpu["sm"])
    sp = f"stacks.{stack_name}"
    where = (f"environment {env_name!r} runs {env.instance_type} "
             f"({gpu['name']}, {_arch_label(arch_name, gpu)})")
    facts = (fam, gpu, arch)

    # driver branch
    branch = s.nvidia_driver.branch
    last = arch.get("last_driver_branch")
    first = arch.get("min_driver_branch")
    if last is not None and branch > int(last):
        out.add(
            ERROR, "gpu-driver-branch", f"{sp}.nvidia_driver.version",
            f"{where}: driver branch R{branch} dropped {arch_name.capitalize()}; "
            f"R{last} is the last branch for it",
            f"use an R{last} driver, or an instance type with a newer GPU",
            *facts,
        )
    if first is not None and branch < int(first):
        out.add(
            ERROR, "gpu-driver-branch", f"{sp}.nvidia_driver.version",
            f"{where}: {arch_name.capitalize()} needs driver branch R{first} or newer, "
            f"not R{branch}",
            f"use a driver of branch R{first} or newer",
            *facts,
        )

    # kernel modules
    km = s.nvidia_driver.kernel_module
    if km == "open" and not arch["open_module"]:
        out.add(
            ERROR, "gpu-kernel-module", f"{sp}.nvidia_driver.kernel_module",
            f"{where}: the open kernel modules need Turing or newer",
            "set kernel_module: proprietary (or auto)",
            *facts,
        )
    if km == "proprietary" and arch["needs_open"]:
        out.add(
            ERROR, "gpu-kernel-module", f"{sp}.nvidia_driver.kernel_module",
            f"{where}: {arch_name.capitalize()} GPUs are supported only by the open "
            "kernel modules",
            "set kernel_module: open (or auto)",
            *facts,
        )

    # CUDA
    cuda = s.cuda.major_minor
    max_major = arch.get("max_cuda_major")
    min_cuda = arch.get("min_cuda")
    if max_major is not None and int(cuda.split(".")[0]) > int(max_major):
        out.add(
            ERROR, "gpu-cuda", f"{sp}.cuda.version",
            f"{where}: CUDA {cuda} dropped {arch_name.capitalize()}; "
            f"CUDA {max_major}.x is the last to support it",
            f"use CUDA {max_major}.x (and a matching torch build), or an instance type "
            "with a Turing or newer GPU",
            *facts,
        )
    if min_cuda is not None and _vt(cuda) < _vt(str(min_cuda)):
        out.add(
            ERROR, "gpu-cuda", f"{sp}.cuda.version",
            f"{where}: {arch_name.capitalize()} needs CUDA {min_cuda} or newer, not {cuda}",
            f"use CUDA {min_cuda} or newer",
            *facts,
        )

    # torch build
    tcuda = s.torch.cuda
    if tcuda is not None:
        rng = data.torch_arch_range(tcuda)
        if rng is not None and not int(rng["min_sm"]) <= sm <= int(rng["max_sm"]):
            out.add(
                ERROR, "gpu-torch-build", f"{sp}.torch.version",
                f"{where}: torch build +{s.torch.variant} carries kernels for "
                f"sm_{rng['min_sm']} to sm_{rng['max_sm']} only",
                "use a torch CUDA build that covers the GPU (cu126 covers Maxwell to Hopper; "
                "cu130 and later Turing to Blackwell)",
                rng, *facts,
            )
