"""Mirror and index credentials: where they come from, and how they reach the nodes.

The manifest never holds a credential (its schema refuses `user:pass@` in URLs). Credentials
for the internal apt mirror's repositories and for pip indexes come from, in this order (a
later source wins for the same repository or host):

1. a **secrets file** named by ``$STACKLOCK_SECRETS_FILE``: the Ansible variables the roles
   read, as YAML (or JSON)::

       stacklock_apt_auth:            # by apt repository name (package_sources.apt[].name)
         internal: {login: ci, password: "..."}
       stacklock_pip_auth:            # by index host name (index_url, extra_index_urls, ...)
         pypi.internal.example: {login: ci, password: "..."}

   The file must be readable by its owner only (mode 0600 or 0400): a group- or
   world-readable one is refused with exit 2 naming it and ``chmod 600``. An **Ansible
   Vault**-encrypted file (``ansible-vault encrypt FILE``; the controller's secret store) is
   handed to ansible-playbook as it is (``-e @FILE``) and decrypted by Ansible with its own
   vault settings (``$ANSIBLE_VAULT_PASSWORD_FILE``); stacklock never decrypts it.
2. the **environment**: ``STACKLOCK_APT_AUTH_<REPO>=login:password`` for an apt repository,
   ``STACKLOCK_PIP_AUTH_<HOST>=login:password`` for a pip index host, and
   ``STACKLOCK_PIP_AUTH=login:password`` for the host of ``package_sources.pip.index_url``.
   ``<REPO>`` and ``<HOST>`` are the name upper-cased with every character other than a
   letter or digit turned into ``_`` (``internal-debian`` -> ``INTERNAL_DEBIAN``,
   ``pypi.internal.example`` -> ``PYPI_INTERNAL_EXAMPLE``).

They reach the nodes only through the tools' own credential files, written by the roles with
``no_log``: ``/etc/apt/auth.conf.d/stacklock-<repo>.conf`` (0600, root) and a netrc for pip
(``<torchserve_home>/pip.netrc``, 0600, root, used by the role's pip runs through
``$NETRC``). From the controller they travel as an extra-vars file, 0600 in a private
temporary folder, deleted when ansible-playbook ends (`extra_vars_file`); never on a command
line, in group_vars, an inventory, the lock, a log or a report.

This module reads the environment mapping and files it is given; it never prints a secret
(the `Credentials` repr names repositories and hosts only).
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from stacklock.errors import InvalidInput, Problem

ENV_FILE = "STACKLOCK_SECRETS_FILE"
ENV_APT = "STACKLOCK_APT_AUTH_"
ENV_PIP = "STACKLOCK_PIP_AUTH"
VAULT_HEADER = "$ANSIBLE_VAULT;"
#: the variables of a secrets file (the roles' inputs)
APT_VAR = "stacklock_apt_auth"
PIP_VAR = "stacklock_pip_auth"

_TOKEN = re.compile(r"^[\x21-\x7e]{1,256}$")  # printable ASCII, no spaces (netrc/auth.conf)


def env_key(name: str) -> str:
    """`internal-debian` -> `INTERNAL_DEBIAN` (the suffix of the environment variable)."""
    return re.sub(r"[^A-Z0-9]", "_", name.upper())


@dataclass(frozen=True)
class Login:
    login: str
    password: str = field(repr=False)

    def as_dict(self) -> dict[str, str]:
        return {"login": self.login, "password": self.password}


@dataclass(frozen=True)
class Credentials:
    """Credentials by apt repository name and by pip index host; `vault_file` is a
    vault-encrypted secrets file passed to Ansible unread."""

    apt: Mapping[str, Login] = field(default_factory=dict)
    pip: Mapping[str, Login] = field(default_factory=dict)
    vault_file: Path | None = None

    def __repr__(self) -> str:
        return (f"Credentials(apt={sorted(self.apt)}, pip={sorted(self.pip)}, "
                f"vault_file={self.vault_file})")

    __str__ = __repr__

    @property
    def empty(self) -> bool:
        return not self.apt and not self.pip and self.vault_file is None

    def extra_vars(self) -> dict[str, Any]:
        """The roles' variables: {stacklock_apt_auth: {repo: {login, password}},
        stacklock_pip_auth: {host: {login, password}}} (only the non-empty ones)."""
        result: dict[str, Any] = {}
        if self.apt:
            result[APT_VAR] = {k: v.as_dict() for k, v in sorted(self.apt.items())}
        if self.pip:
            result[PIP_VAR] = {k: v.as_dict() for k, v in sorted(self.pip.items())}
        return result

    def netrc_text(self) -> str:
        """A netrc of the pip credentials (for the controller's resolver, `lock`)."""
        return "".join(f"machine {host} login {v.login} password {v.password}\n"
                       for host, v in sorted(self.pip.items()))

    def values(self) -> list[str]:
        """Every secret value (for tests and log scrubbing)."""
        return [v.password for v in (*self.apt.values(), *self.pip.values())]


# --------------------------------------------------------------------------- what may have one


def apt_repositories(manifest: Any) -> list[str]:
    """Names of the manifest's own apt repositories (the official ones take no login)."""
    apt = manifest.package_sources.apt
    return [] if isinstance(apt, str) else [r.name for r in apt]


def pip_hosts(manifest: Any) -> tuple[str | None, list[str]]:
    """(host of index_url, every host of the pip sources), lowercase, without port."""
    pip = manifest.package_sources.pip
    urls = [pip.index_url, *(pip.extra_index_urls or []), *pip.find_links]
    hosts: list[str] = []
    for url in urls:
        host = urlsplit(url).hostname if "://" in url else None
        if host and host not in hosts:
            hosts.append(host)
    index = urlsplit(pip.index_url).hostname
    return index, hosts


# --------------------------------------------------------------------------- reading


def _login(value: Any, where: str, problems: list[Problem]) -> Login | None:
    if isinstance(value, str):
        login, sep, password = value.partition(":")
        if not sep:
            problems.append(Problem(where, "is not login:password",
                                    "set it to LOGIN:PASSWORD (the password may contain ':')"))
            return None
    elif isinstance(value, Mapping) and set(value) == {"login", "password"}:
        login, password = value["login"], value["password"]
        if not isinstance(login, str) or not isinstance(password, str):
            problems.append(Problem(where, "login and password must be strings",
                                    "quote them"))
            return None
    else:
        problems.append(Problem(where, "is not {login: ..., password: ...}",
                                "give exactly the keys login and password"))
        return None
    for part, text in (("login", login), ("password", password)):
        if not _TOKEN.match(text):
            # never echo the value: say what is wrong with it
            problems.append(Problem(where, f"the {part} is empty, longer than 256 characters, "
                                    "or holds a space, a non-ASCII or a control character",
                                    "apt's auth.conf and netrc take printable ASCII without "
                                    "spaces"))
            return None
    return Login(login, password)


def check_private(path: Path, what: str) -> None:
    """Refuse (exit 2) a secrets file that others could read, naming it and the fix."""
    try:
        st = path.stat()
    except OSError as exc:
        raise InvalidInput(f"{what} {path}: {exc.strerror or exc}", problems=[
            Problem(what, f"{path} cannot be read", "point it at an existing file")]) from exc
    if not stat.S_ISREG(st.st_mode):
        raise InvalidInput(f"{what} {path} is not a regular file",
                           problems=[Problem(what, f"{path} is not a file", "name a file")])
    if st.st_mode & 0o077:
        raise InvalidInput(
            f"{what} {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}): "
            f"nothing was run",
            problems=[Problem(what, f"{path} has mode {stat.S_IMODE(st.st_mode):04o}, "
                              "group or others can read it",
                              f"chmod 600 {path}")])


def _from_file(path: Path, apt_names: list[str], pip_names: list[str],
               apt: dict[str, Login], pip: dict[str, Login],
               problems: list[Problem]) -> Path | None:
    check_private(path, ENV_FILE)
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{ENV_FILE} {path} cannot be read: {exc}") from exc
    if text.lstrip().startswith(VAULT_HEADER):
        return path
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        # the parser's message quotes the offending line, which may hold a secret
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise InvalidInput(f"{ENV_FILE} {path} is not valid YAML{at}", problems=[
            Problem(ENV_FILE, f"{path} is not valid YAML{at}",
                    f"a mapping with {APT_VAR} and/or {PIP_VAR}")]) from None
    if not isinstance(data, Mapping):
        problems.append(Problem(ENV_FILE, f"{path} is not a mapping",
                                f"a mapping with {APT_VAR} and/or {PIP_VAR}"))
        return None
    for key in data:
        if key not in (APT_VAR, PIP_VAR):
            problems.append(Problem(f"{path}: {key}", "unknown key",
                                    f"use {APT_VAR} and {PIP_VAR}"))
    for var, known, target, kind in ((APT_VAR, apt_names, apt, "apt repository"),
                                     (PIP_VAR, pip_names, pip, "pip index host")):
        section = data.get(var) or {}
        if not isinstance(section, Mapping):
            problems.append(Problem(f"{path}: {var}", "is not a mapping",
                                    f"{var}: {{NAME: {{login: ..., password: ...}}}}"))
            continue
        for name, value in section.items():
            where = f"{path}: {var}.{name}"
            if str(name) not in known:
                problems.append(Problem(where, f"no {kind} of the manifest is called {name!r}",
                                        "use one of: " + (", ".join(known) or "(none)")))
                continue
            login = _login(value, where, problems)
            if login is not None:
                target[str(name)] = login
    return None


def load_credentials(manifest: Any, environ: Mapping[str, str] | None = None) -> Credentials:
    """The credentials for `manifest` from the secrets file and the environment (see the
    module docstring). Raises InvalidInput (exit 2) naming the variable or file; never
    includes a secret in a message."""
    env = os.environ if environ is None else environ
    apt_names = apt_repositories(manifest)
    index_host, hosts = pip_hosts(manifest)
    apt: dict[str, Login] = {}
    pip: dict[str, Login] = {}
    problems: list[Problem] = []
    vault: Path | None = None
    secrets_file = env.get(ENV_FILE, "").strip()
    if secrets_file:
        vault = _from_file(Path(secrets_file).expanduser(), apt_names, hosts, apt, pip,
                           problems)
    for name in apt_names:
        var = ENV_APT + env_key(name)
        if env.get(var):
            login = _login(env[var], var, problems)
            if login is not None:
                apt[name] = login
    if env.get(ENV_PIP):  # the index's host; a STACKLOCK_PIP_AUTH_<HOST> below wins
        if index_host is None:
            problems.append(Problem(ENV_PIP, "package_sources.pip.index_url has no host",
                                    "unset it"))
        else:
            login = _login(env[ENV_PIP], ENV_PIP, problems)
            if login is not None:
                pip[index_host] = login
    for host in hosts:
        var = f"{ENV_PIP}_{env_key(host)}"
        if env.get(var):
            login = _login(env[var], var, problems)
            if login is not None:
                pip[host] = login
    known_apt = {ENV_APT + env_key(n) for n in apt_names}
    for var in sorted(env):
        if var.startswith(ENV_APT) and var not in known_apt and env[var]:
            problems.append(Problem(var, "names no apt repository of the manifest",
                                    "use one of: " + (", ".join(sorted(known_apt)) or
                                                      "(the manifest has no apt repository; "
                                                      "unset it)")))
    if problems:
        raise InvalidInput("mirror or index credentials are not usable: nothing was run",
                           problems=problems)
    return Credentials(apt=apt, pip=pip, vault_file=vault)


# --------------------------------------------------------------------------- handing them over


@contextmanager
def private_file(name: str, text: str) -> Iterator[Path]:
    """`text` in a file 0600 inside a fresh 0700 temporary folder, removed on exit."""
    folder = Path(tempfile.mkdtemp(prefix="stacklock-secrets-"))
    path = folder / name
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        yield path
    finally:
        path.unlink(missing_ok=True)
        folder.rmdir()


@contextmanager
def extra_vars_args(creds: Credentials | None) -> Iterator[list[str]]:
    """ansible-playbook arguments that pass `creds` (`-e @FILE`; the file is 0600 in a 0700
    temporary folder and deleted when the block ends); [] without credentials."""
    if creds is None or creds.empty:
        yield []
        return
    args: list[str] = []
    if creds.vault_file is not None:
        args += ["-e", f"@{creds.vault_file}"]
    data = creds.extra_vars()
    if not data:
        yield args
        return
    with private_file("vars.json", json.dumps(data, sort_keys=True)) as path:
        yield [*args, "-e", f"@{path}"]


__all__ = [
    "APT_VAR",
    "ENV_APT",
    "ENV_FILE",
    "ENV_PIP",
    "PIP_VAR",
    "Credentials",
    "Login",
    "apt_repositories",
    "check_private",
    "env_key",
    "extra_vars_args",
    "load_credentials",
    "pip_hosts",
    "private_file",
]
