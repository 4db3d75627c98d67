"""The evidence ledger: hash chain, tamper detection, evidence recording, `ledger verify`."""

from __future__ import annotations

import itertools
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from stacklock.core import ledger as core
from stacklock.errors import ExitCode
from stacklock.flows import ledger as flow
from stacklock.flows.promote import verify_ledger

pytestmark = pytest.mark.unit

LOCKED: dict[str, Any] = {"components": {"docker": {"version": "1"}}, "apt": {}, "pip": []}


def _lock(*stacks: str) -> dict[str, Any]:
    from stacklock.core.lock import fingerprint_of

    out = {}
    for i, name in enumerate(stacks):
        body = dict(LOCKED, components={"docker": {"version": str(i)}})
        out[name] = dict(body, fingerprint=fingerprint_of(body))
    return {"project": "p", "stacks": out}


def _report(*envs: str) -> dict[str, Any]:
    return {"environments": list(envs),
            "observed": {e: {f"{e}-1": {"docker.version": "1"}} for e in envs}}


def _ledger(tmp_path: Path, n: int = 4) -> flow.LocalLedger:
    led = flow.LocalLedger(tmp_path / ".stacklock" / "ledger.jsonl")
    lock = _lock("a", "b")
    for i in range(n):
        stacks = {"dev": "a" if i % 2 == 0 else "b", "prod": "a"}
        flow.record_evidence(led, lock, stacks, _report("dev", "prod"),
                             time=f"2026-01-0{i + 1}T00:00:00Z")
    return led


def test_chain_links_every_record(tmp_path: Path) -> None:
    led = _ledger(tmp_path)
    records = led.records()
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert records[0]["prev"] == core.GENESIS
    for a, b in itertools.pairwise(records):
        assert b["prev"] == a["hash"]
        assert core.record_hash(b) == b["hash"]
    assert core.check_chain(records) is None


def test_revision_recorded_once_with_its_lock(tmp_path: Path) -> None:
    records = _ledger(tmp_path).records()
    revs = [r for r in records if r["kind"] == "revision"]
    assert len(revs) == 2  # a and b, each the first time it was seen
    lock = _lock("a", "b")
    body = revs[0]["body"]
    assert json.loads(body["lock_text"]) == lock["stacks"]["a"]
    assert body["fingerprint"] == lock["stacks"]["a"]["fingerprint"]
    ev = [r for r in records if r["kind"] == "evidence"]
    assert len(ev) == 8
    assert {"environment", "fingerprint", "nodes", "facts_sha256", "report_sha256"} <= set(
        ev[0]["body"])
    assert ev[0]["body"]["nodes"] == ["dev-1"]


def test_ledger_file_is_private(tmp_path: Path) -> None:
    led = _ledger(tmp_path, 1)
    assert stat.S_IMODE(os.stat(led.path).st_mode) == 0o600


def _lines(led: flow.LocalLedger) -> list[str]:
    return led.path.read_text().splitlines(keepends=True)


@pytest.mark.parametrize("how", ["edit", "delete", "reorder", "garbage", "rehash-only"])
def test_tampering_is_detected_naming_the_record(tmp_path: Path, how: str) -> None:
    led = _ledger(tmp_path)
    lines = _lines(led)
    if how == "edit":  # a record's field changed: its own hash no longer matches
        rec = json.loads(lines[3])
        rec["body"]["fingerprint"] = "0" * 64
        lines[3] = core.dumps(rec)
        want_line = 4
    elif how == "rehash-only":  # edited and re-hashed: the next record's prev breaks
        rec = json.loads(lines[3])
        rec["body"]["environment"] = "staging"
        rec["hash"] = core.record_hash(rec)
        lines[3] = core.dumps(rec)
        want_line = 5
    elif how == "delete":
        del lines[2]
        want_line = 3
    elif how == "reorder":
        lines[2], lines[3] = lines[3], lines[2]
        want_line = 3
    else:
        lines[5] = "{not json\n"
        want_line = 6
    led.path.write_text("".join(lines))
    records, error = core.check_text(led.path.read_text())
    assert error is not None and error.line == want_line, error
    assert len(records) == want_line - 1
    with pytest.raises(flow.LedgerTampered) as exc:
        led.records()
    assert exc.value.exit_code == ExitCode.DEVIATION
    assert f"line {want_line}" in exc.value.message
    # appending to a tampered ledger is refused too
    with pytest.raises(flow.LedgerTampered):
        flow.record_evidence(led, _lock("a"), {"dev": "a"}, _report("dev"))


def test_ledger_verify_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    led = _ledger(tmp_path)
    assert verify_ledger(led) == ExitCode.OK
    assert "chain intact" in capsys.readouterr().out
    lines = _lines(led)
    rec = json.loads(lines[1])
    rec["time"] = "2030-01-01T00:00:00Z"
    lines[1] = core.dumps(rec)
    led.path.write_text("".join(lines))
    assert verify_ledger(led) == ExitCode.DEVIATION
    text = capsys.readouterr().out
    assert "TAMPERED" in text and "line 2 (record seq 2)" in text


def test_revision_lock_must_hash_to_its_fingerprint(tmp_path: Path) -> None:
    led = flow.LocalLedger(tmp_path / "l.jsonl")
    body = core.revision_body("f" * 64, "a", "p", LOCKED)  # lies about its fingerprint
    led.append([("revision", body)])
    assert verify_ledger(led) == ExitCode.DEVIATION


def test_empty_ledger_is_intact(tmp_path: Path) -> None:
    assert flow.LocalLedger(tmp_path / "none.jsonl").records() == []
    assert verify_ledger(flow.LocalLedger(tmp_path / "none.jsonl")) == ExitCode.OK


def test_queries(tmp_path: Path) -> None:
    records = _ledger(tmp_path).records()
    lock = _lock("a", "b")
    fa, fb = lock["stacks"]["a"]["fingerprint"], lock["stacks"]["b"]["fingerprint"]
    assert core.latest_evidence(records, "dev") is not None
    assert core.latest_evidence(records, "dev", fb).time == "2026-01-04T00:00:00Z"  # type: ignore[union-attr]
    assert core.first_evidence(records, "dev", fa).time == "2026-01-01T00:00:00Z"  # type: ignore[union-attr]
    assert core.latest_evidence(records, "prod", fb) is None
    assert [b["fingerprint"] for b in core.find_revision(records, fb[:15])] == [fb]
