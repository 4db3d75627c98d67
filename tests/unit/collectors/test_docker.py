"""docker: `docker info` (version, default runtime, runtimes), else `dockerd --version`,
/etc/docker/daemon.json and the package."""

from __future__ import annotations

import json

import pytest
from ansible.module_utils.stacklock_facts import docker
from fakenode import h100_node, lab_node

pytestmark = pytest.mark.unit

LAB_DPKG = {"docker.io": {"version": "20.10.24+dfsg1-1+deb12u1+b6", "held": True}}


def test_docker_info_of_the_h100() -> None:
    out = docker.probe_docker(h100_node(), {})
    assert (out["version"], out["raw_version"], out["source"]) == ("28.5.1", "28.5.1",
                                                                   "docker info")
    assert out["default_runtime"] == "nvidia" and out["default_runtime_source"] == "docker info"
    assert out["runtimes"] == ["nvidia", "runc"] and "warnings" not in out


def test_a_daemon_that_does_not_answer_dockerd_and_daemon_json() -> None:
    node = h100_node()
    node.commands["docker info"] = (1, "", "Cannot connect to the Docker daemon at "
                                           "unix:///var/run/docker.sock\n")
    node.executables["dockerd"] = "/usr/bin/dockerd"
    node.commands["dockerd --version"] = (0, "Docker version 28.5.1, build f8215cc\n", "")
    out = docker.probe_docker(node, {})
    assert (out["version"], out["source"]) == ("28.5.1", "dockerd --version")
    assert out["default_runtime"] == "nvidia"
    assert out["default_runtime_source"] == "/etc/docker/daemon.json"
    assert "Cannot connect to the Docker daemon" in out["warnings"][0]
    assert "error" not in out  # the version was read another way


def test_the_package_then_runc_by_default() -> None:
    node = lab_node()
    del node.executables["docker"], node.executables["dockerd"]
    node.files["/etc/docker/daemon.json"] = json.dumps({"runtimes": {"nvidia": {}}})
    out = docker.probe_docker(node, LAB_DPKG)
    assert out["package"] == {"name": "docker.io", "version": "20.10.24+dfsg1-1+deb12u1+b6"}
    assert (out["version"], out["source"]) == ("20.10.24", "package")
    assert (out["default_runtime"], out["default_runtime_source"]) == ("runc", "docker default")
    assert out["runtimes"] == ["nvidia"]


def test_no_docker_at_all_and_a_broken_daemon_json() -> None:
    node = lab_node()
    del node.executables["docker"], node.executables["dockerd"]
    node.files["/etc/docker/daemon.json"] = "{not json"
    out = docker.probe_docker(node, {})
    assert out["version"] is None and out["default_runtime"] is None
    assert out["error"].startswith("/etc/docker/daemon.json: ")
