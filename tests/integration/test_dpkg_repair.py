"""The stacklock_packages repair step for real (ansible-playbook, connection local) against a
fake `dpkg` on PATH: `dpkg --configure -a` is retried only while another dpkg holds dpkg's lock
(exit 2, "... lock was locked by another process", dpkg 1.21's words); any other failure ends
the play at once with dpkg's own message (issue 19: it was retried 30 times, 5 s apart)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

FAKE_DPKG = """#!/bin/sh
# a fake dpkg: --audit finds an unfinished run; --configure answers as $FAKE_DPKG_MODE says
state="$FAKE_DPKG_STATE"
case "$1" in
  --audit)
    echo "The following packages are only half configured, probably due to problems"
    echo " stacklock-fake   a package left unconfigured by an interrupted run"
    exit 0;;
  --configure)
    echo x >> "$state/configure-calls"
    calls=$(wc -l < "$state/configure-calls")
    case "$FAKE_DPKG_MODE" in
      broken)
        echo "Setting up stacklock-fake (1.0) ..."
        echo "dpkg: error processing package stacklock-fake (--configure):" >&2
        printf ' installed stacklock-fake package post-installation script %s\n' \
          "subprocess returned error exit status 1" >&2
        echo "Errors were encountered while processing:" >&2
        echo " stacklock-fake" >&2
        exit 1;;
      busy|busy-then-ok)
        if [ "$FAKE_DPKG_MODE" = busy ] || [ "$calls" -le 2 ]; then
          echo "dpkg: error: dpkg frontend lock was locked by another process with pid 4242" >&2
          echo "Note: removing the lock file is always wrong, can damage the locked area" >&2
          echo "and the entire system. See <https://wiki.debian.org/Teams/Dpkg/FAQ#db-lock>." >&2
          exit 2
        fi
        echo "Setting up stacklock-fake (1.0) ..."
        exit 0;;
    esac;;
esac
echo "fake dpkg: unexpected arguments: $*" >&2
exit 99
"""

FAKE_APT_GET = """#!/bin/sh
echo x >> "$FAKE_DPKG_STATE/apt-get-calls"
echo "0 upgraded, 0 newly installed, 0 to remove and 0 not upgraded."
"""

PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - ansible.builtin.include_role:
        name: stacklock_packages
        tasks_from: repair
"""


def _repair(tmp_path: Path, mode: str, *extra: str) -> tuple[int, str, int, float]:
    """Run the role's repair tasks with the fake dpkg; (exit code, output, how many times
    `dpkg --configure -a` ran, seconds)."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    for name, text in (("dpkg", FAKE_DPKG), ("apt-get", FAKE_APT_GET)):
        (fake / name).write_text(text)
        (fake / name).chmod(0o755)
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    (tmp_path / "play.yml").write_text(PLAY)
    env = {**os.environ, "PATH": f"{fake}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}",
           "ANSIBLE_ROLES_PATH": str(ROOT / "ansible" / "roles"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_FORCE_COLOR": "false", "ANSIBLE_STDOUT_CALLBACK": "default",
           "FAKE_DPKG_STATE": str(state), "FAKE_DPKG_MODE": mode}
    started = time.monotonic()
    res = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local",
         "-e", f"ansible_python_interpreter={sys.executable}", *extra,
         str(tmp_path / "play.yml")],
        env=env, capture_output=True, text=True, timeout=600, check=False)
    calls = state / "configure-calls"
    count = len(calls.read_text().splitlines()) if calls.exists() else 0
    return res.returncode, res.stdout + res.stderr, count, time.monotonic() - started


def test_a_dpkg_failure_that_is_not_a_busy_lock_is_reported_at_once(tmp_path: Path) -> None:
    rc, out, calls, seconds = _repair(tmp_path, "broken")
    assert rc != 0, out[-3000:]
    assert calls == 1, f"dpkg --configure -a ran {calls} times:\n{out[-3000:]}"
    assert "dpkg --configure -a failed with exit code 1 (not a busy lock: not retried)" in \
        " ".join(out.split()), out[-3000:]
    assert "post-installation script subprocess returned error exit status 1" in out
    assert "FAILED - RETRYING" not in out
    assert seconds < 60, f"{seconds:.0f} s: waited on a failure no wait can fix"
    assert not (tmp_path / "state" / "apt-get-calls").exists()


def test_a_busy_dpkg_lock_is_waited_for(tmp_path: Path) -> None:
    rc, out, calls, _seconds = _repair(tmp_path, "busy-then-ok",
                                       "-e", "_stacklock_packages_dpkg_lock_delay=1")
    assert rc == 0, out[-3000:]
    assert calls == 3, out[-3000:]
    assert out.count("FAILED - RETRYING") == 2
    assert (tmp_path / "state" / "apt-get-calls").exists()  # then apt-get -f install ran


def test_a_lock_that_stays_busy_fails_after_the_retries_with_dpkg_s_message(
        tmp_path: Path) -> None:
    rc, out, calls, _seconds = _repair(tmp_path, "busy",
                                       "-e", "_stacklock_packages_dpkg_lock_delay=1",
                                       "-e", "_stacklock_packages_dpkg_lock_retries=3")
    assert rc != 0, out[-3000:]
    assert calls == 4, out[-3000:]  # the first try and 3 retries
    assert "dpkg frontend lock was locked by another process with pid 4242" in out
