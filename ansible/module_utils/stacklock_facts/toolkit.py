# Copyright: stacklock contributors. Apache-2.0.
"""``nvidia_container_toolkit``: ``nvidia-ctk --version``, else its packages."""

from __future__ import annotations

import re
from typing import Any

from ansible.module_utils.stacklock_facts.common import (
    ProbeError,
    cmd_error,
    upstream_version,
)
from ansible.module_utils.stacklock_facts.node import System
from ansible.module_utils.stacklock_facts.run import Run

TOOLKIT_PACKAGES = ("nvidia-container-toolkit", "nvidia-container-toolkit-base")


def probe_toolkit(sy: System, dpkg: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"version": None, "source": None, "packages": {}}
    for name in TOOLKIT_PACKAGES:
        e = (dpkg or {}).get(name)
        if e and e["version"]:
            out["packages"][name] = e["version"]
    ctk = sy.which("nvidia-ctk")
    err = None
    if ctk:
        try:
            res = sy.run([ctk, "--version"])
            m = re.search(r"version (\d+\.\d+\.\d+)", res.stdout)
            if res.rc == 0 and m:
                out["version"], out["source"] = m.group(1), "nvidia-ctk"
            else:
                err = cmd_error([ctk, "--version"], res)
        except ProbeError as exc:
            err = str(exc)
    if not out["version"]:
        for name in TOOLKIT_PACKAGES:
            if name in out["packages"]:
                out["version"] = upstream_version(out["packages"][name])
                out["source"] = "package"
                break
    if err and not out["version"]:
        out["error"] = err
    return out


def collect(run: Run) -> None:
    run.facts["nvidia_container_toolkit"] = run.section("nvidia_container_toolkit",
                                                        probe_toolkit, run.sy, run.dpkg)
