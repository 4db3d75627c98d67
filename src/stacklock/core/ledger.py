"""The evidence ledger: append-only, hash-chained JSON lines. Pure (no I/O).

Each line is one record, a JSON object:

    {"seq": 7, "prev": "<hash of record 6>", "kind": "evidence" | "revision",
     "time": "2026-11-04T10:12:33Z", "body": {...}, "hash": "<sha256>"}

`hash` is the sha256 of the record's canonical JSON (sorted keys, no spaces, UTF-8) without
the `hash` key; `prev` of the first record is 64 zeros. Editing a field changes its hash;
deleting, inserting or reordering lines breaks `seq` or `prev`. So `check_chain` names the
first record that is not what was written. (Cutting records off the end leaves a shorter
valid chain: keep the ledger where nobody can rewrite it, e.g. a versioned S3 bucket, and
compare its head with `head()` of an earlier run.)

Kinds:

* `revision` — a stack revision the first time the ledger sees it: `fingerprint`, `stack`
  (the stack's name when seen), `project`, `lock_text` (the stack's whole locked entry as
  JSON text: what a rollback installs, never read from git). `fingerprint_of(lock)` must equal
  the fingerprint.
* `evidence` — a passing `verify` of an environment: `environment`, `fingerprint`, `nodes`,
  `facts_sha256` (the values read from its nodes), `report_sha256` (the parity report), `ok`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

GENESIS = "0" * 64
KINDS = ("evidence", "revision")
RECORD_KEYS = ("seq", "prev", "kind", "time", "body", "hash")


def canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def digest(data: Any) -> str:
    """sha256 of the canonical JSON of `data`."""
    return sha256_text(canonical(data))


def record_hash(record: Mapping[str, Any]) -> str:
    return digest({k: v for k, v in record.items() if k != "hash"})


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def new_record(prev: Mapping[str, Any] | None, kind: str, body: Mapping[str, Any],
               time: str | None = None) -> dict[str, Any]:
    """The record that follows `prev` (None: the first)."""
    if kind not in KINDS:
        raise ValueError(f"unknown ledger record kind {kind!r}")
    record: dict[str, Any] = {
        "seq": (int(prev["seq"]) + 1) if prev else 1,
        "prev": str(prev["hash"]) if prev else GENESIS,
        "kind": kind,
        "time": time or utc_now(),
        "body": dict(body),
    }
    record["hash"] = record_hash(record)
    return record


def extend(records: Sequence[Mapping[str, Any]], entries: Iterable[tuple[str, Mapping[str, Any]]],
           time: str | None = None) -> list[dict[str, Any]]:
    """The records that follow `records` (a checked chain): one per (kind, body), in order."""
    prev: Mapping[str, Any] | None = records[-1] if records else None
    out: list[dict[str, Any]] = []
    for kind, body in entries:
        rec = new_record(prev, kind, body, time)
        out.append(rec)
        prev = rec
    return out


def backoff(attempt: int, jitter: float, base: float = 0.05, cap: float = 2.0) -> float:
    """Seconds to wait after conditional write `attempt` (0-based) lost to another writer:
    exponential with full jitter (`jitter` in [0, 1)), at most `cap`."""
    return min(cap, base * 2.0 ** attempt) * max(0.0, min(1.0, jitter))


def dumps(record: Mapping[str, Any]) -> str:
    """One line of the ledger file."""
    return canonical(record) + "\n"


@dataclass(frozen=True)
class ChainError:
    line: int  # 1-based line in the file
    seq: int | None
    message: str

    def describe(self) -> str:
        what = f"record seq {self.seq}" if self.seq is not None else "record"
        return f"line {self.line} ({what}): {self.message}"


def parse_lines(text: str) -> tuple[list[dict[str, Any]], ChainError | None]:
    """The records of a ledger file's text, stopping at the first line that is not one."""
    records: list[dict[str, Any]] = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            return records, ChainError(i, None, "empty line (records are never removed)")
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            return records, ChainError(i, None, f"not JSON ({exc.msg})")
        if not isinstance(data, dict) or tuple(sorted(data)) != tuple(sorted(RECORD_KEYS)):
            return records, ChainError(i, data.get("seq") if isinstance(data, dict) else None,
                                       "not a ledger record (keys " + ", ".join(RECORD_KEYS)
                                       + ")")
        records.append(data)
    return records, None


def check_chain(records: Sequence[Mapping[str, Any]]) -> ChainError | None:
    """The first record that breaks the chain (None: every record is as written)."""
    prev_hash = GENESIS
    for i, rec in enumerate(records, start=1):
        seq = rec.get("seq")
        seq_i = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
        if seq_i != i:
            return ChainError(i, seq_i, f"seq is {seq!r}, expected {i}: a record was "
                                        "deleted, inserted or moved before it")
        if rec.get("prev") != prev_hash:
            return ChainError(i, seq_i, "prev does not match the hash of the record before "
                                        "it: a record was removed, reordered or rewritten")
        if record_hash(rec) != rec.get("hash"):
            return ChainError(i, seq_i, "its content does not match its hash: the record "
                                        "was edited after it was written")
        if rec.get("kind") not in KINDS:
            return ChainError(i, seq_i, f"unknown kind {rec.get('kind')!r}")
        prev_hash = str(rec["hash"])
    return None


def check_text(text: str) -> tuple[list[dict[str, Any]], ChainError | None]:
    records, error = parse_lines(text)
    if error is None:
        error = check_chain(records)
        if error is not None:
            records = records[: error.line - 1]
    return records, error


# --------------------------------------------------------------------------- bodies


def revision_body(fingerprint: str, stack: str, project: str,
                  locked_stack: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "fingerprint": fingerprint,
        "stack": stack,
        "project": project,
        "lock_text": json.dumps(locked_stack, sort_keys=True, indent=2, ensure_ascii=False),
    }


def evidence_body(environment: str, fingerprint: str, stack: str, nodes: Iterable[str],
                  facts: Any, report: Any) -> dict[str, Any]:
    return {
        "environment": environment,
        "fingerprint": fingerprint,
        "stack": stack,
        "nodes": sorted(nodes),
        "facts_sha256": digest(facts),
        "report_sha256": digest(report),
        "ok": True,
    }


# --------------------------------------------------------------------------- queries


@dataclass(frozen=True)
class Evidence:
    seq: int
    time: str
    environment: str
    fingerprint: str
    stack: str
    nodes: tuple[str, ...]

    @property
    def when(self) -> datetime:
        return parse_time(self.time)


def evidence(records: Iterable[Mapping[str, Any]]) -> list[Evidence]:
    out = []
    for rec in records:
        if rec.get("kind") != "evidence":
            continue
        body = rec.get("body") or {}
        if not body.get("ok"):
            continue
        out.append(Evidence(int(rec["seq"]), str(rec["time"]), str(body.get("environment")),
                            str(body.get("fingerprint")), str(body.get("stack", "")),
                            tuple(str(n) for n in body.get("nodes") or ())))
    return out


def latest_evidence(records: Iterable[Mapping[str, Any]], environment: str,
                    fingerprint: str | None = None) -> Evidence | None:
    """The newest passing evidence of `environment` (of that `fingerprint` when given)."""
    found = [e for e in evidence(records) if e.environment == environment
             and (fingerprint is None or e.fingerprint == fingerprint)]
    return found[-1] if found else None


def first_evidence(records: Iterable[Mapping[str, Any]], environment: str,
                   fingerprint: str) -> Evidence | None:
    found = [e for e in evidence(records)
             if e.environment == environment and e.fingerprint == fingerprint]
    return found[0] if found else None


def revisions(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """fingerprint -> revision body (the first time each was seen)."""
    out: dict[str, dict[str, Any]] = {}
    for rec in records:
        if rec.get("kind") == "revision":
            body = dict(rec.get("body") or {})
            out.setdefault(str(body.get("fingerprint")), body)
    return out


def find_revision(records: Iterable[Mapping[str, Any]], prefix: str) -> list[dict[str, Any]]:
    """Revision bodies whose fingerprint starts with `prefix` (an abbreviation)."""
    bare = prefix.removeprefix("sha256:")
    return [b for fp, b in revisions(records).items()
            if bare and fp.removeprefix("sha256:").startswith(bare)]
