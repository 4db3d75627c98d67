"""The audit schedule runs unprivileged and sandboxed (issue 13, item 4)."""

from __future__ import annotations

import configparser
import getpass
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from stacklock.cli import cli
from stacklock.core.schedule import (
    CRON_FILE,
    DEFAULT_USER,
    INSTALL_FILE,
    SERVICE_FILE,
    read_write_paths,
    render_schedules,
    write_schedules,
)

pytestmark = pytest.mark.unit

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
REPO = Path(__file__).resolve().parents[3]


def _render(**kw: Any) -> dict[str, str]:
    args: dict[str, Any] = {"envs": ["dev"], "interval": "daily", "repo_dir": "/srv/stacklock",
                            "manifest": "stacklock.yaml", "user": DEFAULT_USER}
    args.update(kw)
    return render_schedules(**args)


def _service(text: str) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None, strict=True,
                                       comment_prefixes=("#", ";"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser["Service"]


def test_the_default_account_is_unprivileged(tmp_path: Path) -> None:
    assert DEFAULT_USER != "root"
    result = CliRunner().invoke(cli, ["-m", str(REPO / "examples" / "static.yaml"), "schedule",
                                      "dev", "--repo-dir", str(REPO),
                                      "--out", str(tmp_path / "out")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    service = _service((tmp_path / "out" / SERVICE_FILE).read_text("utf-8"))
    cron = (tmp_path / "out" / CRON_FILE).read_text("utf-8")
    assert service["User"] == "stacklock"
    entry = [line for line in cron.splitlines() if line and not line.startswith(("#", "SHELL",
                                                                               "PATH"))]
    assert entry[0].split()[5] == "stacklock"
    # the output dir of the manifest (examples/static) is the one writable path
    assert service["ReadWritePaths"].split()[0] == str((REPO / "examples" / "static").resolve())


def test_the_service_is_sandboxed() -> None:
    service = _service(_render()[SERVICE_FILE])
    expected = {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "read-only",
        "PrivateTmp": "yes", "PrivateDevices": "yes", "RestrictSUIDSGID": "yes",
        "CapabilityBoundingSet": "", "AmbientCapabilities": "", "UMask": "0077",
        "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes", "LockPersonality": "yes",
        "SystemCallFilter": "@system-service",
    }
    for key, value in expected.items():
        assert service[key] == value, key
    assert service["ReadWritePaths"] == "/srv/stacklock"
    assert "ANSIBLE_HOME=/tmp/ansible" in service["Environment"].split()


def test_read_write_paths_cover_report_folders_outside_the_output_dir() -> None:
    assert read_write_paths("/srv/repo", "/srv/repo/.stacklock/audit",
                            "/srv/repo/.stacklock/audit/x.prom") == "/srv/repo"
    assert read_write_paths("/srv/repo", "/var/lib/reports",
                            "/var/lib/node_exporter/stacklock.prom") == (
        "/srv/repo -/var/lib/reports -/var/lib/node_exporter")
    service = _service(_render(report_dir="/var/reports", output_dir="/srv/out")[SERVICE_FILE])
    assert shlex.split(service["ReadWritePaths"]) == ["/srv/out", "-/var/reports"]


def test_cron_runs_private_and_locks_in_its_own_folder() -> None:
    text = _render()[CRON_FILE]
    command = text.splitlines()[-1].split(None, 6)[6]
    words = shlex.split(command)
    assert words[:2] == ["umask", "077"]
    lock = words[words.index("flock") + 2]
    assert lock == "/srv/stacklock/.stacklock/audit/.cron.lock"  # not a shared /run/lock path


def test_install_says_what_the_account_needs() -> None:
    text = _render()[INSTALL_FILE]
    for needle in ("useradd --system", "read access to the checkout", "SSH key",
                   "write access to the output dir", "never root", "ProtectSystem=strict"):
        assert needle in text, needle


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_sandboxed_unit(tmp_path: Path) -> None:
    repo = tmp_path / "checkout"
    binary = repo / ".venv" / "bin" / "stacklock"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    files = _render(repo_dir=str(repo), user=getpass.getuser())
    written = write_schedules(tmp_path / "out", files)
    units = [str(p) for p in written if p.suffix in (".service", ".timer")]
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", *units], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    mine = [line for line in result.stderr.splitlines() if "stacklock-audit" in line]
    assert mine == [], mine  # every sandbox key is known and its value parses
