"""The serving venv's whole Python closure in the lock: parsing, reuse, refusals (no network)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stacklock.adapters import pyresolve
from stacklock.core import lock as lockmod
from stacklock.core.manifest import load_manifest
from stacklock.errors import InvalidInput

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
GOLDEN = ROOT / "tests" / "golden" / "static-lab"

F = "https://files.example/"
ML = "manylinux_2_17_x86_64.manylinux2014_x86_64"


def _entry(url: str, char: str) -> str:
    return f'{{ url = "{url}", hashes = {{ sha256 = "{char * 64}" }} }}'


PYLOCK = "\n".join([
    'lock-version = "1.0"', 'created-by = "uv"', 'requires-python = ">=3.11"', "",
    "[[packages]]", 'name = "NumPy"', 'version = "2.2.6"',
    "sdist = " + _entry(F + "numpy-2.2.6.tar.gz", "a"),
    "wheels = [",
    _entry(F + f"numpy-2.2.6-cp311-cp311-{ML}.whl", "b") + ",",
    _entry(F + f"numpy-2.2.6-cp312-cp312-{ML}.whl", "c") + ",",
    _entry(F + "numpy-2.2.6-cp311-cp311-macosx_14_0_arm64.whl", "d") + ",",
    _entry(F + "numpy-2.2.6-cp311-cp311-musllinux_1_2_x86_64.whl", "e") + ",",
    "]", "",
    "[[packages]]", 'name = "torch"', 'version = "2.13.0+cpu"',
    "wheels = [" + _entry("file:///opt/wheels/torch-2.13.0%2Bcpu-cp311-cp311-"
                          "manylinux_2_28_x86_64.whl", "f") + "]", "",
    "[[packages]]", 'name = "enum_compat"', 'version = "0.0.3"',
    "sdist = " + _entry(F + "enum-compat-0.0.3.tar.gz", "0"), "",
])


def test_closure_keeps_only_files_the_nodes_can_install() -> None:
    closure = pyresolve.closure_from_pylock(PYLOCK, "3.11")
    by_name = {p["name"]: p for p in closure}
    assert list(by_name) == ["enum-compat", "numpy", "torch"]  # PEP 503 names, sorted
    # the cp311 manylinux wheel only: not cp312, not macOS, not musl, not the sdist
    assert [f["sha256"] for f in by_name["numpy"]["files"]] == ["b" * 64]
    assert by_name["torch"]["files"][0]["file"] == (
        "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")
    # no wheel at all: the sdist, with its hash
    assert by_name["enum-compat"]["files"][0]["sha256"] == "0" * 64


def test_closure_for_another_python_picks_its_wheel_or_refuses() -> None:
    from stacklock.errors import StacklockError

    numpy_only = PYLOCK.split('[[packages]]\nname = "torch"')[0]
    (numpy,) = [p for p in pyresolve.closure_from_pylock(numpy_only, "3.12")
                if p["name"] == "numpy"]
    assert [f["sha256"] for f in numpy["files"]] == ["c" * 64]
    # torch's only wheel is cp311: a 3.12 node could not install it, so no lock holds it
    with pytest.raises(StacklockError, match=r"torch 2\.13\.0\+cpu: no file"):
        pyresolve.closure_from_pylock(PYLOCK, "3.12")


@pytest.fixture()
def golden_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "case"
    shutil.copytree(GOLDEN, dst, ignore=shutil.ignore_patterns("expected"))
    return dst / "manifest.yaml"


def test_committed_closure_is_reused_for_the_same_inputs(golden_copy: Path) -> None:
    loaded = load_manifest(golden_copy)
    lock = json.loads(loaded.lock_path.read_text())
    closures = lockmod.closures_from_lock(lock, loaded)
    pins = closures["s1"]
    assert len(pins) > 20 and all(p["files"] for p in pins)
    assert lockmod.unresolved_closures(lock) == []
    # another Python is another closure: not reused
    other = golden_copy.read_text().replace('python: {version: "3.12"}',
                                            'python: {version: "3.11"}')
    golden_copy.write_text(other)
    changed = load_manifest(golden_copy)
    assert lockmod.closure_inputs(changed, changed.manifest.stacks["s1"]) != lock["stacks"]["s1"][
        "pip_closure"]["inputs"]
    assert not lockmod.check_lock(changed).current


def test_lock_offline_without_a_resolved_closure_writes_nothing(
    golden_copy: Path, tmp_path: Path
) -> None:
    golden_copy.with_suffix(".lock").unlink()
    text = golden_copy.read_text().replace("torchserve: {version: 0.12.0}",
                                           "torchserve: {version: 0.12.0, "
                                           "model_archiver_version: 0.11.1}")
    golden_copy.write_text(text)
    env = {"STACKLOCK_CACHE_DIR": str(tmp_path / "empty-cache"), "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-m", "stacklock.cli", "-m", str(golden_copy), "lock",
                          "--offline"], capture_output=True, text=True, env=env, check=False)
    assert res.returncode == 2, res.stderr
    assert "stacks.s1.torchserve" in res.stderr and "closure" in res.stderr
    assert "Traceback" not in res.stderr
    assert not golden_copy.with_suffix(".lock").exists()


def test_pypi_torch_of_another_cuda_is_refused(golden_copy: Path) -> None:
    loaded = load_manifest(golden_copy)
    stack = loaded.manifest.stacks["s1"]
    cu128 = [{"name": "nvidia-cuda-runtime-cu12", "version": "12.8.90", "files": []}]
    with pytest.raises(InvalidInput) as exc:
        lockmod.check_pypi_torch("s1", stack, cu128)
    assert exc.value.problems[0].path == "stacks.s1.torch.version"
    assert "CUDA 12.8" in exc.value.message
    lockmod.check_pypi_torch("s1", stack, [{"name": "nvidia-cuda-runtime", "version": "13.0.96",
                                            "files": []}])


def test_group_vars_carry_the_closure_with_hashes() -> None:
    text = (ROOT / "examples/lab/inventories/dev/group_vars/dev/stacklock.yml").read_text()
    import yaml

    pins = yaml.safe_load(text)["torchserve_pip_packages"]
    assert len(pins) >= 15
    assert all(p["sha256"] and all(len(h) == 64 for h in p["sha256"]) for p in pins)
    assert "filelock" in {p["name"] for p in pins}
