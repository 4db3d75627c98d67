"""Ledger writers whose key is not a local Ed25519 file: the pure part (`RemoteKey`, P-256
public keys in the signers file, the record's `alg`, verification with the trusted algorithm
only). KMS itself is stood in for by a local P-256 key; the KMS calls are tested against moto
in tests/integration/test_ledger_kms.py.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from stacklock.core import ledger as core
from stacklock.core import signing
from stacklock.errors import InvalidInput, ToolFailed

pytestmark = pytest.mark.unit

#: written by stacklock before other algorithms existed (commit 7fd55dc's core.ledger, this
#: key, these bodies, this time): must verify unchanged, and be written byte for byte the same
OLD_KEY = signing.SigningKey("alice@laptop", Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
OLD_LINE = "alice@laptop ed25519 A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="
OLD_TIME = "2026-11-04T10:12:33Z"
OLD_ENTRIES: list[tuple[str, dict[str, Any]]] = [
    ("revision", {"fingerprint": "sha256:abc", "project": "p"}),
    ("evidence", {"environment": "dev", "ok": True, "project": "p"}),
]
OLD_LEDGER = (
    '{"body":{"fingerprint":"sha256:abc","project":"p"},"hash":"78d2a0447bc65473920fabe8d95c929f'
    'c4a46c6c474b62d3aaa56ed324f80a96","kind":"revision","prev":"0000000000000000000000000000000'
    '000000000000000000000000000000000","seq":1,"sig":"ujhIIsRzPW3crprShPQpjEgmANpGVXpMPixYoiP4LM'
    'WIBjLDVoqImoEpxcPdb5YuWibJSc23JixLwXyFH/8CDg==","signer":{"key":"SHA256:Vkdap1RjR0wChd9dvyvKt'
    'z2mUTWIOem3dIGy6rEHcIw","name":"alice@laptop"},"time":"2026-11-04T10:12:33Z"}\n'
    '{"body":{"environment":"dev","ok":true,"project":"p"},"hash":"6db95845523f02da9908db65dce8272'
    'da536f9756191a8a60448a3589c2bb92f","kind":"evidence","prev":"78d2a0447bc65473920fabe8d95c929f'
    'c4a46c6c474b62d3aaa56ed324f80a96","seq":2,"sig":"VsSbbNJVxI6g2Kbv0btH1h3GR9V4yMfW0lWSKRlgvWdxs'
    'EGhWvSQshnvHJ71k2Lnlub0DGcYr/GU11C35KloDw==","signer":{"key":"SHA256:Vkdap1RjR0wChd9dvyvKtz2mU'
    'TWIOem3dIGy6rEHcIw","name":"alice@laptop"},"time":"2026-11-04T10:12:33Z"}\n'
)


def _stand_in(name: str = "ci-kms") -> tuple[signing.RemoteKey, ec.EllipticCurvePrivateKey]:
    """A RemoteKey whose 'service' is a local P-256 key (what KMS does for ECDSA_SHA_256)."""
    private = ec.generate_private_key(ec.SECP256R1())
    der = private.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    pub = signing.public_from_der(name, der)

    def sign_raw(message: bytes) -> bytes:
        return private.sign(message, ec.ECDSA(hashes.SHA256()))

    return signing.RemoteKey(pub, sign_raw, "kms:stand-in"), private


REMOTE, REMOTE_PRIVATE = _stand_in()
OTHER_REMOTE, _ = _stand_in("other-kms")
LOCAL = signing.generate("alice@laptop")


def _trust(*keys: signing.PublicKey) -> signing.Trust:
    text = ""
    for k in keys:
        text = signing.with_signer(text, k, "stacklock.yaml")
    return signing.parse_signers(text, "stacklock.signers")


def _resign(rec: dict[str, Any], sign: Any) -> dict[str, Any]:
    rec["hash"] = core.record_hash(rec)
    rec["sig"] = sign(core.signed_message(rec["hash"]))
    return rec


# --------------------------------------------------------------------------- backwards compat


def test_old_ed25519_records_and_signers_lines_verify_unchanged() -> None:
    trust = signing.parse_signers(OLD_LINE + "\n" + REMOTE.public.line() + "\n")
    records, error = core.check_text(OLD_LEDGER, trust)
    assert error is None and len(records) == 2
    # ... and a local key still writes exactly those bytes: no `alg`, the same signer field
    again = core.extend([], OLD_ENTRIES, OLD_KEY, time=OLD_TIME)
    assert "".join(core.dumps(r) for r in again) == OLD_LEDGER
    assert OLD_KEY.public.line() == OLD_LINE
    assert all(set(r["signer"]) == {"name", "key"} for r in again)


def test_an_old_record_edited_after_the_change_is_still_caught() -> None:
    trust = signing.parse_signers(OLD_LINE)
    text = OLD_LEDGER.replace('"environment":"dev"', '"environment":"prod"')
    assert core.check_text(text, trust)[1] is not None


# --------------------------------------------------------------------------- P-256 keys


def test_a_p256_public_key_round_trips_through_its_signers_line() -> None:
    line = REMOTE.public.line()
    name, algo, b64 = line.split()
    assert (name, algo) == ("ci-kms", "ecdsa-p256-sha256")
    raw = base64.b64decode(b64)
    assert len(raw) == 65 and raw[0] == 4
    assert signing.parse_public_line(line) == REMOTE.public
    assert REMOTE.key_id == signing.key_id(raw)
    trust = _trust(LOCAL.public, REMOTE.public)
    assert trust.trusts(REMOTE.public) and trust.trusts(LOCAL.public)
    assert not trust.trusts(OTHER_REMOTE.public)


@pytest.mark.parametrize("line, why", [
    ("k ecdsa-p256-sha256 " + base64.b64encode(b"\x04" + b"\x01" * 64).decode(), "point"),
    ("k ecdsa-p256-sha256 " + base64.b64encode(b"\x04" * 33).decode(), "65 bytes"),
    ("k ecdsa-p256-sha256 A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=", "65 bytes"),
    ("k ed25519 " + base64.b64encode(b"\x04" + b"\x01" * 64).decode(), "32 bytes"),
    ("k rsa-sha256 A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=", "only ed25519 or ecdsa"),
])
def test_bad_signer_lines_are_refused(line: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        signing.parse_public_line(line)
    with pytest.raises(InvalidInput):
        signing.parse_signers(line)


def test_public_from_der_takes_p256_and_ed25519_only() -> None:
    ed_der = LOCAL.private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert signing.public_from_der("a", ed_der) == signing.PublicKey("a", LOCAL.public.raw)
    for other in (ec.generate_private_key(ec.SECP384R1()).public_key(),
                  ec.generate_private_key(ec.SECP256K1()).public_key(),
                  rsa.generate_private_key(65537, 2048).public_key()):
        der = other.public_bytes(serialization.Encoding.DER,
                                 serialization.PublicFormat.SubjectPublicKeyInfo)
        with pytest.raises(ValueError, match="only Ed25519 and NIST P-256"):
            signing.public_from_der("x", der)
    with pytest.raises(ValueError, match="DER"):
        signing.public_from_der("x", b"not der")


# --------------------------------------------------------------------------- records


def test_remote_key_records_carry_their_algorithm_and_verify() -> None:
    records = core.extend([], OLD_ENTRIES, REMOTE, time=OLD_TIME)
    assert records[0]["signer"] == {"name": "ci-kms", "key": REMOTE.key_id,
                                    "alg": "ecdsa-p256-sha256"}
    assert core.check_chain(records, _trust(REMOTE.public)) is None
    # the signature is a DER ECDSA P-256/SHA-256 signature of the usual message
    sig = base64.b64decode(records[0]["sig"])
    REMOTE_PRIVATE.public_key().verify(sig, core.signed_message(records[0]["hash"]),
                                       ec.ECDSA(hashes.SHA256()))


def test_mixed_writers_in_one_chain() -> None:
    records = core.extend([], [OLD_ENTRIES[0]], LOCAL, time=OLD_TIME)
    records += core.extend(records, [OLD_ENTRIES[1]], REMOTE, time=OLD_TIME)
    records += core.extend(records, [("evidence", {"environment": "staging", "ok": True})],
                           LOCAL, time=OLD_TIME)
    assert [r["signer"].get("alg") for r in records] == [None, "ecdsa-p256-sha256", None]
    assert core.check_chain(records, _trust(LOCAL.public, REMOTE.public)) is None
    # either writer untrusted: refused at its first record
    error = core.check_chain(records, _trust(LOCAL.public))
    assert error is not None and error.seq == 2 and "does not trust" in error.message
    error = core.check_chain(records, _trust(REMOTE.public))
    assert error is not None and error.seq == 1 and "does not trust" in error.message


def test_an_untrusted_remote_key_is_refused() -> None:
    records = core.extend([], OLD_ENTRIES, OTHER_REMOTE, time=OLD_TIME)
    error = core.check_chain(records, _trust(REMOTE.public, LOCAL.public))
    assert error is not None and error.seq == 1 and "does not trust" in error.message


def test_a_forged_p256_signature_is_refused() -> None:
    records = core.extend([], OLD_ENTRIES, REMOTE, time=OLD_TIME)
    trust = _trust(REMOTE.public)
    # a real signature by the trusted key, but of the other record
    forged = [records[0], dict(records[1], sig=records[0]["sig"])]
    error = core.check_chain(forged, trust)
    assert error is not None and error.seq == 2 and "does not check" in error.message
    # a signature by another P-256 key over the right message
    forged = [records[0], dict(records[1], sig=OTHER_REMOTE.sign(
        core.signed_message(records[1]["hash"])))]
    error = core.check_chain(forged, trust)
    assert error is not None and error.seq == 2 and "does not check" in error.message
    # garbage
    for sig in ("", "AAAA", "not base64!"):
        error = core.check_chain([dict(records[0], sig=sig)], trust)
        assert error is not None and "does not check" in error.message


@pytest.mark.parametrize("claim", [None, "ed25519", "ecdsa-p384-sha384", 7])
def test_a_record_must_claim_the_algorithm_its_key_is_trusted_with(claim: Any) -> None:
    """A record of the trusted P-256 key, re-signed by it, claiming another algorithm (or
    none: ed25519) is refused, though its signature checks with the trusted algorithm."""
    rec = core.extend([], [OLD_ENTRIES[0]], REMOTE, time=OLD_TIME)[0]
    if claim is None:
        del rec["signer"]["alg"]
    else:
        rec["signer"]["alg"] = claim
    _resign(rec, REMOTE.sign)
    assert REMOTE.public.verify(rec["sig"], core.signed_message(rec["hash"]))
    error = core.check_chain([rec], _trust(REMOTE.public))
    assert error is not None and "claims algorithm" in error.message, error


def test_an_ed25519_key_never_verifies_as_p256() -> None:
    rec = core.extend([], [OLD_ENTRIES[0]], LOCAL, time=OLD_TIME)[0]
    rec["signer"]["alg"] = "ecdsa-p256-sha256"
    _resign(rec, LOCAL.sign)
    error = core.check_chain([rec], _trust(LOCAL.public))
    assert error is not None and "claims algorithm" in error.message
    # the same raw bytes can never be both: trust compares the algorithm too
    assert not _trust(LOCAL.public).trusts(
        signing.PublicKey(LOCAL.name, LOCAL.public.raw, "ecdsa-p256-sha256"))
    p256_sig = REMOTE.sign(b"m")
    assert not LOCAL.public.verify(p256_sig, b"m")
    assert not signing.PublicKey("x", REMOTE.public.raw, "ed25519").verify(p256_sig, b"m")


def test_a_remote_key_that_returns_another_keys_signature_writes_nothing() -> None:
    """The key behind a KMS name changed (an alias moved) after its public key was read."""
    moved = signing.RemoteKey(REMOTE.public, lambda m: base64.b64decode(OTHER_REMOTE.sign(m)),
                              "kms:alias/ci")
    with pytest.raises(ToolFailed, match="does not verify under its public key"):
        core.extend([], OLD_ENTRIES, moved, time=OLD_TIME)
    assert "sign_raw" not in repr(moved) and "kms:alias/ci" in repr(moved)
