# Copyright: stacklock contributors. Apache-2.0.
"""``container``: the serving container as Docker runs it (container mode only; the
``container`` option names it, docs/facts.md).

Read-only, through the ``docker`` client the docker role installs (``docker ps``, ``docker
inspect``, ``docker image inspect``, ``docker exec``; every call bounded by the probe timeout):

- the named container: running or not (state, exit code, restart count), the image id it runs
  (the config digest) and that image's ``RepoDigests`` (the manifest digests it was pulled by),
  ``Config.User``, ``HostConfig.ReadonlyRootfs``, ``CapAdd`` / ``CapDrop``, ``Privileged``,
  ``SecurityOpt``, ``Runtime``, ``NetworkMode``, ``PidMode``, ``Devices``, its mounts
  (``Mounts`` and ``HostConfig.Tmpfs``) and the environment it was given beyond the image's own
  ``ENV`` (values only for the names ``process.SHOWN`` allows: a secret never leaves the node);
- every other running container, with the same settings (a container started by hand is named);
- the Python closure inside the running container: ``docker exec NAME PYTHON -I -c
  VENV_SCRIPT`` (the host venv's script: every distribution with its version, torch's CUDA);
- on a node with an NVIDIA GPU (``/proc/driver/nvidia/gpus`` not empty, or the ``gpu`` section
  found one), the GPU validation container: ``docker run --rm --runtime nvidia --gpus all
  --network none`` of the serving image by digest, which prints what torch sees
  (``GPU_SCRIPT``).
"""

from __future__ import annotations

import json
from typing import Any

from ansible.module_utils.stacklock_facts.common import (
    CannotLook,
    ProbeError,
    first_line,
)
from ansible.module_utils.stacklock_facts.node import System
from ansible.module_utils.stacklock_facts.process import SHOWN
from ansible.module_utils.stacklock_facts.python import VENV_SCRIPT
from ansible.module_utils.stacklock_facts.run import Run

#: the image's Python when the option does not name one (the serving image's venv)
DEFAULT_PYTHON = "/opt/torchserve/venv/bin/python"
#: validation containers are named so (with the run id); core.container tells them from extras
VALIDATION_PREFIX = "stacklock-validate-"
#: seconds the GPU validation container may take (CUDA's first initialisation is slow)
GPU_TIMEOUT = 180.0

#: run by the image's Python in the GPU validation container: what torch sees, one CUDA op
GPU_SCRIPT = r"""
import json
out = {}
try:
    import torch
    out["torch"] = torch.__version__
    out["cuda"] = torch.version.cuda
    out["available"] = bool(torch.cuda.is_available())
    if out["available"]:
        out["device_count"] = torch.cuda.device_count()
        out["device"] = torch.cuda.get_device_name(0)
        x = torch.arange(1, 5, dtype=torch.float32, device="cuda")
        out["op"] = float((x * x).sum().item())
        torch.cuda.synchronize()
except Exception as exc:
    out["error"] = "%s: %s" % (type(exc).__name__, exc)
print(json.dumps(out))
"""


def _docker(sy: System) -> str:
    docker = sy.which("docker")
    if not docker:
        raise ProbeError("docker: command not found")
    return docker


def _json(argv: list[str], text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise ProbeError(f"{' '.join(argv[:3])} printed no JSON: {first_line(text)}") from None


def _call(sy: System, argv: list[str], timeout: float | None = None) -> str:
    res = sy.run(argv, timeout)
    if res.rc != 0:
        # docker's message, without its "See 'docker run --help'." line
        lines = [line.strip() for line in (res.stderr or res.stdout or "").splitlines()
                 if line.strip() and not line.startswith("See '")]
        message = f"{' '.join(argv[:3])} exited {res.rc}: {'; '.join(lines[-3:])}"
        if "permission denied" in message.lower():
            raise CannotLook(message)
        raise ProbeError(message)
    return res.stdout


def _caps(values: Any) -> list[str]:
    """`CAP_NET_ADMIN`, `net_admin` -> `NET_ADMIN`, sorted."""
    out = set()
    for v in values or []:
        text = str(v).upper()
        out.add(text[4:] if text.startswith("CAP_") else text)
    return sorted(out)


def _env(entries: Any, image_env: Any) -> dict[str, str | None]:
    """The environment beyond the image's own: a name the image does not set, or sets to
    another value. Values only for SHOWN names; the others None (set, value not read)."""
    own = {}
    for item in image_env or []:
        name, sep, value = str(item).partition("=")
        if sep:
            own[name] = value
    out: dict[str, str | None] = {}
    for item in entries or []:
        name, sep, value = str(item).partition("=")
        if not sep or not name or own.get(name) == value:
            continue
        out[name] = value if SHOWN.match(name) else None
    return dict(sorted(out.items()))


def _mounts(inspect: dict[str, Any]) -> list[dict[str, Any]]:
    """Every mount as {type, source, target, read_only}, sorted by target: `Mounts` and the
    tmpfs of `HostConfig.Tmpfs` (`--tmpfs`, which `Mounts` does not list)."""
    out = []
    for m in inspect.get("Mounts") or []:
        kind = str(m.get("Type") or "")
        out.append({"type": kind,
                    "source": "" if kind == "tmpfs" else str(
                        m.get("Name") if kind == "volume" and m.get("Name")
                        else m.get("Source") or ""),
                    "target": str(m.get("Destination") or ""),
                    "read_only": not bool(m.get("RW"))})
    seen = {m["target"] for m in out}
    for target, options in ((inspect.get("HostConfig") or {}).get("Tmpfs") or {}).items():
        if target not in seen:
            out.append({"type": "tmpfs", "source": "", "target": str(target),
                        "read_only": "ro" in str(options or "").split(",")})
    return sorted(out, key=lambda m: (m["target"], m["type"]))


def describe(inspect: dict[str, Any], image_env: Any = None) -> dict[str, Any]:
    """One container of `docker inspect`, as the facts report it."""
    state = inspect.get("State") or {}
    config = inspect.get("Config") or {}
    host = inspect.get("HostConfig") or {}
    devices = [f"{d.get('PathOnHost')}:{d.get('PathInContainer')}"
               for d in host.get("Devices") or [] if isinstance(d, dict)]
    requests = [",".join(_caps([c for group in r.get("Capabilities") or [] for c in group])
                         or ["?"]) + f":{r.get('Count')}"
                for r in host.get("DeviceRequests") or [] if isinstance(r, dict)]
    return {
        "name": str(inspect.get("Name") or "").lstrip("/"),
        "id": inspect.get("Id"),
        "running": bool(state.get("Running")),
        "status": state.get("Status"),
        "exit_code": state.get("ExitCode"),
        "started_at": state.get("StartedAt"),
        "finished_at": state.get("FinishedAt"),
        "restart_count": inspect.get("RestartCount"),
        "image_id": inspect.get("Image"),
        "image": config.get("Image"),
        "user": config.get("User") or "",
        "read_only": bool(host.get("ReadonlyRootfs")),
        "cap_add": _caps(host.get("CapAdd")),
        "cap_drop": _caps(host.get("CapDrop")),
        "privileged": bool(host.get("Privileged")),
        "security_opt": sorted(str(s) for s in host.get("SecurityOpt") or []),
        "runtime": host.get("Runtime"),
        "network": host.get("NetworkMode"),
        "pid_mode": host.get("PidMode") or "",
        "devices": sorted(devices),
        "device_requests": sorted(requests),
        "mounts": _mounts(inspect),
        "env": _env(config.get("Env"), image_env),
    }


def probe_container(sy: System, want: dict[str, Any], gpu: bool, run_id: str | None
                    ) -> dict[str, Any]:
    name = str(want.get("name") or "")
    if not name:
        raise ProbeError("the container option names no container")
    docker = _docker(sy)
    argv = [docker, "ps", "-a", "-q", "--no-trunc"]
    ids = _call(sy, argv).split()
    argv = [docker, "inspect", *ids]
    found = _json(argv, _call(sy, argv)) if ids else []
    out: dict[str, Any] = {"name": name, "found": False, "others": {}}
    mine = None
    for entry in found if isinstance(found, list) else []:
        if not isinstance(entry, dict):
            continue
        if str(entry.get("Name") or "").lstrip("/") == name:
            mine = entry
        elif (entry.get("State") or {}).get("Running"):
            other = describe(entry)
            out["others"][other["name"]] = other
    if mine is None:
        return out
    out["found"] = True
    image_id = str(mine.get("Image") or "")
    image: dict[str, Any] = {}
    try:
        argv = [docker, "image", "inspect", image_id]
        images = _json(argv, _call(sy, argv))
        image = images[0] if isinstance(images, list) and images else {}
        out["repo_digests"] = sorted(str(d) for d in image.get("RepoDigests") or [])
    except ProbeError as exc:
        out["repo_digests"] = None
        out["image_error"] = str(exc)
    out.update(describe(mine, (image.get("Config") or {}).get("Env")))
    out["python"] = _python(sy, docker, name, out["running"], want)
    if gpu:
        out["gpu_validation"] = _gpu(sy, docker, want, run_id)
    return out


def _python(sy: System, docker: str, name: str, running: bool, want: dict[str, Any]
            ) -> dict[str, Any]:
    """The distributions of the image's venv, read inside the running container."""
    if not running:
        return {"error": f"the container {name} is not running: nothing to read the closure in"}
    py = str(want.get("python") or DEFAULT_PYTHON)
    argv = [docker, "exec", name, py, "-I", "-c", VENV_SCRIPT,
            json.dumps(["torch", "torchserve", "torch-model-archiver"])]
    try:
        text = _call(sy, argv)
        data = json.loads(text.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"docker exec {name} {py} printed no JSON"}
    except ProbeError as exc:
        return {"error": str(exc)}
    dists = data.get("distributions") if isinstance(data, dict) else None
    return {"python": data.get("python"), "executable": py,
            "distributions": dict(sorted(dists.items())) if isinstance(dists, dict) else None,
            "torch": data.get("torch") or {}}


def _gpu(sy: System, docker: str, want: dict[str, Any], run_id: str | None) -> dict[str, Any]:
    """The GPU validation container: the serving image by digest, with the NVIDIA runtime and
    every GPU, no network, read-only, no capabilities; what torch sees."""
    image = str(want.get("image") or "")
    if "@sha256:" not in image:
        return {"error": f"no image by digest to validate with ({image or 'none given'})"}
    py = str(want.get("python") or DEFAULT_PYTHON)
    argv = [docker, "run", "--rm", "--runtime", "nvidia", "--gpus", "all", "--network", "none",
            "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--name", VALIDATION_PREFIX + (run_id or "verify")]
    if want.get("user"):
        argv += ["--user", str(want["user"])]
    argv += ["--entrypoint", py, image, "-I", "-c", GPU_SCRIPT]
    timeout = float(want.get("gpu_timeout") or GPU_TIMEOUT)
    try:
        return parse_gpu(_call(sy, argv, timeout))
    except ProbeError as exc:
        return {"error": str(exc)}


def parse_gpu(stdout: str) -> dict[str, Any]:
    """GPU_SCRIPT's JSON line (the last line of the container's output)."""
    lines = [line for line in stdout.strip().splitlines() if line.strip().startswith("{")]
    if not lines:
        return {"error": f"the validation container printed no JSON: {first_line(stdout)}"}
    try:
        data = json.loads(lines[-1])
    except ValueError:
        return {"error": f"the validation container printed no JSON: {first_line(stdout)}"}
    return data if isinstance(data, dict) else {"error": "the validation container's JSON "
                                                          "is not an object"}


def has_gpu(sy: System, facts: dict[str, Any]) -> bool:
    """An NVIDIA GPU on this node: /proc/driver/nvidia/gpus not empty, or the gpu section."""
    try:
        if sy.listdir("/proc/driver/nvidia/gpus"):
            return True
    except (OSError, ProbeError):
        pass
    gpu = facts.get("gpu")
    return bool(isinstance(gpu, dict) and gpu.get("present"))


def collect(run: Run) -> None:
    """`container`, only when the `container` option names the serving container."""
    want = run.opts.get("container")
    if not isinstance(want, dict) or not want.get("name"):
        return
    # `validate_gpu: false` (the inventory play of sbom and diff): no validation container
    gpu = want.get("validate_gpu") is not False and has_gpu(run.sy, run.facts)
    run.facts["container"] = run.section("container", probe_container, run.sy, want, gpu,
                                         run.opts.get("run_id"))
