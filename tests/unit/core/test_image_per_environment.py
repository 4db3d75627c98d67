"""One image digest, a pull location per environment (issue #23, AWS): on AWS every
environment has its own ECR repository (gpu_node_aws: <project>/<env>/serving, maybe in its own
account) and its nodes may pull only from it. `image push ENV` records where ENV pulls from
(`stacks.STACK.image.pushed.ENV`) beside the one digest; render writes each environment its
own reference, refuses (exit 2, nothing written) an environment that has none while the image
is in ECR, and keeps the single entry for a lab or private registry every environment reaches
and for a lock written before `pushed` existed."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from stacklock.adapters import oci
from stacklock.core import lock as lockmod
from stacklock.core import render as rendermod
from stacklock.core import serving
from stacklock.core.manifest import LoadedManifest
from stacklock.errors import ExitCode, InvalidInput
from stacklock.flows import image as imageflow

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
STACK = "lab-2026-11"
DEV_ECR = "111122223333.dkr.ecr.us-east-1.amazonaws.com"
PROD_ECR = "444455556666.dkr.ecr.us-west-2.amazonaws.com"  # prod in an account of its own
LAB = "10.213.0.1:5000"
HELPER = {"name": "amazon-ecr-credential-helper", "version": "0.6.0-1+b2"}

sys.path.insert(0, str(ROOT / "tests/unit"))
from clirun import stacklock  # noqa: E402
from containerlab import container_lab  # noqa: E402


def _gv(tree: dict[str, str], env: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(tree[f"inventories/{env}/group_vars/{env}/stacklock.yml"])
    return data


@pytest.fixture
def lab(tmp_path: Path) -> tuple[LoadedManifest, Path]:
    """examples/lab.yaml (dev, staging, prod on one stack) in container mode, locked, and a
    tiny OCI layout of that lock's fingerprint, as `image build` writes one."""
    loaded, lock = container_lab(tmp_path)
    loaded.lock_path.write_text(lockmod.dump_lock(lock))
    tree = tmp_path / "rootfs"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/hello").write_text("hello\n")
    layer = oci.write_layer(tree, tmp_path / "blobs", epoch=0, comment="test")
    config = oci.image_config([layer], created="1970-01-01T00:00:00Z", config={
        "User": "10001:10001",
        "Labels": {"stacklock.fingerprint": lock["stacks"][STACK]["fingerprint"]}})
    oci.write_layout(tmp_path / "images" / STACK / "oci", [layer], config, ref="t")
    return loaded, tmp_path / "images"


def _push(monkeypatch: pytest.MonkeyPatch, loaded: LoadedManifest, images: Path, env: str,
          registry: str, repository: str) -> str:
    """`image push ENV` with the registry side replaced (tests/integration/test_ecr_moto.py
    pushes to moto's ECR): the layout's digest, recorded in the lock as push_and_record does."""
    digest = oci.read_layout(images / STACK / "oci").manifest_digest
    monkeypatch.setattr(imageflow, "push_image", lambda *a, **k: (repository, digest))
    repo, got, recorded = imageflow.push_and_record(loaded, env, images, registry, repository)
    assert (repo, got, recorded) == (repository, digest, True)
    return digest


def _held(loaded: LoadedManifest) -> dict[str, Any]:
    held = lockmod.read_lock(loaded.lock_path)
    assert held is not None
    return held


def test_each_environment_pulls_the_one_digest_from_its_own_ecr_repository(
        lab: tuple[LoadedManifest, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    loaded, images = lab
    fingerprint = _held(loaded)["stacks"][STACK]["fingerprint"]
    digest = _push(monkeypatch, loaded, images, "dev", f"https://{DEV_ECR}",
                   "stacklock-lab/dev/serving")
    _push(monkeypatch, loaded, images, "prod", f"https://{PROD_ECR}", "stacklock-lab/prod/serving")
    _push(monkeypatch, loaded, images, "staging", f"https://{DEV_ECR}",
          "stacklock-lab/staging/serving")
    held = _held(loaded)
    image = held["stacks"][STACK]["image"]
    assert image["pushed"] == {
        "dev": {"registry": DEV_ECR, "registry_url": f"https://{DEV_ECR}",
                "repository": "stacklock-lab/dev/serving"},
        "prod": {"registry": PROD_ECR, "registry_url": f"https://{PROD_ECR}",
                 "repository": "stacklock-lab/prod/serving"},
        "staging": {"registry": DEV_ECR, "registry_url": f"https://{DEV_ECR}",
                    "repository": "stacklock-lab/staging/serving"}}
    assert image["digest"] == digest  # one digest
    assert image["reference"] == f"{DEV_ECR}/stacklock-lab/staging/serving@{digest}"  # the last
    # the image is outside the fingerprint: the lock is current and relocking keeps it whole
    assert held["stacks"][STACK]["fingerprint"] == fingerprint
    assert lockmod.fingerprint_of(held["stacks"][STACK]) == fingerprint
    assert lockmod.check_lock(loaded).current
    text = loaded.lock_path.read_text()
    assert lockmod.dump_lock(held) == text  # sorted, as every lock is written

    tree = rendermod.render_tree(loaded, held)
    for env, host in (("dev", DEV_ECR), ("staging", DEV_ECR), ("prod", PROD_ECR)):
        gv = _gv(tree, env)
        spec = gv["serving_container"]
        assert spec["image"] == f"{host}/stacklock-lab/{env}/serving@{digest}", env
        assert spec["digest"] == digest
        assert (spec["registry"], spec["registry_auth"]) == (host, "ecr")
        assert gv["docker_packages"][-1] == HELPER
        assert "docker_daemon_options" not in gv


def test_an_environment_not_pushed_to_its_ecr_repository_is_exit_2_naming_the_push(
        lab: tuple[LoadedManifest, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    loaded, images = lab
    _push(monkeypatch, loaded, images, "dev", f"https://{DEV_ECR}", "stacklock-lab/dev/serving")
    held = _held(loaded)
    with pytest.raises(InvalidInput) as exc:
        rendermod.render_tree(loaded, held)
    assert exc.value.exit_code == ExitCode.INVALID
    (problem,) = exc.value.problems
    assert problem.path == f"stacks.{STACK}.image"
    assert re.search(r"^run: stacklock image push (staging|prod) ", problem.hint)
    for env in ("staging", "prod"):
        with pytest.raises(InvalidInput) as exc:
            serving.container_vars(env, STACK, held["stacks"][STACK], gpu=False)
        (problem,) = exc.value.problems
        assert problem.path == f"stacks.{STACK}.image"
        assert f"run: stacklock image push {env} " in problem.hint
        assert f"{DEV_ECR}/stacklock-lab/dev/serving" in problem.message and "dev" in (
            exc.value.message)
        with pytest.raises(InvalidInput):  # the helper pin asks the same question first
            serving.docker_packages(env, STACK, held["stacks"][STACK])
    assert serving.container_vars("dev", STACK, held["stacks"][STACK], gpu=False)


def test_render_refuses_without_writing_anything(
        lab: tuple[LoadedManifest, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    loaded, images = lab
    _push(monkeypatch, loaded, images, "prod", f"https://{PROD_ECR}", "stacklock-lab/prod/serving")
    out = loaded.output_root / "lab"
    assert not out.exists()
    res = stacklock("-m", str(loaded.path), "render",
                    env={"STACKLOCK_HOME": str(ROOT), "NO_COLOR": "1", "COLUMNS": "300"})
    assert res.returncode == 2, res.stderr
    assert f"ERROR stacks.{STACK}.image:" in res.stderr
    assert re.search(r"fix: run: stacklock (-m \S+ )?image push dev ", res.stderr), res.stderr
    assert "Traceback" not in res.stderr
    assert not out.exists()  # nothing written


@pytest.mark.parametrize(("registry", "insecure"), [
    (f"http://{LAB}", True),                    # the lab registry every lab node reaches
    ("https://registry.example.com", False),    # a private registry over TLS
])
def test_a_registry_every_environment_reaches_keeps_the_single_entry(
        lab: tuple[LoadedManifest, Path], monkeypatch: pytest.MonkeyPatch, registry: str,
        insecure: bool) -> None:
    loaded, images = lab
    digest = _push(monkeypatch, loaded, images, "dev", registry, "stacklock-lab/serving")
    held = _held(loaded)
    host = registry.split("://", 1)[1]
    assert set(held["stacks"][STACK]["image"]["pushed"]) == {"dev"}
    tree = rendermod.render_tree(loaded, held)
    for env in ("dev", "staging", "prod"):  # staging and prod: the entry's registry
        gv = _gv(tree, env)
        assert gv["serving_container"]["image"] == f"{host}/stacklock-lab/serving@{digest}"
        assert "registry_auth" not in gv["serving_container"]
        assert gv["docker_packages"] == held["stacks"][STACK]["apt"]["docker"]
        assert (gv.get("docker_daemon_options") == {"insecure-registries": [host]}) is insecure


def test_a_lock_without_pushed_renders_as_before(lab: tuple[LoadedManifest, Path]) -> None:
    """A lock written before `pushed` existed: its one entry, for every environment, as
    before (ECR too: which environment it was pushed for is not recorded)."""
    loaded, _ = lab
    lock = _held(loaded)
    digest = "sha256:" + "a" * 64
    lock["stacks"][STACK]["image"] = {
        "config_digest": "sha256:" + "e" * 64, "digest": digest,
        "fingerprint": lock["stacks"][STACK]["fingerprint"],
        "reference": f"{DEV_ECR}/stacklock-lab/dev/serving@{digest}", "registry": DEV_ECR,
        "registry_url": f"https://{DEV_ECR}", "repository": "stacklock-lab/dev/serving",
        "user": "10001:10001"}
    tree = rendermod.render_tree(loaded, lock)
    for env in ("dev", "staging", "prod"):
        spec = _gv(tree, env)["serving_container"]
        assert spec["image"] == f"{DEV_ECR}/stacklock-lab/dev/serving@{digest}"
        assert spec["registry"] == DEV_ECR


def _record(registry: str, repository: str, digest: str) -> dict[str, Any]:
    host = registry.split("://", 1)[1]
    return {"config_digest": "sha256:" + digest[-1] * 64, "digest": digest, "fingerprint": "f",
            "reference": f"{host}/{repository}@{digest}", "registry": host,
            "registry_url": registry, "repository": repository, "user": "10001:10001"}


def test_merge_keeps_the_entries_of_one_digest_and_drops_them_for_another() -> None:
    one, two = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    entry, dropped = imageflow.merge_push(None, "dev", _record(f"https://{DEV_ECR}", "p/dev", one))
    assert set(entry["pushed"]) == {"dev"} and dropped == []
    entry, dropped = imageflow.merge_push(entry, "prod",
                                          _record(f"https://{PROD_ECR}", "p/prod", one))
    assert list(entry["pushed"]) == ["dev", "prod"] and dropped == []
    assert entry["registry"] == PROD_ECR  # the top level: the latest push
    # the same environment again: its entry replaced, the others kept
    entry, dropped = imageflow.merge_push(entry, "dev", _record(f"https://{DEV_ECR}", "q/dev", one))
    assert entry["pushed"]["dev"]["repository"] == "q/dev" and set(entry["pushed"]) == {
        "dev", "prod"}
    # another image (a rebuild that gave another digest): it replaces the entry as before, and
    # the repositories of the others hold the other digest, so their entries go
    entry, dropped = imageflow.merge_push(entry, "prod",
                                          _record(f"https://{PROD_ECR}", "p/prod", two))
    assert (entry["digest"], list(entry["pushed"]), dropped) == (two, ["prod"], ["dev"])
    # a lock written before `pushed`: the entry gains the environment pushed now
    old = _record(f"http://{LAB}", "p/serving", one)
    entry, dropped = imageflow.merge_push(old, "dev", _record(f"http://{LAB}", "p/serving", one))
    assert entry["pushed"] == {"dev": {"registry": LAB, "registry_url": f"http://{LAB}",
                                       "repository": "p/serving"}}
    assert json.dumps(entry, sort_keys=True) == json.dumps(entry)  # written sorted
