"""The files of a locked wheel, read on the controller: every member's sha256 (the wheel's own
bytes, not a RECORD on the node), cached by the wheel's sha256 in
~/.cache/stacklock/wheelfiles/SHA.json. The wheel is looked up by its locked sha256 in the lab
mirror's PEP 503 index (mirror/simple/*/index.html, `#sha256=` fragments) or its wheels/."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import urllib.parse
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from stacklock.adapters.mirror import mirror_dir
from stacklock.core.lock import sha256_file

SCHEMA = "stacklock.wheelfiles/v2"
_HREF = re.compile(r'href="([^"#]+)#sha256=([0-9a-f]{64})"')


def cache_root() -> Path:
    base = os.environ.get("STACKLOCK_CACHE_DIR")
    return Path(base) if base else Path.home() / ".cache" / "stacklock"


def _index(root: Path) -> dict[str, Path]:
    """sha256 -> wheel file, from the mirror's simple index."""
    out: dict[str, Path] = {}
    simple = root / "simple"
    if not simple.is_dir():
        return out
    for page in simple.glob("*/index.html"):
        for href, digest in _HREF.findall(page.read_text("utf-8", "replace")):
            out[digest] = (page.parent / urllib.parse.unquote(href)).resolve()
    return out


_INDEXES: dict[Path, dict[str, Path]] = {}


def find_wheel(digests: Iterable[str], root: Path | None = None) -> Path | None:
    """The mirror's wheel with one of the locked sha256, else None."""
    root = root or mirror_dir()
    if root not in _INDEXES:
        _INDEXES[root] = _index(root)
    for d in digests:
        path = _INDEXES[root].get(str(d))
        if path is not None and path.is_file():
            return path
    return None


def wheel_files(digests: Iterable[str], root: Path | None = None) -> dict[str, Any] | None:
    """{sha256, file, members: {member: sha256 | l:TARGET}, entry_points} of the locked
    wheel, or None when the controller has no wheel with a locked sha256."""
    wanted = [str(d) for d in digests]
    folder = cache_root() / "wheelfiles"
    for d in wanted:
        cached = folder / f"{d}.json"
        if cached.is_file():
            data: dict[str, Any] = json.loads(cached.read_text("utf-8"))
            if data.get("schema") == SCHEMA:
                return data
    wheel = find_wheel(wanted, root)
    if wheel is None:
        return None
    digest = sha256_file(wheel)
    if digest not in wanted:  # the mirror's file is not the locked one
        return None
    members: dict[str, str] = {}
    entry_points = ""
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            data_bytes = zf.read(info)
            mode = (info.external_attr >> 16) & 0xFFFF
            if stat.S_ISLNK(mode):
                members[info.filename] = f"l:{data_bytes.decode()}"
            else:
                members[info.filename] = hashlib.sha256(data_bytes).hexdigest()
            top, _, rest = info.filename.partition("/")
            if top.endswith(".dist-info") and rest == "entry_points.txt":  # not a vendored one
                entry_points = data_bytes.decode("utf-8", "replace")
    out = {"schema": SCHEMA, "sha256": digest, "file": wheel.name, "members": members,
           "entry_points": entry_points}
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{digest}.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(out, sort_keys=True), "utf-8")
    tmp.replace(folder / f"{digest}.json")
    return out


__all__ = ["cache_root", "find_wheel", "wheel_files"]
