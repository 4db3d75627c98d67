"""File writes: atomic replacement, private modes under `.stacklock/`, append-only logs.

A temporary file in the same folder, fsync, rename: a reader (Terraform, Ansible, apt on a
lab node, node_exporter's textfile collector) sees the old file or the new one, never half
of one. The temporary name starts with a dot and ends in `.tmp`, so neither the textfile
collector (`*.prom`) nor stacklock's own generated-file scan picks it up.

Everything stacklock keeps for itself — run logs, reports, the audit history, run locks —
lives under `<output_dir>/.stacklock/` and is private to the user who runs stacklock: files
0600, folders 0700 (`.stacklock` itself included, so even a file another tool created there
with a wider mode cannot be reached by other users). Log files are 0600 wherever they are.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO

from stacklock.errors import ToolFailed

#: the folder of stacklock's own state under the output dir (private: 0700 / 0600)
PRIVATE_DIR = ".stacklock"
PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700


def is_private(path: Path | str) -> bool:
    """Whether `path` lies under a `.stacklock` folder (stacklock's own state)."""
    return PRIVATE_DIR in Path(path).parts


def default_mode(path: Path | str) -> int:
    """0600 under `.stacklock/`, else 0644 (generated files that are committed and read by
    Terraform, Ansible and other users)."""
    return PRIVATE_FILE_MODE if is_private(path) else 0o644


def ensure_dir(folder: Path | str) -> Path:
    """Create `folder` (and its parents). Under `.stacklock/`, every folder from `.stacklock`
    down to `folder` is made 0700 (also when it already existed with a wider mode)."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    parts = path.parts
    if PRIVATE_DIR in parts:
        start = parts.index(PRIVATE_DIR)
        for i in range(start + 1, len(parts) + 1):
            sub = Path(*parts[:i])
            try:
                if sub.stat().st_mode & 0o777 != PRIVATE_DIR_MODE:
                    os.chmod(sub, PRIVATE_DIR_MODE)
            except OSError:
                pass  # not ours (a shared parent): its own mode stays
    return path


def atomic_write(path: Path | str, data: str | bytes, *, mode: int | None = None) -> Path:
    """Write `data` (text as UTF-8) to `path` atomically and return the path.

    `mode` defaults to `default_mode(path)`: 0600 under `.stacklock/`, else 0644. Creates the
    parent folders (0700 under `.stacklock/`). Raises ToolFailed (exit 3) when the folder is
    not writable.
    """
    target = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    file_mode = default_mode(target) if mode is None else mode
    try:
        ensure_dir(target.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise ToolFailed(f"cannot write {target}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, file_mode)
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ToolFailed(f"cannot write {target}: {exc.strerror or exc}") from exc
    return target


def open_append(path: Path | str, *, mode: int = PRIVATE_FILE_MODE) -> IO[str]:
    """Open a log file for appending (text, UTF-8), created `mode` (0600: logs can hold what
    a tool printed about a host); an existing file with a wider mode is narrowed to it."""
    target = Path(path)
    ensure_dir(target.parent)
    fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, mode)
    try:
        if os.fstat(fd).st_mode & 0o777 != mode:
            os.fchmod(fd, mode)
    except OSError:
        pass
    return os.fdopen(fd, "a", encoding="utf-8")
