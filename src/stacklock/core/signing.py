"""Signing keys of the evidence ledger and the set of keys a repository trusts. Pure, apart
from reading and writing key files.

* A **signing key** is an Ed25519 private key of one writer (a person, a CI job), kept off the
  repository: a PKCS#8 PEM file, mode 0600, `~/.config/stacklock/keys/NAME.key` (or any path
  in `$STACKLOCK_SIGNING_KEY`). Its name is the file's stem.
* A **remote key** (`RemoteKey`) is a writer whose private key never leaves a service that
  signs for it: an AWS KMS asymmetric key (ECC_NIST_P256, ECDSA_SHA_256; the KMS calls are in
  `stacklock.adapters.kms`). Here it is its public key and a function that signs; every
  signature it returns is checked against that public key before it is used.
* The **trusted signers** of a manifest live beside it, committed and changed by review like
  code: `<manifest stem>.signers` (`stacklock.signers` for `stacklock.yaml`), one line per
  signer, `NAME ALGORITHM BASE64-PUBLIC-KEY`; `#` starts a comment. ALGORITHM is `ed25519`
  (the 32 raw public key bytes) or `ecdsa-p256-sha256` (the 65-byte uncompressed P-256 point;
  signatures are DER, over SHA-256). A key verifies only with the algorithm it is trusted
  with.
* A key is named in records and messages by its **key id**, `SHA256:` and the unpadded
  base64 of the sha256 of the raw public key bytes above (the way OpenSSH prints
  fingerprints).

Revocation: a key removed from the signers file is no longer trusted, and every record it
signed is then refused (the simple rule: there is no "valid until"). See docs/security.md.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from stacklock.errors import InvalidInput, Problem, ToolFailed

#: the algorithm of local keys, and of every record and signer line that names none
ALGORITHM = "ed25519"
#: ECDSA on NIST P-256 over SHA-256 (an AWS KMS key of spec ECC_NIST_P256, ECDSA_SHA_256)
ECDSA_P256 = "ecdsa-p256-sha256"
ALGORITHMS = (ALGORITHM, ECDSA_P256)
#: the length of each algorithm's raw public key
RAW_LENGTH = {ALGORITHM: 32, ECDSA_P256: 65}
SIGNERS_SUFFIX = ".signers"
KEY_SUFFIX = ".key"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")
SIGNERS_HEADER = (
    "# stacklock: the keys trusted to sign the evidence ledger of {manifest}.\n"
    "# One signer a line: NAME ALGORITHM PUBLIC-KEY (stacklock ledger key trust adds one).\n"
    "# Added and removed by review, like code: a removed key's records are refused.\n"
)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def key_id(raw: bytes) -> str:
    """`SHA256:` + unpadded base64 of the sha256 of the raw public key."""
    return "SHA256:" + _b64(hashlib.sha256(raw).digest()).rstrip("=")


def valid_name(name: str) -> bool:
    return bool(NAME_RE.match(name))


def safe_name(text: str) -> str:
    """`text` made a valid signer name (other characters become `-`)."""
    name = re.sub(r"[^A-Za-z0-9._@+-]", "-", text).strip("-.") or "stacklock"
    return name[:64] if valid_name(name[:64]) else "key-" + name[:60]


def check_raw(algorithm: str, raw: bytes) -> None:
    """Raise ValueError unless `raw` is a public key of `algorithm` (a P-256 point on the
    curve, uncompressed)."""
    if algorithm not in RAW_LENGTH:
        raise ValueError(f"algorithm {algorithm!r}: only " + " or ".join(ALGORITHMS))
    if len(raw) != RAW_LENGTH[algorithm]:
        raise ValueError(f"an {algorithm} public key has {RAW_LENGTH[algorithm]} bytes, "
                         f"not {len(raw)}")
    if algorithm == ECDSA_P256:
        if raw[:1] != b"\x04":
            raise ValueError("an ecdsa-p256-sha256 public key is an uncompressed point (04...)")
        try:
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
        except ValueError:
            raise ValueError("not a point on the P-256 curve") from None


@dataclass(frozen=True)
class PublicKey:
    name: str
    raw: bytes  # ed25519: the 32 raw bytes; ecdsa-p256-sha256: the 65-byte uncompressed point
    algorithm: str = ALGORITHM

    @property
    def key_id(self) -> str:
        return key_id(self.raw)

    def line(self) -> str:
        """Its line in a signers file."""
        return f"{self.name} {self.algorithm} {_b64(self.raw)}"

    def verify(self, signature: str, message: bytes) -> bool:
        """Whether `signature` (base64) is this key's signature of `message`, with the
        algorithm this key is trusted with and no other."""
        try:
            sig = base64.b64decode(signature.encode("ascii"), validate=True)
            if self.algorithm == ALGORITHM:
                Ed25519PublicKey.from_public_bytes(self.raw).verify(sig, message)
            elif self.algorithm == ECDSA_P256:
                ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), self.raw).verify(
                    sig, message, ec.ECDSA(hashes.SHA256()))
            else:
                return False
        except (InvalidSignature, ValueError, UnicodeEncodeError):
            return False
        return True


def public_from_der(name: str, der: bytes) -> PublicKey:
    """The key of a DER SubjectPublicKeyInfo (what AWS KMS GetPublicKey returns): Ed25519 or
    NIST P-256; ValueError for any other."""
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError("not a DER SubjectPublicKeyInfo public key") from None
    if isinstance(key, Ed25519PublicKey):
        return PublicKey(name, key.public_bytes(serialization.Encoding.Raw,
                                                serialization.PublicFormat.Raw), ALGORITHM)
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return PublicKey(name, key.public_bytes(serialization.Encoding.X962,
                                                serialization.PublicFormat.UncompressedPoint),
                         ECDSA_P256)
    what = key.curve.name if isinstance(key, ec.EllipticCurvePublicKey) else type(key).__name__
    raise ValueError(f"a {what} key: only Ed25519 and NIST P-256 (ECC_NIST_P256) keys sign "
                     "ledger records")


class WriterKey(Protocol):
    """What signs ledger records: a local Ed25519 `SigningKey`, or a `RemoteKey` (AWS KMS)."""

    @property
    def name(self) -> str: ...

    @property
    def public(self) -> PublicKey: ...

    @property
    def key_id(self) -> str: ...

    @property
    def algorithm(self) -> str: ...

    def sign(self, message: bytes) -> str: ...


@dataclass(frozen=True)
class SigningKey:
    name: str
    private: Ed25519PrivateKey
    path: Path | None = None

    @property
    def public(self) -> PublicKey:
        raw = self.private.public_key().public_bytes(serialization.Encoding.Raw,
                                                     serialization.PublicFormat.Raw)
        return PublicKey(self.name, raw)

    @property
    def key_id(self) -> str:
        return self.public.key_id

    @property
    def algorithm(self) -> str:
        return ALGORITHM

    def sign(self, message: bytes) -> str:
        return _b64(self.private.sign(message))

    def __repr__(self) -> str:  # never the private key, in a traceback or a log
        return f"SigningKey({self.name!r}, {self.key_id})"


@dataclass(frozen=True)
class RemoteKey:
    """A writer whose private key stays in a signing service (AWS KMS): its trusted-to-be
    public key, and `sign_raw`, which returns the service's raw signature of a message (DER
    ECDSA for ecdsa-p256-sha256). `where` names the key for messages (`kms:ARN`)."""

    public: PublicKey
    sign_raw: Callable[[bytes], bytes] = field(repr=False, compare=False)
    where: str = ""

    @property
    def name(self) -> str:
        return self.public.name

    @property
    def key_id(self) -> str:
        return self.public.key_id

    @property
    def algorithm(self) -> str:
        return self.public.algorithm

    def sign(self, message: bytes) -> str:
        """The service's signature of `message`, base64; ToolFailed (exit 3) when it does not
        verify under `public` (the key behind the name changed since its public key was read,
        e.g. an alias moved): nothing is written with it."""
        sig = _b64(self.sign_raw(message))
        if not self.public.verify(sig, message):
            raise ToolFailed(f"{self.where or self.name}: the signature it returned does not "
                             f"verify under its public key {self.key_id} ({self.algorithm}): "
                             "the key behind that name changed (an alias moved?); nothing was "
                             "written (fix: name the key by its ARN, and trust its public key: "
                             "stacklock ledger key trust --kms KEY)")
        return sig


def generate(name: str) -> SigningKey:
    if not valid_name(name):
        raise InvalidInput(f"signer name {name!r} is not valid", problems=[Problem(
            "NAME", f"{name!r}: letters, digits and . _ @ + - (at most 64)",
            "e.g. alice@laptop or ci-prod")])
    return SigningKey(name, Ed25519PrivateKey.generate())


def private_pem(key: SigningKey) -> bytes:
    return key.private.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())


def write_private(key: SigningKey, path: Path) -> Path:
    """Create the key file, 0600 in a 0700 folder; never over an existing one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise InvalidInput(f"{path} exists already: stacklock never overwrites a key",
                           problems=[Problem("NAME", f"{path} exists",
                                             "pick another name, or use that key")]) from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_pem(key))
        fh.flush()
        os.fsync(fh.fileno())
    return path


def load_private(path: Path, name: str | None = None) -> SigningKey:
    """The key in `path` (its name: `name`, else the file's stem). Exit 2 when it is readable
    by others, not an Ed25519 PEM key, or unreadable."""
    try:
        st = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"signing key {path}: cannot be read ({exc.strerror or exc})",
                           problems=[Problem("STACKLOCK_SIGNING_KEY", f"{path} unreadable",
                                             "stacklock ledger key new creates one")]) from None
    if st.st_mode & 0o077:
        raise InvalidInput(
            f"signing key {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o})",
            problems=[Problem("STACKLOCK_SIGNING_KEY", "a private key must be 0600",
                              f"chmod 600 {path}")])
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidInput(f"signing key {path} is not an unencrypted Ed25519 PEM key",
                           problems=[Problem("STACKLOCK_SIGNING_KEY", "not an Ed25519 key",
                                             "stacklock ledger key new creates one")])
    return SigningKey(name or path.stem, key, path)


# --------------------------------------------------------------------------- trust


@dataclass(frozen=True)
class Trust:
    """The keys a repository trusts, by key id."""

    keys: Mapping[str, PublicKey]
    source: str = "(no signers file)"

    @classmethod
    def of(cls, keys: Iterable[PublicKey], source: str = "(given)") -> Trust:
        return cls({k.key_id: k for k in keys}, source)

    def get(self, kid: str) -> PublicKey | None:
        return self.keys.get(kid)

    def trusts(self, key: PublicKey) -> bool:
        got = self.keys.get(key.key_id)
        return got is not None and got.raw == key.raw and got.algorithm == key.algorithm


def parse_public_line(line: str) -> PublicKey:
    parts = line.split()
    if len(parts) != 3:
        raise ValueError("expected: NAME ALGORITHM PUBLIC-KEY (ALGORITHM: "
                         + " or ".join(ALGORITHMS) + ")")
    name, algo, b64 = parts
    if not valid_name(name):
        raise ValueError(f"signer name {name!r} is not valid")
    if algo not in ALGORITHMS:
        raise ValueError(f"algorithm {algo!r}: only " + " or ".join(ALGORITHMS))
    try:
        raw = base64.b64decode(b64.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise ValueError("the key is not base64") from None
    check_raw(algo, raw)
    return PublicKey(name, raw, algo)


def parse_signers(text: str, source: str = "signers") -> Trust:
    """A signers file's keys; raise InvalidInput (exit 2) naming every bad line."""
    keys: list[PublicKey] = []
    problems: list[Problem] = []
    names: set[str] = set()
    for n, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            key = parse_public_line(line)
        except ValueError as exc:
            problems.append(Problem(f"{source}:{n}", str(exc), "one signer a line: NAME "
                                    "ALGORITHM BASE64 (stacklock ledger key pub prints it)"))
            continue
        if key.name in names:
            problems.append(Problem(f"{source}:{n}", f"signer {key.name} is listed twice",
                                    "give each key its own name"))
        names.add(key.name)
        keys.append(key)
    if problems:
        raise InvalidInput(f"{source}: {len(problems)} bad line(s)", problems=problems)
    return Trust.of(keys, source)


def signers_path(manifest_path: Path) -> Path:
    """`<manifest folder>/<manifest stem>.signers`."""
    return manifest_path.with_suffix(SIGNERS_SUFFIX)


def read_signers(path: Path) -> Trust:
    """The trusted keys of `path` (none when it does not exist)."""
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return Trust({}, str(path))
    return parse_signers(text, str(path))


def with_signer(text: str, key: PublicKey, manifest_name: str) -> str:
    """The signers file's text with `key` added (text "" : a new file with its header)."""
    body = text if text.strip() else SIGNERS_HEADER.format(manifest=manifest_name)
    if not body.endswith("\n"):
        body += "\n"
    return body + key.line() + "\n"
