"""The torchserve role's readiness probe (ansible/roles/torchserve/files/torchserve-ping): exit
1 while TorchServe does not answer, 3 once systemd has restarted the unit three times (the
plays stop waiting), with the unit's journal less any line naming a key or a token."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PING = Path(__file__).resolve().parents[3] / "ansible/roles/torchserve/files/torchserve-ping"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ping(tmp_path: Path, restarts: int,
          state: str = "activating") -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in (("systemctl", f"echo NRestarts={restarts}; echo ActiveState={state}"),
                       ("journalctl", "echo 'java.net.BindException: Address already in use'; "
                                      "echo 'Inference key: 0123abcd'; echo 'token file x'")):
        tool = bin_dir / name
        tool.write_text(f"#!/bin/sh\n{body}\n")
        tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    keys = tmp_path / "key_file.json"
    keys.write_text('{"inference": {"key": "k"}, "management": {"key": "m"}, "API": {"key": "a"}}')
    port = _closed_port()
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    return subprocess.run([sys.executable, str(PING), str(keys), f"http://127.0.0.1:{port}"],
                          capture_output=True, text=True, env=env, timeout=60, check=False)


def test_not_answering_is_1_while_systemd_has_not_given_up(tmp_path: Path) -> None:
    res = _ping(tmp_path, restarts=2)
    assert res.returncode == 1, res.stderr
    assert "keeps failing" not in res.stderr


def test_a_crash_loop_is_3_with_the_journal_and_no_key(tmp_path: Path) -> None:
    res = _ping(tmp_path, restarts=3)
    assert res.returncode == 3, res.stderr
    assert "torchserve.service keeps failing: restarted 3 times" in res.stderr
    assert "Address already in use" in res.stderr
    assert "0123abcd" not in res.stderr and "token file" not in res.stderr


def test_a_unit_that_exited_for_good_is_3(tmp_path: Path) -> None:
    res = _ping(tmp_path, restarts=0, state="failed")
    assert res.returncode == 3, res.stderr
    assert "failed: it exited and systemd does not start it again" in res.stderr
