# Copyright: stacklock contributors. Apache-2.0.
"""The sha256 of every model archive (``torchserve.model_store``), bounded in time, with a
root-only cache of digests keyed by each file's identity."""

from __future__ import annotations

import json
import os
import re
from typing import Any

from ansible.module_utils.stacklock_facts.common import CANNOT_LOOK, CannotLook
from ansible.module_utils.stacklock_facts.node import System

ARCHIVE_CACHE_SCHEMA = "stacklock.archive-digests/v1"
DEFAULT_ARCHIVE_CACHE = "/var/cache/stacklock/archive-digests.json"


def hash_archives(sy: System, store: str, names: list[str], opts: dict[str, Any]
                  ) -> dict[str, Any]:
    """The sha256 of each archive of the model store, within `archive_hash_timeout` seconds.

    A digest from the cache is reused while the file's identity (device, inode, size, mtime,
    ctime) is the one recorded with it: rewriting, replacing or appending to the file changes
    it (ctime cannot be set back). `deep` hashes everything again. Returns the model store's
    `archives`, `reused` (names whose digest came from the cache) and, when the time ran out,
    `error` (could not look: exit 3)."""
    cache_path = opts.get("archive_cache")
    if cache_path is None:
        cache_path = DEFAULT_ARCHIVE_CACHE
    deep = bool(opts.get("deep"))
    timeout = float(opts.get("archive_hash_timeout") or 300)
    deadline = sy.now() + timeout
    cached: Any = {}
    if cache_path and not deep:
        try:
            doc = json.loads(sy.read_private(cache_path) or "{}")
            if isinstance(doc, dict) and doc.get("schema") == ARCHIVE_CACHE_SCHEMA:
                cached = doc.get("files") or {}
        except ValueError:
            cached = {}
    archives: dict[str, str | None] = {}
    reused: list[str] = []
    fresh: dict[str, Any] = {}
    late: list[str] = []
    for name in names:
        path = os.path.join(store, name)
        identity = sy.file_identity(path)
        entry = cached.get(path) if isinstance(cached, dict) else None
        if (identity is not None and isinstance(entry, dict)
                and entry.get("identity") == identity
                and re.fullmatch(r"[0-9a-f]{64}", str(entry.get("sha256")))):
            archives[name] = entry["sha256"]
            reused.append(name)
            fresh[path] = entry
            continue
        if sy.now() > deadline:
            late.append(name)
            continue
        try:
            digest = sy.sha256_until(path, deadline)
        except CannotLook as exc:
            if "did not finish in time" not in str(exc):
                raise
            late.append(name)
            continue
        archives[name] = digest
        # cached only when the file did not change while it was hashed
        if digest is not None and identity is not None and sy.file_identity(path) == identity:
            fresh[path] = {"identity": identity, "sha256": digest}
    out: dict[str, Any] = {"archives": archives, "reused": reused, "deep": deep}
    if late:
        out["error"] = (f"{CANNOT_LOOK}hashing the model archives took longer than "
                        f"{timeout:.0f} s (archive_hash_timeout); not hashed: "
                        + ", ".join(late) + "; the next run goes on with them")
    if cache_path and not opts.get("_check_mode") and fresh != cached:
        text = json.dumps({"schema": ARCHIVE_CACHE_SCHEMA, "files": fresh}, sort_keys=True)
        try:
            sy.write_private(cache_path, text + "\n")
        except OSError as exc:  # not root (no become): every run hashes, nothing else changes
            out["cache_error"] = f"{cache_path}: {exc}"
    return out
