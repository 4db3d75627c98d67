"""`stacklock image build`: the serving image from the lab's lock, built twice for real.

One module-scoped pair of builds (about 80-110 s each on the 2-core CI machine) feeds every
test: the two builds must give one manifest digest; the layout, config and SBOM must say
what the lock says; the layers are timeless. The image pushed to the lab registry, pulled by
its digest and run (non-root, read-only root, no capabilities) answering the smoke request:
test_container_serving, on a lab node.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stacklock.core import sbom as sbommod

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
EPOCH = "1767225600"
STACK = "lab-2026-11"


def _build(manifest: Path, out: Path) -> dict[str, Any]:
    env = dict(os.environ, NO_COLOR="1", SOURCE_DATE_EPOCH=EPOCH)
    start = time.monotonic()
    res = subprocess.run(
        [str(Path(sys.executable).parent / "stacklock"), "-m", str(manifest), "image", "build",
         "dev", "--out", str(out), "--format", "json"],
        capture_output=True, text=True, timeout=1800, env=env, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    record: dict[str, Any] = json.loads(res.stdout)
    print(f"image build: {time.monotonic() - start:.0f} s, steps {record['seconds']}")
    return record


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory, lab_docker: str
           ) -> Iterator[tuple[dict[str, Any], dict[str, Any], Path]]:
    """Two builds of the lab's dev image from examples/lab.yaml and its committed lock."""
    from stacklock.adapters import mirror

    wheels = mirror.mirror_dir() / "wheels"
    if not (mirror.mirror_dir() / "apt" / "Packages").is_file() or not any(wheels.glob("torch-*")):
        mirror.build_mirror()
    work = tmp_path_factory.mktemp("slimg")
    for name in ("lab.yaml", "lab.lock"):
        shutil.copy(REPO / "examples" / name, work / name)
    (work / "models").mkdir()
    shutil.copy(REPO / "examples/models/tiny-linear.mar", work / "models/tiny-linear.mar")
    first = _build(work / "lab.yaml", work / "a")
    second = _build(work / "lab.yaml", work / "b")
    yield first, second, work


def test_two_builds_from_one_lock_give_one_digest(
        builds: tuple[dict[str, Any], dict[str, Any], Path]) -> None:
    first, second, work = builds
    assert first["manifest_digest"] == second["manifest_digest"]
    assert first["config_digest"] == second["config_digest"]
    assert [la["digest"] for la in first["layers"]] == [la["digest"] for la in second["layers"]]
    blobs_a = sorted(p.name for p in (work / "a" / STACK / "oci/blobs/sha256").iterdir())
    blobs_b = sorted(p.name for p in (work / "b" / STACK / "oci/blobs/sha256").iterdir())
    assert blobs_a == blobs_b
    assert (work / "a" / f"{STACK}.cdx.json").read_bytes() == (work / "b" / f"{STACK}.cdx.json").read_bytes()
    print(f"manifest {first['manifest_digest']}, {first['size'] / 2**20:.0f} MiB compressed")


def _blob(work: Path, digest: str) -> Path:
    return work / "a" / STACK / "oci/blobs/sha256" / digest.split(":", 1)[1]


def test_the_image_says_what_the_lock_says(
        builds: tuple[dict[str, Any], dict[str, Any], Path], lab_docker: str) -> None:
    record, _, work = builds
    lock = json.loads((work / "lab.lock").read_text())["stacks"][STACK]
    config = json.loads(_blob(work, record["config_digest"]).read_bytes())
    assert hashlib.sha256(_blob(work, record["config_digest"]).read_bytes()).hexdigest() == \
        record["config_digest"].split(":", 1)[1]
    run = config["config"]
    assert run["User"] == "10001:10001"
    assert run["Entrypoint"][:2] == ["/opt/torchserve/venv/bin/torchserve", "--start"]
    assert "--ts-config" in run["Entrypoint"]
    assert run["Labels"]["stacklock.fingerprint"] == lock["fingerprint"]
    assert config["created"] == "2026-01-01T00:00:00Z"
    # the base is the lab image's own layer, byte for byte (its diff_id as Docker has it)
    docker_layers = json.loads(subprocess.run(
        ["docker", "image", "inspect", "-f", "{{json .RootFS.Layers}}", lab_docker],
        capture_output=True, text=True, check=True).stdout)
    assert config["rootfs"]["diff_ids"][0] == docker_layers[0] == record["base_diff_id"]

    bom_text = (work / "a" / f"{STACK}.cdx.json").read_text()
    assert sbommod.validate(bom_text) == []
    doc = json.loads(bom_text)
    root = doc["metadata"]["component"]  # the image itself, by its manifest digest
    assert (root["type"], root["version"]) == ("container", record["manifest_digest"])
    assert root["hashes"] == [{"alg": "SHA-256", "content": record["manifest_digest"][7:]}]
    assert root["purl"].startswith("pkg:oci/") and record["manifest_digest"][7:] in root["purl"]
    comps = {c["name"]: c for c in doc["components"]}
    pins = {p["name"]: p for p in lock["pip"]}
    for name, pin in pins.items():
        comp = comps[sbommod.normalize_pypi(name)]
        assert comp["version"] == pin["version"], name
        assert {"name": "stacklock:lock", "value": "locked"} in comp["properties"], name
    java = lock["apt"]["java"][0]
    assert comps[java["name"]]["version"] == java["version"]
    model = lock["models"][0]
    assert comps[model["name"]]["hashes"] == [{"alg": "SHA-256", "content": model["sha256"]}]
    cfg = comps["/etc/torchserve/config.properties"]
    assert cfg["hashes"][0]["content"] == lock["torchserve"]["config_sha256"]


def test_layers_are_timeless_and_pyc_are_hash_based(
        builds: tuple[dict[str, Any], dict[str, Any], Path]) -> None:
    record, _, work = builds
    epoch = int(EPOCH)
    kinds: dict[int, int] = {}
    for layer in record["layers"][1:]:  # the base is the lab image's, as it is
        with gzip.open(_blob(work, layer["digest"])) as gz, tarfile.open(fileobj=gz, mode="r|") as tar:
            names = []
            for member in tar:
                assert member.mtime == epoch, member.name
                assert (member.uname, member.gname) == ("", ""), member.name
                names.append(member.name)
                if member.name.endswith(".pyc"):
                    fh = tar.extractfile(member)
                    assert fh is not None
                    flags = int.from_bytes(fh.read(8)[4:8], "little")
                    kinds[flags] = kinds.get(flags, 0) + 1
            assert names == sorted(names, key=lambda n: [os.fsencode(p) for p in n.split("/")])
    assert kinds and set(kinds) == {3}, f"pyc flags seen: {kinds} (3 = checked hash)"
