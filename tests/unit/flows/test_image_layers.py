"""stacklock.flows.image: the debs layer and the requirements, on real .debs built here.

A .deb shipping /lib/... must land under /usr/lib in the layer (the base's /lib is a link:
a real /lib folder in a layer would hide it); its control stanza joins the base's dpkg status
as installed, sorted, the base's own stanza of the same package replaced; the requirements
are the torchserve role's: every locked file's hash, names sorted.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from stacklock.flows import image

REPO = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")


def _deb(tmp: Path, name: str, version: str, files: dict[str, str]) -> Path:
    root = tmp / f"{name}-pkg"
    (root / "DEBIAN").mkdir(parents=True)
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: amd64\nMaintainer: t <t@t>\n"
        f"Description: test\n")
    out = tmp / f"{name}_{version}_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(out)],
                   check=True, capture_output=True)
    return out


def test_debs_layer_merged_usr_and_status(tmp_path: Path) -> None:
    debs = [_deb(tmp_path, "zlibthing", "2.0", {"lib/x86_64-linux-gnu/libz.so.9": "z"}),
            _deb(tmp_path, "alpha", "1.0", {"usr/share/alpha/a.txt": "a"})]
    base = ("Package: base-files\nStatus: install ok installed\nVersion: 12\n\n"
            "Package: zlibthing\nStatus: install ok installed\nVersion: 1.0\n")
    layer = tmp_path / "layer"
    added = image._deb_layer(debs, layer, base)
    assert not (layer / "lib").exists()
    assert (layer / "usr/lib/x86_64-linux-gnu/libz.so.9").read_text() == "z"
    status = (layer / "var/lib/dpkg/status").read_text()
    packages = [line.split(": ", 1)[1] for line in status.splitlines() if line.startswith("Package:")]
    assert packages == ["alpha", "base-files", "zlibthing"]
    assert "Version: 1.0\n" not in status.split("Package: zlibthing", 1)[1]
    assert "Version: 2.0" in status.split("Package: zlibthing", 1)[1]
    assert all("Status: install ok installed" in stanza for stanza in added)
    listed = (layer / "var/lib/dpkg/info/alpha.list").read_text().splitlines()
    assert "/usr/share/alpha/a.txt" in listed


def test_requirements_are_the_locked_closure_with_every_hash() -> None:
    locked = next(iter(json.loads((REPO / "examples/lab.lock").read_text())["stacks"].values()))
    text = image.requirements_text(locked)
    lines = text.splitlines()
    assert [line.split("==", 1)[0] for line in lines] == sorted(p["name"] for p in locked["pip"])
    for pin in locked["pip"]:
        line = next(ln for ln in lines if ln.startswith(f"{pin['name']}=="))
        assert line.startswith(f"{pin['name']}=={pin['version']} ")
        for f in pin["files"]:
            assert f"--hash=sha256:{f['sha256']}" in line
