# Copyright: stacklock contributors. Apache-2.0.
"""``services``: the systemd state of the stack's units (one ``systemctl show``)."""

from __future__ import annotations

import re
from typing import Any

from ansible.module_utils.stacklock_facts.common import ProbeError, cmd_error
from ansible.module_utils.stacklock_facts.node import System
from ansible.module_utils.stacklock_facts.run import Run

SERVICES = ("torchserve", "docker")


def probe_services(sy: System) -> dict[str, Any]:
    out: dict[str, Any] = {}
    systemctl = sy.which("systemctl")
    if not systemctl:
        return {n: {"error": "systemctl not found"} for n in SERVICES}
    argv = [systemctl, "show", "--no-pager",
            "-p", "Id", "-p", "LoadState", "-p", "ActiveState", "-p", "SubState",
            "-p", "UnitFileState", *[f"{n}.service" for n in SERVICES]]
    try:
        res = sy.run(argv)
    except ProbeError as exc:
        return {n: {"error": str(exc)} for n in SERVICES}
    blocks = [b for b in re.split(r"\n\s*\n", res.stdout.strip()) if b.strip()]
    if res.rc != 0 or len(blocks) != len(SERVICES):
        return {n: {"error": cmd_error(argv, res)} for n in SERVICES}
    for name, block in zip(SERVICES, blocks, strict=False):
        kv = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        out[name] = {
            "load": kv.get("LoadState"),
            "active": kv.get("ActiveState"),
            "sub": kv.get("SubState"),
            "enabled": kv.get("UnitFileState") or None,
        }
    return out


def collect(run: Run) -> None:
    """`services`; a unit that could not be read is also an error of its own
    (`services.NAME`)."""
    run.facts["services"] = services = run.section("services", probe_services, run.sy)
    for name, svc in (services or {}).items():
        if isinstance(svc, dict) and svc.get("error"):
            run.errors[f"services.{name}"] = svc["error"]


# --------------------------------------------------------------------------- units (runtime)

#: what `units` reads of each unit (`systemctl show`): the effective settings, as systemd
#: holds them now, whatever file (fragment, drop-in, transient) they came from
UNIT_PROPERTIES = ("Id", "LoadState", "ActiveState", "SubState", "User", "Group", "ExecStart",
                   "Environment", "EnvironmentFiles", "DropInPaths", "NeedDaemonReload",
                   "FragmentPath", "MainPID")


def parse_exec(values: list[str]) -> list[list[str]]:
    """The argv of each command of an `ExecStart=` value (`{ path=... ; argv[]=... ; ... }`),
    without the run-time fields (start_time, pid, status) that change on every start."""
    out = []
    for value in values:
        for m in re.finditer(r"argv\[\]=(.*?) ; (?:ignore_errors|flags)=", value):
            out.append(m.group(1).split(" "))
    return out


def parse_environment(values: list[str]) -> dict[str, str]:
    """`Environment=` as systemd prints it (space-separated, C-quoted where needed)."""
    import shlex

    env: dict[str, str] = {}
    for value in values:
        try:
            words = shlex.split(value)
        except ValueError:
            words = value.split()
        for word in words:
            name, sep, val = word.partition("=")
            if sep:
                env[name] = val
    return env


def parse_show(text: str, units: list[str]) -> dict[str, dict[str, list[str]]]:
    """`systemctl show` of several units: {unit: {property: [values]}} (a property can repeat,
    e.g. one `EnvironmentFiles=` line per file). Blocks come in the order of the units."""
    blocks = [b for b in re.split(r"\n\s*\n", text.strip()) if b.strip()]
    if len(blocks) != len(units):
        raise ProbeError(f"systemctl show: {len(blocks)} blocks for {len(units)} units")
    out: dict[str, dict[str, list[str]]] = {}
    for name, block in zip(units, blocks, strict=True):
        props: dict[str, list[str]] = {}
        for line in block.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                props.setdefault(key, []).append(value)
        out[name] = props
    return out


def _unit_entry(sy: System, props: dict[str, list[str]]) -> dict[str, Any]:
    def one(key: str) -> str:
        return (props.get(key) or [""])[-1]

    load = one("LoadState")
    entry: dict[str, Any] = {"load": load or None, "active": one("ActiveState") or None,
                             "sub": one("SubState") or None}
    if load != "loaded":
        return entry
    drop_ins = [p for v in props.get("DropInPaths", []) for p in v.split() if p]
    env_files = []
    for v in props.get("EnvironmentFiles", []):
        for m in re.finditer(r"(\S+) \(ignore_errors=(yes|no)\)", v):
            env_files.append(("-" if m.group(2) == "yes" else "") + m.group(1))
    pid = one("MainPID")
    fragment = one("FragmentPath") or None
    entry.update({
        "user": one("User") or "root",
        "group": one("Group") or None,
        "exec_start": parse_exec(props.get("ExecStart", [])),
        "environment": parse_environment(props.get("Environment", [])),
        "environment_files": env_files,
        "drop_ins": drop_ins,
        "need_daemon_reload": one("NeedDaemonReload") == "yes",
        "fragment": fragment,
        "main_pid": int(pid) if pid.isdigit() else 0,
    })
    # when each file that makes up the unit last changed (a process started before is running
    # older settings)
    entry["mtimes"] = {}
    for path in [fragment, *drop_ins]:
        ident = sy.file_identity(path) if path else None
        if ident:
            entry["mtimes"][path] = ident[3] / 1e9
    return entry


def probe_units(sy: System, units: list[str]) -> dict[str, Any]:
    """{unit: {load, active, sub, user, group, exec_start, environment, environment_files,
    drop_ins, need_daemon_reload, fragment, main_pid, mtimes}} plus `manager_environment`
    (`systemctl show-environment`: what every unit started from now on inherits)."""
    systemctl = sy.which("systemctl")
    if not systemctl:
        raise ProbeError("systemctl not found")
    names = [u if "." in u else f"{u}.service" for u in units]
    argv = [systemctl, "show", "--no-pager"]
    for prop in UNIT_PROPERTIES:
        argv += ["-p", prop]
    res = sy.run(argv + names)
    if res.rc != 0:
        raise ProbeError(cmd_error(argv, res))
    parsed = parse_show(res.stdout, units)
    out: dict[str, Any] = {"units": {u: _unit_entry(sy, parsed[u]) for u in units}}
    env_argv = [systemctl, "show-environment"]
    res = sy.run(env_argv)
    if res.rc != 0:
        raise ProbeError(cmd_error(env_argv, res))
    manager: dict[str, str] = {}
    for line in res.stdout.splitlines():
        name, sep, value = line.partition("=")
        if sep:
            manager[name] = value
    out["manager_environment"] = manager
    return out


def collect_units(run: Run) -> None:
    """`units` and `manager_environment`, for the units the `units` option names (none: the
    section is left out)."""
    units = [str(u) for u in run.opts.get("units") or []]
    if not units:
        return
    got = run.section("units", probe_units, run.sy, units)
    if isinstance(got, dict) and "units" in got:
        run.facts["units"] = got["units"]
        run.facts["manager_environment"] = got["manager_environment"]
    else:
        run.facts["units"] = got
