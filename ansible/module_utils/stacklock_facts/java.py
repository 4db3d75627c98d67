# Copyright: stacklock contributors. Apache-2.0.
"""``java``: the JDK TorchServe runs on (its ``release`` file, else ``java -version``, else the
openjdk package)."""

from __future__ import annotations

import os
import re
from typing import Any

from ansible.module_utils.stacklock_facts.common import (
    ProbeError,
    cmd_error,
    upstream_version,
)
from ansible.module_utils.stacklock_facts.node import System
from ansible.module_utils.stacklock_facts.run import Run


def probe_java(sy: System, dpkg: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"version": None, "major": None, "source": None, "packages": {}}
    for name in sorted(dpkg or {}):
        if re.match(r"^openjdk-\d+-(jre|jdk)(-headless)?$", name) and (dpkg or {})[name]["version"]:
            out["packages"][name] = (dpkg or {})[name]["version"]
    java = sy.which("java") or next(iter(sy.glob("/usr/lib/jvm/*/bin/java")[::-1]), None)
    err = None
    if java:
        # the JDK's `release` file next to bin/java: no JVM start (30 nodes on 2 cores...)
        home = os.path.dirname(os.path.dirname(sy.realpath(java)))
        try:
            text = sy.read_text(os.path.join(home, "release")) or ""
        except ProbeError:
            text = ""
        m = re.search(r'^JAVA_VERSION="([^"]+)"', text, re.M)
        if m:
            out["version"], out["source"] = m.group(1), os.path.join(home, "release")
            out["home"] = home
    if java and not out["version"]:
        try:
            res = sy.run([java, "-version"])
            text = res.stderr + res.stdout
            m = re.search(r'version "([^"]+)"', text)
            if res.rc == 0 and m:
                out["version"], out["source"] = m.group(1), "java -version"
            else:
                err = cmd_error([java, "-version"], res)
        except ProbeError as exc:
            err = str(exc)
    if out["version"]:
        v = out["version"]
        out["major"] = v.split(".")[1] if v.startswith("1.") else re.split(r"[.+_-]", v)[0]
    elif out["packages"]:
        name = sorted(out["packages"])[-1]
        jdk = re.match(r"^openjdk-(\d+)", name)
        assert jdk is not None  # the packages above all match it
        out["major"] = jdk.group(1)
        out["version"], out["source"] = upstream_version(out["packages"][name]), "package"
    if err and not out["major"]:
        out["error"] = err
    return out


def collect(run: Run) -> None:
    run.facts["java"] = run.section("java", probe_java, run.sy, run.dpkg)
