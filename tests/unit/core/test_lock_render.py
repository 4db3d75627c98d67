"""Lock and render: deterministic, verified, and the golden tree is current."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from stacklock.core import lock as lockmod
from stacklock.core import render as rendermod
from stacklock.core.manifest import load_manifest
from stacklock.errors import InvalidInput, StacklockError

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
GOLDEN = ROOT / "tests" / "golden" / "static-lab"


@pytest.fixture()
def golden_copy(tmp_path: Path) -> Path:
    """The golden manifest and its model, copied where writing is harmless."""
    dst = tmp_path / "case"
    shutil.copytree(GOLDEN, dst, ignore=shutil.ignore_patterns("expected", "*.lock"))
    return dst / "manifest.yaml"


def test_lock_is_deterministic(golden_copy: Path) -> None:
    loaded = load_manifest(golden_copy)
    first = lockmod.dump_lock(lockmod.build_lock(loaded))
    second = lockmod.dump_lock(lockmod.build_lock(load_manifest(golden_copy)))
    assert first == second
    data = json.loads(first)
    stack = data["stacks"]["s1"]
    assert stack["fingerprint"].startswith("sha256:") and len(stack["fingerprint"]) == 71
    assert stack["fingerprint"] == lockmod.fingerprint_of(stack)


def test_lock_resolves_exact_apt_versions(golden_copy: Path) -> None:
    stack = lockmod.build_lock(load_manifest(golden_copy))["stacks"]["s1"]
    driver = {p["name"]: p["version"] for p in stack["apt"]["nvidia_driver"]}
    assert driver["nvidia-driver-580-open"] == "580.95.05-0ubuntu1"  # auto -> open on R580
    assert stack["apt"]["docker"][0] == {"name": "docker-ce",
                                         "version": "5:28.5.1-1~ubuntu.24.04~noble"}
    assert stack["apt"]["cuda"] == [{"name": "cuda-cudart-13-0", "version": "13.0.2-1"}]
    # Ubuntu's OpenJDK has no packaged version: the manifest's java.apt_version is the pin
    assert stack["apt"]["java"] == [{"name": "openjdk-17-jre-headless",
                                     "version": "17.0.16+8~us1-0ubuntu1~24.04.1"}]
    pins = {p["name"]: p["version"] for p in stack["pip"]}
    # PyPI serves torch 2.11.0 as the CUDA 13.0 build: the pin is its public version
    assert pins["torch"] == "2.11.0" and pins["torchserve"] == "0.12.0"
    torch = next(p for p in stack["pip"] if p["name"] == "torch")
    assert torch["pypi_build"] == "cu130"
    assert "pyyaml" in pins and "numpy" in pins


def test_fingerprint_changes_with_any_pin(golden_copy: Path) -> None:
    before = lockmod.build_lock(load_manifest(golden_copy))["stacks"]["s1"]["fingerprint"]
    golden_copy.write_text(golden_copy.read_text().replace(
        "docker: {version: 28.5.1}",
        "docker: {version: 28.5.2, containerd_apt_version: 1.7.28-1~ubuntu.24.04~noble}"))
    after = lockmod.build_lock(load_manifest(golden_copy))["stacks"]["s1"]["fingerprint"]
    assert before != after


def test_model_sha256_is_verified(golden_copy: Path) -> None:
    (golden_copy.parent / "models" / "fixture.mar").write_bytes(b"other bytes")
    with pytest.raises(InvalidInput) as exc:
        lockmod.build_lock(load_manifest(golden_copy))
    assert exc.value.problems[0].path == "stacks.s1.models[0].sha256"
    assert "does not match" in exc.value.problems[0].message


def test_missing_model_archive_named(golden_copy: Path) -> None:
    (golden_copy.parent / "models" / "fixture.mar").unlink()
    with pytest.raises(InvalidInput) as exc:
        lockmod.build_lock(load_manifest(golden_copy))
    assert exc.value.problems[0].path == "stacks.s1.models[0].archive"


def test_check_lock_detects_stale(golden_copy: Path) -> None:
    loaded = load_manifest(golden_copy)
    assert not lockmod.check_lock(loaded).current  # no lock yet
    committed = json.loads((GOLDEN / "manifest.lock").read_text("utf-8"))
    closures = lockmod.closures_from_lock(committed, loaded)
    assert set(closures) == {"s1"}  # the committed closure is valid for the same inputs
    loaded.lock_path.write_text(lockmod.dump_lock(lockmod.build_lock(loaded, None, closures)))
    assert lockmod.check_lock(loaded).current
    golden_copy.write_text(golden_copy.read_text().replace("1.18.0", "1.18.1"))
    status = lockmod.check_lock(load_manifest(golden_copy))
    assert not status.current and "s1" in status.reason


def test_render_is_deterministic_and_headed(golden_copy: Path) -> None:
    loaded = load_manifest(golden_copy)
    data = lockmod.build_lock(loaded)
    one = rendermod.render_tree(loaded, data)
    two = rendermod.render_tree(load_manifest(golden_copy), data)
    assert one == two
    assert set(one) == {
        "terraform/environments/onprem/main.tf",
        "terraform/environments/lab/main.tf",
        "inventories/onprem/group_vars/onprem/stacklock.yml",
        "inventories/lab/group_vars/lab/stacklock.yml",
    }
    for text in one.values():
        assert rendermod.HEADER in text.splitlines()[0] + text.splitlines()[1]


def test_render_write_then_check(golden_copy: Path) -> None:
    loaded = load_manifest(golden_copy)
    data = lockmod.build_lock(loaded)
    tree = rendermod.render_tree(loaded, data)
    assert rendermod.stale_files(loaded, tree) == sorted(tree)
    assert rendermod.write_tree(loaded, tree) == sorted(tree)
    assert rendermod.stale_files(loaded, tree) == []
    assert rendermod.write_tree(loaded, tree) == []  # nothing to change the second time
    target = loaded.output_root / "terraform/environments/lab/main.tf"
    target.write_text(target.read_text() + "# hand edit\n")
    assert rendermod.stale_files(loaded, tree) == ["terraform/environments/lab/main.tf"]


def test_group_vars_carry_the_lock(golden_copy: Path) -> None:
    loaded = load_manifest(golden_copy)
    data = lockmod.build_lock(loaded)
    tree = rendermod.render_tree(loaded, data)
    gv = yaml.safe_load(tree["inventories/lab/group_vars/lab/stacklock.yml"])
    stack = data["stacks"]["s1"]
    assert gv["stacklock_fingerprint"] == stack["fingerprint"]
    assert gv["docker_packages"] == stack["apt"]["docker"]
    assert gv["nvidia_driver_require_gpu"] is False  # the lab has no GPU
    onprem = yaml.safe_load(tree["inventories/onprem/group_vars/onprem/stacklock.yml"])
    assert onprem["nvidia_driver_require_gpu"] is True
    text = lockmod.config_text(gv["torchserve_config"])
    assert lockmod.hashlib.sha256(text.encode()).hexdigest() == gv["torchserve_config_sha256"]
    assert "disable_token_authorization=false\n" in text
    assert gv["torchserve_models"][0]["src"].startswith("{{ inventory_dir }}/")


def test_hcl_literals() -> None:
    assert rendermod.hcl("a\"b") == '"a\\"b"'
    assert rendermod.hcl([1, "x", True, None]) == '[1, "x", true, null]'
    assert rendermod.hcl({"name": "n", "port": 22}) == '{ name = "n", port = 22 }'


def test_golden_tree_is_current() -> None:
    """tests/golden/static-lab/expected is what render produces (regenerate on purpose)."""
    loaded = load_manifest(GOLDEN / "manifest.yaml")
    data = lockmod.load_current_lock(loaded)
    tree = rendermod.render_tree(loaded, data)
    assert rendermod.stale_files(loaded, tree) == []


def test_render_refuses_stale_lock(golden_copy: Path) -> None:
    with pytest.raises(StacklockError) as exc:
        lockmod.load_current_lock(load_manifest(golden_copy))
    assert exc.value.exit_code == 2
