"""AWS KMS asymmetric keys as ledger writers: the public key (kms:GetPublicKey) and signatures
(kms:Sign) of a key whose private half never leaves KMS.

A KMS writer is named `kms:KEY` in `$STACKLOCK_SIGNING_KEY` or `--kms KEY`: KEY is a key ARN
(`arn:aws:kms:REGION:ACCOUNT:key/ID`, its region taken from it), an alias ARN, or a key id or
`alias/NAME` in the region of the AWS chain (`AWS_REGION`, `AWS_DEFAULT_REGION`, the profile's
`region`). The key must be KeySpec ECC_NIST_P256 with KeyUsage SIGN_VERIFY; records are signed
with ECDSA_SHA_256 (`stacklock.core.signing.ECDSA_P256`) and verified locally, with no KMS
call, against the public key in the manifest's signers file.

Credentials and the endpoint come from the standard AWS chain (`stacklock.adapters.aws`).
Errors: a key that does not exist, is disabled or pending deletion, has another spec or usage,
or that the credentials may not use (AccessDenied) is InvalidInput (exit 2) naming the fix;
missing credentials or an unreachable endpoint are ToolFailed (exit 3), as for every AWS call.
Nothing secret is printed: messages name the key, the call and AWS's error code.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from stacklock.adapters import aws
from stacklock.core import signing
from stacklock.errors import InvalidInput, Problem

PREFIX = "kms:"
KEY_SPEC = "ECC_NIST_P256"
KEY_USAGE = "SIGN_VERIFY"
SIGNING_ALGORITHM = "ECDSA_SHA_256"
#: the signers-file algorithm of a key of KEY_SPEC signed with SIGNING_ALGORITHM
ALGORITHM = signing.ECDSA_P256
#: the permissions a KMS writer needs on its key
PERMISSIONS = "kms:GetPublicKey and kms:Sign"

_ARN = re.compile(r"^arn:aws[a-z-]*:kms:([a-z0-9-]+):\d{12}:(key|alias)/.+$")
_KEY = re.compile(r"^(alias/[A-Za-z0-9/_-]+|[A-Za-z0-9-]+)$")

CREATE_HINT = (f"create one with: aws kms create-key --key-spec {KEY_SPEC} --key-usage "
               f"{KEY_USAGE}; allow the writer {PERMISSIONS} on it (docs/security.md)")
_ALLOW_HINT = (f"allow {PERMISSIONS} on this key to the writer's IAM role or user (in the key "
               "policy or an IAM policy; docs/security.md)")

#: AWS error codes that mean: this key cannot be used as it is; what is wrong, and the fix
_KEY_CODES = {
    "NotFoundException": ("no such key in that account and region",
                          "check the key's ARN, alias and region, or " + CREATE_HINT),
    "DisabledException": ("the key is disabled", "aws kms enable-key --key-id KEY"),
    "KMSInvalidStateException": ("the key is not usable in its state (pending deletion?)",
                                 "aws kms cancel-key-deletion and enable-key, or "
                                 + CREATE_HINT),
    "KeyUnavailableException": ("the key is unavailable", "check its custom key store"),
    "InvalidKeyUsageException": (f"the key's usage is not {KEY_USAGE}", CREATE_HINT),
    "UnsupportedOperationException": (f"not an asymmetric {KEY_USAGE} key", CREATE_HINT),
    "ValidationException": (f"not a {KEY_SPEC} {KEY_USAGE} key", CREATE_HINT),
    "InvalidArnException": ("not a valid key ARN", "arn:aws:kms:REGION:ACCOUNT:key/ID"),
    "AccessDeniedException": (f"these credentials may not use it (needs {PERMISSIONS})",
                              _ALLOW_HINT),
    "AccessDenied": (f"these credentials may not use it (needs {PERMISSIONS})", _ALLOW_HINT),
}


@dataclass(frozen=True)
class KeyRef:
    """A KMS key as the writer named it, and the region its calls go to."""

    key: str
    region: str

    @property
    def where(self) -> str:
        return PREFIX + self.key


def _default_region() -> str | None:
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        if os.environ.get(var):
            return os.environ[var]
    try:
        import boto3

        region = boto3.session.Session().region_name
    except Exception:  # a broken AWS config: asked again by the client, which says why
        return None
    return str(region) if region else None


def parse_ref(text: str, setting: str = "STACKLOCK_SIGNING_KEY",
              region: str | None = None) -> KeyRef:
    """The key `text` names (`kms:` optional): exit 2 when it is not a key id, alias or ARN, or
    when no region can be had for a key named without its ARN."""
    key = text.removeprefix(PREFIX).strip()
    arn = _ARN.match(key)
    if arn:
        return KeyRef(key, arn.group(1))
    if not key or key.startswith("arn:") or not _KEY.match(key):
        raise InvalidInput(f"{setting}: {text!r} does not name a KMS key", problems=[Problem(
            setting, f"{text!r}: not a KMS key id, alias or ARN",
            "kms:arn:aws:kms:REGION:ACCOUNT:key/ID, kms:alias/NAME or kms:KEY-ID")])
    got = region or _default_region()
    if not got:
        raise InvalidInput(f"{setting}: no AWS region for KMS key {key}", problems=[Problem(
            setting, f"{key}: named without its region",
            "name the key by its ARN (arn:aws:kms:REGION:...), or set AWS_REGION")])
    return KeyRef(key, got)


def _client(ref: KeyRef) -> Any:
    return aws._client("kms", ref.region)


def _call(ref: KeyRef, what: str, fn: Any, setting: str, **kwargs: Any) -> Any:
    """One KMS call: a key that cannot be used as it is (`_KEY_CODES`) is InvalidInput (exit
    2) naming the fix; anything else as `aws._call` (exit 3)."""
    from botocore.exceptions import ClientError

    def guarded(**kw: Any) -> Any:
        try:
            return fn(**kw)
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            if code not in _KEY_CODES:
                raise
            why, fix = _KEY_CODES[code]
            said = aws._safe(Exception(str(err.get("Message", "")).strip()))
            raise InvalidInput(
                f"KMS key {ref.key} ({ref.region}): {what} refused: {code}"
                + (f": {said}" if said else ""),
                problems=[Problem(setting, f"{ref.where} in {ref.region}: {why}", fix)],
            ) from None

    return aws._call(ref.region, f"{what} on {ref.where}", guarded, **kwargs)


def public_key(ref: KeyRef, name: str, setting: str = "STACKLOCK_SIGNING_KEY"
               ) -> signing.PublicKey:
    """The key's public key (kms:GetPublicKey), as signer `name`: exit 2 unless it is an
    ECC_NIST_P256 key for SIGN_VERIFY that may sign with ECDSA_SHA_256."""
    client = _client(ref)
    resp = _call(ref, "kms:GetPublicKey", client.get_public_key, setting, KeyId=ref.key)
    spec = str(resp.get("KeySpec") or resp.get("CustomerMasterKeySpec") or "")
    usage = str(resp.get("KeyUsage") or "")
    algorithms = [str(a) for a in resp.get("SigningAlgorithms") or ()]
    wrong = []
    if spec != KEY_SPEC:
        wrong.append(f"KeySpec {spec or '?'} (must be {KEY_SPEC})")
    if usage != KEY_USAGE:
        wrong.append(f"KeyUsage {usage or '?'} (must be {KEY_USAGE})")
    if SIGNING_ALGORITHM not in algorithms:
        wrong.append(f"signing algorithms {', '.join(algorithms) or 'none'} (must allow "
                     f"{SIGNING_ALGORITHM})")
    if not wrong:
        try:
            pub = signing.public_from_der(name, bytes(resp["PublicKey"]))
        except (KeyError, TypeError, ValueError) as exc:
            wrong.append(f"its public key: {exc}")
        else:
            if pub.algorithm == ALGORITHM:
                return pub
            wrong.append(f"its public key is {pub.algorithm}, not {ALGORITHM}")
    raise InvalidInput(f"KMS key {ref.key} ({ref.region}) cannot sign ledger records",
                       problems=[Problem(setting, f"{ref.where}: " + "; ".join(wrong),
                                         CREATE_HINT)])


def sign(ref: KeyRef, message: bytes, setting: str = "STACKLOCK_SIGNING_KEY") -> bytes:
    """KMS's ECDSA_SHA_256 signature (DER) of `message` (kms:Sign, MessageType RAW)."""
    client = _client(ref)
    resp = _call(ref, "kms:Sign", client.sign, setting, KeyId=ref.key, Message=message,
                 MessageType="RAW", SigningAlgorithm=SIGNING_ALGORITHM)
    return bytes(resp["Signature"])


def default_name(ref: KeyRef) -> str:
    """A signer name for a KMS key: `kms-` and its alias or key id."""
    tail = ref.key.rsplit(":", 1)[-1]
    tail = tail.removeprefix("key/").removeprefix("alias/")
    return signing.safe_name("kms-" + tail)


def writer(text: str, name: str | None = None, setting: str = "STACKLOCK_SIGNING_KEY"
           ) -> signing.RemoteKey:
    """The ledger writer `text` names (`kms:KEY`): its public key is read now; every record
    is signed through kms:Sign and checked against that public key."""
    ref = parse_ref(text, setting)
    pub = public_key(ref, name or default_name(ref), setting)

    def sign_raw(message: bytes) -> bytes:
        return sign(ref, message, setting)

    return signing.RemoteKey(pub, sign_raw, ref.where)


__all__ = ["ALGORITHM", "KEY_SPEC", "KEY_USAGE", "PREFIX", "SIGNING_ALGORITHM", "KeyRef",
           "default_name", "parse_ref", "public_key", "sign", "writer"]
