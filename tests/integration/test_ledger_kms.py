"""An AWS KMS asymmetric key as a ledger writer, against a real moto server on 127.0.0.1
(boto3 through stacklock's adapter; moto's dummy credentials, never real ones).

The manifest is the AWS example (`stacklock.yaml`) with its committed lock, a promotion order
and `ledger: {store: local}` (the S3 ledger has its own tests: test_ledger_s3.py; one test
here writes to S3 too), copied to a temporary folder. The KMS key is ECC_NIST_P256 /
SIGN_VERIFY; records are signed through kms:Sign and verified locally, with no KMS call,
against the public key that `stacklock ledger key trust --kms` put in `stacklock.signers`.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from stacklock.core import ledger as core
from stacklock.core import signing
from stacklock.core.manifest import load_manifest
from stacklock.errors import ExitCode, InvalidInput
from stacklock.flows import keys
from stacklock.flows import ledger as flow

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
REGION = "us-west-2"
BUCKET = "acme-serving-prod-tfstate"

LOCAL = signing.generate("alice@laptop")


@pytest.fixture(autouse=True)
def _home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary HOME with an Ed25519 key file (the real ~/.config is never touched); no
    signing key chosen yet (each test sets $STACKLOCK_SIGNING_KEY, which the stacklock
    processes it starts inherit)."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.delenv("STACKLOCK_SIGNING_KEY", raising=False)
    monkeypatch.delenv("STACKLOCK_SIGNER", raising=False)
    signing.write_private(LOCAL, home / "alice.key")
    return home


def _kms() -> Any:
    import boto3

    return boto3.client("kms", region_name=REGION)


def _new_key(spec: str = "ECC_NIST_P256", usage: str = "SIGN_VERIFY") -> str:
    """A new KMS key's ARN."""
    return str(_kms().create_key(KeySpec=spec, KeyUsage=usage)["KeyMetadata"]["Arn"])


def _case(tmp_path: Path, *, store: str = "local") -> Path:
    path = tmp_path / "stacklock.yaml"
    data = yaml.safe_load((REPO_ROOT / "stacklock.yaml").read_text("utf-8"))
    data["promotion"] = ["dev", "staging", "prod"]
    if store == "local":
        data["ledger"] = {"store": "local"}
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    shutil.copyfile(REPO_ROOT / "stacklock.lock", tmp_path / "stacklock.lock")
    (tmp_path / "examples").mkdir(exist_ok=True)
    shutil.copytree(REPO_ROOT / "examples" / "models", tmp_path / "examples" / "models",
                    dirs_exist_ok=True)
    return path


def _stacklock(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "stacklock"
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


def _out(run: subprocess.CompletedProcess[str]) -> str:
    return " ".join((run.stdout + run.stderr).split())


def _use(monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    """Sign with `key`: `kms:ARN`, or a key file's path."""
    monkeypatch.setenv("STACKLOCK_SIGNING_KEY", key)


def _verified(path: Path, env: str, time: str) -> list[dict[str, Any]]:
    """What a passing verify of `env` records, signed by $STACKLOCK_SIGNING_KEY."""
    from stacklock.core import promotion

    loaded = load_manifest(path)
    nodes = promotion.expected_nodes(loaded.manifest, env)
    return flow.record_evidence(
        flow.open_ledger(loaded), flow.current_lock(loaded), flow.env_stacks(loaded),
        {"environments": [env], "observed": {env: {n: {"docker.version": "1"} for n in nodes}}},
        project=loaded.manifest.project,
        node_sets={env: flow.NodeSet(tuple(nodes), {n: "SHA256:k" for n in nodes})},
        time=time)


def _ledger_file(path: Path) -> Path:
    return path.parent / ".stacklock" / "ledger.jsonl"


def _trust_kms(path: Path, arn: str, *extra: str) -> subprocess.CompletedProcess[str]:
    run = _stacklock("--manifest", str(path), "ledger", "key", "trust", "--kms", arn, *extra,
                     cwd=path.parent)
    assert run.returncode == 0, _out(run)
    return run


def _append_signed_by(path: Path, writer: signing.WriterKey, body: dict[str, Any],
                      time: str) -> None:
    """Append a record signed by `writer` straight to the file, as anyone who can write the
    file can (no trust check on the way in)."""
    file = _ledger_file(path)
    records = core.parse_lines(file.read_text())[0]
    with file.open("a") as fh:
        for rec in core.extend(records, [("evidence", body)], writer, time):
            fh.write(core.dumps(rec))


# --------------------------------------------------------------------------- tests


def test_a_kms_writer_signs_records_that_verify_locally(moto: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    arn = _new_key()
    path = _case(tmp_path)
    run = _stacklock("ledger", "key", "pub", "--kms", arn, cwd=tmp_path)
    assert run.returncode == 0, _out(run)
    line = run.stdout.strip()
    name, algo, _b64 = line.split()
    assert algo == "ecdsa-p256-sha256" and name == "kms-" + arn.rsplit("/", 1)[1]
    _trust_kms(path, arn)
    trust = signing.read_signers(path.with_suffix(".signers"))
    assert [k.line() for k in trust.keys.values()] == [line]

    _use(monkeypatch, "kms:" + arn)
    first = _verified(path, "dev", "2026-11-04T10:00:00Z")
    second = _verified(path, "staging", "2026-11-04T11:00:00Z")
    records = first + second
    assert [r["kind"] for r in records] == ["revision", "evidence", "evidence"]
    for rec in records:
        assert rec["signer"] == {"name": name, "key": signing.parse_public_line(line).key_id,
                                 "alg": "ecdsa-p256-sha256"}
        # a real KMS signature: KMS's own Verify agrees with the local check
        got = _kms().verify(KeyId=arn, Message=core.signed_message(rec["hash"]),
                            MessageType="RAW", Signature=base64.b64decode(rec["sig"]),
                            SigningAlgorithm="ECDSA_SHA_256")
        assert got["SignatureValid"] is True
    assert core.check_chain(records, trust) is None

    run = _stacklock("--manifest", str(path), "ledger", "verify", cwd=tmp_path)
    assert run.returncode == 0, _out(run)
    assert "3 record(s), chain intact" in _out(run)
    run = _stacklock("--manifest", str(path), "ledger", "key", "list", cwd=tmp_path)
    assert run.returncode == 0 and f"{name} " in _out(run) and "(you)" in _out(run), _out(run)


def test_verification_makes_no_kms_call(moto: str, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    arn = _new_key()
    path = _case(tmp_path)
    _trust_kms(path, arn)
    _use(monkeypatch, "kms:" + arn)
    _verified(path, "dev", "2026-11-04T10:00:00Z")
    # no AWS at all: a reader with a key file and no credentials checks the KMS records
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var)
    monkeypatch.delenv("STACKLOCK_SIGNING_KEY")
    run = _stacklock("--manifest", str(path), "ledger", "verify", cwd=tmp_path)
    assert run.returncode == 0 and "chain intact" in _out(run), _out(run)


def test_a_record_signed_by_an_untrusted_kms_key_is_refused(
        moto: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trusted, untrusted = _new_key(), _new_key()
    path = _case(tmp_path)
    _trust_kms(path, trusted)
    _use(monkeypatch, "kms:" + trusted)
    _verified(path, "dev", "2026-11-04T10:00:00Z")
    # the untrusted key may not append through stacklock ...
    _use(monkeypatch, "kms:" + untrusted)
    with pytest.raises(InvalidInput) as exc:
        _verified(path, "staging", "2026-11-04T11:00:00Z")
    assert exc.value.exit_code == ExitCode.INVALID and "not trusted" in exc.value.message
    # ... and what it signs and writes into the file itself is refused
    writer = keys.kms_writer("kms:" + untrusted, "kms-intruder")
    _append_signed_by(path, writer, {"environment": "staging", "ok": True},
                      "2026-11-04T11:00:00Z")
    run = _stacklock("--manifest", str(path), "ledger", "verify", cwd=tmp_path)
    out = _out(run)
    assert run.returncode == 1, out
    assert "TAMPERED at line 3 (record seq 3)" in out and "does not trust" in out
    assert writer.key_id in out
    run = _stacklock("--manifest", str(path), "promote", "prod", cwd=tmp_path)
    assert run.returncode == 1 and "Traceback" not in _out(run), _out(run)


@pytest.mark.parametrize("how", ["another-records-signature", "flipped", "claims-ed25519"])
def test_a_forged_kms_signature_is_refused(moto: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    arn = _new_key()
    path = _case(tmp_path)
    _trust_kms(path, arn)
    _use(monkeypatch, "kms:" + arn)
    _verified(path, "dev", "2026-11-04T10:00:00Z")
    file = _ledger_file(path)
    lines = file.read_text().splitlines(keepends=True)
    rec = json.loads(lines[1])
    rec["body"]["environment"] = "prod"  # what a forger wants the record to say
    rec["hash"] = core.record_hash(rec)
    if how == "another-records-signature":  # a genuine KMS signature, of record 1
        rec["sig"] = json.loads(lines[0])["sig"]
        want = "does not check"
    elif how == "flipped":
        sig = bytearray(base64.b64decode(json.loads(lines[1])["sig"]))
        sig[-1] ^= 1
        rec["sig"] = base64.b64encode(bytes(sig)).decode()
        want = "does not check"
    else:  # signed through KMS by the trusted key, but claiming another algorithm
        rec["signer"]["alg"] = "ed25519"
        rec["hash"] = core.record_hash(rec)
        rec["sig"] = keys.kms_writer("kms:" + arn).sign(core.signed_message(rec["hash"]))
        want = "claims algorithm 'ed25519'"
    lines[1] = core.dumps(rec)
    file.write_text("".join(lines))
    run = _stacklock("--manifest", str(path), "ledger", "verify", cwd=tmp_path)
    out = _out(run)
    assert run.returncode == 1, out
    assert "TAMPERED at line 2 (record seq 2)" in out and want in out


def test_ed25519_and_kms_writers_in_one_chain(moto: str, tmp_path: Path, _home: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A person with a key file and a CI job with a KMS key share one ledger (in S3)."""
    _kms()  # the region's client, before the bucket
    import boto3

    boto3.client("s3", region_name=REGION).create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    arn = _new_key()
    path = _case(tmp_path, store="s3")
    _use(monkeypatch, str(_home / "alice.key"))
    run = _stacklock("--manifest", str(path), "ledger", "key", "trust", cwd=tmp_path)
    assert run.returncode == 0, _out(run)
    _trust_kms(path, arn, "--name", "ci-prod-kms")
    text = path.with_suffix(".signers").read_text()
    assert "alice ed25519 " in text and "ci-prod-kms ecdsa-p256-sha256 " in text

    _verified(path, "dev", "2026-11-04T10:00:00Z")  # alice: revision, evidence
    _use(monkeypatch, "kms:" + arn)
    _verified(path, "staging", "2026-11-04T11:00:00Z")  # CI through KMS
    _use(monkeypatch, str(_home / "alice.key"))
    _verified(path, "prod", "2026-11-04T12:00:00Z")  # alice again
    records = flow.open_ledger(load_manifest(path)).records()  # checks every signature
    assert [r["signer"]["name"] for r in records] == ["alice", "alice", "kms-" + arn.rsplit(
        "/", 1)[1], "alice"]
    assert [r["signer"].get("alg") for r in records] == [None, None, "ecdsa-p256-sha256", None]
    run = _stacklock("--manifest", str(path), "ledger", "verify", cwd=tmp_path)
    assert run.returncode == 0 and "4 record(s), chain intact" in _out(run), _out(run)

    # revoking the KMS writer makes its record, and so the ledger from there on, untrusted
    run = _stacklock("--manifest", str(path), "ledger", "key", "revoke", "ci-prod-kms",
                     cwd=tmp_path)
    assert run.returncode == 0, _out(run)
    run = _stacklock("--manifest", str(path), "ledger", "verify", cwd=tmp_path)
    out = _out(run)
    assert run.returncode == 1 and "TAMPERED at line 3 (record seq 3)" in out, out
    assert "does not trust" in out


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("case, words", [
    ("missing", ["NotFoundException", "no such key", "create-key"]),
    ("symmetric", ["KeySpec SYMMETRIC_DEFAULT", "ECC_NIST_P256"]),
    ("rsa", ["KeySpec RSA_2048", "ECDSA_SHA_256"]),
    ("p384", ["KeySpec ECC_NIST_P384"]),
    ("encrypt", ["KeyUsage ENCRYPT_DECRYPT"]),
    ("no-region", ["region", "AWS_REGION"]),
    ("garbage", ["not a KMS key id, alias or ARN"]),
])
def test_a_kms_key_that_cannot_sign_is_exit_2_naming_the_fix(
        moto: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str,
        words: list[str]) -> None:
    path = _case(tmp_path)
    key = {
        "missing": "arn:aws:kms:us-west-2:099720109477:key/00000000-0000-0000-0000-000000000000",
        "symmetric": _new_key("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT") if case == "symmetric"
        else "",
        "rsa": _new_key("RSA_2048") if case == "rsa" else "",
        "p384": _new_key("ECC_NIST_P384") if case == "p384" else "",
        "encrypt": _new_key("RSA_2048", "ENCRYPT_DECRYPT") if case == "encrypt" else "",
        "no-region": "alias/stacklock-ci",
        "garbage": "s3://not-a-key",
    }[case]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-print-this-secret")
    _use(monkeypatch, "kms:" + key)
    for args in (["ledger", "key", "pub"], ["ledger", "key", "trust"],
                 ["ledger", "key", "trust", "--kms", key]):
        run = _stacklock("--manifest", str(path), *args, cwd=tmp_path)
        out = _out(run)
        assert run.returncode == 2, (args, out)
        for w in words:
            assert w in out, (args, w, out)
        assert "Traceback" not in out and "do-not-print-this-secret" not in out
    assert not path.with_suffix(".signers").exists()
    with pytest.raises(InvalidInput):  # a verify's append is refused the same way
        _verified(path, "dev", "2026-11-04T10:00:00Z")
    assert not _ledger_file(path).exists()


def test_no_credentials_is_exit_3(moto: str, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    arn = _new_key()
    path = _case(tmp_path)
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var)
    run = _stacklock("--manifest", str(path), "ledger", "key", "trust", "--kms", arn,
                     cwd=tmp_path)
    out = _out(run)
    assert run.returncode == 3, out
    assert "credentials" in out and "kms:GetPublicKey" in out and "Traceback" not in out


def test_key_new_does_not_make_a_kms_key(moto: str, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _use(monkeypatch, "kms:" + _new_key())
    run = _stacklock("ledger", "key", "new", cwd=tmp_path)
    out = _out(run)
    assert run.returncode == 2 and "create-key --key-spec ECC_NIST_P256" in out, out
