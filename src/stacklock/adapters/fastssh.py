"""Fast fan-out for `stacklock verify --fast`: the facts module over asyncssh.

One SSH connection per node (through its jump host when the inventory names one), at most
`forks` at a time, each running the very same facts module file the verify play runs
(`ansible/library/stacklock_stack_facts.py`): its source goes to the node's python3 on stdin,
a short bootstrap loads it as a module and calls `gather(opts)` with the options the play
gives it, and the facts come back as JSON on stdout. The privilege rule is the play's:
`sudo -n` (never a password) when the node's vars say become.

Host keys are enforced from the environment's known_hosts (the jump host's too): an unknown or
changed key makes the node unreachable with the `stacklock trust ENV` hint, exactly as the play.
Connection failures, refused authentication and a crashed module become `Unreachable` with
their cause, which the one comparison (`stacklock.core.parity.compare`) reports as exit 3.

This module holds the SSH side only; which nodes and which options come from the inventories
(`stacklock.flows.fastverify`).
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from stacklock.core import hostkeys
from stacklock.core.parity import Unreachable
from stacklock.errors import InvalidInput, Problem

#: the settings of ansible.cfg the play runs with: `timeout`, `[ssh_connection] retries`,
#: `ServerAliveInterval` and `forks`
CONNECT_TIMEOUT = 30.0
RETRIES = 3
KEEPALIVE_INTERVAL = 15.0
FORKS = 50

#: connection variables verify --fast understands; any other `-o` option in
#: ansible_ssh_common_args is refused (exit 2) rather than silently ignored
_SSH_OPTIONS = ("stricthostkeychecking", "userknownhostsfile", "proxycommand", "batchmode")

#: inventory variables that select something the fast path does not do (the play does)
_UNSUPPORTED = (
    "ansible_ssh_extra_args", "ansible_ssh_pass", "ansible_password", "ansible_become_pass",
    "ansible_become_password", "ansible_become_flags", "ansible_ssh_executable",
)

#: runs on the node: load the facts module from stdin as a module, call gather(opts)
BOOTSTRAP = (
    "import json,os,sys,types\n"
    "d=json.loads(sys.stdin.buffer.read())\n"
    "m=types.ModuleType('stacklock_stack_facts')\n"
    "m.__file__='stacklock_stack_facts.py'\n"
    "sys.modules[m.__name__]=m\n"
    "exec(compile(d['source'],'stacklock_stack_facts.py','exec'),m.__dict__)\n"
    "o=d['opts']\n"
    "for k in d['paths']:\n"
    "    if isinstance(o.get(k),str):o[k]=os.path.expanduser(os.path.expandvars(o[k]))\n"
    "sys.stdout.write(json.dumps({'stacklock_stack':m.gather(o)}))\n"
)


@dataclass(frozen=True)
class Jump:
    """A jump host (`stacklock_proxy_jump`: `[user@]host[:port]`)."""

    user: str
    host: str
    port: int = 22


@dataclass(frozen=True)
class Target:
    """How to reach one node and run the facts module there (from its inventory vars)."""

    env: str
    name: str
    address: str
    port: int
    user: str
    known_hosts: Path
    key_file: Path | None = None
    python: str = "python3"
    become: bool = False
    become_user: str = "root"
    jump: Jump | None = None

    def command(self) -> str:
        """The remote command line (run by the login user's shell)."""
        py = shlex.join([self.python, "-c", BOOTSTRAP])
        if not self.become:
            return py
        # the play's become: sudo, never asking for a password (-n), as the target user
        return shlex.join(["sudo", "-H", "-n", "-u", self.become_user, "/bin/sh", "-c", py])


@dataclass(frozen=True)
class HostResult:
    """One node's outcome: its facts, or why there are none; seconds from connect to answer."""

    target: Target
    facts: dict[str, Any] | Unreachable
    seconds: float = 0.0


@dataclass
class Payload:
    """The module source and this node's options, as the bootstrap reads them."""

    source: str
    opts: dict[str, Any]
    paths: list[str] = field(default_factory=list)

    def encode(self) -> bytes:
        return json.dumps({"source": self.source, "opts": self.opts,
                           "paths": self.paths}).encode()


# --------------------------------------------------------------------------- inventory -> target


def ansible_bool(value: Any) -> bool:
    """Ansible's `bool` filter: true for true, 1, and the strings yes/on/1/true/y/t."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value == 1
    return str(value).strip().lower() in ("yes", "on", "1", "true", "y", "t")


def _ssh_options(args: str, where: str) -> dict[str, str]:
    """The `-o KEY=VALUE` options of `ansible_ssh_common_args` (keys lower-cased)."""
    try:
        words = shlex.split(args)
    except ValueError as exc:
        raise _invalid(where, f"cannot be split into words ({exc})",
                       "quote it as the inventory stacklock writes does") from None
    opts: dict[str, str] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if word == "-o" and i + 1 < len(words):
            key, sep, value = words[i + 1].partition("=")
            if not sep:
                key, _, value = words[i + 1].partition(" ")
            opts[key.strip().lower()] = value.strip()
            i += 2
            continue
        if word.startswith("-o") and len(word) > 2:
            key, _, value = word[2:].partition("=")
            opts[key.strip().lower()] = value.strip()
            i += 1
            continue
        raise _invalid(where, f"argument {word[:60]!r} is not understood by verify --fast",
                       "run `stacklock verify` without --fast (the play passes it to ssh)")
    unknown = sorted(set(opts) - set(_SSH_OPTIONS))
    if unknown:
        raise _invalid(where, f"ssh option(s) {', '.join(unknown)} are not understood by "
                       "verify --fast", "run `stacklock verify` without --fast")
    return opts


def _invalid(where: str, message: str, hint: str) -> InvalidInput:
    return InvalidInput(f"{where}: {message}", problems=[Problem(where, message, hint)])


def target_from_vars(env: str, name: str, hv: Mapping[str, Any], inventory_dir: Path) -> Target:
    """The connection of host `name` from its merged inventory vars (templates resolved).

    Follows what the verify play does with the same vars: ansible_host/port/user, the private
    key, the interpreter, the known_hosts file of ansible_ssh_common_args (default: the
    inventory's own known_hosts, checked strictly either way), the jump host
    (`stacklock_proxy_jump`) and become (`stacklock_verify_become`, default: the login user is
    not root). Raises InvalidInput (exit 2) naming the variable for what the fast path cannot
    do the same way (another connection plugin, passwords, unknown ssh options)."""
    where = f"inventory {inventory_dir}, host {name}"
    conn = str(hv.get("ansible_connection") or "ssh")
    if conn not in ("ssh", "smart", "paramiko_ssh"):
        raise _invalid(f"{where}: ansible_connection", f"{conn!r} is not an SSH connection",
                       "run `stacklock verify` without --fast for this environment")
    for var in _UNSUPPORTED:
        if hv.get(var) not in (None, ""):
            raise _invalid(f"{where}: {var}", "is set, and verify --fast does not use it",
                           "run `stacklock verify` without --fast, or remove the variable")
    method = str(hv.get("ansible_become_method") or "sudo")
    if method != "sudo":
        raise _invalid(f"{where}: ansible_become_method", f"{method!r}: verify --fast "
                       "becomes root with `sudo -n` only", "run `stacklock verify` without --fast")
    opts = _ssh_options(str(hv.get("ansible_ssh_common_args") or ""),
                        f"{where}: ansible_ssh_common_args")
    strict = opts.get("stricthostkeychecking", "yes").lower()
    if strict not in ("yes", "true"):
        raise _invalid(f"{where}: ansible_ssh_common_args",
                       f"StrictHostKeyChecking={strict}: verify --fast checks host keys strictly",
                       "set StrictHostKeyChecking=yes (as stacklock's inventories do) and run "
                       "`stacklock trust ENV`")
    known = opts.get("userknownhostsfile", "").strip("\"'")
    known_path = Path(known).expanduser() if known else inventory_dir / hostkeys.KNOWN_HOSTS
    jump_spec = hv.get("stacklock_proxy_jump")
    if opts.get("proxycommand") and not jump_spec:
        raise _invalid(f"{where}: ansible_ssh_common_args", "a ProxyCommand without "
                       "stacklock_proxy_jump", "name the jump host in the manifest "
                       "(proxy_jump), or run `stacklock verify` without --fast")
    jump = None
    if jump_spec:
        try:
            juser, jhost, jport = hostkeys.parse_jump(str(jump_spec))
        except hostkeys.HostKeyError as exc:
            raise _invalid(f"{where}: stacklock_proxy_jump", str(exc),
                           "use [user@]host[:port]") from None
        jump = Jump(juser, jhost, jport)
    try:
        port = int(hv.get("ansible_port") or 22)
    except (TypeError, ValueError):
        raise _invalid(f"{where}: ansible_port", f"{hv.get('ansible_port')!r} is not a port "
                       "number", "set a port number, e.g. 22") from None
    login = hv.get("ansible_user")
    user = str(login) if login else getpass.getuser()
    become_var = hv.get("stacklock_verify_become")
    if "ansible_become" in hv and hv["ansible_become"] is not None:
        become = ansible_bool(hv["ansible_become"])  # a connection variable beats the keyword
    elif become_var is not None:
        become = ansible_bool(become_var)
    else:
        # the play: (ansible_user | default(env USER, true) | default('root', true)) != 'root'
        become = (str(login) if login else (getpass.getuser() or "root")) != "root"
    key = hv.get("ansible_ssh_private_key_file") or hv.get("ansible_private_key_file")
    python = str(hv.get("ansible_python_interpreter") or "python3")
    if python.startswith("auto"):
        python = "python3"
    return Target(
        env=env, name=name, address=str(hv.get("ansible_host") or name), port=port, user=user,
        known_hosts=known_path, key_file=Path(str(key)).expanduser() if key else None,
        python=python, become=become, become_user=str(hv.get("ansible_become_user") or "root"),
        jump=jump,
    )


# --------------------------------------------------------------------------- result -> facts


def facts_from_output(target: Target, exit_status: int | None, stdout: str,
                      stderr: str) -> dict[str, Any] | Unreachable:
    """One node's facts from the remote command's result, or why there are none (the reasons
    the play's comparison gives for a failed facts task)."""
    lines = [ln.strip() for ln in (stderr or "").splitlines() if ln.strip()]
    if exit_status == 0:
        try:
            doc = json.loads(stdout)
        except ValueError:
            doc = None
        facts = doc.get("stacklock_stack") if isinstance(doc, dict) else None
        if isinstance(facts, dict) and facts.get("schema"):
            return facts
        return Unreachable("the facts module failed: its output holds no facts")
    if target.become and any(ln.startswith("sudo:") and "password" in ln for ln in lines):
        return Unreachable("the facts module failed: Missing sudo password (verify becomes "
                           f"{target.become_user} with `sudo -n`: allow it without a password, "
                           "or set stacklock_verify_become: false)")
    if exit_status == 127 and target.python in (stderr or ""):
        return Unreachable(f"the facts module failed: The module interpreter '{target.python}' "
                           "was not found.")
    status = "killed by a signal" if exit_status is None else f"exit {exit_status}"
    last = lines[-1] if lines else "no error output"
    return Unreachable(f"the facts module failed: {last} ({status})"[:500])


def connect_failure(target: Target, exc: BaseException, *, jump: bool = False) -> Unreachable:
    """Why `target` could not be reached, worded like the play's unreachable reasons."""
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        if jump and target.jump is not None:
            return Unreachable(hostkeys.untrusted_hint(
                f"the jump host of {target.name}", target.jump.host, target.jump.port,
                target.env))
        return Unreachable(hostkeys.untrusted_hint(target.name, target.address,
                                                   str(target.port), target.env))
    via = f" (through jump host {target.jump.host})" if target.jump is not None else ""
    who = f"{target.jump.user or getpass.getuser()}@{target.jump.host}" if (
        jump and target.jump is not None) else f"{target.user}@{target.address}"
    if isinstance(exc, asyncssh.ChannelOpenError) and target.jump is not None:
        return Unreachable(f"Failed to connect to the host via ssh: jump host "
                           f"{target.jump.host} could not connect to {target.address} port "
                           f"{target.port}: {exc.reason or 'open failed'}")
    if isinstance(exc, asyncssh.PermissionDenied):
        return Unreachable(f"Failed to connect to the host via ssh: {who}: Permission denied "
                           f"(publickey){via}")
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return Unreachable(f"Failed to connect to the host via ssh: {who}: connection timed "
                           f"out after {CONNECT_TIMEOUT:.0f} s{via}")
    if isinstance(exc, asyncssh.KeyImportError | asyncssh.KeyEncryptionError):
        return Unreachable(f"Failed to connect to the host via ssh: private key "
                           f"{target.key_file}: {exc}")
    if isinstance(exc, OSError):
        # asyncio words a refused connection "Connect call failed (...)": say what ssh says
        why = os.strerror(exc.errno) if exc.errno else (str(exc) or type(exc).__name__)
        if isinstance(exc, FileNotFoundError) and exc.filename:
            why = f"{exc.filename}: {why}"
        host, port = ((target.jump.host, target.jump.port) if jump and target.jump
                      else (target.address, target.port))
        return Unreachable(f"Failed to connect to the host via ssh: connect to host {host} "
                           f"port {port}: {why}{via}")
    text = str(exc).strip() or type(exc).__name__
    return Unreachable(f"Failed to connect to the host via ssh: {who}: {text}{via}"[:500])


# --------------------------------------------------------------------------- the fan-out


class _Credentials:
    """Known hosts files and private keys, each read once for all connections."""

    def __init__(self) -> None:
        self._known: dict[Path, asyncssh.SSHKnownHosts] = {}
        self._keys: dict[Path, asyncssh.SSHKey | BaseException] = {}

    def known_hosts(self, path: Path) -> asyncssh.SSHKnownHosts:
        if path not in self._known:
            hostkeys.load_known_hosts(path)  # stacklock's grammar: InvalidInput when malformed
            text = path.read_text("utf-8") if path.is_file() else ""
            self._known[path] = asyncssh.import_known_hosts(text)
        return self._known[path]

    def key(self, path: Path) -> asyncssh.SSHKey:
        if path not in self._keys:
            try:
                self._keys[path] = asyncssh.read_private_key(str(path))
            except (OSError, asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as exc:
                self._keys[path] = exc
        found = self._keys[path]
        if isinstance(found, BaseException):
            raise found
        return found


def _transient(exc: BaseException) -> bool:
    """Worth another try, as Ansible retries ssh's exit 255 (not host keys, not auth)."""
    if isinstance(exc, asyncssh.HostKeyNotVerifiable | asyncssh.PermissionDenied):
        return False
    return isinstance(exc, OSError | TimeoutError | asyncio.TimeoutError
                      | asyncssh.ConnectionLost)


async def _with_retries(make: Callable[[], Any], retries: int) -> Any:
    for attempt in range(retries + 1):
        try:
            return await make()
        except Exception as exc:
            if attempt >= retries or not _transient(exc):
                raise
            await asyncio.sleep(min(2 ** attempt - 1, 30))
    raise AssertionError("unreachable")  # pragma: no cover


class FanOut:
    """Runs the payloads on their targets, at most `forks` connections at a time."""

    def __init__(self, *, forks: int = FORKS, retries: int = RETRIES,
                 connect_timeout: float = CONNECT_TIMEOUT,
                 on_result: Callable[[HostResult], None] | None = None) -> None:
        self.forks = max(1, forks)
        self.retries = retries
        self.connect_timeout = connect_timeout
        self.on_result = on_result
        self._creds = _Credentials()
        self._jumps: dict[tuple[str, str, int, Path], asyncio.Task[Any]] = {}

    def _common(self, target: Target, known: Path) -> dict[str, Any]:
        return {
            "known_hosts": self._creds.known_hosts(known),
            "connect_timeout": self.connect_timeout,
            "keepalive_interval": KEEPALIVE_INTERVAL,
            "keepalive_count_max": 3,
            "preferred_auth": "publickey",
            "password": None,
            "kbdint_auth": False,
            "agent_forwarding": False,
        }

    async def _jump(self, target: Target) -> Any:
        assert target.jump is not None
        j = target.jump
        key = (j.user, j.host, j.port, target.known_hosts)
        if key not in self._jumps:
            # like the play's ProxyCommand ssh: the local user unless named, the default keys
            opts = self._common(target, target.known_hosts)
            self._jumps[key] = asyncio.ensure_future(_with_retries(
                lambda: asyncssh.connect(j.host, j.port, username=j.user or getpass.getuser(),
                                         **opts),
                self.retries))
        return await asyncio.shield(self._jumps[key])

    async def _run_one(self, target: Target, payload: Payload) -> HostResult:
        started = time.monotonic()

        def done(facts: dict[str, Any] | Unreachable) -> HostResult:
            result = HostResult(target, facts, round(time.monotonic() - started, 3))
            if self.on_result is not None:
                self.on_result(result)
            return result

        tunnel: Any = ()
        if target.jump is not None:
            try:
                tunnel = await self._jump(target)
            except Exception as exc:
                return done(connect_failure(target, exc, jump=True))
        try:
            opts = self._common(target, target.known_hosts)
            if target.key_file is not None:
                opts["client_keys"] = [self._creds.key(target.key_file)]
                opts["agent_path"] = None
            conn = await _with_retries(
                lambda: asyncssh.connect(target.address, target.port, tunnel=tunnel,
                                         username=target.user, **opts),
                self.retries)
        except InvalidInput:
            raise
        except Exception as exc:
            return done(connect_failure(target, exc))
        try:
            async with conn:
                proc = await conn.run(target.command(), input=payload.encode(), encoding=None,
                                      check=False)
        except (asyncssh.Error, OSError) as exc:
            return done(connect_failure(target, exc))
        out = proc.stdout if isinstance(proc.stdout, bytes) else b""
        err = proc.stderr if isinstance(proc.stderr, bytes) else b""
        return done(facts_from_output(target, proc.exit_status, out.decode("utf-8", "replace"),
                                      err.decode("utf-8", "replace")))

    async def _all(self, jobs: Sequence[tuple[Target, Payload]]) -> list[HostResult]:
        sem = asyncio.Semaphore(self.forks)

        async def bounded(target: Target, payload: Payload) -> HostResult:
            async with sem:
                return await self._run_one(target, payload)

        try:
            return list(await asyncio.gather(*(bounded(t, p) for t, p in jobs)))
        finally:
            for task in self._jumps.values():
                if task.done() and not task.cancelled() and task.exception() is None:
                    task.result().close()

    def run(self, jobs: Sequence[tuple[Target, Payload]]) -> list[HostResult]:
        """Every job's result, in the order of `jobs`."""
        # the known_hosts files first: a malformed one is invalid input (exit 2), before any node
        for target, _ in jobs:
            self._creds.known_hosts(target.known_hosts)
        return asyncio.run(self._all(jobs))


__all__ = [
    "BOOTSTRAP", "CONNECT_TIMEOUT", "FORKS", "RETRIES", "FanOut", "HostResult", "Jump",
    "Payload", "Target", "ansible_bool", "connect_failure", "facts_from_output",
    "target_from_vars",
]
