"""`stacklock sbom` and `stacklock diff` on real lab nodes: the running demo lab
(`examples/lab.yaml`, `make demo`; skipped when its nodes are not up).

`sbom` output validates against the CycloneDX 1.6 schema and is byte-identical across two
runs; `diff` of the clean environments is empty (exit 0 with --fail-on-drift); a package
installed by hand on one node makes `diff --fail-on-drift` exit 1 naming the package and the
environment, and the node is put back at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MANIFEST = ROOT / "examples" / "lab.yaml"
ENVS = ("dev", "staging", "prod")
EXTRA = "stacklock-diff-probe"


def container(env: str) -> str:
    return f"stacklock-lab-{env}-1"


def _lab_up() -> str | None:
    if os.geteuid() != 0:
        return "the lab needs root"
    for env in ENVS:
        res = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", container(env)],
                             capture_output=True, text=True, check=False)
        if res.stdout.strip() != "true":
            return f"the demo lab is not running ({container(env)}): run `make demo`"
        if not (ROOT / "examples" / "lab" / "inventories" / env / "hosts.yml").is_file():
            return f"the demo lab's {env} inventory is missing"
    return None


@pytest.fixture(scope="module")
def demo_lab() -> Path:
    reason = _lab_up()
    if reason:
        pytest.skip(reason)
    return MANIFEST


def sl(manifest: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, NO_COLOR="1", COLUMNS="200")
    return subprocess.run([str(BIN / "stacklock"), "-m", str(manifest), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env, check=False)


def on_node(name: str, script: str) -> None:
    res = subprocess.run(["docker", "exec", name, "bash", "-ec", script], capture_output=True,
                         text=True, timeout=120, check=False)
    assert res.returncode == 0, f"{name}: {script}\n{res.stdout}\n{res.stderr}"


def check_sbom(manifest: Path, out: Path, envs: tuple[str, ...], node: str) -> None:
    from stacklock.core import sbom

    first, second = out / "one", out / "two"
    for target in (first, second):
        res = sl(manifest, "sbom", "--out", str(target))
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    files = sorted(p.relative_to(first) for p in first.rglob("*.cdx.json"))
    # one per environment, and one per node in that environment's folder
    assert sorted(str(f) for f in files if f.parent == Path(".")) == sorted(
        f"{e}.cdx.json" for e in envs), files
    for e in envs:
        assert any(f.parent == Path(e) for f in files), (e, files)
    assert Path(envs[0]) / f"{node}.cdx.json" in files, files
    for rel in files:
        text = (first / rel).read_text()
        assert sbom.validate(text) == [], rel
        assert text == (second / rel).read_text(), f"{rel} differs between two runs"
    doc = json.loads((first / envs[0] / f"{node}.cdx.json").read_text())
    counts = sbom.component_counts(json.dumps(doc))
    for kind in ("library", "device-driver", "machine-learning-model", "file",
                 "operating-system"):
        assert counts.get(kind), (kind, counts)
    purls = [c.get("purl", "") for c in doc["components"]]
    assert any(p.startswith("pkg:deb/debian/dpkg@") and "distro=debian-12" in p for p in purls)
    assert any(p.startswith("pkg:pypi/torch@") for p in purls)


def check_diff(manifest: Path, env: str, node: str) -> None:
    res = sl(manifest, "diff", "--fail-on-drift", "--format", "json")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    clean = json.loads(res.stdout)
    assert clean["identical"] and clean["compared"]["os"] > 100, clean
    # one extra OS package, installed by hand on one node (a package built on the node)
    build = f"/tmp/{EXTRA}"
    on_node(node, f"rm -rf {build} && mkdir -p {build}/DEBIAN && printf 'Package: {EXTRA}\\n"
                  "Version: 1.0\\nArchitecture: all\\nMaintainer: stacklock tests\\n"
                  "Description: stacklock test package, installed by hand\\n' "
                  f"> {build}/DEBIAN/control && dpkg-deb -b {build} {build}.deb >/dev/null "
                  f"&& dpkg -i {build}.deb >/dev/null")
    try:
        res = sl(manifest, "diff", "--fail-on-drift")
        assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]
        assert EXTRA in res.stdout and env in res.stdout
        res = sl(manifest, "diff", "--fail-on-drift", "--format", "json")
        assert res.returncode == 1
        (found,) = json.loads(res.stdout)["differences"]
        assert found["group"] == "os" and found["name"] == EXTRA
        assert found["differing"] == [env] and found["values"][env] == "1.0"
    finally:
        on_node(node, f"dpkg --purge {EXTRA} >/dev/null; rm -rf {build} {build}.deb")
    res = sl(manifest, "diff", "--fail-on-drift")
    assert res.returncode == 0, res.stdout[-3000:]


def test_sbom_is_valid_and_reproducible(demo_lab: Path, tmp_path: Path) -> None:
    check_sbom(demo_lab, tmp_path, ENVS, container(ENVS[0]))


def test_diff_is_empty_then_names_a_hand_installed_package(demo_lab: Path) -> None:
    check_diff(demo_lab, "staging", container("staging"))
