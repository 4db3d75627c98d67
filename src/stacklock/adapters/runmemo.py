"""A value computed once per run of many processes: Ansible forks a worker per host, so an
action's in-process memo is lost with each fork. The first process builds the value under a
lock and keeps it as JSON in the run's folder; the others wait for the lock and read it.

A run is named by its process (`process_scope`: pid and start time, so a reused pid is another
run). Its folder is private (0700) to the user, and a later run removes it once that process
is gone."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any


def process_scope(pid: int) -> str | None:
    """`PID-STARTTIME` of a live process (its start time in clock ticks, from /proc), None
    when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text("utf-8")
    except OSError:
        return None
    return f"{pid}-{stat.rsplit(')', 1)[1].split()[19]}"


def prune(root: Path) -> None:
    """Remove the folders of runs whose process is gone."""
    for folder in root.iterdir() if root.is_dir() else ():
        pid = folder.name.split("-", 1)[0]
        if pid.isdigit() and process_scope(int(pid)) != folder.name:
            shutil.rmtree(folder, ignore_errors=True)


def once(root: Path, scope: str, key: str, build: Callable[[], Any]) -> Any:
    """`build()` for the first caller of (scope, key); its JSON for every later caller."""
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder = root / scope
    if not folder.is_dir():
        prune(root)
        folder.mkdir(mode=0o700, exist_ok=True)
    done = folder / f"{key}.json"
    with open(folder / f"{key}.lock", "a", encoding="utf-8") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        try:
            return json.loads(done.read_text("utf-8"))
        except (OSError, ValueError):
            pass
        value = build()
        tmp = done.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(value), "utf-8")
        tmp.replace(done)
        return value


__all__ = ["once", "process_scope", "prune"]
