"""One run at a time per project and environment: a file lock that says who holds it.

Every command that changes or reads live state (plan, apply, configure, provision, verify,
audit, destroy, trust, demo) holds `<output_dir>/.stacklock/locks/<env>.lock` for its whole
run. The lock is `fcntl.flock` on that file (the kernel releases it when the holder exits,
however it exits: a crashed run never leaves a stale lock); the file's content names the
holder (pid, command line, host, start time) so that a second run can say whom it waits for.

Several environments are locked in sorted order, so two runs over overlapping sets of
environments cannot deadlock. The lock folder is 0700 and each lock file 0600.

A child outlives its run: the lock goes with it. Every child stacklock starts (Terraform,
ansible-playbook: `stacklock.adapters.proc.run_command`) inherits the descriptors of the run
locks held at that moment (`held_fds`, passed with Popen's `pass_fds`). flock belongs to the
open file description, which the kernel frees only when its last descriptor closes: while a
child runs, the environment stays locked even when stacklock itself is gone (SIGKILL, a
crash, a hangup it could not handle). The next run waiting for the lock gets it when the
child has ended, not when stacklock ended. (The other way -- stopping every child before the
lock is released -- cannot hold when stacklock is killed with SIGKILL, and killing Terraform
mid-apply loses what it created.) Only what the child keeps the descriptor in holds the lock
longer: Terraform's plugins and provisioners run for the command's length; a daemon started
through start-stop-daemon gets no descriptor beyond 0-2. SIGHUP, SIGTERM and Ctrl-C stop the
children first anyway (`proc.install_signal_handlers`): the lock is released after them.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from stacklock.errors import ToolFailed

#: the default of `--lock-timeout`: how long a run waits for another run's lock
DEFAULT_TIMEOUT = 600.0

#: descriptors of the run locks this process holds now (what children inherit)
_held_fds: set[int] = set()
_held_fds_lock = threading.Lock()


def held_fds() -> tuple[int, ...]:
    """The descriptors of every run lock this process holds now: `run_command` passes them to
    each child, so that a child that outlives stacklock keeps its environments locked."""
    with _held_fds_lock:
        return tuple(sorted(_held_fds))


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a lock, as recorded in its file."""

    pid: int
    command: str
    host: str
    started: float  # epoch seconds

    def describe(self, now: float | None = None) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        age = max(0.0, (now if now is not None else time.time()) - self.started)
        return (f"pid {self.pid} on {self.host} ({self.command}), "
                f"since {since} ({age:.0f} s ago)")

    def as_json(self) -> str:
        return json.dumps({"pid": self.pid, "command": self.command, "host": self.host,
                           "started": self.started}, sort_keys=True)

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        try:
            data = json.loads(text)
            return cls(int(data["pid"]), str(data["command"]), str(data["host"]),
                       float(data["started"]))
        except (ValueError, KeyError, TypeError):
            return None


class LockBusy(ToolFailed):
    """Another run holds an environment's lock and the timeout ran out: exit 3."""

    def __init__(self, env: str, path: Path, holder: Holder | None, waited: float) -> None:
        who = holder.describe() if holder else "a run that is just starting"
        waited_text = f" after waiting {waited:.0f} s" if waited >= 1 else ""
        super().__init__(
            f"environment {env} is locked by another stacklock run{waited_text}: {who}; "
            f"lock file {path} (wait for it to finish, or pass a longer --lock-timeout)")
        self.env = env
        self.holder = holder


def lock_dir(root: Path) -> Path:
    """`<output_dir>/.stacklock/locks`, created 0700."""
    path = root / ".stacklock" / "locks"
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def read_holder(path: Path) -> Holder | None:
    try:
        return Holder.parse(path.read_text("utf-8"))
    except OSError:
        return None


class RunLock:
    """The lock of one environment. `acquire` waits up to `timeout` seconds (0: not at all)."""

    def __init__(self, root: Path, env: str, *, command: str, timeout: float = DEFAULT_TIMEOUT,
                 on_wait: Callable[[str, Holder | None], None] | None = None,
                 poll: float = 0.2) -> None:
        self.root = root
        self.env = env
        self.command = command
        self.timeout = timeout
        self.on_wait = on_wait
        self.poll = poll
        self.path = lock_dir(root) / f"{env}.lock"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _try(self, fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise

    def acquire(self) -> None:
        if self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ToolFailed(f"cannot open the run lock {self.path}: "
                             f"{exc.strerror or exc}") from exc
        try:
            os.fchmod(fd, 0o600)
            started = time.monotonic()
            told = False
            while not self._try(fd):
                waited = time.monotonic() - started
                if waited >= self.timeout:
                    raise LockBusy(self.env, self.path, read_holder(self.path), waited)
                if not told:
                    told = True
                    if self.on_wait is not None:
                        self.on_wait(self.env, read_holder(self.path))
                time.sleep(min(self.poll, max(0.01, self.timeout - waited)))
            me = Holder(os.getpid(), self.command, socket.gethostname(), time.time())
            os.ftruncate(fd, 0)
            os.pwrite(fd, (me.as_json() + "\n").encode("utf-8"), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        with _held_fds_lock:
            _held_fds.add(fd)

    def release(self) -> None:
        """Release the lock (the file stays: removing it would race with the next holder)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with _held_fds_lock:
            _held_fds.discard(fd)  # no child started from now on inherits it
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        finally:
            os.close(fd)  # closing the descriptor releases the flock


class RunLocks:
    """The locks of several environments of one project, taken in sorted order."""

    def __init__(self, root: Path, *, command: str, timeout: float = DEFAULT_TIMEOUT,
                 on_wait: Callable[[str, Holder | None], None] | None = None) -> None:
        self.root = root
        self.command = command
        self.timeout = timeout
        self.on_wait = on_wait
        self._locks: dict[str, RunLock] = {}

    def acquire(self, envs: Iterable[str]) -> list[str]:
        """Lock every environment of `envs` not held yet; return those newly locked.

        Environments are always locked in sorted order. When this run already holds some
        and a new one sorts before them, the held ones are kept (releasing them could let
        another run in between): the timeout still bounds any wait.
        """
        taken = []
        deadline = time.monotonic() + self.timeout
        try:
            for env in sorted(set(envs) - set(self._locks)):
                lock = RunLock(self.root, env, command=self.command,
                               timeout=max(0.0, deadline - time.monotonic()),
                               on_wait=self.on_wait)
                lock.acquire()
                self._locks[env] = lock
                taken.append(env)
        except BaseException:
            for env in taken:
                self._locks.pop(env).release()
            raise
        return taken

    def held(self) -> list[str]:
        return sorted(self._locks)

    def release(self) -> None:
        for env in sorted(self._locks, reverse=True):
            self._locks.pop(env).release()


__all__ = ["DEFAULT_TIMEOUT", "Holder", "LockBusy", "RunLock", "RunLocks", "held_fds",
           "lock_dir", "read_holder"]
