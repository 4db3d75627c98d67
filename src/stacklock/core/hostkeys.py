"""SSH host keys: OpenSSH public key lines, known_hosts files, SHA256 fingerprints. Pure.

Every environment keeps the host keys it trusts in `<output_dir>/inventories/<env>/known_hosts`
(OpenSSH format, one line per host: `address` or `[address]:port`, key type, base64 key, and a
comment saying where the key came from). The inventory makes SSH check every connection, the
jump host's included, against that file (`StrictHostKeyChecking=yes`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from stacklock.errors import InvalidInput, Problem

#: the host key types stacklock accepts (OpenSSH's, no DSA), best first
KEY_TYPES: tuple[str, ...] = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)

KNOWN_HOSTS = "known_hosts"

HEADER = (
    "# SSH host keys trusted for environment {env}: written by stacklock (apply, trust).\n"
    "# Every connection of stacklock and of its playbooks to these hosts is checked against\n"
    "# this file (StrictHostKeyChecking=yes). Review changes like code.\n"
)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")

#: what ssh prints when a host key is unknown or differs from the trusted one
_FAILURE = re.compile(
    r"Host key verification failed"
    r"|REMOTE HOST IDENTIFICATION HAS CHANGED"
    r"|No [A-Z0-9-]+ host key is known"
    r"|Host key for \S+ has changed"
)


class HostKeyError(ValueError):
    """A public key line or a known_hosts line that does not follow OpenSSH's grammar."""


@dataclass(frozen=True)
class PublicKey:
    """One OpenSSH public key: `type` (e.g. ssh-ed25519), `body` (base64), optional comment."""

    type: str
    body: str
    comment: str = ""

    @property
    def blob(self) -> bytes:
        return base64.b64decode(self.body)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self)

    def line(self) -> str:
        return f"{self.type} {self.body}" + (f" {self.comment}" if self.comment else "")

    def same_key(self, other: PublicKey) -> bool:
        return (self.type, self.body) == (other.type, other.body)


@dataclass(frozen=True)
class Entry:
    """One known_hosts line: the host pattern (`addr` or `[addr]:port`) and its key."""

    pattern: str
    key: PublicKey

    def line(self) -> str:
        return f"{self.pattern} {self.key.line()}"


def parse_public_key(text: str) -> PublicKey:
    """Parse `TYPE BASE64 [COMMENT]` (one line); raise HostKeyError saying what is wrong."""
    if "\n" in text.strip() or "\r" in text:
        raise HostKeyError("must be a single line")
    line = text.strip()
    if _CONTROL.search(line):
        raise HostKeyError("contains control characters")
    parts = line.split(None, 2)
    if len(parts) < 2:
        raise HostKeyError("must be `TYPE BASE64-KEY [comment]`, e.g. `ssh-ed25519 AAAAC3Nza...`")
    ktype, body = parts[0], parts[1]
    comment = parts[2].strip() if len(parts) == 3 else ""
    if ktype not in KEY_TYPES:
        raise HostKeyError(f"key type {ktype[:40]!r} is not one of: {', '.join(KEY_TYPES)}")
    if not _BASE64.match(body) or len(body) % 4:
        raise HostKeyError("the key is not base64")
    try:
        blob = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise HostKeyError("the key is not base64") from exc
    # the blob starts with the key type as an SSH string (uint32 length + bytes)
    if len(blob) < 4:
        raise HostKeyError("the key is too short")
    (n,) = struct.unpack(">I", blob[:4])
    if blob[4:4 + n] != ktype.encode():
        raise HostKeyError(f"the key's body is not a {ktype} key")
    return PublicKey(ktype, body, comment)


def fingerprint(key: PublicKey) -> str:
    """`SHA256:...` exactly as `ssh-keygen -lf` prints it (unpadded base64 of the SHA-256)."""
    digest = hashlib.sha256(key.blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def host_pattern(address: str, port: int = 22) -> str:
    """The known_hosts name of a host: `address` on port 22, else `[address]:port`."""
    return address if int(port) == 22 else f"[{address}]:{int(port)}"


def split_pattern(pattern: str) -> tuple[str, int]:
    """`[addr]:port` or `addr` -> (addr, port)."""
    m = re.match(r"^\[(?P<a>[^\]]+)\]:(?P<p>\d+)$", pattern)
    return (m["a"], int(m["p"])) if m else (pattern, 22)


def parse_known_hosts(text: str) -> list[Entry]:
    """The entries of a known_hosts file stacklock wrote (comments and blank lines skipped).

    Raises HostKeyError naming the line for hashed names, markers or a malformed key."""
    entries = []
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("@", "|")):
            raise HostKeyError(f"line {no}: markers and hashed host names are not supported")
        pattern, _, rest = line.partition(" ")
        try:
            key = parse_public_key(rest)
        except HostKeyError as exc:
            raise HostKeyError(f"line {no}: {exc}") from None
        for one in pattern.split(","):
            entries.append(Entry(one, key))
    return entries


def format_known_hosts(env: str, entries: Iterable[Entry]) -> str:
    """The file's text: the header, then one line per host pattern, sorted."""
    unique = {e.pattern: e for e in entries}
    lines = [unique[p].line() for p in sorted(unique)]
    return HEADER.format(env=env) + "".join(f"{line}\n" for line in lines)


def merge(entries: Iterable[Entry], updates: Iterable[Entry]) -> list[Entry]:
    """`entries` with every pattern of `updates` replaced by the update."""
    out = {e.pattern: e for e in entries}
    for u in updates:
        out[u.pattern] = u
    return [out[p] for p in sorted(out)]


def by_pattern(entries: Iterable[Entry]) -> dict[str, Entry]:
    return {e.pattern: e for e in entries}


def best_key(keys: Iterable[PublicKey]) -> PublicKey | None:
    """The key stacklock records for a host offering several: ed25519 first, then ECDSA, RSA."""
    ranked = sorted(keys, key=lambda k: KEY_TYPES.index(k.type))
    return ranked[0] if ranked else None


def known_hosts_path(output_root: Path, env: str) -> Path:
    return output_root / "inventories" / env / KNOWN_HOSTS


def load_known_hosts(path: Path) -> list[Entry]:
    """The entries of `path` (none when it does not exist); InvalidInput when malformed."""
    if not path.is_file():
        return []
    try:
        return parse_known_hosts(path.read_text("utf-8"))
    except HostKeyError as exc:
        raise InvalidInput(f"{path}: {exc}", problems=[Problem(
            str(path), str(exc), "fix or remove the line, then run: stacklock trust ENV")]) from None


def is_host_key_failure(text: str) -> bool:
    """Whether ssh/Ansible output says a host key was unknown or not the trusted one."""
    return bool(_FAILURE.search(text))


def untrusted_hint(host: str, address: str, port: int | str, env: str | None) -> str:
    """What to tell a person when `host`'s key is not the one trusted for its environment."""
    trust = f"stacklock trust {env}" if env else "stacklock trust ENV"
    return (
        f"host key of {host} ({address}:{port}) is not the trusted one (changed or not "
        f"trusted yet): if the host was rebuilt on purpose, run `{trust}` and compare the "
        "fingerprint out of band"
    )


def ssh_args(known_hosts: str, proxy_jump: str | None = None) -> str:
    """`ansible_ssh_common_args`: strict checking against `known_hosts`; with a jump host,
    a ProxyCommand whose ssh checks the jump host against the same file (`-J` would not
    pass these options on to the jump connection)."""
    known = f'"{known_hosts}"' if not re.search(r"[\"'\\]", known_hosts) else known_hosts
    strict = f"-o StrictHostKeyChecking=yes -o UserKnownHostsFile={known}"
    if not proxy_jump:
        return strict
    user, host, port = parse_jump(proxy_jump)
    dest = f"{user}@{host}" if user else host
    inner = (f"ssh {strict} -o BatchMode=yes -p {port} -W [%h]:%p {dest}")
    return f"{strict} -o ProxyCommand='{inner}'"


def parse_jump(spec: str) -> tuple[str, str, int]:
    """`[user@]host[:port]` -> (user, host, port); one jump host only."""
    if "," in spec:
        raise HostKeyError(f"jump host {spec!r}: only one jump host is supported")
    if _CONTROL.search(spec) or re.search(r"[\s'\"\\;&|`$]", spec):
        raise HostKeyError(f"jump host {spec!r} contains characters a host name cannot")
    user, _, rest = spec.rpartition("@")
    m = re.match(r"^\[(?P<h6>[^\]]+)\](?::(?P<p6>\d+))?$|^(?P<h>[^:]+)(?::(?P<p>\d+))?$", rest)
    if not m:
        raise HostKeyError(f"jump host {spec!r} is not [user@]host[:port]")
    host = m["h6"] or m["h"]
    port = int(m["p6"] or m["p"] or 22)
    return user, host, port


__all__ = [
    "HEADER", "KEY_TYPES", "KNOWN_HOSTS", "Entry", "HostKeyError", "PublicKey", "best_key",
    "by_pattern", "fingerprint", "format_known_hosts", "host_pattern", "is_host_key_failure",
    "known_hosts_path", "load_known_hosts", "merge", "parse_jump", "parse_known_hosts", "parse_public_key",
    "split_pattern", "ssh_args", "untrusted_hint",
]
