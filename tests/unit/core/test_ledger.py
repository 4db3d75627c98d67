"""The evidence ledger: hash chain, signatures, time order, the recorded head, tamper
detection, evidence recording, `ledger verify`. Keys are made in a temporary HOME: the real
~/.config is never read or written."""

from __future__ import annotations

import itertools
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stacklock.core import ledger as core
from stacklock.core import signing
from stacklock.errors import ExitCode, InvalidInput, ToolFailed
from stacklock.flows import ledger as flow
from stacklock.flows.promote import verify_ledger

pytestmark = pytest.mark.unit

LOCKED: dict[str, Any] = {"components": {"docker": {"version": "1"}}, "apt": {}, "pip": []}


@pytest.fixture(autouse=True)
def _private_home(tmp_path_factory: pytest.TempPathFactory,
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every key of these tests lives in a temporary HOME."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.delenv("STACKLOCK_SIGNING_KEY", raising=False)
    monkeypatch.setenv("STACKLOCK_SIGNER", "test-writer")
    yield home


KEY = signing.generate("writer")
OTHER = signing.generate("mallory")  # a key nobody trusts


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


def _nodes(*envs: str) -> dict[str, flow.NodeSet]:
    return {e: flow.NodeSet((f"{e}-1",), {f"{e}-1": "SHA256:hostkey"}) for e in envs}


def _open(path: Path, key: signing.SigningKey = KEY, *, trusted: tuple[signing.SigningKey, ...]
          = (KEY,), head: Path | None = None) -> flow.LocalLedger:
    return flow.LocalLedger(path, trust=signing.Trust.of([k.public for k in trusted], "signers"),
                            head_file=head, signer=lambda: key)


def _record(led: flow.Ledger, envs: tuple[str, ...] = ("dev", "prod"), *,
            stacks: dict[str, str] | None = None, time: str | None = None,
            project: str = "p") -> list[dict[str, Any]]:
    return flow.record_evidence(led, _lock("a", "b"), stacks or {"dev": "a", "prod": "a"},
                                _report(*envs), project=project, node_sets=_nodes(*envs),
                                time=time)


def _ledger(tmp_path: Path, n: int = 4, head: Path | None = None) -> flow.LocalLedger:
    led = _open(tmp_path / ".stacklock" / "ledger.jsonl", head=head)
    for i in range(n):
        _record(led, stacks={"dev": "a" if i % 2 == 0 else "b", "prod": "a"},
                time=f"2026-01-0{i + 1}T00:00:00Z")
    return led


def test_chain_links_every_record_and_each_is_signed(tmp_path: Path) -> None:
    led = _ledger(tmp_path)
    records = led.records()
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert records[0]["prev"] == core.GENESIS
    for a, b in itertools.pairwise(records):
        assert b["prev"] == a["hash"]
        assert core.record_hash(b) == b["hash"]
    for r in records:
        assert r["signer"] == {"name": "writer", "key": KEY.key_id}
        assert KEY.public.verify(r["sig"], core.signed_message(r["hash"]))
    assert core.check_chain(records, led.trust) is None


def test_revision_recorded_once_with_its_lock(tmp_path: Path) -> None:
    records = _ledger(tmp_path).records()
    revs = [r for r in records if r["kind"] == "revision"]
    assert len(revs) == 2  # a and b, each the first time it was seen
    lock = _lock("a", "b")
    body = revs[0]["body"]
    assert json.loads(body["lock_text"]) == lock["stacks"]["a"]
    assert body["fingerprint"] == lock["stacks"]["a"]["fingerprint"]
    assert body["project"] == "p"
    ev = [r for r in records if r["kind"] == "evidence"]
    assert len(ev) == 8
    assert ev[0]["body"]["nodes"] == ["dev-1"]
    assert ev[0]["body"]["project"] == "p"
    assert ev[0]["body"]["expected_nodes"] == ["dev-1"]
    assert ev[0]["body"]["node_keys"] == {"dev-1": "SHA256:hostkey"}


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
    elif how == "rehash-only":  # edited and re-hashed: the signature no longer checks
        rec = json.loads(lines[3])
        rec["body"]["environment"] = "staging"
        rec["hash"] = core.record_hash(rec)
        lines[3] = core.dumps(rec)
        want_line = 4
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
    records, error = core.check_text(led.path.read_text(), led.trust)
    assert error is not None and error.line == want_line, error
    assert len(records) == want_line - 1
    with pytest.raises(flow.LedgerTampered) as exc:
        led.records()
    assert exc.value.exit_code == ExitCode.DEVIATION
    assert f"line {want_line}" in exc.value.message
    # appending to a tampered ledger is refused too
    with pytest.raises(flow.LedgerTampered):
        _record(led, ("dev",))


def _forge(led: flow.LocalLedger, kind: str, body: dict[str, Any], *,
           signer: signing.SigningKey | None, time: str = "2026-02-01T00:00:00Z") -> None:
    """Append a record with a valid sha256 chain, as anyone who can write the file can."""
    records = core.parse_lines(led.path.read_text())[0]
    prev = records[-1]
    rec: dict[str, Any] = {"seq": prev["seq"] + 1, "prev": prev["hash"], "kind": kind,
                           "time": time, "body": body}
    if signer is not None:
        rec["signer"] = {"name": "writer", "key": signer.key_id}  # claims the trusted name
    rec["hash"] = core.record_hash(rec)
    if signer is not None:
        rec["sig"] = signer.sign(core.signed_message(rec["hash"]))
    with led.path.open("a") as fh:
        fh.write(core.dumps(rec))


@pytest.mark.parametrize("signer", ["none", "untrusted", "stolen-signature"])
def test_a_forged_record_with_a_valid_hash_chain_is_refused(
        tmp_path: Path, signer: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Hole: anyone who could write the file appended records `ledger verify` called intact."""
    led = _ledger(tmp_path, 1)
    n = len(led.records())
    body = dict(led.records()[-1]["body"], environment="staging")
    if signer == "none":
        _forge(led, "evidence", body, signer=None)
        lines = _lines(led)  # the old record format: no signer, no sig
        assert set(json.loads(lines[-1])) == set(core.UNSIGNED_KEYS)
        want = "not signed"
    elif signer == "untrusted":
        _forge(led, "evidence", body, signer=OTHER)
        want = "does not trust"
    else:  # the trusted key id with a signature copied from another record
        _forge(led, "evidence", body, signer=OTHER)
        lines = _lines(led)
        rec = json.loads(lines[-1])
        rec["signer"]["key"] = KEY.key_id
        rec["hash"] = core.record_hash(rec)
        rec["sig"] = json.loads(lines[0])["sig"]
        lines[-1] = core.dumps(rec)
        led.path.write_text("".join(lines))
        want = "does not check"
    assert verify_ledger(led) == ExitCode.DEVIATION
    text = " ".join(capsys.readouterr().out.split())
    assert f"TAMPERED at line {n + 1} (record seq {n + 1})" in text and want in text
    with pytest.raises(flow.LedgerTampered, match=want):
        led.records()


def test_a_revoked_key_makes_its_records_untrusted(tmp_path: Path) -> None:
    led = _ledger(tmp_path, 1)
    assert led.records()
    led.trust = signing.Trust.of([OTHER.public], "signers")  # `writer` removed from the file
    with pytest.raises(flow.LedgerTampered, match=r"record seq 1.*does not trust"):
        led.records()


def test_a_backdated_record_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Hole: record times were whatever the writer said; backdating beat promotion_soak."""
    led = _ledger(tmp_path, 2)  # newest record: 2026-01-02
    n = len(led.records())
    body = dict(led.records()[-1]["body"])
    # even signed by a trusted key, a time before the record before it is refused
    _forge(led, "evidence", body, signer=KEY, time="2025-12-01T00:00:00Z")
    assert verify_ledger(led) == ExitCode.DEVIATION
    text = " ".join(capsys.readouterr().out.split())
    assert f"line {n + 1} (record seq {n + 1})" in text and "backdated" in text


def test_an_append_never_goes_back_in_time(tmp_path: Path) -> None:
    led = _ledger(tmp_path, 1)  # 2026-01-01
    with pytest.raises(ToolFailed, match="before the ledger's newest record"):
        _record(led, ("dev",), time="2025-06-01T00:00:00Z")
    assert verify_ledger(led) == ExitCode.OK


def test_deleted_ledger_with_a_recorded_head_is_tamper(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Hole: a deleted ledger said 'chain intact', exit 0."""
    head = tmp_path / "stacklock.ledger-head"
    led = _ledger(tmp_path, 2, head=head)
    records = led.records()
    saw = core.parse_head(head.read_text())
    assert saw is not None and (saw.seq, saw.hash) == (records[-1]["seq"], records[-1]["hash"])
    assert verify_ledger(led) == ExitCode.OK
    led.path.unlink()
    assert verify_ledger(led) == ExitCode.DEVIATION
    text = " ".join(capsys.readouterr().out.split())
    assert "TAMPERED" in text and "missing or empty" in text and f"seq {saw.seq}" in text
    with pytest.raises(flow.LedgerTampered):
        led.records()
    with pytest.raises(flow.LedgerTampered):  # nothing is appended to a replaced ledger
        _record(led, ("dev",))


def test_truncated_ledger_is_tamper(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Hole: cutting records off the end left a shorter chain that checked out."""
    head = tmp_path / "stacklock.ledger-head"
    led = _ledger(tmp_path, 3, head=head)
    lines = _lines(led)
    led.path.write_text("".join(lines[:-2]))
    assert verify_ledger(led) == ExitCode.DEVIATION
    assert f"only {len(lines) - 2} record(s) long" in " ".join(capsys.readouterr().out.split())


def test_a_ledger_replaced_by_another_valid_chain_is_tamper(tmp_path: Path) -> None:
    head = tmp_path / "stacklock.ledger-head"
    led = _ledger(tmp_path, 2, head=head)
    text = led.path.read_text()
    led.path.unlink()
    other = _open(led.path, head=None)  # the same key, another history of the same length
    for i in range(4):  # as long as the original, or longer
        _record(other, stacks={"dev": "b", "prod": "b"}, time=f"2026-01-0{i + 1}T00:00:00Z")
    assert led.path.read_text() != text
    with pytest.raises(flow.LedgerTampered, match="not the record this repository saw"):
        led.records()


def test_the_head_file_only_moves_forward(tmp_path: Path) -> None:
    head = tmp_path / "h.ledger-head"
    led = _ledger(tmp_path, 2, head=head)
    seq = led.head().seq  # type: ignore[union-attr]
    head.write_text(core.format_head(core.Head(seq + 5, "f" * 64, "elsewhere")))
    with pytest.raises(flow.LedgerTampered):
        led.records()


def test_a_new_project_without_head_or_ledger_is_fine(tmp_path: Path) -> None:
    led = _open(tmp_path / "none.jsonl", head=tmp_path / "none.ledger-head")
    assert led.records() == []
    assert verify_ledger(led) == ExitCode.OK


def test_an_append_needs_a_trusted_key(tmp_path: Path) -> None:
    led = _open(tmp_path / "l.jsonl", key=OTHER)
    with pytest.raises(InvalidInput, match="not trusted"):
        _record(led, ("dev",))
    assert not led.path.exists() or led.path.read_text() == ""


def test_ledger_verify_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    led = _ledger(tmp_path)
    assert verify_ledger(led) == ExitCode.OK
    out = " ".join(capsys.readouterr().out.split())
    assert "chain intact" in out and "signed by a trusted key (writer)" in out
    lines = _lines(led)
    rec = json.loads(lines[1])
    rec["time"] = "2030-01-01T00:00:00Z"
    lines[1] = core.dumps(rec)
    led.path.write_text("".join(lines))
    assert verify_ledger(led) == ExitCode.DEVIATION
    text = capsys.readouterr().out
    assert "TAMPERED" in text and "line 2 (record seq 2)" in text


def test_revision_lock_must_hash_to_its_fingerprint(tmp_path: Path) -> None:
    led = _open(tmp_path / "l.jsonl")
    body = core.revision_body("f" * 64, "a", "p", LOCKED)  # lies about its fingerprint
    led.append([("revision", body)])
    assert verify_ledger(led) == ExitCode.DEVIATION


def test_queries_accept_only_this_projects_complete_evidence(tmp_path: Path) -> None:
    led = _ledger(tmp_path)
    records = led.records()
    lock = _lock("a", "b")
    fa, fb = lock["stacks"]["a"]["fingerprint"], lock["stacks"]["b"]["fingerprint"]
    evs = core.evidence(records, "p")
    assert core.latest_evidence(evs, "dev") is not None
    assert core.latest_evidence(evs, "dev", fb).time == "2026-01-04T00:00:00Z"  # type: ignore[union-attr]
    assert core.first_evidence(evs, "dev", fa).time == "2026-01-01T00:00:00Z"  # type: ignore[union-attr]
    assert core.latest_evidence(evs, "prod", fb) is None
    assert [b["fingerprint"] for b in core.find_revision(records, fb[:15])] == [fb]
    # another project's gate sees none of it
    assert core.evidence(records, "other") == []
    # a node set other than the one the environment has now is not accepted
    assert core.evidence(records, "p", {"dev": ["dev-1", "dev-2"]}) == [
        e for e in evs if e.environment != "dev"]


def test_evidence_of_a_trimmed_node_set_is_not_accepted(tmp_path: Path) -> None:
    led = _open(tmp_path / "l.jsonl")
    trimmed = {"dev": flow.NodeSet(("dev-1", "dev-2"), {"dev-1": "SHA256:k"})}
    flow.record_evidence(led, _lock("a"), {"dev": "a"}, _report("dev"), project="p",
                         node_sets=trimmed)
    ev = core.all_evidence(led.records())
    assert len(ev) == 1 and not ev[0].complete  # dev-2 was never verified
    assert core.evidence(led.records(), "p") == []


def test_signers_file_round_trip_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "stacklock.signers"
    text = signing.with_signer("", KEY.public, "stacklock.yaml")
    text = signing.with_signer(text, OTHER.public, "stacklock.yaml")
    path.write_text(text)
    trust = signing.read_signers(path)
    assert trust.trusts(KEY.public) and trust.trusts(OTHER.public)
    assert "# stacklock: the keys trusted" in text
    path.write_text(text + "broken ed25519 notbase64!\nwriter ed25519 " + "A" * 44 + "\n")
    with pytest.raises(InvalidInput) as exc:
        signing.read_signers(path)
    where = [p.path for p in exc.value.problems]
    assert where == [f"{path}:6", f"{path}:7"]  # bad base64; 33 bytes, not a key
    assert signing.read_signers(tmp_path / "missing.signers").keys == {}


def test_private_key_files(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "me.key"
    signing.write_private(KEY, path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    loaded = signing.load_private(path)
    assert loaded.name == "me" and loaded.key_id == KEY.key_id
    assert "PRIVATE" not in repr(loaded) and KEY.key_id in repr(loaded)
    with pytest.raises(InvalidInput, match="never overwrites"):
        signing.write_private(KEY, path)
    os.chmod(path, 0o644)
    with pytest.raises(InvalidInput, match="readable by others"):
        signing.load_private(path)
