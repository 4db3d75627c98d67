"""The evidence ledger: append-only, hash-chained, signed JSON lines. Pure (no I/O beyond the
head file).

Each line is one record, a JSON object:

    {"seq": 7, "prev": "<hash of record 6>", "kind": "evidence" | "revision",
     "time": "2026-11-04T10:12:33Z", "body": {...},
     "signer": {"name": "alice@laptop", "key": "SHA256:..."}, "hash": "<sha256>",
     "sig": "<base64 Ed25519 signature>"}

`hash` is the sha256 of the record's canonical JSON (sorted keys, no spaces, UTF-8) without
`hash` and `sig`; `prev` of the first record is 64 zeros; `sig` is the signer's signature of
`SIGNED_PREFIX + hash`: Ed25519, or, when `signer` says `"alg": "ecdsa-p256-sha256"` (a
writer whose key is in AWS KMS), DER ECDSA P-256 over SHA-256. A record without `alg` claims
ed25519 (every record written before other algorithms existed). A record is trusted only when
its key is in the repository's signers file (`stacklock.core.signing`), the algorithm it
claims is the one that key is trusted with, and the signature checks with that algorithm; its
time may not be earlier than the time of the record before it. Editing a field changes its hash;
deleting, inserting or reordering lines breaks `seq` or `prev`; a record written without a
trusted key has no valid signature. So `check_chain` names the first record that is not what
a trusted writer wrote.

Cutting records off the end (or deleting the whole ledger) leaves a shorter valid chain: the
repository keeps the head this controller last wrote, `<manifest stem>.ledger-head` (seq and
hash, committed), and a ledger that is shorter than it or does not hold that record is refused.

Kinds:

* `revision` — a stack revision the first time the ledger sees it: `fingerprint`, `stack`
  (the stack's name when seen), `project`, `lock_text` (the stack's whole locked entry as
  JSON text: what a rollback installs, never read from git). `fingerprint_of(lock)` must equal
  the fingerprint.
* `evidence` — a passing `verify` of an environment: `project`, `environment`, `fingerprint`,
  `nodes` (verified), `expected_nodes` (the nodes the manifest says the environment has),
  `node_keys` (node -> the fingerprint of its pinned SSH host key), `facts_sha256` (the values
  read from its nodes), `report_sha256` (the parity report), `ok`. Gates accept evidence only
  of their own project whose nodes are exactly its expected nodes (`evidence(records,
  project=...)`).
* `gate-override` — the promotion gate let a revision through on an explicit override
  (`stacklock.core.gate.override_body`): `project`, `environment`, `fingerprint`, `reason`,
  `refusal` (what the gate said), `command`, `run`. Never evidence.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from stacklock.core.signing import ALGORITHM, Trust

GENESIS = "0" * 64
KINDS = ("evidence", "revision", "gate-override")
RECORD_KEYS = ("seq", "prev", "kind", "time", "body", "signer", "hash", "sig")
#: the records of a ledger written before records were signed (refused: unsigned)
UNSIGNED_KEYS = ("seq", "prev", "kind", "time", "body", "hash")
#: what a signature covers: this prefix, then the record's hash (hex)
SIGNED_PREFIX = b"stacklock-ledger-v1\n"
HEAD_SUFFIX = ".ledger-head"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


class Signer(Protocol):
    """A signing key (`stacklock.core.signing.SigningKey` or `RemoteKey`)."""

    @property
    def name(self) -> str: ...

    @property
    def key_id(self) -> str: ...

    @property
    def algorithm(self) -> str: ...

    def sign(self, message: bytes) -> str: ...


def signer_field(signer: Signer) -> dict[str, str]:
    """A record's `signer`: name and key id, and `alg` unless it is ed25519 (so that Ed25519
    records stay exactly as they were before other algorithms existed)."""
    out = {"name": signer.name, "key": signer.key_id}
    if signer.algorithm != ALGORITHM:
        out["alg"] = signer.algorithm
    return out


class ClockBehind(ValueError):
    """This writer's clock says a time before the ledger's newest record."""


def canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def digest(data: Any) -> str:
    """sha256 of the canonical JSON of `data`."""
    return sha256_text(canonical(data))


def record_hash(record: Mapping[str, Any]) -> str:
    return digest({k: v for k, v in record.items() if k not in ("hash", "sig")})


def signed_message(hash_hex: str) -> bytes:
    return SIGNED_PREFIX + hash_hex.encode("ascii")


def utc_now() -> str:
    return datetime.now(UTC).strftime(TIME_FORMAT)


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)


def new_record(prev: Mapping[str, Any] | None, kind: str, body: Mapping[str, Any],
               signer: Signer, time: str | None = None) -> dict[str, Any]:
    """The record that follows `prev` (None: the first), signed by `signer`. Raises
    ClockBehind when its time is before `prev`'s."""
    if kind not in KINDS:
        raise ValueError(f"unknown ledger record kind {kind!r}")
    when = time or utc_now()
    if prev is not None and parse_time(when) < parse_time(str(prev["time"])):
        raise ClockBehind(f"this machine's time {when} is before the ledger's newest record "
                          f"(seq {prev['seq']}, {prev['time']})")
    record: dict[str, Any] = {
        "seq": (int(prev["seq"]) + 1) if prev else 1,
        "prev": str(prev["hash"]) if prev else GENESIS,
        "kind": kind,
        "time": when,
        "body": dict(body),
        "signer": signer_field(signer),
    }
    record["hash"] = record_hash(record)
    record["sig"] = signer.sign(signed_message(record["hash"]))
    return record


def extend(records: Sequence[Mapping[str, Any]], entries: Iterable[tuple[str, Mapping[str, Any]]],
           signer: Signer, time: str | None = None) -> list[dict[str, Any]]:
    """The records that follow `records` (a checked chain): one per (kind, body), in order."""
    prev: Mapping[str, Any] | None = records[-1] if records else None
    out: list[dict[str, Any]] = []
    for kind, body in entries:
        rec = new_record(prev, kind, body, signer, time)
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
        keys = tuple(sorted(data)) if isinstance(data, dict) else ()
        if keys not in (tuple(sorted(RECORD_KEYS)), tuple(sorted(UNSIGNED_KEYS))):
            return records, ChainError(i, data.get("seq") if isinstance(data, dict) else None,
                                       "not a ledger record (keys " + ", ".join(RECORD_KEYS)
                                       + ")")
        records.append(data)
    return records, None


@dataclass(frozen=True)
class Head:
    """The newest record a controller saw: its seq and hash (`<manifest stem>.ledger-head`)."""

    seq: int
    hash: str
    where: str = ""


def _signature_error(rec: Mapping[str, Any], trust: Trust) -> str | None:
    signer = rec.get("signer")
    if "sig" not in rec or not isinstance(signer, Mapping):
        return "it is not signed (written without a signing key, or by stacklock before " \
               "records were signed): no trusted writer vouches for it"
    kid = str(signer.get("key"))
    key = trust.get(kid)
    if key is None:
        return (f"signed by {signer.get('name')!r} with key {kid}, which {trust.source} does "
                "not trust (never added, or revoked)")
    claimed = signer.get("alg", ALGORITHM)
    if claimed != key.algorithm:
        return (f"it claims algorithm {claimed!r} for key {kid}, which {trust.source} trusts "
                f"as {key.name} with {key.algorithm} only: refused")
    if not key.verify(str(rec.get("sig")), signed_message(str(rec.get("hash")))):
        return f"its signature by {key.name} ({kid}) does not check: forged or altered"
    return None


def check_chain(records: Sequence[Mapping[str, Any]], trust: Trust,
                head: Head | None = None) -> ChainError | None:
    """The first record that breaks the chain, is not signed by a trusted key, or whose time is
    before the one of the record before it; then, with `head` (what this repository last saw),
    a ledger that is shorter or does not hold that record. None: every record is as a trusted
    writer wrote it."""
    prev_hash = GENESIS
    prev_time: datetime | None = None
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
        why = _signature_error(rec, trust)
        if why is not None:
            return ChainError(i, seq_i, why)
        try:
            when = parse_time(str(rec.get("time")))
        except ValueError:
            return ChainError(i, seq_i, f"time {rec.get('time')!r} is not like "
                                        "2026-11-04T10:12:33Z")
        if prev_time is not None and when < prev_time:
            return ChainError(i, seq_i, f"its time {rec.get('time')} is before the time of "
                                        f"the record before it ({records[i - 2].get('time')}):"
                                        " backdated")
        prev_time = when
        prev_hash = str(rec["hash"])
    if head is not None and head.seq > 0:
        if len(records) < head.seq:
            what = "missing or empty" if not records else f"only {len(records)} record(s) long"
            return ChainError(len(records) + 1, head.seq,
                              f"the ledger is {what}, but this repository saw it at seq "
                              f"{head.seq} (hash {head.hash[:12]}, {head.where or 'head file'}"
                              "): records were deleted or the ledger was replaced")
        if records[head.seq - 1].get("hash") != head.hash:
            return ChainError(head.seq, head.seq,
                              f"not the record this repository saw at seq {head.seq} (hash "
                              f"{head.hash[:12]}, {head.where or 'head file'}): the ledger "
                              "was replaced or rewritten")
    return None


def check_text(text: str, trust: Trust, head: Head | None = None
               ) -> tuple[list[dict[str, Any]], ChainError | None]:
    records, error = parse_lines(text)
    if error is None:
        error = check_chain(records, trust, head)
        if error is not None:
            records = records[: max(0, min(len(records), error.line - 1))]
    return records, error


# --------------------------------------------------------------------------- the head file


def head_path(manifest_path: Path) -> Path:
    """`<manifest folder>/<manifest stem>.ledger-head` (committed beside the manifest)."""
    return manifest_path.with_suffix(HEAD_SUFFIX)


HEAD_HEADER = ("# written by stacklock on every ledger append: the newest record this repository\n"
               "# saw. Commit it. A ledger shorter than this, or without this record, is refused\n"
               "# as tampered. Do not edit.\n")


def format_head(head: Head) -> str:
    return HEAD_HEADER + f"ledger: {head.where}\nseq: {head.seq}\nhash: {head.hash}\n"


def parse_head(text: str) -> Head | None:
    """The head in a head file's text; None when it names none. Raises ValueError."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            key, _, value = line.partition(":")
            values[key.strip()] = value.strip()
    if not values:
        return None
    try:
        seq = int(values["seq"])
        digest_hex = values["hash"]
    except (KeyError, ValueError):
        raise ValueError("expected `seq: N` and `hash: HEX`") from None
    if seq < 1 or len(digest_hex) != 64:
        raise ValueError(f"seq {seq} / hash {digest_hex!r} is not a record's")
    return Head(seq, digest_hex, values.get("ledger", ""))


def head_of(records: Sequence[Mapping[str, Any]], where: str) -> Head | None:
    if not records:
        return None
    return Head(int(records[-1]["seq"]), str(records[-1]["hash"]), where)


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
                  facts: Any, report: Any, *, project: str,
                  expected: Iterable[str], node_keys: Mapping[str, str]) -> dict[str, Any]:
    """A passing verify of `environment`: the project, the nodes verified, the nodes the
    manifest says it has (`expected`), and each node's identity (its pinned SSH host key's
    fingerprint)."""
    return {
        "project": project,
        "environment": environment,
        "fingerprint": fingerprint,
        "stack": stack,
        "nodes": sorted(nodes),
        "expected_nodes": sorted(expected),
        "node_keys": dict(sorted(node_keys.items())),
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
    project: str = ""
    expected: tuple[str, ...] = ()
    node_keys: tuple[tuple[str, str], ...] = ()

    @property
    def when(self) -> datetime:
        return parse_time(self.time)

    @property
    def complete(self) -> bool:
        """Every node the environment had was verified, each with its identity."""
        keys = dict(self.node_keys)
        return bool(self.nodes) and set(self.nodes) == set(self.expected) \
            and all(keys.get(n) for n in self.nodes)


def all_evidence(records: Iterable[Mapping[str, Any]]) -> list[Evidence]:
    """Every passing evidence record, whatever its project and node set."""
    out = []
    for rec in records:
        if rec.get("kind") != "evidence":
            continue
        body = rec.get("body") or {}
        if not body.get("ok"):
            continue
        raw_keys = body.get("node_keys")
        keys: Mapping[str, Any] = raw_keys if isinstance(raw_keys, Mapping) else {}
        out.append(Evidence(int(rec["seq"]), str(rec["time"]), str(body.get("environment")),
                            str(body.get("fingerprint")), str(body.get("stack", "")),
                            tuple(str(n) for n in body.get("nodes") or ()),
                            str(body.get("project", "")),
                            tuple(str(n) for n in body.get("expected_nodes") or ()),
                            tuple(sorted((str(k), str(v)) for k, v in keys.items()))))
    return out


def evidence(records: Iterable[Mapping[str, Any]], project: str,
             expected: Mapping[str, Collection[str]] | None = None) -> list[Evidence]:
    """The evidence a gate of `project` accepts: of that project, complete (every expected node
    verified, each with its host key), and — for the environments `expected` names — of
    exactly the nodes the environment has now."""
    out = []
    for ev in all_evidence(records):
        if ev.project != project or not ev.complete:
            continue
        if expected is not None and ev.environment in expected \
                and set(expected[ev.environment]) != set(ev.expected):
            continue
        out.append(ev)
    return out


def latest_evidence(evs: Sequence[Evidence], environment: str,
                    fingerprint: str | None = None) -> Evidence | None:
    """The newest of `evs` (accepted evidence: `evidence()`) of `environment` (of that
    `fingerprint` when given)."""
    found = [e for e in evs if e.environment == environment
             and (fingerprint is None or e.fingerprint == fingerprint)]
    return found[-1] if found else None


def first_evidence(evs: Sequence[Evidence], environment: str,
                   fingerprint: str) -> Evidence | None:
    found = [e for e in evs if e.environment == environment and e.fingerprint == fingerprint]
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
