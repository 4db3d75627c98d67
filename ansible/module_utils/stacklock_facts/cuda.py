# Copyright: stacklock contributors. Apache-2.0.
"""``cuda``: the CUDA toolkit (nvcc, /usr/local/cuda/version.json or version.txt, the
``cuda-*`` / ``libcudart*`` packages)."""

from __future__ import annotations

import json
import re
from typing import Any

from ansible.module_utils.stacklock_facts.common import (
    ProbeError,
    cmd_error,
    major_minor,
    upstream_version,
)
from ansible.module_utils.stacklock_facts.node import System
from ansible.module_utils.stacklock_facts.run import Run

CUDA_PACKAGE_RE = re.compile(
    r"^(cuda-toolkit-\d+-\d+|cuda-cudart-\d+-\d+|cuda-nvcc-\d+-\d+|cuda-runtime-\d+-\d+"
    r"|cuda-libraries-\d+-\d+|libcudart\d+(\.\d+)?|nvidia-cuda-toolkit)$"
)


def probe_cuda(sy: System, dpkg: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"version": None, "full_version": None, "source": None, "nvcc": None,
                           "version_json": None, "packages": {}}
    errors = []
    nvcc = sy.which("nvcc")
    if not nvcc:
        for cand in ["/usr/local/cuda/bin/nvcc", *sy.glob("/usr/local/cuda-*/bin/nvcc")[::-1]]:
            if sy.exists(cand):
                nvcc = cand
                break
    if nvcc:
        try:
            res = sy.run([nvcc, "--version"])
            m = re.search(r"release (\d+\.\d+), V(\d+\.\d+\.\d+)", res.stdout)
            if res.rc == 0 and m:
                out["nvcc"] = {"path": nvcc, "release": m.group(1), "version": m.group(2)}
            else:
                errors.append(cmd_error([nvcc, "--version"], res))
        except ProbeError as exc:
            errors.append(str(exc))
    try:
        text = sy.read_text("/usr/local/cuda/version.json")
        if text is not None:
            data = json.loads(text)
            out["version_json"] = (data.get("cuda") or {}).get("version")
        else:
            txt = sy.read_text("/usr/local/cuda/version.txt")
            m = re.search(r"CUDA Version (\d+\.\d+(?:\.\d+)?)", txt or "")
            if m:
                out["version_json"] = m.group(1)
    except (ProbeError, ValueError, AttributeError) as exc:
        errors.append(f"/usr/local/cuda/version.json: {exc}")
    for name in sorted(dpkg or {}):
        if (dpkg or {})[name]["version"] and CUDA_PACKAGE_RE.match(name):
            out["packages"][name] = (dpkg or {})[name]["version"]
    pkg_full = None
    for rx in (r"^cuda-toolkit-(\d+)-(\d+)$", r"^cuda-cudart-(\d+)-(\d+)$",
               r"^cuda-runtime-(\d+)-(\d+)$", r"^cuda-nvcc-(\d+)-(\d+)$"):
        hits = sorted(n for n in out["packages"] if re.match(rx, n))
        if hits:
            name = hits[-1]
            hit = re.match(rx, name)
            assert hit is not None
            mm = f"{hit.group(1)}.{hit.group(2)}"
            full = upstream_version(out["packages"][name])
            pkg_full = full if major_minor(full) == mm else mm
            break
    if pkg_full is None:
        for name in sorted(out["packages"]):
            if name.startswith("libcudart") or name == "nvidia-cuda-toolkit":
                pkg_full = upstream_version(out["packages"][name])
    if out["nvcc"]:
        out["full_version"], out["source"] = out["nvcc"]["version"], "nvcc"
    elif out["version_json"]:
        out["full_version"], out["source"] = out["version_json"], "version.json"
    elif pkg_full:
        out["full_version"], out["source"] = pkg_full, "package"
    out["version"] = major_minor(out["full_version"])
    if errors and not out["version"]:
        out["error"] = "; ".join(errors)
    return out


def collect(run: Run) -> None:
    run.facts["cuda"] = run.section("cuda", probe_cuda, run.sy, run.dpkg)
