"""Signing keys of the evidence ledger and the set of keys a repository trusts. Pure, apart
from reading and writing key files.

* A **signing key** is an Ed25519 private key of one writer (a person, a CI job), kept off the
  repository: a PKCS#8 PEM file, mode 0600, `~/.config/stacklock/keys/NAME.key` (or any path
  in `$STACKLOCK_SIGNING_KEY`). Its name is the file's stem.
* The **trusted signers** of a manifest live beside it, committed and changed by review like
  code: `<manifest stem>.signers` (`stacklock.signers` for `stacklock.yaml`), one line per
  signer, `NAME ed25519 BASE64-PUBLIC-KEY`; `#` starts a comment.
* A key is named in records and messages by its **key id**, `SHA256:` and the unpadded
  base64 of the sha256 of the 32 raw public key bytes (the way OpenSSH prints fingerprints).

Revocation: a key removed from the signers file is no longer trusted, and every record it
signed is then refused (the simple rule: there is no "valid until"). See docs/security.md.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from stacklock.errors import InvalidInput, Problem

ALGORITHM = "ed25519"
SIGNERS_SUFFIX = ".signers"
KEY_SUFFIX = ".key"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")
SIGNERS_HEADER = (
    "# stacklock: the keys trusted to sign the evidence ledger of {manifest}.\n"
    "# One signer a line: NAME ed25519 PUBLIC-KEY (stacklock ledger key trust adds one).\n"
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


@dataclass(frozen=True)
class PublicKey:
    name: str
    raw: bytes  # the 32 bytes of an Ed25519 public key

    @property
    def key_id(self) -> str:
        return key_id(self.raw)

    def line(self) -> str:
        """Its line in a signers file."""
        return f"{self.name} {ALGORITHM} {_b64(self.raw)}"

    def verify(self, signature: str, message: bytes) -> bool:
        try:
            sig = base64.b64decode(signature.encode("ascii"), validate=True)
            Ed25519PublicKey.from_public_bytes(self.raw).verify(sig, message)
        except (InvalidSignature, ValueError, UnicodeEncodeError):
            return False
        return True


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

    def sign(self, message: bytes) -> str:
        return _b64(self.private.sign(message))

    def __repr__(self) -> str:  # never the private key, in a traceback or a log
        return f"SigningKey({self.name!r}, {self.key_id})"


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
        return got is not None and got.raw == key.raw


def parse_public_line(line: str) -> PublicKey:
    parts = line.split()
    if len(parts) != 3:
        raise ValueError("expected: NAME ed25519 PUBLIC-KEY")
    name, algo, b64 = parts
    if not valid_name(name):
        raise ValueError(f"signer name {name!r} is not valid")
    if algo != ALGORITHM:
        raise ValueError(f"algorithm {algo!r}: only {ALGORITHM}")
    try:
        raw = base64.b64decode(b64.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise ValueError("the key is not base64") from None
    if len(raw) != 32:
        raise ValueError(f"an ed25519 public key has 32 bytes, not {len(raw)}")
    return PublicKey(name, raw)


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
                                    "ed25519 BASE64 (stacklock ledger key pub prints it)"))
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
