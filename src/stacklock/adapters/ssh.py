"""SSH adapter: fetch the host keys that hosts offer (for `stacklock trust`).

Direct hosts are asked with `ssh-keyscan`; hosts behind a jump host by one `ssh` connection
through it that records every key it meets (the jump host's and the target's) in a
known_hosts file in a private temporary folder: the key is recorded even when authentication
then fails. Nothing here decides trust: the caller shows the fingerprints and asks.
"""

from __future__ import annotations

import shlex
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from stacklock.adapters.proc import run_command
from stacklock.core.hostkeys import (
    HostKeyError,
    PublicKey,
    best_key,
    host_pattern,
    parse_jump,
    parse_public_key,
)
from stacklock.errors import ToolFailed


@dataclass(frozen=True)
class Offered:
    """The key a host offered, under its known_hosts pattern."""

    pattern: str
    key: PublicKey


def keyscan(address: str, port: int = 22, *, timeout: int = 10) -> PublicKey:
    """The best host key `address:port` offers (ed25519 first); ToolFailed when none."""
    result = run_command(
        ["ssh-keyscan", "-T", str(timeout), "-p", str(port), "-t", "ed25519,ecdsa,rsa", address],
        check=False, timeout=timeout * 3 + 10,
    )
    keys = []
    for line in result.stdout.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        _host, _, rest = line.partition(" ")
        try:
            keys.append(parse_public_key(rest))
        except HostKeyError:
            continue
    key = best_key(keys)
    if key is None:
        why = result.stderr.strip().splitlines()[-1:] or ["no answer"]
        raise ToolFailed(f"ssh-keyscan {host_pattern(address, port)}: no host key offered "
                         f"({why[0][:200]})")
    return key


def keys_via_jump(address: str, port: int, user: str, jump: str,
                  *, timeout: int = 15) -> list[Offered]:
    """Connect once to `user@address:port` through `jump` and return the keys met on the way:
    the jump host's and the target's (accept-new into a private temporary known_hosts)."""
    try:
        juser, jhost, jport = parse_jump(jump)
    except HostKeyError as exc:
        raise ToolFailed(str(exc)) from None
    tmp = Path(tempfile.mkdtemp(prefix="stacklock-trust-"))  # 0700, a random name
    try:
        known = tmp / "known_hosts"
        known.touch(mode=0o600)
        opts = ["-o", "StrictHostKeyChecking=accept-new", "-o", f"UserKnownHostsFile={known}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                "-o", f"ConnectTimeout={timeout}", "-o", "HashKnownHosts=no"]
        jdest = f"{juser}@{jhost}" if juser else jhost
        proxy = shlex.join(["ssh", *opts, "-p", str(jport), "-W", "[%h]:%p", jdest])
        run_command(["ssh", *opts, "-o", f"ProxyCommand={proxy}", "-p", str(port),
                     f"{user}@{address}", "true"],
                    check=False, timeout=timeout * 3 + 10)
        found: dict[str, list[PublicKey]] = {}
        for line in known.read_text("utf-8").splitlines():
            pattern, _, rest = line.partition(" ")
            try:
                found.setdefault(pattern, []).append(parse_public_key(rest))
            except HostKeyError:
                continue
        wanted = [host_pattern(jhost, jport), host_pattern(address, port)]
        out = []
        for pattern in wanted:
            key = best_key(found.get(pattern, []))
            if key is None:
                raise ToolFailed(f"{pattern} (through {jump}): no host key was offered")
            out.append(Offered(pattern, key))
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["Offered", "keys_via_jump", "keyscan"]
