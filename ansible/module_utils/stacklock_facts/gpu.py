# Copyright: stacklock contributors. Apache-2.0.
"""``gpu`` and ``nvidia_driver``: the GPUs and the driver that runs them (NVML, then
nvidia-smi, then /proc/driver/nvidia), the driver's dpkg packages, and which installed kernels
have the NVIDIA kernel module."""

from __future__ import annotations

import os
import re
from typing import Any

from ansible.module_utils.stacklock_facts.common import (
    CANNOT_LOOK,
    ProbeError,
    cmd_error,
    upstream_version,
)
from ansible.module_utils.stacklock_facts.node import System
from ansible.module_utils.stacklock_facts.run import Run

#: dpkg names that carry the NVIDIA driver (Debian, Ubuntu, NVIDIA's CUDA repository)
DRIVER_PACKAGE_RE = re.compile(
    r"^(nvidia-driver(-\d+)?(-open|-server|-server-open)?|nvidia-open(-\d+)?|cuda-drivers(-\d+)?"
    r"|nvidia-kernel-(dkms|open-dkms|source|common(-\d+)?)|nvidia-open-kernel-dkms"
    r"|nvidia-dkms-\d+(-open|-server)?"
    r"|libnvidia-compute-\d+(-server)?|nvidia-utils-\d+(-server)?|nvidia-headless-\d+.*"
    r"|nvidia-smi|firmware-nvidia-gsp.*|nvidia-firmware-\d+.*|libcuda1)$"
)
#: the package whose upstream version is the driver version, most specific first
DRIVER_VERSION_PACKAGE_RE = (
    re.compile(r"^nvidia-driver(-\d+)?(-open|-server|-server-open)?$"),
    re.compile(r"^cuda-drivers(-\d+)?$"),
    re.compile(r"^nvidia-open(-\d+)?$"),
    re.compile(r"^nvidia-(open-)?kernel-(open-)?dkms$"),
    re.compile(r"^nvidia-dkms-\d+(-open|-server)?$"),
    re.compile(r"^libnvidia-compute-\d+(-server)?$"),
    re.compile(r"^nvidia-utils-\d+(-server)?$"),
    re.compile(r"^libcuda1$"),
)
#: the driver's main kernel module file (Debian's DKMS package names it nvidia-current)
NVIDIA_KO_RE = re.compile(r"^nvidia(-current)?\.ko(\.(xz|zst|gz))?$")


def parse_nvidia_smi(text: str) -> list[dict[str, Any]]:
    gpus = []
    for i, line in enumerate(x for x in text.splitlines() if x.strip()):
        cols = [c.strip() for c in line.split(",")]
        if len(cols) < 4:
            raise ProbeError(f"unexpected nvidia-smi line: {line!r}")
        mem = re.match(r"^(\d+)", cols[3])
        gpus.append({
            "index": i,
            "name": cols[0],
            "driver_version": cols[1],
            "compute_capability": cols[2] if re.match(r"^\d+\.\d+$", cols[2]) else None,
            "memory_mib": int(mem.group(1)) if mem else None,
        })
    return gpus


def parse_proc_version(text: str | None) -> tuple[str | None, str | None]:
    """(`580.159.04`, `open`) from /proc/driver/nvidia/version."""
    m = re.search(r"Kernel Module(?:\s+for\s+\S+)?\s+(\d+\.\d+(?:\.\d+)?)", text or "")
    if not m or text is None:
        return None, None
    module = "open" if "Open Kernel Module" in text else "proprietary"
    return m.group(1), module


def probe_gpu(sy: System, use_nvml: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """GPUs and the running driver: NVML, then nvidia-smi, then /proc."""
    errors = []
    gpus: list[dict[str, Any]] | None = None
    source = None
    if use_nvml:
        try:
            found = sy.nvml()
            if found is not None:
                gpus, source = found, "nvml"
        except ProbeError as exc:
            errors.append(str(exc))
    if gpus is None:
        smi = sy.which("nvidia-smi")
        if smi:
            fields = "name,driver_version,compute_cap,memory.total"
            argv = [smi, "--query-gpu=" + fields, "--format=csv,noheader"]
            try:
                res = sy.run(argv)
                if res.rc != 0 and "compute_cap" in (res.stdout + res.stderr):
                    argv = [smi, "--query-gpu=name,driver_version,pci.bus_id,memory.total",
                            "--format=csv,noheader"]
                    res = sy.run(argv)
                if res.rc == 0:
                    gpus, source = parse_nvidia_smi(res.stdout), "nvidia-smi"
                else:
                    errors.append(cmd_error(argv, res))
            except ProbeError as exc:
                errors.append(str(exc))
    proc_text = None
    try:
        proc_text = sy.read_text("/proc/driver/nvidia/version")
    except ProbeError as exc:
        errors.append(str(exc))
    proc_version, kernel_module = parse_proc_version(proc_text) if proc_text else (None, None)
    if gpus is None and proc_text is not None:
        gpus, source = [], "proc"
        for d in sy.glob("/proc/driver/nvidia/gpus/*"):
            info = sy.read_text(os.path.join(d, "information")) or ""
            m = re.search(r"^Model:\s*(.+)$", info, re.M)
            gpus.append({"index": len(gpus), "name": m.group(1).strip() if m else None,
                         "driver_version": proc_version, "compute_capability": None,
                         "memory_mib": None})
    out: dict[str, Any] = {"present": bool(gpus), "count": len(gpus or []), "source": source,
                           "devices": gpus or []}
    if gpus:
        first = gpus[0]
        out.update({"name": first["name"], "compute_capability": first["compute_capability"],
                    "memory_mib": first["memory_mib"]})
        names = sorted({g["name"] for g in gpus if g["name"]})
        if len(names) > 1:
            out["name"] = ", ".join(names)
    else:
        out.update({"name": None, "compute_capability": None, "memory_mib": None})
    running = None
    if gpus and gpus[0].get("driver_version"):
        running = gpus[0]["driver_version"]
    elif proc_version:
        running = proc_version
    if errors and not gpus:
        out["error"] = "; ".join(errors)
    return out, {"running": running, "kernel_module": kernel_module,
                 "proc_version": proc_version,
                 "running_source": source if running and source != "proc" else
                 ("proc" if running else None)}


def probe_kernels(sy: System, root: str = "/lib/modules") -> dict[str, bool]:
    """{kernel release: True/False}: whether each installed kernel has the NVIDIA module.

    A kernel update whose DKMS build failed leaves the next boot without a driver; this shows
    it before the reboot. Kernels without modules.dep (leftover directories) are skipped."""
    out = {}
    for kdir in sy.glob(os.path.join(root, "*")):
        if not sy.exists(os.path.join(kdir, "modules.dep")):
            continue
        out[os.path.basename(kdir)] = any(
            NVIDIA_KO_RE.match(os.path.basename(f)) for f in sy.walk_files(kdir))
    return out


def probe_driver(running: dict[str, Any], dpkg: dict[str, dict[str, Any]] | None
                 ) -> dict[str, Any]:
    packages = {}
    version_from_pkg = None
    for name in sorted(dpkg or {}):
        e = (dpkg or {})[name]
        if e["version"] and DRIVER_PACKAGE_RE.match(name):
            packages[name] = e["version"]
    for rx in DRIVER_VERSION_PACKAGE_RE:
        hits = [n for n in packages if rx.match(n)]
        if hits:
            version_from_pkg = upstream_version(packages[sorted(hits)[-1]])
            break
    out = {
        "running_version": running["running"],
        "running_source": running["running_source"],
        "kernel_module": running["kernel_module"],
        "packages": packages,
        "package_version": version_from_pkg,
        "version": running["running"] or version_from_pkg,
        "source": running["running_source"] or ("package" if version_from_pkg else None),
    }
    return out


def parse_params(text: str) -> dict[str, str]:
    """/proc/driver/nvidia/params (`ResmanDebugLevel: 4294967295` lines) -> {name: value}."""
    out = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip():
            out[name.strip()] = value.strip()
    return out


def probe_params(sy: System) -> dict[str, str] | None:
    """The loaded NVIDIA module's parameters: /proc/driver/nvidia/params, else the files of
    /sys/module/nvidia/parameters; None when the module is not loaded (runtime class)."""
    text = sy.read_text("/proc/driver/nvidia/params")
    if text is not None:
        return parse_params(text)
    files = sy.glob("/sys/module/nvidia/parameters/*")
    if not files:
        return None
    return {os.path.basename(f): (sy.read_text(f) or "").strip() for f in files}


def collect(run: Run) -> None:
    """`gpu`, then `nvidia_driver` (the running driver from the GPU probe, its packages from
    dpkg, and the installed kernels with or without the module)."""
    gpu_and_driver = run.section("gpu", lambda: probe_gpu(run.sy, run.opts.get("use_nvml", True)))
    if isinstance(gpu_and_driver, tuple):
        run.facts["gpu"], running = gpu_and_driver
        # a probe that could not look (a timeout, permission refused) leaves the GPUs and the
        # running driver unknown, not absent: recorded so that parity says "could not look"
        looked = str(run.facts["gpu"].get("error") or "")
        if CANNOT_LOOK in looked:
            run.errors["gpu"] = looked
    else:
        run.facts["gpu"] = dict(gpu_and_driver, present=False, count=0)
        running = {"running": None, "kernel_module": None, "running_source": None}
    driver = run.section("nvidia_driver", probe_driver, running, run.dpkg)
    run.facts["nvidia_driver"] = driver
    if isinstance(driver, dict) and "error" not in driver:
        try:
            kernels = probe_kernels(run.sy)
            driver["kernels"] = kernels
            driver["kernels_without_module"] = sorted(k for k, ok in kernels.items() if not ok)
        except ProbeError as exc:
            driver["kernels_error"] = str(exc)
        if run.opts.get("units"):  # the runtime class is asked for
            try:
                driver["params"] = probe_params(run.sy)
            except ProbeError as exc:
                driver["params_error"] = str(exc)
