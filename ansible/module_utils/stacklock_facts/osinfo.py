# Copyright: stacklock contributors. Apache-2.0.
"""``os``: the distribution (/etc/os-release), kernel, architecture and hostname."""

from __future__ import annotations

from typing import Any

from ansible.module_utils.stacklock_facts.node import System
from ansible.module_utils.stacklock_facts.run import Run


def probe_os(sy: System) -> dict[str, Any]:
    out: dict[str, Any] = dict(sy.uname())
    text = sy.read_text("/etc/os-release")
    values = {}
    for line in (text or "").splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            values[k.strip()] = v.strip().strip('"').strip("'")
    out.update({
        "distribution": values.get("ID"),
        "release": values.get("VERSION_ID"),
        "codename": values.get("VERSION_CODENAME"),
        "pretty_name": values.get("PRETTY_NAME"),
    })
    if text is None:
        out["error"] = "/etc/os-release not found"
    return out


def collect(run: Run) -> None:
    run.facts["os"] = run.section("os", probe_os, run.sy)
