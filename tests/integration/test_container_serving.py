"""Serving from a container on a real lab node (serving.runtime: container, docs/containers.md).

On the shared integrity node (conftest's `integrity_lab`: project slint, network 10.231,
environment dev), LAST in its lane (tests/conftest.py SHARED_NODE): it switches the node to
container mode and back. One image build from the node's container-mode lock, pushed to the
lab registry (scripts/lab-registry.sh) on the lab's mirror address 10.231.0.1, recorded in the
lock by `image push`; then `stacklock rollout dev` from host mode to container mode: the
node's Docker pulls by digest and runs the image as stacklock-serving.service, read-only,
non-root, without capabilities, on the host network; the smoke request answers over TLS
through the endpoint; verify (the play) and verify --fast exit 0; then back to host mode by
rollout again: no container, no unit, TorchServe from the venv answering through the endpoint.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STACK = "lab-2026-11"
EPOCH = "1767225600"
REGISTRY_ADDR, REGISTRY_PORT = "10.231.0.1", 5231  # the integrity lab's mirror address
PREDICT = "/predictions/tiny-linear/1.0"
UNIT = "/etc/systemd/system/stacklock-serving.service"


def sl(manifest: Path, *args: str, timeout: int = 1800,
       env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, NO_COLOR="1", COLUMNS="200", **(env or {}))
    start = time.monotonic()
    res = subprocess.run([str(BIN / "stacklock"), "-m", str(manifest), *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=timeout, env=full, check=False)
    print(f"stacklock {' '.join(args)}: exit {res.returncode} in {time.monotonic() - start:.0f} s")
    return res


def _ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-5000:]
    return res.stdout


@dataclass
class Node:
    manifest: Path
    host_text: str
    name: str = ""
    address: str = ""
    image: dict[str, Any] = field(default_factory=dict)
    back_in_host_mode: bool = False

    @property
    def out(self) -> Path:
        return self.manifest.parent / "lab"

    def on_node(self, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(["docker", "exec", self.name, "bash", "-c", script],
                             capture_output=True, text=True, timeout=600, check=False)
        if check:
            assert res.returncode == 0, f"{script}\n{res.stdout}\n{res.stderr}"
        return res

    def call(self, path: str, *, token: bool = True) -> tuple[int, bytes]:
        state = self.out / ".stacklock" / "endpoint"
        ctx = ssl.create_default_context(cafile=str(state / "ca" / "ca.pem"))
        headers = {"Content-Type": "application/json"}
        if token:
            first = (state / "dev" / "tokens").read_text().split()[-1]
            headers["Authorization"] = f"Bearer {first}"
        req = urllib.request.Request(f"https://{self.address}:8443{path}",
                                     data=b'{"inputs": [1, 2, 3]}', headers=headers)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                             urllib.request.HTTPSHandler(context=ctx))
        try:
            with opener.open(req, timeout=30) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()


def _with_runtime(text: str, runtime: str | None) -> str:
    data = yaml.safe_load(text)
    if runtime is None:
        return text
    data["stacks"][STACK]["serving"] = {"runtime": runtime}
    return yaml.safe_dump(data, sort_keys=False)


def _to_host(node: Node) -> None:
    node.manifest.write_text(node.host_text)
    _ok(sl(node.manifest, "lock"))
    _ok(sl(node.manifest, "render"))
    _ok(sl(node.manifest, "rollout", "dev", timeout=2400))


@pytest.fixture(scope="module")
def node(integrity_lab: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """The integrity node's manifest in container mode, its image built once and pushed to the
    lab registry (recorded in the lock), rendered; put back in host mode at the end."""
    manifest = integrity_lab
    lab = Node(manifest, manifest.read_text())
    hosts = yaml.safe_load((lab.out / "inventories/dev/hosts.yml").read_text())
    (_, entry), = hosts["all"]["children"]["dev"]["hosts"].items()
    lab.name = str(entry.get("stacklock_container", "slint-dev-1"))
    lab.address = str(entry["ansible_host"])
    registry = tmp_path_factory.mktemp("slint-registry")
    script = str(ROOT / "scripts/lab-registry.sh")
    url = subprocess.run([script, "start", REGISTRY_ADDR, str(REGISTRY_PORT), str(registry)],
                         capture_output=True, text=True, timeout=300, check=True).stdout.strip()
    images = tmp_path_factory.mktemp("slint-images")
    try:
        manifest.write_text(_with_runtime(lab.host_text, "container"))
        _ok(sl(manifest, "lock"))
        render = sl(manifest, "render")
        assert render.returncode == 2, render.stdout + render.stderr
        assert "image push dev" in render.stdout + render.stderr
        start = time.monotonic()
        _ok(sl(manifest, "image", "build", "dev", "--out", str(images), timeout=1800,
               env={"SOURCE_DATE_EPOCH": EPOCH}))
        print(f"image build: {time.monotonic() - start:.0f} s")
        _ok(sl(manifest, "image", "push", "dev", "--registry", url, "--out", str(images)))
        lock = json.loads(manifest.with_suffix(".lock").read_text())
        lab.image = lock["stacks"][STACK]["image"]
        _ok(sl(manifest, "lock", "--check"))
        _ok(sl(manifest, "render"))
        yield lab
    finally:
        try:
            if not lab.back_in_host_mode:
                _to_host(lab)
        finally:
            lab.on_node(f"docker rmi -f {lab.image.get('reference', 'none')} || true", check=False)
            subprocess.run([script, "stop", str(registry)], capture_output=True, timeout=120,
                           check=False)


def test_the_lock_holds_the_image_and_render_writes_the_contract(node: Node) -> None:
    image = node.image
    assert image["reference"] == f"{REGISTRY_ADDR}:{REGISTRY_PORT}/slint/serving@{image['digest']}"
    gv = yaml.safe_load((node.out / "inventories/dev/group_vars/dev/stacklock.yml").read_text())
    assert gv["serving_runtime"] == "container"
    c = gv["serving_container"]
    assert (c["image"], c["digest"], c["config_digest"]) == (
        image["reference"], image["digest"], image["config_digest"])
    assert (c["user"], c["read_only"], c["cap_add"], c["runtime"], c["network"]) == (
        "10001:10001", True, [], "runc", "host")
    assert gv["stacklock_fingerprint"] == image["fingerprint"]


def test_rollout_from_host_mode_to_container_mode(node: Node) -> None:
    assert node.on_node("systemctl is-active torchserve.service").stdout.strip() == "active"
    start = time.monotonic()
    _ok(sl(node.manifest, "rollout", "dev", timeout=2400))
    print(f"rollout to container mode: {time.monotonic() - start:.0f} s")
    assert node.on_node("systemctl is-active stacklock-serving.service").stdout.strip() == "active"
    assert node.on_node("test -e /etc/systemd/system/torchserve.service", check=False).returncode == 1
    assert node.on_node("systemctl is-active torchserve.service", check=False).stdout.strip() != "active"
    inspect = json.loads(node.on_node("docker inspect stacklock-serving").stdout)[0]
    host = inspect["HostConfig"]
    assert inspect["Image"] == node.image["config_digest"]
    assert inspect["Config"]["User"] == "10001:10001"
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["NetworkMode"] == "host" and host["Runtime"] == "runc"
    assert host["AutoRemove"] is True
    repo = json.loads(node.on_node(
        f"docker image inspect --format '{{{{json .RepoDigests}}}}' {node.image['reference']}").stdout)
    assert node.image["reference"] in repo
    # the host-mode TorchServe is gone: only the container's java runs TorchServe
    procs = node.on_node("ps -eo user:12,args | grep '[o]rg.pytorch.serve' || true").stdout
    assert procs.strip() and all(line.split()[0] == "10001" for line in procs.splitlines()), procs


def test_the_smoke_request_answers_over_tls_through_the_endpoint(node: Node) -> None:
    status, body = node.call(PREDICT)
    assert status == 200, body
    assert [round(x, 4) for x in json.loads(body)] == [3.0, 5.0, 7.0]
    assert node.call(PREDICT, token=False)[0] == 401


def test_verify_passes_in_container_mode(node: Node) -> None:
    play = sl(node.manifest, "verify", "dev", timeout=900)
    if play.returncode != 0:  # what the collector's exec sees, for the failure message
        diag = node.on_node("docker exec stacklock-serving /opt/torchserve/venv/bin/python -I "
                            "-c 'import importlib.metadata as m, torch; "
                            "print(len(list(m.distributions())), torch.version.cuda)'",
                            check=False)
        print(f"closure probe: rc {diag.returncode} {diag.stdout[-500:]} {diag.stderr[-1500:]}")
    assert play.returncode == 0, play.stdout[-5000:] + play.stderr[-3000:]


def test_verify_fast_passes_in_container_mode(node: Node) -> None:
    fast = sl(node.manifest, "verify", "dev", "--fast", timeout=900)
    assert fast.returncode == 0, fast.stdout[-5000:] + fast.stderr[-3000:]


def test_back_to_host_mode_leaves_no_stale_container(node: Node) -> None:
    # first the node's pull time by digest, measured by itself (the container stopped, the
    # image removed; daemon.json still trusts the lab registry)
    ref = node.image["reference"]
    node.on_node(f"systemctl stop stacklock-serving.service && docker rmi {ref}")
    start = time.monotonic()
    node.on_node(f"docker pull --quiet {ref}")
    print(f"docker pull by digest on the node: {time.monotonic() - start:.1f} s")
    start = time.monotonic()
    _to_host(node)
    node.back_in_host_mode = True
    print(f"rollout back to host mode: {time.monotonic() - start:.0f} s")
    gv = (node.out / "inventories/dev/group_vars/dev/stacklock.yml").read_text()
    assert "serving_runtime" not in gv and "serving_container" not in gv
    assert node.on_node("docker ps -aq --filter name=stacklock-serving").stdout.strip() == ""
    assert node.on_node(f"test -e {UNIT}", check=False).returncode == 1
    assert node.on_node("systemctl is-active torchserve.service").stdout.strip() == "active"
    status, body = node.call(PREDICT)
    assert status == 200, body
    _ok(sl(node.manifest, "verify", "dev", timeout=900))
