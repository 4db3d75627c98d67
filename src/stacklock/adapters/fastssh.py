"""Fast fan-out for `stacklock verify --fast`: the facts module over asyncssh.

One SSH connection per node (through its jump host when the inventory names one), at most
`forks` at a time, each running the very same code the verify play runs: the facts module
(`ansible/library/stacklock_stack_facts.py`) and its collectors (`ansible/module_utils/`),
zipped once per run into a `Bundle` as Ansible's AnsiballZ ships a module with its
module_utils. The bundle and the node's options go to the node's Python on stdin; a short
bootstrap serves the zip's files from memory under their `ansible.module_utils` names, loads
the module and calls `gather(opts)` with the options the play gives it, and the facts come back
as JSON on stdout, read as Ansible reads a module's output (lines around the JSON, a login
banner or a MOTD, are ignored). The interpreter is the play's: `ansible_python_interpreter`, or
Ansible's discovery (the first of INTERPRETER_PYTHON_FALLBACK found on the node, else
/usr/bin/python3). The privilege rule is the play's: `sudo -n` (never a password) when the
node's vars say become. The node's part has a deadline (`stacklock_verify_deadline`): a node
still busy then (a probe stuck in the kernel) is closed and reported as not queried (exit 3).

Host keys are enforced from the environment's known_hosts (the jump host's too): an unknown or
changed key makes the node unreachable with the `stacklock trust ENV` hint, exactly as the play.
Connection failures, refused authentication and a crashed module become `Unreachable` with
their cause, which the one comparison (`stacklock.core.parity.compare`) reports as exit 3.

This module holds the SSH side only; which nodes and which options come from the inventories
(`stacklock.flows.fastverify`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import getpass
import io
import json
import os
import re
import shlex
import time
import warnings
import zipfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.utils import CryptographyDeprecationWarning

with warnings.catch_warnings():
    # asyncssh's import names DSA types, and cryptography warns that DSA is deprecated (ten
    # lines on every `verify --fast`): only that category, only around this import
    warnings.simplefilter("ignore", CryptographyDeprecationWarning)
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
#: seconds the node's part (interpreter discovery and the facts module) may take beyond the
#: module's own bound on hashing model archives (`archive_hash_timeout`); then the node is
#: closed and reported as not queried (exit 3). `stacklock_verify_deadline` sets it per node.
DEADLINE = 120.0
#: seconds a finished node's connection may take to close
CLOSE_TIMEOUT = 5.0

#: Ansible's INTERPRETER_PYTHON_FALLBACK (ansible-core 2.19), the discovery order when
#: ansible_python_interpreter is unset or `auto*`; none found: /usr/bin/python3
INTERPRETER_FALLBACK = ("python3.13", "python3.12", "python3.11", "python3.10", "python3.9",
                        "python3.8", "/usr/bin/python3", "python3")
FALLBACK_INTERPRETER = "/usr/bin/python3"

#: connection variables verify --fast understands; any other `-o` option in
#: ansible_ssh_common_args is refused (exit 2) rather than silently ignored
_SSH_OPTIONS = ("stricthostkeychecking", "userknownhostsfile", "proxycommand", "batchmode")

#: inventory variables that select something the fast path does not do (the play does)
_UNSUPPORTED = (
    "ansible_ssh_extra_args", "ansible_ssh_pass", "ansible_password", "ansible_become_pass",
    "ansible_become_password", "ansible_become_flags", "ansible_ssh_executable",
)

#: runs on the node: serve the bundle's files from memory (a meta path finder over the zip, so
#: `ansible.module_utils.stacklock_facts` imports as under Ansible, nothing written to disk),
#: load the facts module, call gather(opts)
BOOTSTRAP = (
    "import base64,importlib.util,io,json,os,sys,types,zipfile\n"
    "d=json.loads(sys.stdin.buffer.read())\n"
    "z=zipfile.ZipFile(io.BytesIO(base64.b64decode(d['bundle'])))\n"
    "n=set(z.namelist())\n"
    "class F:\n"
    " def find_spec(s,name,path=None,target=None):\n"
    "  b=name.replace('.','/')\n"
    "  for f,p in((b+'/__init__.py',True),(b+'.py',False)):\n"
    "   if f in n:return importlib.util.spec_from_loader(name,s,origin='<stacklock>/'+f,"
    "is_package=p)\n"
    " def create_module(s,spec):return None\n"
    " def exec_module(s,m):\n"
    "  o=m.__spec__.origin\n"
    "  exec(compile(z.read(o[12:]),o,'exec'),m.__dict__)\n"
    "sys.meta_path.insert(0,F())\n"
    "m=types.ModuleType('stacklock_stack_facts')\n"
    "m.__file__='<stacklock>/'+d['module']\n"
    "sys.modules[m.__name__]=m\n"
    "exec(compile(z.read(d['module']),m.__file__,'exec'),m.__dict__)\n"
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
    #: ansible_python_interpreter; None: discovered on the node as Ansible does
    python: str | None = None
    become: bool = False
    become_user: str = "root"
    jump: Jump | None = None
    #: the interpreters discovery tries, in order (ansible_interpreter_python_fallback)
    fallback: tuple[str, ...] = INTERPRETER_FALLBACK
    #: seconds the node's part may take (see DEADLINE)
    deadline: float = DEADLINE

    def command(self, python: str) -> str:
        """The remote command line running the bootstrap with `python` (run by the login
        user's shell)."""
        py = shlex.join([python, "-c", BOOTSTRAP])
        if not self.become:
            return py
        # the play's become: sudo, never asking for a password (-n), as the target user
        return shlex.join(["sudo", "-H", "-n", "-u", self.become_user, "/bin/sh", "-c", py])


def discovery_command(fallback: Sequence[str]) -> str:
    """Ansible's interpreter discovery, word for word (run as the login user, no become)."""
    found = "; ".join(f"command -v '{py}'" for py in fallback)
    return f"echo FOUND; {found}; echo ENDFOUND"


_FOUND = re.compile(r"FOUND(.*)ENDFOUND", flags=re.DOTALL)


def discovered_interpreter(stdout: str) -> str:
    """The interpreter Ansible picks from the discovery's output: the first absolute path
    found, else /usr/bin/python3 (also when the output is not the discovery's)."""
    match = _FOUND.match(stdout)
    if not match:
        return FALLBACK_INTERPRETER
    found = [line.strip() for line in match.group(1).splitlines() if line.startswith("/")]
    return found[0] if found else FALLBACK_INTERPRETER


@dataclass(frozen=True)
class HostResult:
    """One node's outcome: its facts, or why there are none; seconds from connect to answer."""

    target: Target
    facts: dict[str, Any] | Unreachable
    seconds: float = 0.0


#: the zip's timestamp, so that the same files make the same bundle
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Bundle:
    """The facts module and its module_utils, zipped and base64-encoded once per run.

    `module`: the module's name in the zip; the module_utils are under
    `ansible/module_utils/...` next to the (empty) `ansible` and `ansible/module_utils`
    packages, as AnsiballZ lays them out."""

    module: str
    data: str

    @classmethod
    def build(cls, module: str, source: bytes, module_utils: Mapping[str, bytes]) -> Bundle:
        """`module_utils`: {path below ansible/module_utils: content}."""
        files = {module: source, "ansible/__init__.py": b"", "ansible/module_utils/__init__.py": b""}
        files.update({f"ansible/module_utils/{rel}": text
                      for rel, text in module_utils.items()})
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for name in sorted(files):
                zf.writestr(zipfile.ZipInfo(name, _ZIP_TIME), files[name],
                            compress_type=zipfile.ZIP_DEFLATED)
        return cls(module, base64.b64encode(buf.getvalue()).decode("ascii"))

    def names(self) -> list[str]:
        with zipfile.ZipFile(io.BytesIO(base64.b64decode(self.data))) as zf:
            return zf.namelist()


@dataclass
class Payload:
    """The bundle (shared by every node of a run) and this node's options, as the bootstrap
    reads them."""

    bundle: Bundle
    opts: dict[str, Any]
    paths: list[str] = field(default_factory=list)

    def encode(self) -> bytes:
        return json.dumps({"module": self.bundle.module, "bundle": self.bundle.data,
                           "opts": self.opts, "paths": self.paths}).encode()


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
    interpreter = hv.get("ansible_python_interpreter")
    python = None if not interpreter or str(interpreter).startswith("auto") else str(interpreter)
    fallback = hv.get("ansible_interpreter_python_fallback")
    if isinstance(fallback, str):
        fallback = [fallback]
    deadline = hv.get("stacklock_verify_deadline")
    try:
        seconds = DEADLINE if deadline in (None, "") else float(deadline)
        if not seconds > 0:
            raise ValueError(seconds)
    except (TypeError, ValueError):
        raise _invalid(f"{where}: stacklock_verify_deadline", f"{deadline!r} is not a number "
                       "of seconds", "set the seconds a node may take, e.g. 600") from None
    return Target(
        env=env, name=name, address=str(hv.get("ansible_host") or name), port=port, user=user,
        known_hosts=known_path, key_file=Path(str(key)).expanduser() if key else None,
        python=python, become=become, become_user=str(hv.get("ansible_become_user") or "root"),
        jump=jump, fallback=tuple(str(f) for f in fallback) if fallback else INTERPRETER_FALLBACK,
        deadline=seconds,
    )


# --------------------------------------------------------------------------- result -> facts


def filter_non_json_lines(data: str) -> str:
    """The JSON object in a module's output, as Ansible finds it (`_filter_non_json_lines` of
    ansible.module_utils.json_utils, objects only, as its action plugins call it): lines before
    the first line starting with `{` and after the last line ending with `}` are dropped (a
    login banner, a MOTD, a shell's noise). ValueError when there is no such object."""
    lines = data.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip().startswith("{")), None)
    if start is None:
        raise ValueError("No start of json char found")
    end = next((i for i in range(len(lines) - 1, start - 1, -1)
                if lines[i].strip().endswith("}")), None)
    if end is None:
        raise ValueError("No end of json char found")
    return "\n".join(lines[start:end + 1])


def facts_from_output(target: Target, exit_status: int | None, stdout: str,
                      stderr: str, python: str | None = None) -> dict[str, Any] | Unreachable:
    """One node's facts from the remote command's result, or why there are none (the reasons
    the play's comparison gives for a failed facts task). `python`: the interpreter that ran
    it (default: the target's)."""
    python = python or target.python or FALLBACK_INTERPRETER
    lines = [ln.strip() for ln in (stderr or "").splitlines() if ln.strip()]
    if exit_status == 0:
        try:
            doc = json.loads(filter_non_json_lines(stdout))
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
    if exit_status == 127 and python in (stderr or ""):
        return Unreachable(f"the facts module failed: The module interpreter '{python}' "
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


# --------------------------------------------------------------------------- on the node

#: runs one command on the node, `input` on its stdin: (exit status or None, stdout, stderr)
Runner = Callable[[str, bytes | None], Awaitable[tuple[int | None, bytes, bytes]]]


async def query(run: Runner, target: Target, payload: Payload) -> dict[str, Any] | Unreachable:
    """The node's facts: the interpreter (the inventory's, else discovered as Ansible does, as
    the login user), then the bootstrap with the payload on stdin, its output read as Ansible
    reads a module's. The caller bounds it by `target.deadline`."""
    python = target.python
    if python is None:
        _status, out, _err = await run(discovery_command(target.fallback), None)
        python = discovered_interpreter(out.decode("utf-8", "replace"))
    status, out, err = await run(target.command(python), payload.encode())
    return facts_from_output(target, status, out.decode("utf-8", "replace"),
                             err.decode("utf-8", "replace"), python)


def deadline_passed(target: Target) -> Unreachable:
    """A node whose facts did not come within its deadline: not queried (exit 3), named."""
    return Unreachable(f"the facts module did not finish on {target.name} ({target.address}) "
                       f"within {target.deadline:g} s (stacklock_verify_deadline): a probe may "
                       "be stuck on the node; the connection was closed")


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

        async def run(command: str, data: bytes | None) -> tuple[int | None, bytes, bytes]:
            proc = await conn.run(command, input=data, encoding=None, check=False)
            out = proc.stdout if isinstance(proc.stdout, bytes) else b""
            err = proc.stderr if isinstance(proc.stderr, bytes) else b""
            return proc.exit_status, out, err

        try:
            facts = await asyncio.wait_for(query(run, target, payload), target.deadline)
        except TimeoutError:
            conn.abort()  # whatever still runs there, this run is done with the node
            return done(deadline_passed(target))
        except (asyncssh.Error, OSError) as exc:
            conn.abort()
            return done(connect_failure(target, exc))
        conn.close()
        with contextlib.suppress(TimeoutError, asyncssh.Error, OSError):
            await asyncio.wait_for(conn.wait_closed(), CLOSE_TIMEOUT)
        return done(facts)

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
    "BOOTSTRAP", "CONNECT_TIMEOUT", "DEADLINE", "FORKS", "INTERPRETER_FALLBACK", "RETRIES",
    "Bundle", "FanOut", "HostResult", "Jump", "Payload", "Runner", "Target", "ansible_bool",
    "connect_failure", "deadline_passed", "discovered_interpreter", "discovery_command",
    "facts_from_output", "filter_non_json_lines", "query", "target_from_vars",
]
