"""The grammar of every manifest string that reaches a generated file.

Pure functions: each returns the value when it is valid and raises ValueError with a message
a user can act on when not. The manifest's validators call them; the writers escape anyway
(defence in depth), but nothing that fails here ever reaches Terraform, Ansible, apt,
systemd, TorchServe's config.properties or an SSH command line.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any
from urllib.parse import urlsplit

#: characters that end or break a line, or are invisible, in any of the output formats
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff]")
#: what Terraform (`${`, `%{`) and Jinja/Ansible (`{{`, `{%`, `{#`) would evaluate
TEMPLATE_MARKERS = ("${", "%{", "{{", "{%", "{#")
MAX_STRING = 4096


def text_problem(value: str) -> str | None:
    """Why a manifest string can never be written safely (None: it can)."""
    if len(value) > MAX_STRING:
        return f"is {len(value)} characters long; at most {MAX_STRING}"
    bad = CONTROL.search(value)
    if bad:
        return (f"contains the control character {bad.group()!r}: no newlines, tabs or other "
                "control characters in any manifest value")
    for marker in TEMPLATE_MARKERS:
        if marker in value:
            return (f"contains {marker!r}, which Terraform or Ansible would evaluate as a "
                    "template expression")
    return None


# --------------------------------------------------------------------------- hosts

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def ip_canonical(value: str) -> str:
    """An IPv4 address in dotted-quad form, or an IPv6 address in its RFC 5952 form."""
    if "%" in value:
        raise ValueError(f"{value!r}: an IPv6 zone index (%...) is not allowed")
    try:
        ip = ipaddress.ip_address(value)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an IP address ({exc})") from None
    canonical = ip.compressed
    if value != canonical:
        raise ValueError(f"{value!r} is not in canonical form; write {canonical!r}")
    return value


def hostname(value: str) -> str:
    """An RFC 1123 host name: lowercase labels of letters, digits and '-', not all-numeric last."""
    if not value or len(value) > 253:
        raise ValueError(f"{value!r} is not a host name (1-253 characters)")
    labels = value.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(
            f"{value!r} is not a host name: lowercase labels of letters, digits and '-' "
            "(not at either end), separated by '.'")
    if labels[-1].isdigit() or re.fullmatch(r"0x[0-9a-f]*", labels[-1]):
        raise ValueError(
            f"{value!r} looks like a numeric address, not a host name; write an IPv4 address "
            "as four decimal numbers without leading zeros (198.51.100.11)")
    return value


def host(value: str) -> str:
    """A host name or an IP address, each in its one canonical form."""
    if ":" in value or re.fullmatch(r"[0-9.]+", value):
        return ip_canonical(value)
    return hostname(value)


def normal_host(value: str) -> str:
    """The form two spellings of one host share (for duplicate checks)."""
    try:
        return ipaddress.ip_address(value).compressed
    except ValueError:
        return value.strip().rstrip(".").casefold()


def port(value: str) -> int:
    if not re.fullmatch(r"[1-9][0-9]{0,4}", value) or int(value) > 65535:
        raise ValueError(f"{value!r} is not a port number (1-65535)")
    return int(value)


# --------------------------------------------------------------------------- SSH

_SSH_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


def ssh_user(value: str) -> str:
    if not _SSH_USER.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a login name: up to 32 lowercase letters, digits, '_' and '-', "
            "starting with a letter or '_'")
    return value


def bastion(value: str) -> str:
    """`user@host[:port]` (IPv6: `user@[addr]:port`), nothing else reaches ssh's command line."""
    m = re.fullmatch(r"([^@]*)@(\[[^\]]*\]|[^:\[\]]*)(?::([^:]*))?", value)
    if not m:
        raise ValueError(f"{value!r} is not a jump host of the form user@host[:port]")
    user, where, port_text = m.groups()
    ssh_user(user)
    host(where[1:-1]) if where.startswith("[") else hostname_or_ipv4(where)
    if port_text is not None:
        port(port_text)
    return value


def hostname_or_ipv4(value: str) -> str:
    if ":" in value:
        raise ValueError(f"{value!r}: write an IPv6 address in brackets, [2001:db8::1]")
    return host(value)


# --------------------------------------------------------------------------- apt

_APT_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+")
# Debian policy 5.6.12: [epoch:]upstream[-rev] (also what lock.py checks every apt pin against)
DEBIAN_VERSION = re.compile(
    r"(?:[0-9]+:)?[0-9][A-Za-z0-9.+~]*(?:-[A-Za-z0-9.+~-]*[A-Za-z0-9.+~])?")
_SUITE = re.compile(r"[A-Za-z0-9._~+-]+(?:/[A-Za-z0-9._~+-]*)*/?|\./")
_COMPONENT = re.compile(r"[A-Za-z0-9._+-]+(?:/[A-Za-z0-9._+-]+)?")


def apt_package(value: str) -> str:
    if not _APT_PACKAGE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a Debian package name: lowercase letters, digits, '+', '-' "
            "and '.', at least 2, starting with a letter or digit")
    return value


def debian_version(value: str) -> str:
    if not DEBIAN_VERSION.fullmatch(value):
        raise ValueError(
            f"{value!r} is not one exact Debian version ([epoch:]upstream[-revision], "
            "starting with a digit; no wildcards, spaces or operators)")
    return value


def debian_upstream(value: str) -> str:
    """`5:28.5.1-1~ubuntu.24.04~noble` -> `28.5.1`: the release a Debian version installs."""
    no_epoch = value.split(":", 1)[1] if re.match(r"[0-9]+:", value) else value
    upstream = no_epoch.rsplit("-", 1)[0] if "-" in no_epoch else no_epoch
    m = re.match(r"[0-9]+(?:\.[0-9]+)*", upstream)
    return m.group() if m else upstream


def apt_suite(value: str) -> str:
    if not _SUITE.fullmatch(value) or ".." in value.split("/"):
        raise ValueError(
            f"{value!r} is not an apt suite: letters, digits, '.', '_', '-', '~', '+' and '/' "
            "(a flat repository: './')")
    return value


def apt_component(value: str) -> str:
    if not _COMPONENT.fullmatch(value):
        raise ValueError(
            f"{value!r} is not an apt component: letters, digits, '.', '_', '+' and '-'")
    return value


# --------------------------------------------------------------------------- URLs and paths

_URL_CHARS = re.compile(r"[A-Za-z0-9\-._~:/?\[\]@!$&*+,;=%]+")


def url(value: str, schemes: tuple[str, ...] = ("http", "https")) -> str:
    """An http(s) URL with a valid host, no credentials, no whitespace, no template markers."""
    problem = text_problem(value)
    if problem:
        raise ValueError(f"the URL {problem}")
    if not _URL_CHARS.fullmatch(value):
        bad = sorted({c for c in value if not _URL_CHARS.fullmatch(c)})
        raise ValueError(
            f"{value!r} is not a URL: it contains {''.join(bad)!r}; percent-encode such "
            "characters (a space is %20)")
    if re.search(r"%(?![0-9A-Fa-f]{2})", value):
        raise ValueError(f"{value!r}: '%' must start a percent-encoding such as %20")
    parts = urlsplit(value)
    if parts.scheme not in schemes:
        raise ValueError(f"{value!r}: use a {' or '.join(s + '://' for s in schemes)} URL")
    if "@" in parts.netloc:
        raise ValueError(
            "the URL carries credentials (user:password@); remove them: mirror and index "
            "credentials come from the environment or the tools' auth files (apt auth.conf.d, "
            "pip config), never from the manifest")
    where = parts.netloc
    m = re.fullmatch(r"(\[[^\]]*\]|[^:\[\]]+)(?::([^:]*))?", where)
    if not m:
        raise ValueError(f"{value!r} has no valid host")
    name, port_text = m.groups()
    host(name[1:-1]) if name.startswith("[") else hostname_or_ipv4(name)
    if port_text is not None:
        port(port_text)
    if parts.fragment:
        raise ValueError(f"{value!r}: a URL here has no #fragment")
    return value


_PATH = re.compile(r"[A-Za-z0-9._+@~-][A-Za-z0-9._+@~/-]*")


def path(value: str) -> str:
    """A file path of letters, digits and `._+@~-/`: nothing a shell, YAML or HCL reads."""
    if not _PATH.fullmatch(value.lstrip("/")) and value != "/":
        raise ValueError(
            f"{value!r} is not a plain path: letters, digits, '.', '_', '+', '@', '~', '-' and '/'")
    return value


def url_or_path(value: str) -> str:
    return url(value, ("http", "https", "file")) if "://" in value else path(value)


def trusted_host(value: str) -> str:
    """pip's --trusted-host: host or host:port."""
    m = re.fullmatch(r"(\[[^\]]*\]|[^:\[\]]+)(?::([^:]*))?", value)
    if not m:
        raise ValueError(f"{value!r} is not host or host:port")
    name, port_text = m.groups()
    host(name[1:-1]) if name.startswith("[") else hostname_or_ipv4(name)
    if port_text is not None:
        port(port_text)
    return value


# --------------------------------------------------------------------------- AWS, Docker

_AZ = re.compile(r"[a-z]{2}(?:-gov)?-[a-z]+-[0-9][a-z]")
_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=@-]{0,254}")
_AMI_NAME = re.compile(r"[A-Za-z0-9()\[\]./'@_ -]{3,128}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")

_COMP = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DLABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN = rf"(?:{_DLABEL}(?:\.{_DLABEL})*(?::[0-9]+)?/)"
_IMAGE = re.compile(
    rf"(?P<repo>{_DOMAIN}?{_COMP}(?:/{_COMP})*)(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?")


def availability_zone(value: str) -> str:
    if not _AZ.fullmatch(value):
        raise ValueError(f"{value!r} is not an AWS availability zone name like us-east-1a")
    return value


def key_name(value: str) -> str:
    if not _KEY_NAME.fullmatch(value):
        raise ValueError(
            f"{value!r} is not an EC2 key pair name stacklock accepts: letters, digits and "
            "'._+=@-', starting with a letter or digit, at most 255")
    return value


def ami_name(value: str) -> str:
    if not _AMI_NAME.fullmatch(value):
        raise ValueError(
            f"{value!r} is not an AMI name: 3-128 letters, digits, spaces and ()[]./'@_-")
    return value


def bucket(value: str) -> str:
    if not _BUCKET.fullmatch(value) or ".." in value:
        raise ValueError(f"{value!r} is not an S3 bucket name (3-63 lowercase letters, "
                         "digits, '.' and '-')")
    return value


def docker_image(value: str) -> str:
    """A Docker image reference with an explicit tag (not `latest`) or a digest."""
    m = _IMAGE.fullmatch(value)
    if not m or len(value) > 255:
        raise ValueError(f"{value!r} is not a Docker image reference like stacklock-lab:bookworm")
    if m.group("tag") is None and m.group("digest") is None:
        raise ValueError(f"{value!r} has no tag: pin an explicit tag (not latest) or a digest")
    if m.group("tag") == "latest":
        raise ValueError(f"{value!r}: 'latest' is not a pin; use an explicit tag or a digest")
    return value


# --------------------------------------------------------------------------- regexes

MAX_REGEX = 512
MAX_REPEAT_COUNT = 1000
MAX_UNBOUNDED = 4


def _walk(items: Any, depth: int = 0) -> list[tuple[str, Any, int]]:
    """(opcode name, argument, depth) of every node of a parsed regex, iteratively."""
    out: list[tuple[str, Any, int]] = []
    stack: list[tuple[Any, int]] = [(items, depth)]
    while stack:
        seq, d = stack.pop()
        for op, arg in seq:
            name = str(op)
            out.append((name, arg, d))
            if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
                stack.append((arg[2], d + 1))
            elif name == "SUBPATTERN":
                stack.append((arg[-1], d))
            elif name == "BRANCH":
                for sub in arg[1]:
                    stack.append((sub, d))
            elif name in ("ASSERT", "ASSERT_NOT"):
                stack.append((arg[1], d))
            elif name == "GROUPREF_EXISTS":
                stack.append((arg[1], d))
                if arg[2] is not None:
                    stack.append((arg[2], d))
    return out


def _risky_repeat(seq: Any) -> str | None:
    """A repeat whose body can itself match in several ways: nested quantifier, alternation."""
    for op, arg in seq:
        name = str(op)
        if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            _lo, hi, body = arg
            if hi is not None and hi > 1:
                inner = {n for n, _a, _d in _walk(body)}
                if inner & {"MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"}:
                    return "a quantified group that contains another quantifier, like (a+)+"
                if "BRANCH" in inner or "GROUPREF" in inner:
                    return "a quantified group that contains an alternation, like (a|ab)*"
            found = _risky_repeat(body)
            if found:
                return found
        elif name == "SUBPATTERN":
            found = _risky_repeat(arg[-1])
            if found:
                return found
        elif name == "BRANCH":
            for sub in arg[1]:
                found = _risky_repeat(sub)
                if found:
                    return found
    return None


def url_regex(value: str) -> str:
    """A regex for TorchServe's allowed_urls that compiles, is bounded and cannot backtrack
    catastrophically (TorchServe matches it, and `validate` probes it)."""
    import importlib

    sre_parse: Any = importlib.import_module("re._parser")  # the stdlib's parser (3.11+)

    if not value.isascii():
        raise ValueError("the regex holds non-ASCII characters; write them as \\uXXXX")
    if len(value) > MAX_REGEX:
        raise ValueError(f"the regex is {len(value)} characters long; at most {MAX_REGEX}")
    if "," in value:
        raise ValueError(
            "contains ',': TorchServe splits allowed_urls on commas, so one entry would "
            "become several; write each regex as its own list item (use \\x2c for a comma)")
    for m in re.finditer(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}", value):
        for count in m.groups():
            if count and (len(count) > 4 or int(count) > MAX_REPEAT_COUNT):
                raise ValueError(
                    f"repetition count {count} is too large (at most {MAX_REPEAT_COUNT})")
    try:
        parsed = sre_parse.parse(value)
        re.compile(value)
    except (re.error, OverflowError, RecursionError, ValueError, MemoryError) as exc:
        raise ValueError(f"{value!r} is not a valid regular expression: {exc}") from None
    for name, arg, _depth in _walk(list(parsed)):
        if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            lo, hi = arg[0], arg[1]
            if lo > MAX_REPEAT_COUNT or (hi != sre_parse.MAXREPEAT and hi > MAX_REPEAT_COUNT):
                raise ValueError(f"a repetition count is too large (at most {MAX_REPEAT_COUNT})")
    risky = _risky_repeat(list(parsed))
    if risky:
        raise ValueError(
            f"{value!r} risks catastrophic backtracking: {risky}; write a simpler regex, "
            r"e.g. https://models\.example\.com/.*")
    unbounded = sum(1 for name, _a, _d in _walk(list(parsed))
                    if name in ("MAX_REPEAT", "MIN_REPEAT") and _a[1] > 1)
    if unbounded > MAX_UNBOUNDED:
        raise ValueError(
            f"{value!r} has {unbounded} repeated parts; at most {MAX_UNBOUNDED} (each one "
            "multiplies the work of matching)")
    return value


# --------------------------------------------------------------------------- diff globs

_NAME_GLOB = re.compile(r"[A-Za-z0-9._+:*?\[\]!/-]{1,256}")


def name_glob(value: str) -> str:
    """A glob of component or package names (`parity.diff_ignore`): `os.kernel`,
    `linux-image-*`, `pip.nvidia-*`; letters, digits and `._+:-/` with `*`, `?`, `[...]`."""
    if not _NAME_GLOB.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a glob of names: 1 to 256 of letters, digits, '._+:-/' and the "
            "wildcards '*', '?', '[...]'; no spaces")
    if value.count("[") != value.count("]"):
        raise ValueError(f"{value!r} has an unbalanced '[' or ']'")
    return value
