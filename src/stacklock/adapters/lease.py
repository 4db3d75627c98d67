"""Background services that several runs share: started once, stopped by the last user.

A service (the lab's Docker daemon, the mirror's HTTP server) is named by a tag; its files
live in one run folder:

* `TAG.start.lock`: starting and stopping take it exclusively, so no run starts a second
  service beside another's, or stops one that another run still uses;
* `TAG.users`: each run that needs the service holds a shared flock on it (its *lease*);
* `TAG.owned`: the service was started for runs (not by hand): the last lease holder stops it.

A run that ends while others still hold leases leaves the service running for them, and the
last one stops it. The locks are the kernel's: a run that dies gives its lease back with it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

H = TypeVar("H")

_BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


@dataclass(frozen=True)
class Lease(Generic[H]):
    """A run's claim on a shared service: the service stays up while the lease is held."""

    handle: H
    tag: str
    fd: int
    run_dir: Path


@contextlib.contextmanager
def flock(path: Path, how: int) -> Iterator[int]:
    """`path` (created 0600) locked with `how` while the block runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, how)
        yield fd
    finally:
        os.close(fd)


def _path(run_dir: Path, tag: str, suffix: str) -> Path:
    return run_dir / f"{tag}.{suffix}"


def leased(run_dir: Path, tag: str) -> bool:
    """Whether any run holds a lease on the service (a shared lock on its users file)."""
    fd = os.open(_path(run_dir, tag, "users"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError as exc:
        if exc.errno in _BUSY:
            return True
        raise
    finally:
        os.close(fd)


def acquire(run_dir: Path, tag: str, start: Callable[[], tuple[H, bool]]) -> Lease[H]:
    """Hold a lease on the service, starting it with `start()` when needed; `start` returns
    the service's handle and whether it started it (then the last lease holder stops it)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with flock(_path(run_dir, tag, "start.lock"), fcntl.LOCK_EX):
        fd = os.open(_path(run_dir, tag, "users"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            handle, started = start()
            if started:
                _path(run_dir, tag, "owned").touch()
        except BaseException:
            os.close(fd)
            raise
    return Lease(handle, tag, fd, run_dir)


def release(lease: Lease[H], stop: Callable[[H], bool]) -> bool:
    """Give the lease back; the last holder stops a service that was started for runs (one
    started by hand is left running). True when it was stopped."""
    stopped = False
    with flock(_path(lease.run_dir, lease.tag, "start.lock"), fcntl.LOCK_EX):
        try:
            try:
                fcntl.flock(lease.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                last = True
            except OSError as exc:
                if exc.errno not in _BUSY:
                    raise
                last = False
            owned = _path(lease.run_dir, lease.tag, "owned")
            if last and owned.exists():
                stopped = stop(lease.handle)
                owned.unlink(missing_ok=True)
        finally:
            os.close(lease.fd)
    return stopped


def stop_unless_leased(run_dir: Path, tag: str, stop: Callable[[], bool]) -> bool:
    """Stop the service now, unless runs hold leases on it: then it is marked as started for
    runs, and the last lease holder stops it. True when it was stopped here."""
    with flock(_path(run_dir, tag, "start.lock"), fcntl.LOCK_EX):
        if leased(run_dir, tag):
            _path(run_dir, tag, "owned").touch()
            return False
        return stop()
