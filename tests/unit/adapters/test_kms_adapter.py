"""`stacklock.adapters.kms` without an endpoint: how a KMS key is named, and what each AWS
failure becomes (exit 2 with a fix for a key that cannot be used as it is, exit 3 when AWS
could not be asked). The calls themselves run against moto in
tests/integration/test_ledger_kms.py; AccessDenied is raised here because moto does not
enforce key policies."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError, NoCredentialsError

from stacklock.adapters import kms
from stacklock.errors import ExitCode, InvalidInput, StacklockError, ToolFailed

pytestmark = pytest.mark.unit

ARN = "arn:aws:kms:eu-central-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"


@pytest.fixture(autouse=True)
def _no_region(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")


def test_an_arn_names_its_region() -> None:
    ref = kms.parse_ref("kms:" + ARN)
    assert ref == kms.KeyRef(ARN, "eu-central-1") and ref.where == "kms:" + ARN
    alias = "arn:aws:kms:us-east-2:111122223333:alias/stacklock-ci"
    assert kms.parse_ref(alias).region == "us-east-2"
    assert kms.default_name(ref) == "kms-1234abcd-12ab-34cd-56ef-1234567890ab"
    assert kms.default_name(kms.parse_ref(alias)) == "kms-stacklock-ci"


def test_a_key_id_or_alias_takes_the_chains_region(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidInput) as exc:
        kms.parse_ref("kms:alias/stacklock-ci")
    assert exc.value.exit_code == ExitCode.INVALID
    assert "AWS_REGION" in exc.value.problems[0].hint
    monkeypatch.setenv("AWS_REGION", "us-west-2")
    assert kms.parse_ref("kms:alias/stacklock-ci") == kms.KeyRef("alias/stacklock-ci",
                                                                 "us-west-2")
    assert kms.parse_ref("1234abcd-12ab").region == "us-west-2"


@pytest.mark.parametrize("text", ["kms:", "kms:arn:aws:s3:::bucket", "kms:a b", "kms:/etc/x"])
def test_what_is_not_a_key_is_exit_2(text: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        kms.parse_ref(text, "--kms")
    assert exc.value.problems[0].path == "--kms"


def _raises(code: str, message: str = "m") -> Any:
    def fn(**_kw: Any) -> Any:
        raise ClientError({"Error": {"Code": code, "Message": message}}, "Sign")
    return fn


@pytest.mark.parametrize("code, words", [
    ("AccessDeniedException", ["kms:GetPublicKey and kms:Sign", "IAM"]),
    ("NotFoundException", ["no such key", "create-key --key-spec ECC_NIST_P256"]),
    ("DisabledException", ["disabled", "enable-key"]),
    ("KMSInvalidStateException", ["pending deletion"]),
    ("InvalidKeyUsageException", ["SIGN_VERIFY"]),
    ("UnsupportedOperationException", ["asymmetric"]),
    ("ValidationException", ["ECC_NIST_P256"]),
])
def test_a_key_that_cannot_be_used_is_exit_2_with_its_fix(code: str, words: list[str]) -> None:
    ref = kms.KeyRef(ARN, "eu-central-1")
    with pytest.raises(InvalidInput) as exc:
        kms._call(ref, "kms:Sign", _raises(code, "User arn:aws:iam::1:user/ci is not allowed"),
                  "STACKLOCK_SIGNING_KEY")
    assert exc.value.exit_code == ExitCode.INVALID
    text = exc.value.message + " " + exc.value.problems[0].render()
    assert code in text and ARN in text and "STACKLOCK_SIGNING_KEY" in text
    for w in words:
        assert w in text
    assert "user/ci is not allowed" in exc.value.message  # AWS's own words, for the admin


def test_a_message_that_mentions_credentials_is_withheld() -> None:
    ref = kms.KeyRef(ARN, "eu-central-1")
    with pytest.raises(InvalidInput) as exc:
        kms._call(ref, "kms:Sign", _raises("AccessDeniedException",
                                           "aws_secret_access_key=do-not-print"), "S")
    assert "do-not-print" not in exc.value.message and "withheld" in exc.value.message


def test_aws_that_cannot_be_asked_is_exit_3() -> None:
    ref = kms.KeyRef(ARN, "eu-central-1")
    for fn in (_raises("ThrottlingException"), _raises("KMSInternalException")):
        with pytest.raises(ToolFailed) as exc:
            kms._call(ref, "kms:Sign", fn, "STACKLOCK_SIGNING_KEY")
        assert exc.value.exit_code == ExitCode.FAILED and not isinstance(exc.value, InvalidInput)

    def no_credentials(**_kw: Any) -> Any:
        raise NoCredentialsError()
    with pytest.raises(StacklockError) as exc2:
        kms._call(ref, "kms:Sign", no_credentials, "STACKLOCK_SIGNING_KEY")
    assert exc2.value.exit_code == ExitCode.FAILED and "credentials" in exc2.value.message
