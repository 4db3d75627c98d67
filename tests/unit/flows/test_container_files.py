"""The files class in container mode (serving.runtime: container, issue #23): the controller
knows the bytes of stacklock-serving.service and daemon.json (the lab registry), and expects
none of the torchserve role's files, venv or Java on the node."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from stacklock.adapters import ansible_template
from stacklock.core.serving import container_vars
from stacklock.flows import integrity

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
LAB = ROOT / "examples/lab/inventories/dev/group_vars/dev/stacklock.yml"
DIGEST = "sha256:" + "c" * 64
UNIT = "/etc/systemd/system/stacklock-serving.service"


def _container_hv() -> dict[str, Any]:
    hv: dict[str, Any] = yaml.safe_load(LAB.read_text("utf-8"))
    locked = {"serving": {"runtime": "container"}, "image": {
        "registry": "10.213.0.1:5000", "repository": "stacklock-lab/serving", "digest": DIGEST,
        "config_digest": "sha256:" + "d" * 64, "user": "10001:10001",
        "registry_url": "http://10.213.0.1:5000"}}
    hv.update(container_vars("dev", "lab-2026-11", locked, gpu=False))
    return hv


def test_the_unit_is_known_and_the_torchserve_role_files_are_not_expected() -> None:
    hv = _container_hv()
    files = integrity.role_files(hv)
    paths = {f.path: f.sha256 for fs in files.values() for f in fs}
    assert paths[UNIT]
    assert "torchserve" not in files
    assert not any(p.startswith("/etc/torchserve") or p.endswith("/torchserve.service")
                   for p in paths)
    # Java is in the image: its pin files are only what host mode may have left (optional)
    pref = "/etc/apt/preferences.d/stacklock-torchserve.pref"
    assert [f.path for f in files["stacklock_packages"] if "stacklock-torchserve" in f.path] == []
    assert pref in {f.path for f in files[integrity.LEFT_JAVA_PINS] if f.optional}
    dirs = dict(integrity.managed_dirs(hv))
    assert "/opt/torchserve/venv/bin" not in dirs
    assert UNIT in dirs and "/etc/systemd/system/torchserve.service" in dirs  # stale: caught
    ids = [t.id for t in integrity.trees(hv)]
    assert "role:serving_container" in ids or any("serving_container" in i for i in ids)
    assert not [i for i in ids if i.startswith(("wheel:", "venv", "deb:openjdk"))]


def test_the_unit_runs_the_contract() -> None:
    hv = _container_hv()
    source = integrity.role_file_sources(hv)[UNIT]
    text = ansible_template.render(source.role, source.template,
                                   source.variables(integrity.host_vars(hv)), dest=UNIT).decode()
    start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    assert start == (
        "ExecStart=/usr/bin/docker run --rm --name stacklock-serving --network host --read-only"
        " --user 10001:10001 --cap-drop ALL --security-opt no-new-privileges --runtime runc"
        " --mount type=bind,source=/var/lib/stacklock-serving,target=/run/torchserve"
        " --tmpfs /tmp:mode=1777 --tmpfs /var/log/torchserve:uid=10001,gid=10001,mode=0750"
        f" 10.213.0.1:5000/stacklock-lab/serving@{DIGEST}")


def test_a_gpu_node_runs_the_nvidia_runtime_with_every_gpu() -> None:
    hv = _container_hv()
    spec = dict(hv["serving_container"])
    hv = {**hv, "serving_container": {**spec, "runtime": "nvidia", "gpus": "all"}}
    source = integrity.role_file_sources(hv)[UNIT]
    text = ansible_template.render(source.role, source.template,
                                   source.variables(integrity.host_vars(hv)), dest=UNIT).decode()
    start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    assert " --runtime nvidia --gpus all --mount " in start, start


def test_daemon_json_trusts_the_lab_registry_in_container_mode_only() -> None:
    hv = _container_hv()
    source = integrity.role_file_sources(hv)["/etc/docker/daemon.json"]
    data = json.loads(ansible_template.render(source.role, source.template,
                                              source.variables(integrity.host_vars(hv)),
                                              dest="/etc/docker/daemon.json"))
    assert data["insecure-registries"] == ["10.213.0.1:5000"]
    assert data["bridge"] == "none" and data["iptables"] is False
    host = yaml.safe_load(LAB.read_text("utf-8"))
    assert "serving_runtime" not in host and "docker_daemon_options" not in host
