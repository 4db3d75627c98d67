"""archives: model archive digests within archive_hash_timeout, and their root-only cache keyed
by each file's identity (moved from tests/unit/collectors/test_stack_facts.py)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from fakenode import LAB_MAR, FakeSystem, gather, lab_node

pytestmark = pytest.mark.unit


STORE = "/var/lib/torchserve/model-store"
CACHE = "/var/cache/stacklock/archive-digests.json"
BIG = b"PK\x03\x04" + b"\x00" * 4000


def _archives(node: FakeSystem, **opts: Any) -> dict[str, Any]:
    store: dict[str, Any] = gather(node, **opts)["torchserve"]["model_store"]
    return store


def test_an_unchanged_archive_reuses_its_digest_and_a_changed_one_is_hashed_again() -> None:
    node = lab_node()
    first = _archives(node)
    assert first["reused"] == [] and node.written == [CACHE]
    digest = hashlib.sha256(LAB_MAR).hexdigest()
    assert first["archives"] == {"tiny-linear.mar": digest}
    cache = json.loads(node.files[CACHE])
    assert cache["files"][f"{STORE}/tiny-linear.mar"]["sha256"] == digest
    node.hashed = []
    second = _archives(node)
    assert second["reused"] == ["tiny-linear.mar"] and second["archives"] == first["archives"]
    assert node.hashed == [] and node.written == [CACHE]  # nothing new to write
    # the same size and mtime, but a new ctime (an in-place rewrite): hashed again, caught
    node.files[f"{STORE}/tiny-linear.mar"] = LAB_MAR.replace(b"model", b"MODEL")
    node.meta = {f"{STORE}/tiny-linear.mar": {"ctime": 2}}
    third = _archives(node)
    assert third["reused"] == [] and node.hashed == [f"{STORE}/tiny-linear.mar"]
    assert third["archives"]["tiny-linear.mar"] != digest


def test_a_replaced_file_with_another_inode_is_hashed_again() -> None:
    node = lab_node()
    _archives(node)
    node.meta = {f"{STORE}/tiny-linear.mar": {"ino": 42}}
    assert _archives(node)["reused"] == []


def test_deep_always_rehashes_and_a_forged_cache_entry_is_not_believed_by_deep() -> None:
    node = lab_node()
    _archives(node)
    forged = json.loads(node.files[CACHE])
    forged["files"][f"{STORE}/tiny-linear.mar"]["sha256"] = "0" * 64
    node.files[CACHE] = json.dumps(forged)
    assert _archives(node)["archives"]["tiny-linear.mar"] == "0" * 64  # the cache is trusted
    deep = _archives(node, deep=True)
    assert deep["deep"] is True and deep["reused"] == []
    assert deep["archives"]["tiny-linear.mar"] == hashlib.sha256(LAB_MAR).hexdigest()


def test_a_cache_not_private_to_root_is_ignored() -> None:
    node = lab_node()
    _archives(node)
    node.insecure = {CACHE}
    assert _archives(node)["reused"] == []


def test_hashing_is_bounded_in_time_and_goes_on_next_run() -> None:
    files = {f"{STORE}/{n}.mar": BIG for n in ("a", "b", "c")}
    node = lab_node()
    node.files.update(files)
    node.hash_speed = 1000.0  # 4 s per archive
    first = gather(node, archive_hash_timeout=6)
    store = first["torchserve"]["model_store"]
    assert store["error"].startswith("could not look: hashing the model archives took longer")
    assert "b.mar" in store["error"] and "c.mar" in store["error"]
    assert "torchserve.model_store" in first["blocked"]
    # what was hashed is cached: the next runs go on where it stopped, then all is known
    second = gather(node, archive_hash_timeout=6)["torchserve"]["model_store"]
    assert "a.mar" in second["reused"] and "error" in second
    third = gather(node, archive_hash_timeout=6)["torchserve"]["model_store"]
    assert "error" not in third
    assert set(third["archives"]) == {"a.mar", "b.mar", "c.mar", "tiny-linear.mar"}


def test_no_cache_written_in_check_mode_without_root_or_when_disabled() -> None:
    node = lab_node()
    _archives(node, _check_mode=True)
    assert getattr(node, "written", []) == []
    _archives(node, archive_cache="")
    assert getattr(node, "written", []) == []
    node.read_only = {CACHE}
    store = _archives(node)
    assert "Permission denied" in store["cache_error"] and store["archives"]


