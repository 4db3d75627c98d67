"""cuda: nvcc first, then /usr/local/cuda/version.json (or version.txt), then the packages."""

from __future__ import annotations

import json

import pytest
from ansible.module_utils.stacklock_facts import cuda
from fakenode import h100_node, lab_node

pytestmark = pytest.mark.unit

H100_DPKG = {"cuda-toolkit-13-0": {"version": "13.0.2-1", "held": True},
             "cuda-cudart-13-0": {"version": "13.0.96-1", "held": True},
             "cuda-runtime-13-0": {"version": None, "held": False}}


def test_nvcc_of_the_h100_found_under_usr_local_cuda_13() -> None:
    out = cuda.probe_cuda(h100_node(), H100_DPKG)
    assert out["nvcc"] == {"path": "/usr/local/cuda-13.0/bin/nvcc", "release": "13.0",
                           "version": "13.0.88"}
    assert (out["version"], out["full_version"], out["source"]) == ("13.0", "13.0.88", "nvcc")
    assert out["packages"] == {"cuda-toolkit-13-0": "13.0.2-1", "cuda-cudart-13-0": "13.0.96-1"}


def test_version_json_then_version_txt_when_there_is_no_nvcc() -> None:
    node = lab_node()
    node.files["/usr/local/cuda/version.json"] = json.dumps({"cuda": {"version": "12.4.1"}})
    out = cuda.probe_cuda(node, {})
    assert (out["version"], out["full_version"], out["source"]) == ("12.4", "12.4.1",
                                                                    "version.json")
    del node.files["/usr/local/cuda/version.json"]
    node.files["/usr/local/cuda/version.txt"] = "CUDA Version 11.8.89\n"
    assert cuda.probe_cuda(node, {})["full_version"] == "11.8.89"


def test_packages_only_the_toolkit_names_the_minor_version() -> None:
    out = cuda.probe_cuda(lab_node(), H100_DPKG)
    assert (out["version"], out["full_version"], out["source"]) == ("13.0", "13.0.2", "package")
    # a libcudart whose upstream version is the runtime's (Debian's libcudart11.0)
    deb = cuda.probe_cuda(lab_node(), {"libcudart11.0": {"version": "11.8.89~11.8.0-5~deb12u1",
                                                         "held": True}})
    assert (deb["version"], deb["full_version"]) == ("11.8", "11.8.89")


def test_a_failing_nvcc_and_nothing_else_is_the_sections_error() -> None:
    node = h100_node()
    node.commands["nvcc --version"] = (1, "", "nvcc: error while loading shared libraries\n")
    out = cuda.probe_cuda(node, {})
    assert out["version"] is None
    assert out["error"].endswith("exited 1: nvcc: error while loading shared libraries")
