"""The CONTAINER class of the parity comparison: the serving container as Docker runs it. Pure.

Only in container mode (`serving_runtime: container` in the rendered group_vars); in host mode
nothing here is expected and no component is produced. What the controller expects comes only
from the rendered `serving_container` (core/serving.py renders it from the lock's image) and
the lock's Python closure -- never from the node. The facts module's `container` collector
reads the live state (docker inspect, the image's RepoDigests, docker exec of the image's
Python, the GPU validation container; docs/facts.md).

Components (each deviation names the container, the field, expected and actual):

* `container.running` (`true`; else `false (exited, exit code 137, ...)`, `not found`);
* `container.image.digest` (the manifest digest it was pulled by: one of the image's
  RepoDigests), `container.image.id` (the image id: the config digest);
* `container.user`, `container.read_only`, `container.capabilities` (`add: none; drop: ALL`),
  `container.privileged`, `container.security_opt` (`no-new-privileges`, as the unit sets it,
  and any entry that switches confinement off),
  `container.runtime`, `container.network`, `container.pid_mode`, `container.devices`,
  `container.gpus` (Docker's device requests: `gpu: all` where the rendered spec asks for
  `gpus: all`, the GPU nodes; else `none`), `container.mounts`;
* `container.env.NAME`: every name the container is given beyond the image's own ENV (a name
  the rendered env does not set is expected absent; values only for names verify reads);
* `container.extra.NAME`: any other running container on the node (expected absent);
* `container.python.DIST` (the locked closure inside the running container; a distribution
  the lock does not hold is expected absent), `container.torch.cuda`;
* on GPU nodes, the GPU validation container: `container.gpu.available`,
  `container.gpu.cuda` (torch.version.cuda against the lock's CUDA major.minor),
  `container.gpu.op` (one CUDA operation's result).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from stacklock.core.values import text as _s

PREFIX = "container."

#: the value of a name that must not be there (as the runtime class's)
ABSENT = "absent"

#: the image's venv (flows/image.py builds it there; the torchserve role's default)
IMAGE_PYTHON = "/opt/torchserve/venv/bin/python"

#: validation containers are named so (ansible/module_utils/stacklock_facts/container.py)
VALIDATION_PREFIX = "stacklock-validate-"

#: what the GPU validation container's CUDA operation gives (sum of squares of 1..4)
GPU_OP_RESULT = "30.0"

#: security options that switch confinement off
_WEAKENING = re.compile(r"^(seccomp[=:]unconfined|apparmor[=:]unconfined|label[=:]disable"
                        r"|systempaths[=:]unconfined)$")

_NOT_READ = "set (value not read: not a name verify reads)"

#: what the serving unit sets (ansible/roles/serving_container: --security-opt
#: no-new-privileges), in Docker's spellings of it (`:true`, `=true`; `:false` switches it off)
_NO_NEW_PRIVILEGES = re.compile(r"^no-new-privileges([=:]true)?$")
NO_NEW_PRIVILEGES = "no-new-privileges"


def security_opt(options: Any) -> str:
    """The confinement a container's `SecurityOpt` sets: `no-new-privileges` if set, then
    every entry that switches confinement off; `none` for neither."""
    opts = [str(o) for o in options or []]
    kept = [NO_NEW_PRIVILEGES] if any(_NO_NEW_PRIVILEGES.match(o) for o in opts) else []
    kept += sorted(o for o in opts if _WEAKENING.match(o))
    return ", ".join(kept) or "none"


def _norm(name: object) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", str(name)).lower()


def _major_minor(version: Any) -> str | None:
    m = re.match(r"^(\d+)\.(\d+)", str(version or ""))
    return f"{m.group(1)}.{m.group(2)}" if m else None


def spec_of(gv: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The rendered `serving_container` when the environment serves from a container."""
    if str(gv.get("serving_runtime") or "host") != "container":
        return None
    spec = gv.get("serving_container")
    return spec if isinstance(spec, Mapping) else {}


def option(gv: Mapping[str, Any]) -> dict[str, Any] | None:
    """The facts module's `container` option (verify.yml and verify --fast), None in host
    mode."""
    spec = spec_of(gv)
    if spec is None:
        return None
    return {"name": str(spec.get("name") or ""), "image": str(spec.get("image") or ""),
            "user": str(spec.get("user") or ""), "python": IMAGE_PYTHON}


def capabilities(add: Any, drop: Any) -> str:
    def norm(values: Any) -> list[str]:
        out = set()
        for v in values or []:
            text = str(v).upper()
            out.add(text[4:] if text.startswith("CAP_") else text)
        return sorted(out)

    return f"add: {','.join(norm(add)) or 'none'}; drop: {','.join(norm(drop)) or 'none'}"


def gpus_text(requests: Any) -> str:
    """Docker's device requests as the collector reports them (`CAPS:COUNT`, e.g. `gpu:-1`
    for `--gpus all`): `gpu: all`, `gpu: 2`; `none` for no request."""
    items = []
    for request in requests or []:
        caps, _, count = str(request).rpartition(":")
        items.append(f"{caps.lower() or '?'}: {'all' if count == '-1' else count}")
    return "; ".join(sorted(items)) or "none"


def mounts_text(mounts: Any) -> str:
    """`bind /var/lib/stacklock-serving -> /run/torchserve (rw); tmpfs -> /tmp (rw)`, sorted
    by target."""
    items = []
    for m in mounts or []:
        if not isinstance(m, Mapping):
            continue
        kind = str(m.get("type") or "")
        source = "" if kind == "tmpfs" else str(m.get("source") or "")
        mode = "ro" if m.get("read_only") else "rw"
        items.append((str(m.get("target") or ""), kind,
                      f"{kind} {source + ' ' if source else ''}-> {m.get('target')} ({mode})"))
    return "; ".join(text for _, _, text in sorted(items)) or "none"


def expected_from_vars(gv: Mapping[str, Any]) -> dict[str, str | None]:
    """The container expectation of one environment ({} in host mode)."""
    spec = spec_of(gv)
    if spec is None:
        return {}
    exp: dict[str, str | None] = {
        "container.running": "true",
        "container.image.digest": _s(spec.get("digest")),
        "container.image.id": _s(spec.get("config_digest")),
        "container.user": _s(spec.get("user")),
        "container.read_only": _s(bool(spec.get("read_only"))),
        "container.capabilities": capabilities(spec.get("cap_add"), ["ALL"]),
        "container.privileged": "false",
        "container.security_opt": NO_NEW_PRIVILEGES,
        "container.runtime": _s(spec.get("runtime")),
        "container.network": _s(spec.get("network")),
        "container.pid_mode": "private",
        "container.devices": "none",
        "container.gpus": "gpu: all" if spec.get("gpus") == "all" else "none",
        "container.mounts": mounts_text(spec.get("mounts")),
    }
    env = spec.get("env")
    for name, value in (env.items() if isinstance(env, Mapping) else ()):
        exp[f"container.env.{name}"] = _s(value)
    pins = [p for p in gv.get("torchserve_pip_packages") or [] if isinstance(p, Mapping)]
    for pin in pins:
        exp[f"container.python.{_norm(pin['name'])}"] = _s(pin.get("version"))
    if any(_norm(p.get("name")) == "torch" for p in pins):
        exp["container.torch.cuda"] = _s(gv.get("torchserve_torch_cuda")) or "none"
    if gv.get("nvidia_driver_require_gpu"):
        # the GPU validation container (the GPU Operator validator's idea): torch sees the GPU,
        # its CUDA is the lock's, one CUDA operation runs
        exp["container.gpu.available"] = "true"
        exp["container.gpu.cuda"] = (_s(gv.get("torchserve_torch_cuda"))
                                     or _major_minor(gv.get("cuda_version")))
        exp["container.gpu.op"] = GPU_OP_RESULT
    return exp


# --------------------------------------------------------------------------- actual values


def _settings(c: Mapping[str, Any]) -> str:
    """A short description of another container (what `container.extra.NAME` shows)."""
    caps = ",".join(c.get("cap_add") or []) or "none"
    return (f"running {c.get('image')} ({c.get('image_id')}), user {c.get('user') or 'root'}, "
            f"read-only {_s(bool(c.get('read_only')))}, cap_add {caps}, "
            f"privileged {_s(bool(c.get('privileged')))}, runtime {c.get('runtime')}, "
            f"network {c.get('network')}")


def _validation(c: Mapping[str, Any], image_id: Any) -> bool:
    """verify's own GPU validation container (of a concurrent verify run): its name, the
    serving image, no network, no capabilities."""
    return (str(c.get("name") or "").startswith(VALIDATION_PREFIX) and bool(image_id)
            and c.get("image_id") == image_id and c.get("network") == "none"
            and not c.get("cap_add") and not c.get("privileged"))


def _running(c: Mapping[str, Any]) -> str:
    if c.get("running"):
        return "true"
    return (f"false ({c.get('status') or 'not running'}, exit code {c.get('exit_code')}, "
            f"finished {c.get('finished_at') or '?'})")


def actual_values(facts: Mapping[str, Any]) -> dict[str, str | None]:
    """The container components of one node's facts (nothing without a `container` section
    or when it holds only an error: the comparison then explains the missing values)."""
    c = facts.get("container")
    act: dict[str, str | None] = {}
    if not isinstance(c, Mapping) or c.get("error"):
        return act
    name = str(c.get("name") or "")
    image_id = c.get("image_id")
    for other, entry in sorted((c.get("others") or {}).items()):
        if isinstance(entry, Mapping) and not _validation(entry, image_id):
            act[f"container.extra.{other}"] = _settings(entry)
    if not c.get("found"):
        act["container.running"] = f"not found (no container named {name})"
        return act
    act["container.running"] = _running(c)
    digests = c.get("repo_digests")
    if isinstance(digests, list):
        found = sorted({str(d).rpartition("@")[2] for d in digests})
        act["container.image.digest"] = (", ".join(found) if found else
                                         "none (the image was not pulled by digest)")
    act["container.image.id"] = _s(image_id)
    act["container.user"] = _s(c.get("user")) or "(image default)"
    act["container.read_only"] = _s(bool(c.get("read_only")))
    act["container.capabilities"] = capabilities(c.get("cap_add"), c.get("cap_drop"))
    act["container.privileged"] = _s(bool(c.get("privileged")))
    act["container.security_opt"] = security_opt(c.get("security_opt"))
    act["container.runtime"] = _s(c.get("runtime"))
    act["container.network"] = _s(c.get("network"))
    act["container.pid_mode"] = _s(c.get("pid_mode")) or "private"
    act["container.devices"] = ", ".join(c.get("devices") or []) or "none"
    act["container.gpus"] = gpus_text(c.get("device_requests"))
    act["container.mounts"] = mounts_text(c.get("mounts"))
    for var, value in (c.get("env") or {}).items():
        act[f"container.env.{var}"] = _NOT_READ if value is None else str(value)
    py = c.get("python")
    if isinstance(py, Mapping) and isinstance(py.get("distributions"), Mapping):
        for dist, version in py["distributions"].items():
            act[f"container.python.{_norm(dist)}"] = _s(version)
        torch: Mapping[str, Any] = py["torch"] if isinstance(py.get("torch"), Mapping) else {}
        act["container.torch.cuda"] = (_s(torch.get("cuda")) or "none") \
            if torch.get("version") else None
    gpu = c.get("gpu_validation")
    if isinstance(gpu, Mapping):
        if gpu.get("error") and "available" not in gpu:
            why = f"failed: {gpu['error']}"
            for key in ("available", "cuda", "op"):
                act[f"container.gpu.{key}"] = why
        else:
            act["container.gpu.available"] = _s(bool(gpu.get("available")))
            act["container.gpu.cuda"] = _s(gpu.get("cuda")) or "none (a CPU-only torch)"
            op = gpu.get("op")
            act["container.gpu.op"] = (_s(float(op)) if isinstance(op, int | float)
                                       else f"not run: {gpu.get('error') or 'no GPU'}")
            if gpu.get("device"):
                act["container.gpu.device"] = _s(gpu.get("device"))
    return act


# --------------------------------------------------------------------------- per node


def node_expected(exp: Mapping[str, str | None], act: Mapping[str, str | None]
                  ) -> dict[str, str | None]:
    """This node's expectation: every other running container, every environment name and
    every distribution nothing expects are expected absent. A container that is not there
    is one finding (`container.running`), not one per setting; one that is stopped is not
    asked for its closure or the GPU."""
    out = dict(exp)
    if not any(c.startswith(PREFIX) for c in exp):
        return out
    running = act.get("container.running")
    if running is not None and running.startswith("not found"):
        out = {c: v for c, v in out.items()
               if not c.startswith(PREFIX) or c == "container.running"}
    elif running is not None and running != "true":
        out = {c: v for c, v in out.items()
               if not c.startswith(("container.python.", "container.torch.", "container.gpu."))}
    digest, pulled = out.get("container.image.digest"), act.get("container.image.digest")
    if digest and pulled and digest in pulled.split(", "):
        # the image was pulled by several digests (pushed to several repositories): the
        # locked one among them is a match
        out["container.image.digest"] = pulled
    closure = any(c.startswith("container.python.") for c in exp)
    for comp in act:
        if comp in out:
            if comp.startswith("container.env.") and act[comp] == _NOT_READ:
                out[comp] = _NOT_READ  # a name whose value the node does not send: presence
            continue
        if comp.startswith(("container.extra.", "container.env.")) or (
                closure and comp.startswith("container.python.")):
            out[comp] = ABSENT
    return out


def detail(component: str, act: Mapping[str, str | None]) -> str:
    """What to do about a container deviation (the report's detail)."""
    if component.startswith("container.extra."):
        return ("a container the serving role did not start runs on the node: remove it "
                "(docker rm -f NAME), or waive it (parity.waivers, item "
                f"{component})")
    if component == "container.running":
        return ("stacklock configure starts the serving container again "
                "(systemctl status stacklock-serving shows why it stopped)")
    if component.startswith(("container.python.", "container.torch.")):
        return ("the closure in the running image differs from the lock: the image is not the "
                "locked one; stacklock configure pulls the locked digest and restarts it")
    if component.startswith("container.gpu."):
        return ("the GPU validation container (the serving image with the NVIDIA runtime) "
                "did not see what the lock needs: check the driver, the NVIDIA runtime in "
                "Docker and the image's torch build")
    if component.startswith("container.image."):
        return ("the container runs another image than the lock's: stacklock configure "
                "pulls the locked digest and starts the container from it")
    if component.startswith(PREFIX):
        return ("the container runs with other settings than the serving role gives it "
                "(started by hand?): stacklock configure starts it again as rendered")
    return ""
