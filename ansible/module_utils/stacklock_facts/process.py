# Copyright: stacklock contributors. Apache-2.0.
"""``processes``: the main process of each unit in ``units`` (and its direct children, e.g.
TorchServe's Java frontend under its Python launcher) as the kernel sees it: /proc/PID/exe,
cmdline, the uid/gid of /proc/PID/status, the environment (/proc/PID/environ) and when it
started, with the modification times of the files its settings come from (the unit's files and
the ``watch_files`` option's ``UNIT=PATH`` entries).

Environment values are reported only for the names that decide how the stack runs
(``SHOWN``); any other name is reported with the value None, so that a secret in a service's
environment never leaves the node, while its presence still does."""

from __future__ import annotations

import os
import re
from typing import Any

from ansible.module_utils.stacklock_facts.common import CannotLook, ProbeError
from ansible.module_utils.stacklock_facts.node import System
from ansible.module_utils.stacklock_facts.run import Run

#: environment names whose values are reported (the ones the units set, the loader's, the
#: interpreters', TorchServe's)
SHOWN = re.compile(
    r"^(PATH|LANG|LANGUAGE|LC_[A-Z_]+|HOME|USER|LOGNAME|SHELL|TEMP|TMP|TMPDIR|LOG_LOCATION"
    r"|METRICS_LOCATION|LD_[A-Z_]+|PYTHON[A-Z_]*|JAVA_TOOL_OPTIONS|_JAVA_OPTIONS"
    r"|JDK_JAVA_OPTIONS|JAVA_HOME|CLASSPATH|TS_[A-Z0-9_]+|CUDA_[A-Z_]+|NVIDIA_[A-Z_]+"
    r"|DOCKER_[A-Z_]+|OMP_NUM_THREADS|MKL_[A-Z_]+)$")

#: USER_HZ, the unit of /proc/PID/stat's start time (100 on every Linux architecture)
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def parse_status(text: str) -> dict[str, int]:
    """{uid, gid} (the effective ids) of /proc/PID/status."""
    out = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("Uid", "Gid"):
            ids = rest.split()
            out[key.lower()] = int(ids[1])
    return out


def parse_environ(raw: str) -> dict[str, str | None]:
    """/proc/PID/environ (NUL-separated): the values of SHOWN names, None for the others."""
    env: dict[str, str | None] = {}
    for item in raw.split("\0"):
        name, sep, value = item.partition("=")
        if sep and name:
            env[name] = value if SHOWN.match(name) else None
    return env


def start_time(stat_text: str, proc_stat: str) -> float:
    """When the process started (epoch seconds): /proc/stat's btime + /proc/PID/stat's 22nd
    field (clock ticks after boot). The command name (field 2) may hold spaces."""
    fields = stat_text[stat_text.rindex(")") + 2:].split()
    ticks = int(fields[19])  # field 22 of the whole line
    m = re.search(r"^btime (\d+)$", proc_stat, re.M)
    if not m:
        raise ProbeError("/proc/stat: no btime")
    return int(m.group(1)) + ticks / CLK_TCK


def read_exe(sy: System, pid: int, ids: dict[str, int]) -> str:
    """/proc/PID/exe's target. Root without CAP_SYS_PTRACE (a container's root, as on the lab
    nodes) may not read it for another user's process; the process's own user may, so it is
    read again as that user (`setpriv`, util-linux). CannotLook when neither works."""
    link = f"/proc/{pid}/exe"
    try:
        return sy.realpath(link)
    except OSError as exc:
        first = exc
    setpriv = sy.which("setpriv")
    if setpriv and "uid" in ids and "gid" in ids:
        argv = [setpriv, f"--reuid={ids['uid']}", f"--regid={ids['gid']}", "--clear-groups",
                "readlink", link]
        try:
            res = sy.run(argv)
        except ProbeError:
            res = None
        if res is not None and res.rc == 0 and res.stdout.strip():
            return res.stdout.strip()
    raise CannotLook(f"{link}: {first}")


def _names(sy: System, path: str) -> dict[int, str]:
    text = sy.read_text(path) or ""
    out = {}
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) > 2 and parts[2].isdigit():
            out.setdefault(int(parts[2]), parts[0])
    return out


def read_process(sy: System, pid: int, proc_stat: str, users: dict[int, str],
                 groups: dict[int, str]) -> dict[str, Any]:
    base = f"/proc/{pid}"
    status = sy.read_text(f"{base}/status")
    if status is None:
        return {"pid": pid, "error": f"{base}: no such process"}
    ids = parse_status(status)
    out: dict[str, Any] = {
        "pid": pid,
        "exe": read_exe(sy, pid, ids),
        "cmdline": [a for a in (sy.read_text(f"{base}/cmdline") or "").split("\0") if a],
        "uid": ids.get("uid"), "gid": ids.get("gid"),
        "user": users.get(ids.get("uid", -1)), "group": groups.get(ids.get("gid", -1)),
        "environment": parse_environ(sy.read_text(f"{base}/environ") or ""),
        "started": round(start_time(sy.read_text(f"{base}/stat") or "", proc_stat), 2),
    }
    return out


def probe_processes(sy: System, units: dict[str, Any], watch: list[str]) -> dict[str, Any]:
    proc_stat = sy.read_text("/proc/stat") or ""
    users, groups = _names(sy, "/etc/passwd"), _names(sy, "/etc/group")
    watched: dict[str, list[str]] = {}
    for item in watch:
        unit, sep, path = item.partition("=")
        if sep and path:
            watched.setdefault(unit, []).append(path)
    out: dict[str, Any] = {}
    for name, unit in sorted(units.items()):
        if not isinstance(unit, dict) or not unit.get("main_pid"):
            continue
        pid = int(unit["main_pid"])
        entry = read_process(sy, pid, proc_stat, users, groups)
        children = []
        for child in (sy.read_text(f"/proc/{pid}/task/{pid}/children") or "").split():
            if child.isdigit():
                sub = read_process(sy, int(child), proc_stat, users, groups)
                if "error" not in sub:
                    children.append(sub)
        entry["children"] = children
        mtimes = dict(unit.get("mtimes") or {})
        for path in watched.get(name, []):
            ident = sy.file_identity(path)
            mtimes[path] = ident[3] / 1e9 if ident else None
        entry["settings_mtimes"] = mtimes
        out[name] = entry
    return out


def collect(run: Run) -> None:
    """`processes`, after `units` (their main PIDs)."""
    units = run.facts.get("units")
    if not isinstance(units, dict) or units.get("error"):
        return
    run.facts["processes"] = run.section(
        "processes", probe_processes, run.sy, units,
        [str(w) for w in run.opts.get("watch_files") or []])
