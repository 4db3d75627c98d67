"""The evidence ledger as an object in the S3 state bucket, against a real moto server on
127.0.0.1 (boto3 through stacklock's adapter; moto's dummy credentials, never real ones).

The manifest is the AWS example (`stacklock.yaml`, whose `ledger:` names prod's state bucket)
with its committed lock and a promotion order, copied to a temporary folder, with a test key
(in a temporary HOME, `$STACKLOCK_SIGNING_KEY`) in its `stacklock.signers`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from stacklock.core import ledger as core
from stacklock.core import signing
from stacklock.core.manifest import load_manifest
from stacklock.errors import ExitCode, InvalidInput, ToolFailed
from stacklock.flows import ledger as flow

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
BUCKET = "acme-serving-prod-tfstate"
REGION = "us-west-2"
KEY_NAME = "acme-serving/ledger.jsonl"


KEY = signing.generate("ci-test")
TRUST = signing.Trust.of([KEY.public], "test signers")


@pytest.fixture(autouse=True)
def _signing_key(tmp_path_factory: pytest.TempPathFactory,
                 monkeypatch: pytest.MonkeyPatch) -> Path:
    """The writer's key in a temporary HOME, named by $STACKLOCK_SIGNING_KEY (inherited by the
    stacklock processes these tests start): the real ~/.config is never touched."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    path = home / "ci-test.key"
    signing.write_private(KEY, path)
    monkeypatch.setenv("STACKLOCK_SIGNING_KEY", str(path))
    return path


def _s3ledger(**kw: Any) -> flow.S3Ledger:
    return flow.S3Ledger(BUCKET, KEY_NAME, REGION, trust=TRUST, signer=lambda: KEY, **kw)


def _s3() -> Any:
    import boto3

    return boto3.client("s3", region_name=REGION)


def _bucket() -> None:
    _s3().create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})


def _object() -> str:
    return str(_s3().get_object(Bucket=BUCKET, Key=KEY_NAME)["Body"].read().decode("utf-8"))


def _case(tmp_path: Path) -> Path:
    """stacklock.yaml and its lock in tmp_path, with promotion: [dev, staging, prod]."""
    path = tmp_path / "stacklock.yaml"
    path.write_text((REPO_ROOT / "stacklock.yaml").read_text("utf-8")
                    + "\npromotion: [dev, staging, prod]\n", encoding="utf-8")
    shutil.copyfile(REPO_ROOT / "stacklock.lock", tmp_path / "stacklock.lock")
    (tmp_path / "examples").mkdir(exist_ok=True)
    shutil.copytree(REPO_ROOT / "examples" / "models", tmp_path / "examples" / "models",
                    dirs_exist_ok=True)
    (tmp_path / "stacklock.signers").write_text(
        signing.with_signer("", KEY.public, "stacklock.yaml"))
    return path


def _stacklock(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "stacklock"
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


def _verified(path: Path, *envs: str, time: str = "2026-11-04T10:00:00Z") -> list[dict[str, Any]]:
    """What a passing verify of `envs` records (the ledger chosen from the manifest)."""
    from stacklock.core import promotion

    loaded = load_manifest(path)
    nodes = {e: promotion.expected_nodes(loaded.manifest, e) for e in envs}
    return flow.record_evidence(
        flow.open_ledger(loaded), flow.current_lock(loaded), flow.env_stacks(loaded),
        {"environments": list(envs),
         "observed": {e: {n: {"docker.version": "1"} for n in nodes[e]} for e in envs}},
        project=loaded.manifest.project,
        node_sets={e: flow.NodeSet(tuple(nodes[e]), {n: "SHA256:k" for n in nodes[e]})
                   for e in envs}, time=time)


def test_the_example_manifest_keeps_its_ledger_in_prods_state_bucket(tmp_path: Path) -> None:
    led = flow.open_ledger(load_manifest(_case(tmp_path)))
    assert isinstance(led, flow.S3Ledger)
    assert led.where == f"s3://{BUCKET}/{KEY_NAME}" and led.region == REGION


def test_append_and_read_back(moto: str, tmp_path: Path) -> None:
    _bucket()
    path = _case(tmp_path)
    led = flow.open_ledger(load_manifest(path))
    assert led.records() == []
    first = _verified(path, "dev")
    assert [r["kind"] for r in first] == ["revision", "evidence"]
    second = _verified(path, "staging", time="2026-11-04T11:00:00Z")
    assert [r["kind"] for r in second] == ["evidence"]  # the revision is known by now
    records = led.records()
    assert records == first + second
    assert [r["seq"] for r in records] == [1, 2, 3]
    assert core.check_chain(records, TRUST) is None
    text = _object()
    assert text == "".join(core.dumps(r) for r in records)
    assert not (tmp_path / ".stacklock" / "ledger.jsonl").exists()  # nothing written locally
    run = _stacklock("--manifest", str(path), "ledger", "verify", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"s3://{BUCKET}/{KEY_NAME}: 3 record(s), chain intact" in " ".join(run.stdout.split())
    # status reads the same object
    run = _stacklock("--manifest", str(path), "status", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"ledger: s3://{BUCKET}/{KEY_NAME} (3 record(s), chain intact)" in run.stderr


class _RacedLedger(flow.S3Ledger):
    """Another writer appends between this one's read and its conditional write, once."""

    def __init__(self, other: flow.Ledger, **kw: Any) -> None:
        super().__init__(BUCKET, KEY_NAME, REGION, trust=TRUST, signer=lambda: KEY, **kw)
        self.other = other
        self.raced = False

    def _read(self) -> tuple[str, str | None]:
        got = super()._read()
        if not self.raced:
            self.raced = True
            self.other.append([("evidence", {"environment": "other", "ok": True})])
        return got


def _entry(who: str, i: int) -> list[tuple[str, Mapping[str, Any]]]:
    return [("evidence", {"environment": who, "n": i, "ok": True})]


@pytest.mark.parametrize("first_write", [True, False])
def test_a_writer_that_loses_the_race_reads_again_and_lands(moto: str, first_write: bool) -> None:
    _bucket()
    plain = _s3ledger()
    if not first_write:
        plain.append(_entry("seed", 0))
    raced = _RacedLedger(plain)
    written = raced.append(_entry("ci", 1))
    # its first write was refused (If-Match / If-None-Match: the object had changed) ...
    assert raced.conflicts == 1
    records = plain.records()
    who = [r["body"]["environment"] for r in records]
    # ... so it read again and built on the other writer's record: both landed, in order
    assert who == (["other", "ci"] if first_write else ["seed", "other", "ci"])
    assert records[-1] == written[0] and written[0]["prev"] == records[-2]["hash"]
    assert core.check_chain(records, TRUST) is None


def test_concurrent_writers_all_land_with_an_intact_chain(moto: str) -> None:
    _bucket()
    writers, each = 3, 4
    start = threading.Barrier(writers)
    errors: list[BaseException] = []
    ledgers = [_s3ledger(tries=40) for _ in range(writers)]

    def work(n: int) -> None:
        try:
            start.wait()
            for i in range(each):
                ledgers[n].append(_entry(f"w{n}", i))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    records = _s3ledger().records()  # checks the chain and every signature
    assert [r["seq"] for r in records] == list(range(1, writers * each + 1))
    for n in range(writers):  # every writer's records, each once and in its own order
        mine = [r["body"]["n"] for r in records if r["body"]["environment"] == f"w{n}"]
        assert mine == list(range(each))
    print(f"{sum(led.conflicts for led in ledgers)} conditional write(s) lost and retried")


def _tamper() -> None:
    lines = _object().splitlines(keepends=True)
    rec = json.loads(lines[1])
    rec["body"]["nodes"] = ["dev-1", "a-node-that-never-ran"]
    lines[1] = core.dumps(rec)
    _s3().put_object(Bucket=BUCKET, Key=KEY_NAME, Body="".join(lines).encode("utf-8"))


def test_a_tampered_object_is_detected_and_promote_refuses(moto: str, tmp_path: Path) -> None:
    _bucket()
    path = _case(tmp_path)
    _verified(path, "dev")
    run = _stacklock("--manifest", str(path), "promote", "staging", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr  # intact: staging is already there

    _tamper()
    run = _stacklock("--manifest", str(path), "ledger", "verify", cwd=tmp_path)
    out = " ".join((run.stdout + run.stderr).split())
    assert run.returncode == 1, out
    assert f"s3://{BUCKET}/{KEY_NAME}: TAMPERED at line 2 (record seq 2)" in out
    run = _stacklock("--manifest", str(path), "promote", "staging", cwd=tmp_path)
    out = " ".join((run.stdout + run.stderr).split())
    assert run.returncode == 1, out
    assert "tampered" in out and f"s3://{BUCKET}/{KEY_NAME}" in out and "Traceback" not in out
    before = _object()
    with pytest.raises(flow.LedgerTampered):  # and nothing is appended to it
        _verified(path, "staging")
    assert _object() == before


def test_missing_bucket_is_invalid_input_naming_the_setting(moto: str, tmp_path: Path) -> None:
    path = _case(tmp_path)
    with pytest.raises(InvalidInput) as info:
        _verified(path, "dev")
    assert info.value.exit_code == ExitCode.INVALID
    assert [p.path for p in info.value.problems] == ["ledger.bucket"]
    assert BUCKET in info.value.message and "create it" in info.value.problems[0].hint
    run = _stacklock("--manifest", str(path), "ledger", "verify", cwd=tmp_path)
    out = run.stdout + run.stderr
    assert run.returncode == 2, out
    assert "ledger.bucket" in out and BUCKET in out and "Traceback" not in out


def test_missing_credentials_cannot_look(moto: str, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _bucket()
    path = _case(tmp_path)
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(ToolFailed) as info:
        flow.open_ledger(load_manifest(path)).records()
    assert info.value.exit_code == ExitCode.FAILED
    assert "credentials" in info.value.message and "s3:GetObject" in info.value.message
    run = _stacklock("--manifest", str(path), "ledger", "verify", cwd=tmp_path)
    out = run.stdout + run.stderr
    assert run.returncode == 3, out
    assert "credentials" in out and "Traceback" not in out


def test_secrets_stay_out_of_errors(moto: str, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = _case(tmp_path)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-print-this-secret")
    run = _stacklock("--manifest", str(path), "ledger", "verify", cwd=tmp_path)
    out = run.stdout + run.stderr
    assert run.returncode == 2, out  # no bucket in this fresh moto
    assert "do-not-print-this-secret" not in out


def test_ledger_store_local_keeps_an_aws_manifest_off_s3(moto: str, tmp_path: Path) -> None:
    path = _case(tmp_path)
    data = yaml.safe_load(path.read_text("utf-8"))
    data["ledger"] = {"store": "local"}
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    _verified(path, "dev")  # no bucket exists: it must not be asked for
    assert core.check_text((tmp_path / ".stacklock" / "ledger.jsonl").read_text(),
                           TRUST)[1] is None


# --------------------------------------------------------------------------- issue #19 holes


def _cli_out(run: subprocess.CompletedProcess[str]) -> str:
    return " ".join((run.stdout + run.stderr).split())


def test_a_forged_unsigned_record_in_the_object_is_refused(moto: str, tmp_path: Path) -> None:
    """Anyone who can write the object appended records with a valid sha256 chain."""
    _bucket()
    path = _case(tmp_path)
    _verified(path, "dev")
    records = core.parse_lines(_object())[0]
    body = dict(records[-1]["body"], environment="staging")
    forged = {"seq": 3, "prev": records[-1]["hash"], "kind": "evidence",
              "time": "2030-01-01T00:00:00Z", "body": body}
    forged["hash"] = core.record_hash(forged)
    _s3().put_object(Bucket=BUCKET, Key=KEY_NAME,
                     Body=(_object() + core.dumps(forged)).encode("utf-8"))
    run = _stacklock("--manifest", str(path), "ledger", "verify", cwd=tmp_path)
    out = _cli_out(run)
    assert run.returncode == 1, out
    assert "TAMPERED at line 3 (record seq 3)" in out and "not signed" in out
    run = _stacklock("--manifest", str(path), "promote", "prod", cwd=tmp_path)
    assert run.returncode == 1, _cli_out(run)
    assert "record seq 3" in _cli_out(run) and "Traceback" not in _cli_out(run)


@pytest.mark.parametrize("how", ["deleted", "truncated"])
def test_a_deleted_or_truncated_object_is_tamper(moto: str, tmp_path: Path, how: str) -> None:
    """The repository's head file (written on every append) catches what the chain cannot."""
    _bucket()
    path = _case(tmp_path)
    _verified(path, "dev")
    _verified(path, "staging", time="2026-11-04T11:00:00Z")
    head = core.parse_head((tmp_path / "stacklock.ledger-head").read_text())
    assert head is not None and head.seq == 3 and head.where == f"s3://{BUCKET}/{KEY_NAME}"
    if how == "deleted":
        _s3().delete_object(Bucket=BUCKET, Key=KEY_NAME)
        want = "missing or empty"
    else:
        lines = _object().splitlines(keepends=True)
        _s3().put_object(Bucket=BUCKET, Key=KEY_NAME, Body="".join(lines[:2]).encode())
        want = "only 2 record(s) long"
    run = _stacklock("--manifest", str(path), "ledger", "verify", cwd=tmp_path)
    out = _cli_out(run)
    assert run.returncode == 1, out
    assert "TAMPERED" in out and want in out and "chain intact" not in out
    with pytest.raises(flow.LedgerTampered):  # nothing is appended to it either
        _verified(path, "prod", time="2026-11-04T12:00:00Z")


def test_another_projects_evidence_in_the_bucket_does_not_count(moto: str,
                                                                tmp_path: Path) -> None:
    _bucket()
    path = _case(tmp_path)
    loaded = load_manifest(path)
    from stacklock.core import promotion

    stack = loaded.manifest.environments["dev"].stack
    lock = flow.current_lock(loaded)
    fp = lock["stacks"][stack]["fingerprint"]
    nodes = promotion.expected_nodes(loaded.manifest, "dev")
    led = flow.open_ledger(loaded)
    led.append([("evidence", core.evidence_body(
        "dev", fp, stack, nodes, {}, {}, project="another-project", expected=nodes,
        node_keys={n: "SHA256:k" for n in nodes}))])
    records = led.records()
    assert core.evidence(records, "another-project") and \
        not core.evidence(records, loaded.manifest.project)
    assert promotion.rollout_refusal(["dev", "staging"], "staging", fp, records,
                                     project=loaded.manifest.project) is not None
