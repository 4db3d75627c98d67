"""Atomic file writes, the one way stacklock replaces a file it owns.

A temporary file in the same folder, fsync, rename: a reader (Terraform, Ansible, apt on a
lab node, node_exporter's textfile collector) sees the old file or the new one, never half
of one. The temporary name starts with a dot and ends in `.tmp`, so neither the textfile
collector (`*.prom`) nor stacklock's own generated-file scan picks it up.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from stacklock.errors import ToolFailed


def atomic_write(path: Path | str, data: str | bytes, *, mode: int = 0o644) -> Path:
    """Write `data` (text as UTF-8) to `path` atomically and return the path.

    Creates the parent folders. Raises ToolFailed (exit 3) when the folder is not writable.
    """
    target = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise ToolFailed(f"cannot write {target}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ToolFailed(f"cannot write {target}: {exc.strerror or exc}") from exc
    return target
