"""gpu: GPUs and the running driver (NVML, then nvidia-smi, then /proc), the driver's packages
and the kernels with the NVIDIA module, on the recorded H100 node and the GPU-less lab node."""

from __future__ import annotations

import pytest
from ansible.module_utils.stacklock_facts import gpu
from ansible.module_utils.stacklock_facts.common import ProbeError
from ansible.module_utils.stacklock_facts.run import Run
from fakenode import H100_PROC, H100_SMI, gather, h100_node, lab_node

pytestmark = pytest.mark.unit


def test_nvidia_smi_csv_of_the_h100() -> None:
    assert gpu.parse_nvidia_smi(H100_SMI) == [{
        "index": 0, "name": "NVIDIA H100 80GB HBM3", "driver_version": "580.159.04",
        "compute_capability": "9.0", "memory_mib": 81559}]
    # an older nvidia-smi without compute_cap: the bus id in its column is no capability
    old = gpu.parse_nvidia_smi("Tesla T4, 535.309.01, 00000000:00:1E.0, 15360 MiB\n")
    assert old[0]["compute_capability"] is None and old[0]["memory_mib"] == 15360
    with pytest.raises(ProbeError, match="unexpected nvidia-smi line"):
        gpu.parse_nvidia_smi("No devices were found\n")


def test_two_models_are_both_named_and_the_first_drives_the_version() -> None:
    node = h100_node()
    node.commands["nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total"] = (
        0, H100_SMI + "NVIDIA A100-SXM4-80GB, 580.159.04, 8.0, 81920 MiB\n", "")
    out, running = gpu.probe_gpu(node, use_nvml=False)
    assert out["count"] == 2 and out["name"] == "NVIDIA A100-SXM4-80GB, NVIDIA H100 80GB HBM3"
    assert running["running"] == "580.159.04" and running["running_source"] == "nvidia-smi"
    assert running["kernel_module"] == "open"


def test_gpus_from_proc_when_there_is_no_nvidia_smi() -> None:
    node = h100_node()
    del node.executables["nvidia-smi"]
    out, running = gpu.probe_gpu(node, use_nvml=False)
    assert out["source"] == "proc" and out["name"] == "NVIDIA H100 80GB HBM3"
    assert out["devices"][0]["driver_version"] == "580.159.04"
    assert running == {"running": "580.159.04", "kernel_module": "open",
                       "proc_version": "580.159.04", "running_source": "proc"}


def test_no_gpu_and_a_failing_nvidia_smi_is_the_sections_error() -> None:
    node = lab_node()
    node.executables["nvidia-smi"] = "/usr/bin/nvidia-smi"
    node.commands["nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total"] = (
        9, "", "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver\n")
    out, running = gpu.probe_gpu(node, use_nvml=True)
    assert out["present"] is False and out["count"] == 0 and out["devices"] == []
    assert "exited 9: NVIDIA-SMI has failed" in out["error"]
    assert running["running"] is None and running["running_source"] is None


def test_proc_version_parsing() -> None:
    assert gpu.parse_proc_version(H100_PROC) == ("580.159.04", "open")
    legacy = ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.309.01  Tue Oct  7 "
              "2025\n")
    assert gpu.parse_proc_version(legacy) == ("535.309.01", "proprietary")
    assert gpu.parse_proc_version("garbage") == (None, None)


def test_the_driver_version_from_its_most_specific_package() -> None:
    none = {"running": None, "kernel_module": None, "running_source": None}
    dpkg = {"libcuda1": {"version": "535.1-1", "held": False},
            "nvidia-driver": {"version": "535.309.01-0+deb12u1", "held": True},
            "nvidia-kernel-dkms": {"version": "535.309.01-0+deb12u1", "held": True},
            "nvidia-settings": {"version": "535.1-1", "held": False},  # not the driver
            "nvidia-driver-580-open": {"version": None, "held": False}}  # known, not installed
    out = gpu.probe_driver(none, dpkg)
    assert out["packages"] == {"libcuda1": "535.1-1", "nvidia-driver": "535.309.01-0+deb12u1",
                               "nvidia-kernel-dkms": "535.309.01-0+deb12u1"}
    assert out["package_version"] == out["version"] == "535.309.01"
    assert out["source"] == "package" and out["running_version"] is None
    running = {"running": "580.159.04", "kernel_module": "open", "running_source": "nvml"}
    loaded = gpu.probe_driver(running, dpkg)
    assert loaded["version"] == "580.159.04" and loaded["source"] == "nvml"
    assert loaded["package_version"] == "535.309.01"  # what would load after a reboot


def test_a_crashing_nvml_leaves_the_sections_could_not_look() -> None:
    node = h100_node(nvml=RuntimeError("NVML segfault"))
    run = Run({"use_nvml": True}, node)

    def crash() -> None:
        raise RuntimeError("NVML segfault")

    node.nvml = crash  # type: ignore[method-assign,assignment]
    gpu.collect(run)
    assert run.facts["gpu"]["present"] is False and run.facts["gpu"]["count"] == 0
    assert run.errors["gpu"].startswith("could not look: the gpu probe crashed: RuntimeError")
    assert run.facts["nvidia_driver"]["running_version"] is None


def test_kernels_without_the_nvidia_module_are_reported() -> None:
    """A kernel update whose DKMS build failed: seen before the reboot that would lose the GPU."""
    node = h100_node()
    node.files["/lib/modules/6.18.0-1-generic/modules.dep"] = ""
    node.files["/lib/modules/6.18.0-1-generic/updates/dkms/nvidia.ko.zst"] = b"ko"
    node.files["/lib/modules/6.18.0-2-generic/modules.dep"] = ""
    node.files["/lib/modules/6.18.0-2-generic/kernel/fs/ext4.ko"] = b"ko"
    node.files["/lib/modules/6.17.0-9-generic/leftover"] = ""  # no modules.dep: not a kernel
    facts = gather(node)
    assert facts["nvidia_driver"]["kernels"] == {"6.18.0-1-generic": True,
                                                 "6.18.0-2-generic": False}
    assert facts["nvidia_driver"]["kernels_without_module"] == ["6.18.0-2-generic"]
    assert gpu.NVIDIA_KO_RE.match("nvidia-current.ko")
    assert not gpu.NVIDIA_KO_RE.match("nvidia-uvm.ko")




def test_a_gpu_probe_that_could_not_look_is_blocked_not_absent() -> None:
    """nvidia-smi timing out on a node without /proc/driver/nvidia: the GPUs are unknown, so
    the section's error is recorded (parity: could not look, exit 3), never a plain 'no GPU'."""
    from ansible.module_utils.stacklock_facts.common import CannotLook

    node = lab_node()
    node.executables["nvidia-smi"] = "/usr/bin/nvidia-smi"
    node.commands["nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total"] = (
        CannotLook("nvidia-smi: did not answer within 10 s"))
    run = Run({"use_nvml": False}, node)
    gpu.collect(run)
    assert run.facts["gpu"]["present"] is False
    assert run.errors["gpu"].startswith("could not look: ")
    # a plain failure (no driver talking to a GPU) stays the section's error only
    node.commands["nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total"] = (
        9, "", "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver\n")
    run = Run({"use_nvml": False}, node)
    gpu.collect(run)
    assert "gpu" not in run.errors and "exited 9" in run.facts["gpu"]["error"]
