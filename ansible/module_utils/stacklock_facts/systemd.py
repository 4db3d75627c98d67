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
