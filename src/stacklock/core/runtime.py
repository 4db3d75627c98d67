"""The RUNTIME class of the parity comparison: the effective state, read live. Pure.

What the controller expects comes from the lock (the rendered group_vars), the roles' templates
and defaults (`ROLE_DEFAULTS`, kept equal to ansible/roles/*/defaults/main.yml by a test) --
never from a record on the node. The facts module reads (docs/facts.md): each managed unit's
effective settings (`systemctl show`), the manager environment, the units' main processes and
their children as the kernel sees them (/proc), Docker's effective runtimes (`docker info`),
what each command the stack relies on resolves to, and the loaded NVIDIA module's parameters.

Components (all compared with the lock, and across nodes and environments like versions):

* `unit.U.user|group|exec_start|fragment|environment_files`, `unit.U.environment.NAME`;
  `unit.U.drop_in.PATH` (a drop-in no role wrote: expected absent);
  `unit.U.daemon_reload` (NeedDaemonReload); `unit.U.settings` (the main process started after
  the unit's files and its config files last changed, else "running older settings");
* `process.U.exe|user|group|cmdline`, `process.U.environment.NAME`, and the same for a child
  of the main process named by its executable (`process.torchserve.java.exe`);
* `systemd.environment.NAME` (the manager environment every unit inherits);
* `docker.runtime.NAME` (its path), `docker.runtime.default`;
* `command.NAME.path|target|alternative`;
* `nvidia_driver.param.NAME` (compared across nodes and environments).

A name that is not expected (a drop-in, an environment variable, a runtime) is expected to be
"absent" on the node that has it (`node_expected`), so each is its own finding and can be
waived on its own.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Mapping
from typing import Any

from stacklock.core.values import text as _s

#: every component of this class starts with one of these
PREFIXES = ("unit.", "process.", "systemd.environment.", "docker.runtime.", "command.",
            "nvidia_driver.param.")

#: the value of a name that must not be there
ABSENT = "absent"

#: the units verify reads (the roles manage them: torchserve's own unit, the packaged Docker,
#: containerd and, where the driver ships it, nvidia-persistenced)
UNITS = ("torchserve", "docker", "containerd", "nvidia-persistenced")

#: settings files whose change needs the unit restarted (the roles write or configure them)
WATCH = ("docker=/etc/docker/daemon.json", "containerd=/etc/containerd/config.toml")

#: the role defaults the expectation falls back to where the group_vars do not set them
#: (ansible/roles/*/defaults/main.yml; tests/unit/collectors/test_runtime.py keeps them equal)
ROLE_DEFAULTS: dict[str, Any] = {
    "torchserve_user": "torchserve",
    "torchserve_group": "torchserve",
    "torchserve_venv": "/opt/torchserve/venv",
    "torchserve_model_store": "/var/lib/torchserve/model-store",
    "torchserve_config_path": "/etc/torchserve/config.properties",
    "torchserve_state_dir": "/var/lib/torchserve",
    "torchserve_log_dir": "/var/log/torchserve",
    "torchserve_python_version": "3.11",
    "torchserve_java_version": "17",
    "docker_nvidia_runtime": "auto",
    "docker_daemon_options": {},
}

#: the group_vars the expectation reads (besides parity's; torchserve_config decides --models)
GROUP_VAR_KEYS = (*ROLE_DEFAULTS, "torchserve_config", "serving_runtime")

#: names systemd itself sets in a service's environment: compared across nodes, never with
#: the lock (their values follow the node: the manager's LANG, the user's HOME and SHELL)
SYSTEMD_NAMES = frozenset({"LANG", "HOME", "USER", "LOGNAME", "SHELL", "PATH"})
#: names whose value changes with every start: left out
VOLATILE = re.compile(r"^(INVOCATION_ID|JOURNAL_STREAM|SYSTEMD_EXEC_PID|NOTIFY_SOCKET|MAINPID"
                      r"|MANAGERPID|LISTEN_PID|LISTEN_FDS|LISTEN_FDNAMES|WATCHDOG_PID"
                      r"|WATCHDOG_USEC|MONITOR_[A-Z_]+|TRIGGER_[A-Z_]+|CREDENTIALS_DIRECTORY"
                      r"|RUNTIME_DIRECTORY|STATE_DIRECTORY|CACHE_DIRECTORY|LOGS_DIRECTORY"
                      r"|CONFIGURATION_DIRECTORY|container|container_uuid)$")
#: the manager environment a distribution starts with (anything else: set-environment)
MANAGER_NAMES = frozenset({"LANG", "LANGUAGE", "PATH"})

#: runtimes Docker registers itself (compared across nodes)
BUILTIN_RUNTIMES = frozenset({"runc", "io.containerd.runc.v2", "io.containerd.runtime.v1.linux"})

#: unit files and drop-ins the packages ship (their bytes are the FILES class's)
_VENDOR = ("/lib/systemd/system/", "/usr/lib/systemd/system/")
#: drop-ins the roles write, by unit (none today; a role that adds one lists it here)
ROLE_DROP_INS: dict[str, tuple[str, ...]] = {}

#: seconds a process may have started before its files' mtime (btime is whole seconds)
_SLACK = 2.0

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "ppc64le": "ppc64el", "s390x": "s390x"}


def _gv(gv: Mapping[str, Any], key: str) -> Any:
    value = gv.get(key)
    return ROLE_DEFAULTS.get(key) if value is None else value


def torchserve_exec_start(gv: Mapping[str, Any]) -> str:
    """ExecStart= of ansible/roles/torchserve/templates/torchserve.service.j2."""
    venv = _gv(gv, "torchserve_venv")
    text = (f"{venv}/bin/torchserve --start --foreground --ncs --ts-config "
            f"{_gv(gv, 'torchserve_config_path')} --model-store {_gv(gv, 'torchserve_model_store')}")
    models = list(gv.get("torchserve_models") or [])
    config = gv.get("torchserve_config") if isinstance(gv.get("torchserve_config"), Mapping) else {}
    if models and "load_models" not in (config or {}):
        text += " --models " + " ".join(f"{m['name']}={m['file']}" for m in models)
    return text


def torchserve_environment(gv: Mapping[str, Any]) -> dict[str, str]:
    """The Environment= lines of the torchserve unit template (the allow-list of names the
    unit sets, with their values)."""
    state, logs = _gv(gv, "torchserve_state_dir"), _gv(gv, "torchserve_log_dir")
    return {"PATH": f"{_gv(gv, 'torchserve_venv')}/bin:/usr/local/bin:/usr/bin:/bin",
            "LOG_LOCATION": str(logs), "METRICS_LOCATION": str(logs), "TEMP": f"{state}/tmp"}


def expected_from_vars(gv: Mapping[str, Any]) -> dict[str, str | None]:
    """The runtime expectation of one environment (merged into parity.expected_from_vars)."""
    exp: dict[str, str | None] = {}
    # host mode only: in container mode TorchServe runs in the serving container, whose
    # settings are the container class's (core/container.py)
    ts = bool(gv.get("torchserve_version") or "torchserve_models" in gv) and \
        str(gv.get("serving_runtime") or "host") != "container"
    if ts:
        user, group = str(_gv(gv, "torchserve_user")), str(_gv(gv, "torchserve_group"))
        env = torchserve_environment(gv)
        exp.update({
            "unit.torchserve.user": user,
            "unit.torchserve.group": group,
            "unit.torchserve.exec_start": torchserve_exec_start(gv),
            "unit.torchserve.fragment": "/etc/systemd/system/torchserve.service",
            "unit.torchserve.environment_files": "none",
            "process.torchserve.exe": f"/usr/bin/python{_gv(gv, 'torchserve_python_version')}",
            "process.torchserve.user": user,
            "process.torchserve.group": group,
            "process.torchserve.cmdline": torchserve_exec_start(gv),
            "process.torchserve.java.exe": _java(gv),
            "process.torchserve.java.user": user,
            "command.java.path": "/usr/bin/java",
            "command.java.target": _java(gv),
            "command.python.path": f"{_gv(gv, 'torchserve_venv')}/bin/python",
            "command.python.target": f"/usr/bin/python{_gv(gv, 'torchserve_python_version')}",
        })
        for name, value in env.items():
            exp[f"unit.torchserve.environment.{name}"] = value
            for proc in ("process.torchserve", "process.torchserve.java"):
                exp[f"{proc}.environment.{name}"] = value
        for proc in ("process.torchserve", "process.torchserve.java"):
            exp[f"{proc}.environment.USER"] = user
            exp[f"{proc}.environment.LOGNAME"] = user
            exp[f"{proc}.environment.HOME"] = str(_gv(gv, "torchserve_state_dir"))
    if gv.get("docker_version"):
        ce = any(str(p.get("name")) == "docker-ce" for p in gv.get("docker_packages") or []
                 if isinstance(p, Mapping))
        options = _gv(gv, "docker_daemon_options")
        options = options if isinstance(options, Mapping) else {}
        exp.update({
            "unit.docker.user": "root",
            "unit.docker.fragment": "/lib/systemd/system/docker.service",
            "process.docker.exe": "/usr/bin/dockerd" if ce else "/usr/sbin/dockerd",
            "process.docker.user": "root",
            "unit.containerd.user": "root",
            "unit.containerd.fragment": "/lib/systemd/system/containerd.service",
            "process.containerd.exe": "/usr/bin/containerd",
            "process.containerd.user": "root",
            "docker.runtime.default": str(options.get("default-runtime") or "runc"),
            "command.docker.path": "/usr/bin/docker",
            "command.docker.target": "/usr/bin/docker",
        })
        if gv.get("nvidia_container_toolkit_version") and \
                _gv(gv, "docker_nvidia_runtime") != "disabled":
            # the docker role's daemon.json (and nvidia-ctk runtime configure) register it
            exp["docker.runtime.nvidia"] = "nvidia-container-runtime"
        for name, spec in (options.get("runtimes") or {}).items():
            if isinstance(spec, Mapping):
                exp[f"docker.runtime.{name}"] = str(spec.get("path"))
    if gv.get("nvidia_container_toolkit_version"):
        exp.update({
            "command.nvidia-ctk.path": "/usr/bin/nvidia-ctk",
            "command.nvidia-ctk.target": "/usr/bin/nvidia-ctk",
            "command.nvidia-container-runtime.path": "/usr/bin/nvidia-container-runtime",
            "command.nvidia-container-runtime.target": "/usr/bin/nvidia-container-runtime",
        })
    return exp


def _java(gv: Mapping[str, Any]) -> str:
    return f"/usr/lib/jvm/java-{_gv(gv, 'torchserve_java_version')}-openjdk-{{arch}}/bin/java"


# --------------------------------------------------------------------------- module options


def units_option() -> list[str]:
    return list(UNITS)


def watch_option(gv: Mapping[str, Any]) -> list[str]:
    """UNIT=PATH settings files (the torchserve config from the group_vars)."""
    return [f"torchserve={_gv(gv, 'torchserve_config_path')}", *WATCH]


def commands_option() -> list[str]:
    return ["java=torchserve", "python=torchserve", "docker=", "nvidia-ctk=",
            "nvidia-container-runtime=docker", "nvidia-smi="]


# --------------------------------------------------------------------------- actual values


def _when(epoch: float) -> str:
    return _dt.datetime.fromtimestamp(epoch, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _env_values(prefix: str, env: Mapping[str, Any], act: dict[str, str | None]) -> None:
    for name, value in env.items():
        if VOLATILE.match(str(name)):
            continue
        act[f"{prefix}.environment.{name}"] = (
            "set (value not read: not a name verify reads)" if value is None else str(value))


def _cmdline(argv: list[str]) -> str:
    """The process's command line, without the interpreter a script's #! line added."""
    if len(argv) > 1 and re.search(r"/(python[0-9.]*|sh|bash|perl)$", argv[0] or ""):
        argv = argv[1:]
    return " ".join(argv)


def _process(prefix: str, proc: Mapping[str, Any], act: dict[str, str | None]) -> None:
    act[f"{prefix}.exe"] = _s(proc.get("exe"))
    act[f"{prefix}.user"] = _s(proc.get("user") if proc.get("user") is not None
                               else proc.get("uid"))
    act[f"{prefix}.group"] = _s(proc.get("group") if proc.get("group") is not None
                                else proc.get("gid"))
    act[f"{prefix}.cmdline"] = _cmdline([str(a) for a in proc.get("cmdline") or []])
    _env_values(prefix, proc.get("environment") or {}, act)


def _vendor(path: str) -> bool:
    return path.startswith(_VENDOR)


def actual_values(facts: Mapping[str, Any]) -> dict[str, str | None]:
    """The runtime components of one node's facts (nothing when the facts module was not asked
    for the runtime class: no `units` section)."""
    act: dict[str, str | None] = {}
    units = facts.get("units")
    if not isinstance(units, Mapping) or units.get("error"):
        return act
    processes = facts.get("processes") if isinstance(facts.get("processes"), Mapping) else {}
    for name, unit in units.items():
        if not isinstance(unit, Mapping) or unit.get("load") != "loaded":
            continue
        u = f"unit.{name}"
        act[f"{u}.user"] = _s(unit.get("user"))
        act[f"{u}.group"] = _s(unit.get("group")) or "(none)"
        act[f"{u}.exec_start"] = " ; ".join(" ".join(a) for a in unit.get("exec_start") or [])
        fragment = str(unit.get("fragment") or "")
        act[f"{u}.fragment"] = re.sub(r"^/usr/lib/systemd/", "/lib/systemd/", fragment) or None
        act[f"{u}.environment_files"] = ", ".join(unit.get("environment_files") or []) or "none"
        _env_values(u, unit.get("environment") or {}, act)
        for path in unit.get("drop_ins") or []:
            if not _vendor(str(path)):
                act[f"{u}.drop_in.{path}"] = "present"
        act[f"{u}.daemon_reload"] = (
            "needed: unit file changed on disk, not reloaded (systemctl daemon-reload)"
            if unit.get("need_daemon_reload") else "not needed")
        proc = (processes or {}).get(name)
        if isinstance(proc, Mapping) and not proc.get("error"):
            _process(f"process.{name}", proc, act)
            for child in proc.get("children") or []:
                exe = str(child.get("exe") or "")
                if exe:
                    _process(f"process.{name}.{exe.rsplit('/', 1)[-1]}", child, act)
            act[f"{u}.settings"] = _staleness(proc)
    manager = facts.get("manager_environment")
    if isinstance(manager, Mapping):
        for name, value in manager.items():
            act[f"systemd.environment.{name}"] = (
                "set (value not read)" if value is None else str(value))
    docker = facts.get("docker")
    paths = docker.get("runtime_paths") if isinstance(docker, Mapping) else None
    if isinstance(docker, Mapping) and isinstance(paths, Mapping):
        for name, path in paths.items():
            act[f"docker.runtime.{name}"] = _s(path) or "(no path)"
        act["docker.runtime.default"] = _s(docker.get("default_runtime"))
    commands = facts.get("commands")
    if isinstance(commands, Mapping) and not commands.get("error"):
        for name, entry in commands.items():
            if not isinstance(entry, Mapping):
                continue
            c = f"command.{name}"
            act[f"{c}.path"] = _s(entry.get("path")) or "not found"
            act[f"{c}.target"] = _s(entry.get("target")) or "not found"
            alt = entry.get("alternative")
            if isinstance(alt, Mapping):
                act[f"{c}.alternative"] = _s(alt.get("value"))
    driver = facts.get("nvidia_driver")
    params = driver.get("params") if isinstance(driver, Mapping) else None
    if isinstance(params, Mapping):
        for name, value in params.items():
            act[f"nvidia_driver.param.{name}"] = _s(value)
    return act


def _staleness(proc: Mapping[str, Any]) -> str:
    started = proc.get("started")
    if not isinstance(started, int | float):
        return "unknown"
    newer = sorted((float(m), str(p)) for p, m in (proc.get("settings_mtimes") or {}).items()
                   if isinstance(m, int | float) and m > started + _SLACK)
    if not newer:
        return "current"
    mtime, path = newer[-1]
    return (f"running older settings, not restarted: {path} changed {_when(mtime)}, the process "
            f"started {_when(float(started))}")


# --------------------------------------------------------------------------- per node


def node_expected(exp: Mapping[str, str | None], act: Mapping[str, str | None],
                  asked: bool = True) -> dict[str, str | None]:
    """This node's expectation: the environment's, without the runtime class when the facts
    module was not asked for it (`asked`: the facts have a `units` section, even a failed
    one), `{arch}` filled in from the node's architecture, and every name the node has that
    nothing expects expected absent."""
    out = dict(exp)
    if not asked:
        return {c: v for c, v in out.items() if not c.startswith(PREFIXES)}
    arch = _ARCH.get(str(act.get("os.architecture")), str(act.get("os.architecture")))
    for comp, value in list(out.items()):
        if value is not None and "{arch}" in value and comp.startswith(PREFIXES):
            out[comp] = value.replace("{arch}", arch)
    for comp in act:
        if comp in out:
            continue
        parts = comp.split(".")
        if comp.startswith("unit.") and ".drop_in." in comp:
            unit = parts[1]
            path = comp.split(".drop_in.", 1)[1]
            if path not in ROLE_DROP_INS.get(unit, ()):
                out[comp] = ABSENT
        elif comp.startswith(("unit.", "process.")) and ".environment." in comp:
            name = comp.split(".environment.", 1)[1]
            if name not in SYSTEMD_NAMES:
                out[comp] = ABSENT
        elif comp.startswith(("unit.", "process.")) and comp.endswith((".daemon_reload",
                                                                        ".settings")):
            out[comp] = "not needed" if comp.endswith(".daemon_reload") else "current"
        elif comp.startswith("systemd.environment."):
            if comp.split("systemd.environment.", 1)[1] not in MANAGER_NAMES:
                out[comp] = ABSENT
        elif comp.startswith("docker.runtime.") and comp != "docker.runtime.default" \
                and comp[len("docker.runtime."):] not in BUILTIN_RUNTIMES:
            out[comp] = ABSENT
        elif comp == "command.nvidia-smi.path" and act[comp] != "not found":
            out[comp] = "/usr/bin/nvidia-smi"
    return out


def detail(component: str, act: Mapping[str, str | None]) -> str:
    """What to do about a runtime deviation (the report's detail)."""
    if ".drop_in." in component:
        return ("a drop-in no role wrote: stacklock configure removes it (daemon-reload and "
                "restart); if it must stay, waive it (parity.waivers, item "
                f"{component})")
    if component.endswith(".daemon_reload"):
        return "stacklock configure reloads systemd and restarts the unit"
    if component.endswith(".settings"):
        return "stacklock configure restarts the unit"
    if component.startswith("systemd.environment."):
        return ("set in the service manager's environment (systemctl set-environment): "
                "stacklock configure unsets it and restarts the units")
    if ".environment." in component:
        return ("an environment variable the unit does not set: stacklock configure removes "
                "the drop-in or manager setting that adds it and restarts the unit")
    if component.startswith("docker.runtime."):
        return "stacklock configure writes /etc/docker/daemon.json again and restarts Docker"
    if component.startswith("command."):
        return ("stacklock configure sets the alternative back; a file shadowing the command "
                "earlier on the PATH is reported here and must be removed or waived")
    return ""
