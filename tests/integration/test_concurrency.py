"""Concurrent runs, with real processes: one run at a time per environment (the second waits,
or fails at once naming the first), run folders of their own, one lab key pair when two first
runs generate it at once, and a lab mirror server that outlives the run that started it while
another run still uses it.

Cheap on purpose: the environments are static (Terraform records hosts in `terraform_data`,
nothing is contacted), and Terraform is the real binary behind a wrapper that makes `apply`
take a few seconds, so that the second run reliably meets the first.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TERRAFORM = shutil.which("terraform")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The lab's stack on two static environments (dev, staging) of one host each."""
    if TERRAFORM is None:
        pytest.skip("no terraform binary on PATH (the wrapper that slows apply needs one)")
    work = tmp_path_factory.mktemp("concurrency")
    (work / "models").mkdir()
    shutil.copy(ROOT / "examples/models/tiny-linear.mar", work / "models/tiny-linear.mar")
    shutil.copy(ROOT / "examples/lab.lock", work / "lab.lock")
    text = (ROOT / "examples/lab.yaml").read_text()
    text = re.sub(r"^project: .*$", "project: slconc", text, flags=re.M)
    text = text.replace("10.213.", "10.217.")
    envs = """environments:
  dev:
    provider: static
    stack: lab-2026-11
    hosts:
      - {name: conc-dev-01, address: 10.217.9.11, user: root}
  staging:
    provider: static
    stack: lab-2026-11
    hosts:
      - {name: conc-stg-01, address: 10.217.9.21, user: root}
"""
    text = text[:text.index("environments:\n")] + envs + text[text.index("\nlab:\n"):]
    path = work / "lab.yaml"
    path.write_text(text)
    slow = work / "slow-terraform"
    slow.write_text(f'#!/bin/sh\ncase " $* " in *" apply "*) sleep 4;; esac\n'
                    f'exec {TERRAFORM} "$@"\n')
    slow.chmod(0o755)
    for step in (["lock"], ["render"]):
        res = sl(path, *step)
        assert res.returncode == 0, res.stderr
    return path


def _env(manifest: Path) -> dict[str, str]:
    return dict(os.environ, NO_COLOR="1", COLUMNS="200",
                STACKLOCK_TERRAFORM_BIN=str(manifest.parent / "slow-terraform"))


def sl(manifest: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "stacklock"), "-m", str(manifest), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env=_env(manifest), check=False)


def start(manifest: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([str(BIN / "stacklock"), "-m", str(manifest), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(manifest))


def wait_for_holder(manifest: Path, env: str, pid: int, timeout: float = 60) -> None:
    lock = manifest.parent / "lab" / ".stacklock" / "locks" / f"{env}.lock"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads(lock.read_text() or "{}").get("pid") == pid:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"{pid} never took the lock of {env}")


def test_second_run_fails_at_once_or_waits(manifest: Path) -> None:
    first = start(manifest, "apply", "dev")
    try:
        wait_for_holder(manifest, "dev", first.pid)
        started = time.monotonic()
        busy = sl(manifest, "plan", "dev", "--lock-timeout", "0")
        assert time.monotonic() - started < 10
        assert busy.returncode == 3, busy.stderr
        assert f"pid {first.pid}" in busy.stderr and "apply dev" in busy.stderr
        assert "Traceback" not in busy.stderr
        # verify and audit take the same lock (no host is contacted before it)
        verify = sl(manifest, "verify", "dev", "--lock-timeout", "0")
        assert verify.returncode == 3 and f"pid {first.pid}" in verify.stderr, verify.stderr
        # another environment is not blocked
        other = sl(manifest, "plan", "staging", "--lock-timeout", "0")
        assert other.returncode in (0, 1), other.stderr
        # with a timeout, the second run waits for the first and then succeeds
        assert first.poll() is None, "the first run ended too early for this test"
        waiting = sl(manifest, "plan", "dev")
    finally:
        _out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert "waiting for another stacklock run" in waiting.stderr
    assert f"pid {first.pid}" in waiting.stderr
    assert waiting.returncode == 0, waiting.stderr  # planned after the apply: no changes
    assert "no changes" in waiting.stderr


def test_plans_of_several_environments_at_once(manifest: Path) -> None:
    """Overlapping sets of environments (taken in sorted order) never deadlock, and every
    run gets a run folder of its own, also when they start in the same second."""
    runs = manifest.parent / "lab" / ".stacklock" / "runs"
    before = set(runs.iterdir()) if runs.is_dir() else set()
    procs = [start(manifest, "apply", *envs) for envs in
             (["staging", "dev"], ["dev", "staging"], ["dev"], ["staging"])]
    results = [(p.pid, *p.communicate(timeout=300), p.returncode) for p in procs]
    for pid, _out, err, rc in results:
        assert rc == 0, f"{pid}: {err}"
    new = set(runs.iterdir()) - before
    assert len(new) == len(procs), sorted(p.name for p in new)
    assert {p.name.split("-")[1] for p in new} == {str(r[0]) for r in results}


KEYGEN = """
import sys, time
from stacklock.flows.lab import ssh_key
from stacklock.core.manifest import load_manifest
loaded = load_manifest(sys.argv[1])
go = float(sys.argv[2])
time.sleep(max(0.0, go - time.time()))
print(ssh_key(loaded))
"""


def test_two_first_runs_make_one_lab_key_pair(manifest: Path) -> None:
    key = manifest.parent / "lab" / ".stacklock" / "ssh" / "id_ed25519"
    for path in (key, key.with_name("id_ed25519.pub")):
        path.unlink(missing_ok=True)
    go = time.time() + 2.0
    procs = [subprocess.Popen([sys.executable, "-c", KEYGEN, str(manifest), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert out.strip() == str(key)
    public = subprocess.run(["ssh-keygen", "-y", "-f", str(key)], capture_output=True,
                            text=True, check=True).stdout.split()[:2]
    assert key.with_name("id_ed25519.pub").read_text().split()[:2] == public
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert not list(key.parent.glob(".id_ed25519.*.tmp*"))


def test_mirror_server_outlives_the_run_that_started_it(tmp_path: Path) -> None:
    from stacklock.adapters import mirror

    root = tmp_path / "mirror"
    root.mkdir()
    (root / mirror.MARKER).write_text("test mirror\n")
    port = 18000 + os.getpid() % 1000
    first = mirror.acquire_server("127.0.0.1", port, root)
    second = mirror.acquire_server("127.0.0.1", port, root)
    try:
        assert first.handle.started and not second.handle.started
        assert mirror.release_server(first) is False  # the second run still uses it
        assert mirror._answers(first.handle.url)
    finally:
        assert mirror.release_server(second) is True  # the last one stops it
    assert not mirror._answers(first.handle.url)
