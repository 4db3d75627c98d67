"""The files class on a real lab node: unowned files, changed package files, changed wheel
files and changed role files, each caught by the verify play and by `verify --fast` naming the
file, then put back by `configure`; a clean node verifies with exit 0 after provisioning (and,
in test_integrity_runtime.py, after a restart).

One node (project slint, its own 10.231 network, environment dev only: conftest's
`integrity_lab`) is shared with tests/integration/test_integrity_runtime.py; tests run in file
order and each puts the node back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
NODE = "slint-dev-1"  # conftest.INTEGRITY_NODE
VENV = "/opt/torchserve/venv"
SITE = f"{VENV}/lib/python3.11/site-packages"


def sl(manifest: Path, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, NO_COLOR="1", COLUMNS="200")
    return subprocess.run([str(BIN / "stacklock"), "-m", str(manifest), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env, check=False)


def on_node(script: str) -> str:
    res = subprocess.run(["docker", "exec", NODE, "bash", "-ec", script], capture_output=True,
                         text=True, timeout=300, check=False)
    assert res.returncode == 0, f"{script}\n{res.stdout}\n{res.stderr}"
    return res.stdout


def verify(manifest: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    res = sl(manifest, "verify", "dev", *extra, "--format", "json", timeout=900)
    try:
        return res.returncode, json.loads(res.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"verify printed no JSON (exit {res.returncode}):\n"
                             f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}") from None


def file_findings(report: dict[str, Any]) -> dict[str, str]:
    """file:PATH -> the detail (its class first) of every files-class deviation."""
    return {c["component"]: c["detail"] for c in report["deviations"]
            if c["component"].startswith("file:")}


@pytest.fixture(scope="module")
def lab(integrity_lab: Path) -> Path:
    """The integrity node shared with the other class's tests (tests/integration/conftest.py)."""
    return integrity_lab


def test_clean_node_verifies(lab: Path) -> None:
    for extra in ((), ("--fast",)):
        code, rep = verify(lab, *extra)
        assert code == 0, json.dumps(rep["deviations"], indent=1)[:4000]
        comps = {c["component"] for c in rep["checks"]}
        assert "files.unowned" in comps and "files.wheel:torch" in comps
        assert "files.deb:docker.io" in comps and "files.role:torchserve" in comps
        # and the runtime class (tests/integration/test_integrity_runtime.py)
        for name in ("unit.torchserve.user", "process.torchserve.exe",
                     "process.torchserve.java.exe", "docker.runtime.nvidia",
                     "command.java.target", "unit.docker.daemon_reload"):
            assert name in comps, f"{extra}: {name} not checked"


#: (description, change, the file verify must name, its class)
CHANGES = [
    ("unowned file in site-packages", f"echo 'import os' > {SITE}/evil_hook.py",
     f"{SITE}/evil_hook.py", "file.unowned"),
    ("unowned .pth in site-packages", f"echo 'import evil' > {SITE}/zz-evil.pth",
     f"{SITE}/zz-evil.pth", "file.unowned"),
    ("unowned file in the model store", "echo x > /var/lib/torchserve/model-store/extra.py",
     "/var/lib/torchserve/model-store/extra.py", "file.unowned"),
    ("changed package file (runc)", "printf 'x' >> /usr/sbin/runc", "/usr/sbin/runc",
     "package.file.changed"),
    ("changed package conffile (docker.io)", "echo '# x' >> /etc/default/docker",
     "/etc/default/docker", "package.file.changed"),
    ("changed wheel file (torch)", f"echo '# x' >> {SITE}/torch/__init__.py",
     f"{SITE}/torch/__init__.py", "wheel.file.changed"),
    ("missing wheel file (torchserve)", f"rm {SITE}/ts/version.txt",
     f"{SITE}/ts/version.txt", "wheel.file.missing"),
    ("changed role file (torchserve-ping)", "echo '# x' >> /opt/torchserve/torchserve-ping",
     "/opt/torchserve/torchserve-ping", "file.changed"),
    ("changed role file mode (config)", "chmod 0644 /etc/torchserve/config.properties",
     "/etc/torchserve/config.properties", "file.changed"),
]


def test_every_change_is_named_by_play_and_fast(lab: Path) -> None:
    on_node("; ".join(c[1] for c in CHANGES))
    play_code, play = verify(lab)
    fast_code, fast = verify(lab, "--fast")
    assert play_code == 1 and fast_code == 1
    for rep in (play, fast):
        found = file_findings(rep)
        for what, _change, path, klass in CHANGES:
            assert f"file:{path}" in found, f"{what}: not named; {sorted(found)[:40]}"
            assert found[f"file:{path}"].startswith(klass), (what, found[f"file:{path}"])

    def norm(rep: dict[str, Any]) -> list[Any]:
        return sorted((c["component"], c["expected"], c["actual"], c["status"], c["detail"])
                      for c in rep["checks"] if c["component"].startswith(("file", "files.")))
    assert norm(play) == norm(fast)


def test_configure_repairs_and_verify_passes(lab: Path) -> None:
    res = sl(lab, "configure", "dev", "--yes", timeout=2400)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    code, rep = verify(lab)
    assert code == 0, json.dumps(rep["deviations"], indent=1)[:4000]


def test_shared_directory_file_is_named_not_removed(lab: Path) -> None:
    on_node("echo 'deb http://example.invalid/ x main' > /etc/apt/sources.list.d/evil.list; "
            "mkdir -p /etc/systemd/system/docker.service.d; "
            "echo '[Service]' > /etc/systemd/system/docker.service.d/evil.conf")
    for extra in ((), ("--fast",)):
        code, rep = verify(lab, *extra)
        found = file_findings(rep)
        assert code == 1
        assert found["file:/etc/apt/sources.list.d/evil.list"].startswith("file.unowned")
        assert found["file:/etc/systemd/system/docker.service.d/evil.conf"].startswith(
            "file.unowned")
    on_node("rm -f /etc/apt/sources.list.d/evil.list; rm -rf /etc/systemd/system/docker.service.d")
