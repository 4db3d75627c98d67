"""serving.runtime (issue #23): the manifest setting, the lock's serving and image entries, what
`image push` records and what render writes for container mode (the serving_container
contract: serving_runtime, serving_container), and that host mode renders as before."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from stacklock.adapters import oci
from stacklock.core import lock as lockmod
from stacklock.core import render as rendermod
from stacklock.core.manifest import load_manifest, parse_manifest
from stacklock.errors import ExitCode, InvalidInput
from stacklock.flows import image as imageflow

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
STACK = "lab-2026-11"
DIGEST = "sha256:" + "a" * 64


def _lab(tmp_path: Path, runtime: str | None) -> Path:
    """examples/lab.yaml with its lock and model in tmp_path, the stack in `runtime` mode."""
    data = yaml.safe_load((ROOT / "examples/lab.yaml").read_text())
    if runtime is not None:
        data["stacks"][STACK]["serving"] = {"runtime": runtime}
    (tmp_path / "lab.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    shutil.copy(ROOT / "examples/lab.lock", tmp_path / "lab.lock")
    shutil.copytree(ROOT / "examples/models", tmp_path / "models")
    return tmp_path / "lab.yaml"


def _relock(path: Path) -> dict[str, Any]:
    loaded = load_manifest(path)
    existing = lockmod.read_lock(loaded.lock_path)
    lock = lockmod.build_lock(loaded, {}, lockmod.closures_from_lock(existing, loaded),
                              lockmod.apt_sets_from_lock(existing, loaded))
    loaded.lock_path.write_text(lockmod.dump_lock(lock))
    return lock


def _layout(tmp_path: Path, fingerprint: str, user: str = "10001:10001") -> Path:
    """A real (tiny) OCI layout whose config says `fingerprint` and `user`, as build writes."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/hello").write_text("hello\n")
    blobs = tmp_path / "blobs"
    layer = oci.write_layer(root, blobs, epoch=0, comment="test")
    config = oci.image_config([layer], created="1970-01-01T00:00:00Z", config={
        "User": user, "Labels": {"stacklock.fingerprint": fingerprint}})
    layout = tmp_path / "images" / STACK / "oci"
    oci.write_layout(layout, [layer], config, ref="t")
    return tmp_path / "images"


def test_host_is_the_default_and_adds_nothing_to_the_lock(tmp_path: Path) -> None:
    m = parse_manifest((ROOT / "examples/lab.yaml").read_text())
    assert m.stacks[STACK].serving.runtime == "host"
    lock = _relock(_lab(tmp_path, "host"))
    committed = json.loads((ROOT / "examples/lab.lock").read_text())
    assert "serving" not in lock["stacks"][STACK]
    assert lock["stacks"][STACK]["fingerprint"] == committed["stacks"][STACK]["fingerprint"]


@pytest.mark.parametrize("value", ["podman", "", "Container", True, 1])
def test_a_bad_runtime_names_the_field_and_the_fix(value: Any) -> None:
    data = yaml.safe_load((ROOT / "examples/lab.yaml").read_text())
    data["stacks"][STACK]["serving"] = {"runtime": value}
    with pytest.raises(InvalidInput) as exc:
        parse_manifest(yaml.safe_dump(data), source="test")
    assert exc.value.exit_code == ExitCode.INVALID
    (problem,) = exc.value.problems
    assert problem.path == f"stacks.{STACK}.serving.runtime"
    assert "runtime: host" in problem.message and "runtime: container" in problem.message


def test_container_mode_is_in_the_fingerprint_and_render_asks_for_the_image(
        tmp_path: Path) -> None:
    lock = _relock(_lab(tmp_path, "container"))
    committed = json.loads((ROOT / "examples/lab.lock").read_text())
    locked = lock["stacks"][STACK]
    assert locked["serving"] == {"runtime": "container"}
    assert locked["fingerprint"] != committed["stacks"][STACK]["fingerprint"]
    with pytest.raises(InvalidInput) as exc:
        rendermod.render_tree(load_manifest(tmp_path / "lab.yaml"), lock)
    assert exc.value.exit_code == ExitCode.INVALID
    (problem,) = exc.value.problems
    assert problem.path == f"stacks.{STACK}.image"
    assert "stacklock image build dev" in problem.hint and "image push dev" in problem.hint


def test_push_records_the_image_and_render_writes_the_contract(tmp_path: Path) -> None:
    path = _lab(tmp_path, "container")
    lock = _relock(path)
    fingerprint = lock["stacks"][STACK]["fingerprint"]
    images = _layout(tmp_path, fingerprint)
    loaded = load_manifest(path)
    assert imageflow.check_image_for_lock(loaded, "dev", images) == fingerprint
    record = imageflow.image_record(images / STACK / "oci", "http://10.213.0.1:5000",
                                    "stacklock-lab/serving", DIGEST)
    imageflow.record_in_lock(loaded, "dev", record)
    assert lockmod.check_lock(loaded).current  # the image is outside the fingerprint
    held = lockmod.read_lock(loaded.lock_path)
    assert held is not None
    assert held["stacks"][STACK]["image"]["reference"] == f"10.213.0.1:5000/stacklock-lab/serving@{DIGEST}"
    assert held["stacks"][STACK]["fingerprint"] == fingerprint
    assert _relock(path)["stacks"][STACK]["image"] == held["stacks"][STACK]["image"]  # kept

    tree = rendermod.render_tree(loaded, held)
    gv = yaml.safe_load(tree["inventories/dev/group_vars/dev/stacklock.yml"])
    assert gv["serving_runtime"] == "container"
    c = gv["serving_container"]
    assert c == {
        "name": "stacklock-serving",
        "image": f"10.213.0.1:5000/stacklock-lab/serving@{DIGEST}",
        "digest": DIGEST,
        "config_digest": record["config_digest"],
        "user": "10001:10001",
        "read_only": True,
        "cap_add": [],
        "runtime": "runc",
        "gpus": "none",
        "network": "host",
        "mounts": c["mounts"],
        "env": {},
    }
    assert [m["target"] for m in c["mounts"]] == sorted(m["target"] for m in c["mounts"])
    assert {(m["type"], m["target"]) for m in c["mounts"]} == {
        ("bind", "/run/torchserve"), ("tmpfs", "/var/log/torchserve"), ("tmpfs", "/tmp")}
    assert all(set(m) >= {"type", "source", "target", "read_only"} for m in c["mounts"])
    assert gv["docker_daemon_options"] == {"insecure-registries": ["10.213.0.1:5000"]}
    assert gv["torchserve_state_dir"] == "/var/lib/stacklock-serving"


def test_a_gpu_environment_runs_the_nvidia_runtime(tmp_path: Path) -> None:
    from stacklock.core.serving import container_vars

    locked = {"serving": {"runtime": "container"}, "image": {
        "registry": "r:5000", "repository": "p/serving", "digest": DIGEST,
        "config_digest": DIGEST, "user": "10001:10001", "registry_url": "https://r:5000"}}
    gv = container_vars("prod", STACK, locked, gpu=True)
    assert gv["serving_container"]["runtime"] == "nvidia"
    assert gv["serving_container"]["gpus"] == "all"  # --gpus all in the unit
    assert "docker_daemon_options" not in gv  # TLS: nothing insecure
    assert container_vars("prod", STACK, {"fingerprint": "x"}, gpu=True) == {}


def test_a_stale_image_is_dropped_and_an_image_of_another_lock_is_refused(
        tmp_path: Path) -> None:
    path = _lab(tmp_path, "container")
    lock = _relock(path)
    loaded = load_manifest(path)
    images = _layout(tmp_path, "sha256:" + "b" * 64)
    with pytest.raises(InvalidInput) as exc:
        imageflow.check_image_for_lock(loaded, "dev", images)
    assert exc.value.problems[0].hint == "run: stacklock image build dev"
    # a recorded image whose fingerprint is not the stack's is not carried over by lock
    stale = dict(lock["stacks"][STACK], image={"fingerprint": "sha256:" + "b" * 64,
                                               "digest": DIGEST})
    fresh = lockmod.build_lock(loaded, {}, lockmod.closures_from_lock(lock, loaded),
                               lockmod.apt_sets_from_lock(lock, loaded),
                               images={STACK: stale["image"]})
    assert "image" not in fresh["stacks"][STACK]


def test_a_root_image_is_refused(tmp_path: Path) -> None:
    path = _lab(tmp_path, "container")
    lock = _relock(path)
    images = _layout(tmp_path, lock["stacks"][STACK]["fingerprint"], user="0:0")
    with pytest.raises(InvalidInput):
        imageflow.check_image_for_lock(load_manifest(path), "dev", images)
