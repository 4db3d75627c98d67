"""The run lock (one run per environment), run folders, and the subprocess helper's handling
of a signal: real processes, no lab."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from stacklock.adapters import proc
from stacklock.adapters.terraform import BinaryEngine, Terraform
from stacklock.core import runlock
from stacklock.flows.run import new_run_dir

HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from stacklock.core.runlock import RunLock
    lock = RunLock(Path(sys.argv[1]), sys.argv[2], command="stacklock apply " + sys.argv[2])
    lock.acquire()
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
    lock.release()
""")


def _holder(root: Path, env: str, seconds: float) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(root), env, str(seconds)],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "held"
    return child


def test_lock_records_the_holder_with_private_modes(tmp_path: Path) -> None:
    lock = runlock.RunLock(tmp_path, "dev", command="stacklock plan dev")
    lock.acquire()
    try:
        holder = runlock.read_holder(lock.path)
        assert holder is not None
        assert holder.pid == os.getpid() and holder.command == "stacklock plan dev"
        assert abs(holder.started - time.time()) < 5
        assert stat.S_IMODE(lock.path.stat().st_mode) == 0o600
        assert stat.S_IMODE(lock.path.parent.stat().st_mode) == 0o700
        assert lock.path == tmp_path / ".stacklock" / "locks" / "dev.lock"
    finally:
        lock.release()
    assert lock.path.exists() and lock.path.read_text() == ""


def test_second_run_fails_at_once_naming_the_holder(tmp_path: Path) -> None:
    child = _holder(tmp_path, "prod", 30)
    try:
        lock = runlock.RunLock(tmp_path, "prod", command="stacklock verify prod", timeout=0)
        started = time.monotonic()
        with pytest.raises(runlock.LockBusy) as info:
            lock.acquire()
        assert time.monotonic() - started < 2
        assert f"pid {child.pid}" in info.value.message
        assert "stacklock apply prod" in info.value.message
        assert int(info.value.exit_code) == 3
        assert info.value.holder is not None and info.value.holder.pid == child.pid
        # another environment is not blocked
        other = runlock.RunLock(tmp_path, "dev", command="x", timeout=0)
        other.acquire()
        other.release()
    finally:
        child.kill()
        child.wait()


def test_second_run_waits_for_the_first(tmp_path: Path) -> None:
    child = _holder(tmp_path, "dev", 1.0)
    seen: list[tuple[str, int | None]] = []
    lock = runlock.RunLock(tmp_path, "dev", command="y", timeout=20,
                           on_wait=lambda env, h: seen.append((env, h.pid if h else None)))
    started = time.monotonic()
    lock.acquire()
    waited = time.monotonic() - started
    lock.release()
    child.wait()
    assert 0.3 < waited < 15
    assert seen == [("dev", child.pid)]


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    child = _holder(tmp_path, "dev", 60)
    child.kill()
    child.wait()
    lock = runlock.RunLock(tmp_path, "dev", command="z", timeout=0)
    lock.acquire()  # the kernel released the flock with the process
    lock.release()


def test_several_environments_lock_in_sorted_order(tmp_path: Path) -> None:
    order: list[str] = []
    real = runlock.RunLock.acquire

    def spy(self: runlock.RunLock) -> None:
        order.append(self.env)
        real(self)

    locks = runlock.RunLocks(tmp_path, command="stacklock plan --all", timeout=0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runlock.RunLock, "acquire", spy)
        assert locks.acquire(["prod", "dev", "staging", "dev"]) == ["dev", "prod", "staging"]
        assert locks.acquire(["dev"]) == []  # held already: re-entrant within a run
    assert order == ["dev", "prod", "staging"]
    locks.release()
    assert locks.held() == []


def test_a_busy_environment_releases_the_ones_taken(tmp_path: Path) -> None:
    child = _holder(tmp_path, "staging", 30)
    try:
        locks = runlock.RunLocks(tmp_path, command="q", timeout=0)
        with pytest.raises(runlock.LockBusy):
            locks.acquire(["dev", "staging"])
        assert locks.held() == []
        free = runlock.RunLock(tmp_path, "dev", command="r", timeout=0)
        free.acquire()
        free.release()
    finally:
        child.kill()
        child.wait()


def test_run_folders_are_unique_and_private(tmp_path: Path) -> None:
    folders = {new_run_dir(tmp_path) for _ in range(20)}
    assert len(folders) == 20
    for folder in folders:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert f"-{os.getpid()}-" in folder.name


def test_terraform_gets_a_state_lock_timeout(tmp_path: Path) -> None:
    seen: list[list[str]] = []
    tf = Terraform(tmp_path, engine=BinaryEngine("/bin/true"), lock_timeout=42)
    with pytest.MonkeyPatch.context() as mp:
        def fake(argv: list[str], **_kw: object) -> proc.Completed:
            seen.append(list(argv))
            return proc.Completed(tuple(argv), 0, "{}", "", 0.0)

        mp.setattr("stacklock.adapters.terraform.run_command", fake)
        tf.apply()
        tf.destroy()
    assert all("-lock-timeout=42s" in argv for argv in seen) and len(seen) == 2


GRACEFUL = textwrap.dedent("""
    import signal, sys, time
    def stop(signum, frame):
        print("child: graceful stop", flush=True)
        time.sleep(0.5)
        sys.exit(7)
    signal.signal(signal.SIGINT, stop)
    print("child: started", flush=True)
    time.sleep(30)
""")


def _interrupt_soon(seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    return timer


@pytest.mark.parametrize("streamed", [False, True])
def test_an_interrupted_child_gets_sigint_and_time_to_stop(streamed: bool) -> None:
    lines: list[str] = []
    _interrupt_soon(0.7)
    started = time.monotonic()
    with pytest.raises(proc.Interrupted) as info:
        proc.run_command([sys.executable, "-c", GRACEFUL],
                         on_line=lines.append if streamed else None)
    assert time.monotonic() - started < 10
    assert "stopped gracefully" in info.value.how and "exit code 7" in info.value.how
    assert info.value.exit_status == 130
    if streamed:
        assert lines == ["child: started", "child: graceful stop"]
    assert info.value.command.startswith(f"{sys.executable} -c ...")  # not the whole script


def test_a_child_that_ignores_sigint_is_terminated_after_the_grace() -> None:
    stubborn = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(60)"
    _interrupt_soon(0.5)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(proc, "INTERRUPT_GRACE", 1.0)
        with pytest.raises(proc.Interrupted) as info:
            proc.run_command([sys.executable, "-c", stubborn])
    assert "terminated" in info.value.how


# --------------------------------------------------------------------------- issue 19: runs that end


def test_held_lock_descriptors_are_known_while_held(tmp_path: Path) -> None:
    lock = runlock.RunLock(tmp_path, "dev", command="stacklock plan dev")
    lock.acquire()
    fd = lock._fd
    assert fd is not None and fd in runlock.held_fds()
    lock.release()
    assert fd not in runlock.held_fds()


def test_a_child_keeps_the_environment_locked_until_it_exits(tmp_path: Path) -> None:
    """The child inherits the lock (run_command passes the held descriptors): when stacklock's
    own descriptor is gone (here: released while the child runs; in life: stacklock killed),
    the environment stays locked until the child has exited."""
    lock = runlock.RunLock(tmp_path, "dev", command="stacklock configure dev")
    lock.acquire()
    done: list[float] = []
    runner = threading.Thread(target=lambda: (proc.run_command(["sleep", "1.5"]),
                                              done.append(time.monotonic())))
    runner.start()
    deadline = time.monotonic() + 10
    while not proc._children and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc._children, "the child never started"
    lock.release()  # stacklock's descriptor is closed; the child's is not
    other = runlock.RunLock(tmp_path, "dev", command="stacklock verify dev", timeout=0)
    with pytest.raises(runlock.LockBusy):
        other.acquire()
    waiting = runlock.RunLock(tmp_path, "dev", command="stacklock verify dev", timeout=20)
    waiting.acquire()
    got = time.monotonic()
    waiting.release()
    runner.join()
    assert done and got >= done[0] - 0.2, "the lock was free before the child exited"


def test_sighup_stops_the_child_like_sigterm() -> None:
    """A dropped SSH session (SIGHUP): the child gets its SIGINT and time to stop, and the
    run ends with exit 3 naming SIGHUP -- not killed on the spot with its child left behind."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    proc.install_signal_handlers()
    try:
        threading.Timer(0.7, os.kill, (os.getpid(), signal.SIGHUP)).start()
        started = time.monotonic()
        with pytest.raises(proc.Interrupted) as info:
            proc.run_command([sys.executable, "-c", GRACEFUL])
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert time.monotonic() - started < 10
    assert "SIGHUP" in info.value.message
    assert "stopped gracefully" in info.value.how and "exit code 7" in info.value.how
    assert info.value.exit_status == 3
