"""`stacklock image build`: the serving image from the lab's lock, built twice for real.

One module-scoped pair of builds (about 80-110 s each on the 2-core CI machine) feeds every
test: the two builds must give one manifest digest; the layout, config and SBOM must say
what the lock says; the image must run under Docker as the non-root user on a read-only
root with no capabilities and no network, and answer the model's smoke request.
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


def _docker(*args: str, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                          check=check)


def test_the_image_runs_locked_down_and_answers_the_smoke_request(
        builds: tuple[dict[str, Any], dict[str, Any], Path], tmp_path: Path) -> None:
    from stacklock.adapters import oci

    record, _, work = builds
    image = oci.read_layout(work / "a" / STACK / "oci")
    tag = "slimg-serving:test"
    start = time.monotonic()
    image_id = oci.docker_load(image, tmp_path, tag=tag)
    print(f"docker load: {time.monotonic() - start:.0f} s")
    name = "slimg-image-test"
    _docker("rm", "-f", name, check=False)
    try:
        assert image_id == record["config_digest"]
        probe = _docker("run", "--rm", "--network", "none", "--read-only", "--cap-drop", "ALL",
                        "--security-opt", "no-new-privileges", "--entrypoint",
                        "/opt/torchserve/venv/bin/python", tag, "-c",
                        "import os, torch, ts, yaml; print(os.getuid(), torch.__version__)")
        assert probe.stdout.split() == ["10001", "2.13.0+cpu"], probe.stderr
        java = _docker("run", "--rm", "--network", "none", "--read-only", "--cap-drop", "ALL",
                       "--entrypoint", "java", tag, "-version")
        assert 'version "17.' in java.stderr
        # TorchServe itself: read-only root, its state and logs on tmpfs owned by its user
        tmpfs = "uid=10001,gid=10001,mode=0750"
        _docker("run", "-d", "--name", name, "--network", "none", "--read-only",
                "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                "--tmpfs", f"/run/torchserve:{tmpfs}", "--tmpfs", f"/var/log/torchserve:{tmpfs}",
                "--tmpfs", "/tmp", tag)
        smoke = json.loads(
            (work / "lab.lock").read_text())["stacks"][STACK]["models"][0]["smoke"]
        script = (
            "import base64, json, sys, time, urllib.request\n"
            "deadline = time.time() + 150\n"
            "while True:\n"
            "    try:\n"
            "        key = json.load(open('/run/torchserve/key_file.json'))['inference']['key']\n"
            f"        req = urllib.request.Request('http://127.0.0.1:8080/predictions/tiny-linear/1.0',\n"
            f"            data=base64.b64decode('{smoke['input_base64']}'),\n"
            "            headers={'Content-Type': 'application/json', 'Authorization': 'Bearer ' + key})\n"
            "        print(urllib.request.urlopen(req, timeout=10).read().decode()); break\n"
            "    except Exception as exc:\n"
            "        if time.time() > deadline: print('no answer:', exc, file=sys.stderr); sys.exit(1)\n"
            "        time.sleep(1)\n")
        start = time.monotonic()
        answer = _docker("exec", name, "/opt/torchserve/venv/bin/python", "-c", script,
                         check=False, timeout=200)
        logs = _docker("logs", name, check=False).stdout[-2000:]
        assert answer.returncode == 0, answer.stderr + logs
        print(f"TorchServe in the image answered after {time.monotonic() - start:.0f} s")
        got = json.loads(answer.stdout)
        assert got == pytest.approx(smoke["expected"], abs=smoke["tolerance"])
    finally:
        _docker("rm", "-f", name, check=False)
        _docker("rmi", tag, check=False)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_push_to_the_lab_registry_and_pull_by_digest(
        builds: tuple[dict[str, Any], dict[str, Any], Path],
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """scripts/lab-registry.sh (Debian's docker-registry) on a loopback address; the image
    pushed by `stacklock image push`, pulled by Docker by its digest."""
    record, _, work = builds
    if shutil.which("docker-registry") is None and os.geteuid() != 0:
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
    reg_dir = tmp_path_factory.mktemp("slimg-registry")
    script = REPO / "scripts/lab-registry.sh"
    port = _free_port()
    url = subprocess.run([str(script), "start", "127.0.0.1", str(port), str(reg_dir)],
                         capture_output=True, text=True, check=True, timeout=300).stdout.strip()
    ref = ""
    try:
        assert url == f"http://127.0.0.1:{port}"
        listening = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True,
                                   text=True, check=True).stdout
        assert [line.split()[3] for line in listening.splitlines()] == [f"127.0.0.1:{port}"]
        start = time.monotonic()
        res = subprocess.run(
            [str(Path(sys.executable).parent / "stacklock"), "-m", str(work / "lab.yaml"),
             "image", "push", "dev", "--registry", url, "--out", str(work / "a")],
            capture_output=True, text=True, timeout=600, env=dict(os.environ, NO_COLOR="1"),
            check=False)
        assert res.returncode == 0, res.stderr[-3000:]
        ref = res.stdout.strip()
        assert ref == f"127.0.0.1:{port}/stacklock-lab/serving@{record['manifest_digest']}"
        print(f"push: {time.monotonic() - start:.1f} s")
        start = time.monotonic()
        _docker("pull", ref, timeout=600)
        print(f"docker pull by digest: {time.monotonic() - start:.1f} s")
        assert _docker("image", "inspect", "-f", "{{.Id}}", ref).stdout.strip() == \
            record["config_digest"]
        other = "sha256:" + "0" * 64
        missing = _docker("pull", f"127.0.0.1:{port}/stacklock-lab/serving@{other}", check=False)
        assert missing.returncode != 0
    finally:
        if ref:
            _docker("rmi", ref, check=False)
        subprocess.run([str(script), "stop", str(reg_dir)], capture_output=True, check=False)
