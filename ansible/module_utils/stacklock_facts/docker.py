# Copyright: stacklock contributors. Apache-2.0.
"""``docker``: the engine's version and its default runtime (``docker info``, else
``dockerd --version``, /etc/docker/daemon.json and the package)."""

from __future__ import annotations

import json
import re
from typing import Any

from ansible.module_utils.stacklock_facts.common import (
    ProbeError,
    cmd_error,
    upstream_version,
)
from ansible.module_utils.stacklock_facts.node import System
from ansible.module_utils.stacklock_facts.run import Run

DOCKER_PACKAGES = ("docker-ce", "docker.io", "moby-engine", "docker-engine")


def probe_docker(sy: System, dpkg: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"version": None, "raw_version": None, "source": None,
                           "default_runtime": None, "default_runtime_source": None,
                           "runtimes": [], "package": None}
    errors = []
    docker = sy.which("docker")
    if docker:
        argv = [docker, "info", "--format", "{{json .}}"]
        try:
            res = sy.run(argv)
            if res.rc == 0:
                info = json.loads(res.stdout.strip().splitlines()[-1])
                out["raw_version"] = info.get("ServerVersion")
                out["source"] = "docker info"
                out["default_runtime"] = info.get("DefaultRuntime")
                out["default_runtime_source"] = "docker info" if out["default_runtime"] else None
                out["runtimes"] = sorted((info.get("Runtimes") or {}).keys())
                # the effective runtimes, as the running daemon holds them (runtime class)
                out["runtime_paths"] = {
                    str(k): (v.get("path") if isinstance(v, dict) else None)
                    for k, v in (info.get("Runtimes") or {}).items()}
            else:
                errors.append(cmd_error(argv, res))
        except (ProbeError, ValueError, IndexError) as exc:
            errors.append(f"docker info: {exc}")
    if not out["raw_version"]:
        dockerd = sy.which("dockerd")
        if dockerd:
            try:
                res = sy.run([dockerd, "--version"])
                m = re.search(r"version ([0-9][^\s,]*)", res.stdout)
                if res.rc == 0 and m:
                    out["raw_version"], out["source"] = m.group(1), "dockerd --version"
            except ProbeError as exc:
                errors.append(str(exc))
    for name in DOCKER_PACKAGES:
        e = (dpkg or {}).get(name)
        if e and e["version"]:
            out["package"] = {"name": name, "version": e["version"]}
            if not out["raw_version"]:
                out["raw_version"], out["source"] = e["version"], "package"
            break
    out["version"] = upstream_version(out["raw_version"])
    if not out["default_runtime"]:
        try:
            text = sy.read_text("/etc/docker/daemon.json")
            conf = json.loads(text) if text and text.strip() else {}
            if conf.get("default-runtime"):
                out["default_runtime"] = conf["default-runtime"]
                out["default_runtime_source"] = "/etc/docker/daemon.json"
            out["runtimes"] = sorted(set(out["runtimes"]) | set(conf.get("runtimes") or {}))
        except (ProbeError, ValueError, AttributeError) as exc:
            errors.append(f"/etc/docker/daemon.json: {exc}")
        if not out["default_runtime"] and out["version"]:
            out["default_runtime"], out["default_runtime_source"] = "runc", "docker default"
    if errors:
        out["warnings"] = errors
    if errors and not out["version"]:
        out["error"] = "; ".join(errors)
    return out


def collect(run: Run) -> None:
    run.facts["docker"] = run.section("docker", probe_docker, run.sy, run.dpkg)
