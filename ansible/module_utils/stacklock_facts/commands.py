# Copyright: stacklock contributors. Apache-2.0.
"""``commands``: what each command the stack relies on resolves to, on the PATH of the unit
that runs it (the ``commands`` option: ``NAME=UNIT``; no unit: systemd's default PATH): the
first match on that PATH, its ``readlink -f`` target, and update-alternatives' current choice
where the command goes through /etc/alternatives."""

from __future__ import annotations

import os
import re
from typing import Any

from ansible.module_utils.stacklock_facts.common import ProbeError
from ansible.module_utils.stacklock_facts.node import System
from ansible.module_utils.stacklock_facts.run import Run

#: the PATH systemd gives a unit that sets none (and `systemctl show-environment` on Debian)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def alternative(sy: System, name: str) -> dict[str, Any] | None:
    """{name, value, mode} of the alternative NAME (update-alternatives --query), or None."""
    link = f"/etc/alternatives/{name}"
    if not sy.exists(link):
        return None
    out: dict[str, Any] = {"name": name, "value": sy.realpath(link), "mode": None}
    tool = sy.which("update-alternatives")
    if tool:
        try:
            res = sy.run([tool, "--query", name])
            if res.rc == 0:
                m = re.search(r"^Status: (\S+)$", res.stdout, re.M)
                out["mode"] = m.group(1) if m else None
                m = re.search(r"^Value: (\S+)$", res.stdout, re.M)
                if m:
                    out["value"] = m.group(1)
        except ProbeError:
            pass
    return out


def resolve(sy: System, name: str, path: str) -> dict[str, Any]:
    found = None
    for folder in path.split(":"):
        cand = os.path.join(folder or ".", name)
        if folder and sy.exists(cand):
            found = cand
            break
    out: dict[str, Any] = {"path": found, "search_path": path,
                           "target": sy.realpath(found) if found else None}
    if found:
        # the alternative the command goes through: /usr/bin/java -> /etc/alternatives/java
        alt = alternative(sy, name) or alternative(sy, f"nvidia--{name}")
        if alt:
            out["alternative"] = alt
    return out


def probe_commands(sy: System, wanted: list[str], units: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in wanted:
        name, _, unit = item.partition("=")
        entry = (units or {}).get(unit) if unit else None
        env = entry.get("environment") if isinstance(entry, dict) else None
        path = (env or {}).get("PATH") or DEFAULT_PATH
        out[name] = dict(resolve(sy, name, path), unit=unit or None)
    return out


def collect(run: Run) -> None:
    """`commands`, after `units` (their PATH)."""
    wanted = [str(c) for c in run.opts.get("commands") or []]
    if not wanted:
        return
    units = run.facts.get("units")
    run.facts["commands"] = run.section("commands", probe_commands, run.sy, wanted,
                                        units if isinstance(units, dict) else {})
