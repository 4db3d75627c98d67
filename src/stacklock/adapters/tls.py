"""The lab's own certificate authority and client tokens, on the controller (docs/serving.md).

The lab has no public name and no site CA, so it makes its own: an ECDSA P-256 CA created on
first use, kept with everything else secret in the lab's private state folder
(`<output_dir>/.stacklock/endpoint/`, which `.gitignore` keeps out of git):

    ca/ca.key                 the CA's private key            0600
    ca/ca.pem                 the CA certificate (clients trust it: curl --cacert)
    ENV/NODE.key              a node's private key            0600
    ENV/NODE.pem              its certificate, for its lab address (IP SAN) and name
    ENV/tokens                the clients' bearer tokens, one per line      0600
    _metrics/tokens           the lab's scrape token (/metrics; Prometheus)  0600

Every folder is 0700. `node_certificate` issues a node's certificate when it has none, when
its addresses changed, when the CA changed or when less than a third of its lifetime is left,
so running the role again renews it; `add_token` and `retire_token` rotate the clients'
tokens (several are valid at once: add, move the clients, retire). Nothing here prints or logs
a key or a token.

    python -m stacklock.adapters.tls token-add    --dir DIR --env ENV   # prints nothing secret
    python -m stacklock.adapters.tls token-retire --dir DIR --env ENV --keep-newest 1
    python -m stacklock.adapters.tls show         --dir DIR --env ENV   # paths and expiry
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import ipaddress
import os
import re
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from stacklock.errors import InvalidInput, Problem

#: the CA lives this long; node certificates `NODE_DAYS` (renewed with a third left)
CA_DAYS = 3650
NODE_DAYS = 90
#: a token: 64 lowercase hex digits (256 bits); nginx compares them case-insensitively, so
#: hex loses nothing
TOKEN_BYTES = 32
#: what a token may hold (nginx map keys, an Authorization header): no quotes, spaces or ';'
TOKEN_RE = re.compile(r"^[A-Za-z0-9._~+/=-]{32,128}$")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class NodeCert:
    cert: Path
    key: Path
    ca: Path
    changed: bool
    not_after: _dt.datetime


# --------------------------------------------------------------------------- private files


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def _write(path: Path, data: bytes, mode: int) -> None:
    """`data` into `path` atomically, created with `mode` (never readable by others first)."""
    _private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _name(value: str, what: str) -> str:
    if not _NAME.match(value):
        raise InvalidInput(f"{what} {value!r} cannot name a file of the lab's endpoint state",
                           problems=[Problem(what, f"{value!r}: letters, digits, '.', '_', '-'",
                                             "use the inventory's name")])
    return value


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


# --------------------------------------------------------------------------- the CA


def ca_paths(state_dir: Path) -> tuple[Path, Path]:
    return state_dir / "ca" / "ca.pem", state_dir / "ca" / "ca.key"


def ensure_ca(state_dir: Path, project: str = "stacklock", now: _dt.datetime | None = None
              ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, bool]:
    """The lab CA (made on first use); True when it was made now."""
    cert_path, key_path = ca_paths(_private_dir(state_dir))
    if cert_path.is_file() and key_path.is_file():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return x509.load_pem_x509_certificate(cert_path.read_bytes()), key, False
    now = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "stacklock lab"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"{project} lab CA")])
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(minutes=5))
            .not_valid_after(now + _dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    _write(key_path, _key_pem(key), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert, key, True


# --------------------------------------------------------------------------- node certificates


def _sans(addresses: list[str], names: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for a in addresses:
        out.append(x509.IPAddress(ipaddress.ip_address(a)))
    for n in names:
        out.append(x509.DNSName(n))
    return out


def _san_text(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return sorted([str(v) for v in ext.get_values_for_type(x509.IPAddress)]
                  + list(ext.get_values_for_type(x509.DNSName)))


def _current(cert_path: Path, key_path: Path, ca: x509.Certificate, want: list[str],
             now: _dt.datetime) -> x509.Certificate | None:
    """The node's certificate when it can stay: issued by this CA for exactly these names,
    its key there, and more than a third of its lifetime left."""
    if not (cert_path.is_file() and key_path.is_file()):
        return None
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError:
        return None
    if cert.issuer != ca.subject or _san_text(cert) != want:
        return None
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):  # another CA of the same name
        return None
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    if cert.not_valid_after_utc - now < life / 3:
        return None
    return cert


def node_certificate(state_dir: Path, environment: str, node: str, addresses: list[str],
                     names: list[str] | None = None, *, project: str = "stacklock",
                     now: _dt.datetime | None = None, days: int = NODE_DAYS) -> NodeCert:
    """The certificate of lab node `node` for its `addresses` (IP SANs) and `names` (DNS
    SANs), issued by the lab CA; issued again when anything about it changed or it nears
    its end. Its key is written 0600."""
    env_dir = state_dir / _name(environment, "environment")
    node = _name(node, "node")
    for a in addresses:
        try:
            ipaddress.ip_address(a)
        except ValueError:
            raise InvalidInput(f"{a!r} is not an IP address", problems=[Problem(
                "address", f"{a!r} is not the node's IP address", "pass ansible_host")]) from None
    names = sorted(set(names or []))
    now = now or _now()
    ca, ca_key, _made = ensure_ca(state_dir, project, now)
    cert_path, key_path = env_dir / f"{node}.pem", env_dir / f"{node}.key"
    want = sorted([str(ipaddress.ip_address(a)) for a in addresses] + names)
    current = _current(cert_path, key_path, ca, want, now)
    if current is not None:
        return NodeCert(cert_path, key_path, ca_paths(state_dir)[0], False,
                        current.not_valid_after_utc)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "stacklock lab"),
                         x509.NameAttribute(NameOID.COMMON_NAME, f"{environment} {node}")])
    not_after = now + _dt.timedelta(days=days)
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(minutes=5))
            .not_valid_after(min(not_after, ca.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(_sans(addresses, names)), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write(key_path, _key_pem(key), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return NodeCert(cert_path, key_path, ca_paths(state_dir)[0], True, cert.not_valid_after_utc)


# --------------------------------------------------------------------------- client tokens


def tokens_path(state_dir: Path, environment: str) -> Path:
    return _private_dir(state_dir) / _name(environment, "environment") / "tokens"


def read_tokens(path: Path) -> list[str]:
    """The tokens of a token file (one per line; blank lines and `#` comments skipped);
    InvalidInput naming the line (never the token) when one is not a token."""
    out: list[str] = []
    for i, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if not TOKEN_RE.match(text):
            raise InvalidInput(f"{path}: line {i} is not a token", problems=[Problem(
                str(path), f"line {i}: a token is 32-128 characters of A-Z a-z 0-9 . _ ~ + / = -",
                "generate one: openssl rand -hex 32")])
        if text not in out:
            out.append(text)
    return out


def ensure_token(state_dir: Path, environment: str) -> Path:
    """The environment's token file, with one fresh token when it has none."""
    path = tokens_path(state_dir, environment)
    if not path.is_file() or not read_tokens(path):
        _write(path, (secrets.token_hex(TOKEN_BYTES) + "\n").encode(), 0o600)
    return path


def scrape_tokens_path(state_dir: Path) -> Path:
    """The lab's scrape tokens (one for every environment: the lab has one Prometheus). Not
    an environment's folder: environment names cannot start with `_`."""
    return _private_dir(state_dir / "_metrics") / "tokens"


def ensure_scrape_token(state_dir: Path) -> Path:
    """The lab's scrape token file (endpoint.metrics.tokens.lab), with one fresh token when it
    has none; Prometheus reads it (`authorization: credentials_file`)."""
    path = scrape_tokens_path(state_dir)
    if not path.is_file() or not read_tokens(path):
        _write(path, (secrets.token_hex(TOKEN_BYTES) + "\n").encode(), 0o600)
    return path


def add_token(state_dir: Path, environment: str) -> Path:
    """Rotation, step 1: a new token beside the old ones (both valid once configured)."""
    path = ensure_token(state_dir, environment)
    tokens = [*read_tokens(path), secrets.token_hex(TOKEN_BYTES)]
    _write(path, ("\n".join(tokens) + "\n").encode(), 0o600)
    return path


def retire_token(state_dir: Path, environment: str, keep_newest: int = 1) -> Path:
    """Rotation, step 3: keep only the newest `keep_newest` tokens (the old ones are refused
    once configured)."""
    path = tokens_path(state_dir, environment)
    tokens = read_tokens(path) if path.is_file() else []
    if keep_newest < 1 or not tokens:
        raise InvalidInput("a token file keeps at least one token", problems=[Problem(
            str(path), "nothing would be left", "keep at least the newest token")])
    _write(path, ("\n".join(tokens[-keep_newest:]) + "\n").encode(), 0o600)
    return path


# --------------------------------------------------------------------------- the client's path
# verify, from the controller (docs/verify.md): what a client of the endpoint sees. A TLS
# handshake to the node's address and port, the served certificate judged by
# `stacklock.core.endpoint`, and each model's smoke test through the endpoint with a client
# token. The result is a facts section (`endpoint_client`) the one comparison turns into checks;
# it never holds a token.

#: the controller's expectation of a node's endpoint, from the host's (templated) variables
CLIENT_VARS = ("serving_endpoint_enabled", "serving_endpoint_port",
               "serving_endpoint_tls_source", "serving_endpoint_tls_cert_src",
               "serving_endpoint_tls_secret", "serving_endpoint_tls_ca_src",
               "serving_endpoint_tokens_source", "serving_endpoint_tokens_src",
               "serving_endpoint_tokens_secret", "serving_endpoint_lab_dir",
               "serving_endpoint_certificate_min_days", "torchserve_models", "ansible_host",
               "inventory_hostname", "stacklock_environment")


def _pem_certs(data: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        return []


def served_certificate(address: str, port: int, timeout: float,
                       cafile: str | None = None) -> tuple[bytes, str | None]:
    """The leaf certificate (DER) the endpoint serves, and why a client that trusts `cafile`
    (None: the system's store) would refuse its chain (None: it would not). The name is judged
    apart (`core.endpoint`). OSError when the handshake cannot be made."""
    import socket
    import ssl

    plain = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    plain.check_hostname = False
    plain.verify_mode = ssl.CERT_NONE
    with socket.create_connection((address, port), timeout=timeout) as sock, \
            plain.wrap_socket(sock) as tls_sock:
        der = tls_sock.getpeercert(binary_form=True)
    if not der:
        raise OSError("the endpoint served no certificate")
    trusting = ssl.create_default_context(cafile=cafile)
    trusting.check_hostname = False
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock, \
            trusting.wrap_socket(sock):
            return der, None
    except ssl.SSLCertVerificationError as exc:
        return der, str(exc.verify_message or exc.reason or exc)


def _post(url: str, body: bytes, content_type: str, token: str,
          timeout: float) -> tuple[int, bytes]:
    import ssl
    import urllib.error
    import urllib.request

    # the certificate has checks of its own (chain, expiry, name, sha256): this asks whether
    # the token and the model answer through the endpoint, whatever the certificate
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPSHandler(context=ctx))
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": content_type, "Authorization": f"Bearer {token}"})
    try:
        with opener.open(req, timeout=timeout) as resp:
            return int(resp.status), resp.read(1 << 20)
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read(4096)


def client_check(hv: Mapping[str, Any], *, timeout: float = 20,
                 now: _dt.datetime | None = None) -> dict[str, Any]:
    """The `endpoint_client` facts section of one node (`hv`: its variables, templated; only
    `CLIENT_VARS` are read, secrets of the secret store by the names they give)."""
    import ssl

    from stacklock.core import endpoint as judge
    from stacklock.core import parity

    address = str(hv.get("ansible_host") or hv.get("inventory_hostname") or "")
    port = int(hv.get("serving_endpoint_port") or 443)
    env = str(hv.get("stacklock_environment") or "")
    node = str(hv.get("inventory_hostname") or address)
    source = str(hv.get("serving_endpoint_tls_source") or "files")
    lab_dir = Path(str(hv.get("serving_endpoint_lab_dir") or "."))
    models = [m for m in hv.get("torchserve_models") or [] if isinstance(m, Mapping)]
    url = f"https://{address}:{port}"
    section: dict[str, Any] = {"url": url, "checks": []}
    # what clients trust, and the certificate the controller configured
    cafile: str | None = str(hv.get("serving_endpoint_tls_ca_src") or "") or None
    trust = f"the CA in {cafile}" if cafile else "the system's trust store"
    configured: bytes | None = None
    why_unknown = ""
    try:
        if source == "lab_ca":
            if cafile is None:
                cafile = str(ca_paths(lab_dir)[0])
                trust = f"the lab CA ({cafile})"
            configured = (lab_dir / _name(env, "environment") / f"{_name(node, 'node')}.pem"
                          ).read_bytes()
        elif source == "files":
            configured = Path(str(hv.get("serving_endpoint_tls_cert_src"))).read_bytes()
        elif source == "secret":
            value = hv.get(str(hv.get("serving_endpoint_tls_secret") or ""))
            if isinstance(value, Mapping) and value.get("cert"):
                configured = str(value["cert"]).encode()
            else:
                why_unknown = (f"the secret store has no {hv.get('serving_endpoint_tls_secret')}"
                               " with a cert (run verify as configure runs, with the secrets)")
    except (OSError, InvalidInput) as exc:
        why_unknown = f"the configured certificate cannot be read on the controller: {exc}"
    certs = _pem_certs(configured) if configured is not None else []
    if configured is not None and not certs:
        why_unknown = why_unknown or "the configured certificate is not PEM"
    expected_sha = certs[0].fingerprint(hashes.SHA256()).hex() if certs else None
    smoke = [m for m in models if isinstance(m.get("smoke"), Mapping)]
    components = [*judge.CERTIFICATE_COMPONENTS,
                  *(f"endpoint.smoke.{m['name']}" for m in smoke)]
    section["components"] = components
    try:
        der, chain_error = served_certificate(address, port, timeout, cafile)
    except ConnectionRefusedError as exc:
        # the node answered: nothing listens on the port (nginx stopped) -- a value read
        section["refused"] = f"not answering: {exc.strerror or exc}"
        return section
    except ssl.SSLError as exc:  # something answered, but no TLS handshake
        section["refused"] = f"no TLS handshake: {exc.reason or exc}"
        return section
    except (OSError, ValueError) as exc:  # timeout, no route, a TLS failure
        section["error"] = f"TLS to {address}:{port}: {exc}"
        return section
    section["checks"] += judge.certificate_checks(
        x509.load_der_x509_certificate(der), chain_error=chain_error, trust=trust,
        address=address, expected_sha256=expected_sha, why_unknown=why_unknown,
        min_days=int(hv.get("serving_endpoint_certificate_min_days") or 0),
        now=now or _now())
    # each model's smoke test through the endpoint, as a client calls it (the model's name,
    # no version: the endpoint serves the locked one) with a client token
    token, why_no_token = _client_token(hv, lab_dir, env)
    for m in smoke:
        spec = m["smoke"]
        comp = f"endpoint.smoke.{m['name']}"
        want = parity.smoke_expectation(spec)
        if token is None:
            section["checks"].append(judge.check(comp, want, None, "could-not-look",
                                                 why_no_token))
            continue
        try:
            body = base64.b64decode(str(spec.get("input_base64") or ""), validate=True)
        except ValueError:
            section["checks"].append(judge.check(comp, want, None, "could-not-look",
                                                 f"the smoke input of {m['name']} is not base64"))
            continue
        try:
            status, answer = _post(f"{url}/predictions/{m['name']}", body,
                                   str(spec.get("content_type") or "application/json"), token,
                                   timeout)
        except (OSError, ValueError) as exc:
            section["checks"].append(judge.check(comp, want, None, "could-not-look",
                                                 f"POST {url}/predictions/{m['name']}: {exc}"))
            continue
        got = judge.smoke_answer(status, answer, "sha256" if spec.get("sha256") else "numbers")
        ok = parity.smoke_matches(want, got)
        section["checks"].append(judge.check(
            comp, want, got, "match" if ok else "deviation",
            "" if ok else f"POST {url}/predictions/{m['name']} with a client token"))
    return section


def _client_token(hv: Mapping[str, Any], lab_dir: Path, env: str) -> tuple[str | None, str]:
    """A client token of the environment (the newest), or None and why."""
    source = str(hv.get("serving_endpoint_tokens_source") or "file")
    try:
        if source == "lab":
            tokens = read_tokens(tokens_path(lab_dir, env))
        elif source == "file":
            tokens = read_tokens(Path(str(hv.get("serving_endpoint_tokens_src"))))
        else:
            value = hv.get(str(hv.get("serving_endpoint_tokens_secret") or ""))
            tokens = [str(t) for t in value] if isinstance(value, list) else []
    except (OSError, InvalidInput) as exc:
        return None, f"no client token on the controller: {exc}"
    if not tokens:
        return None, "no client token on the controller (the token source is empty)"
    return tokens[-1], ""


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stacklock.adapters.tls",
                                     description="the lab's endpoint CA and client tokens")
    parser.add_argument("command", choices=("token-add", "token-retire", "show"))
    parser.add_argument("--dir", required=True, type=Path,
                        help="the lab's endpoint state (<output_dir>/.stacklock/endpoint)")
    parser.add_argument("--env", required=True, help="the lab environment")
    parser.add_argument("--keep-newest", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        if args.command == "token-add":
            path = add_token(args.dir, args.env)
            print(f"{path}: {len(read_tokens(path))} token(s); the newest is the last line. "
                  f"Configure the environment (stacklock configure {args.env} --force), then "
                  "move the clients to it")
        elif args.command == "token-retire":
            path = retire_token(args.dir, args.env, args.keep_newest)
            print(f"{path}: {len(read_tokens(path))} token(s) left. Configure the environment "
                  f"(stacklock configure {args.env} --force): the others are refused then")
        else:
            cert, _key = ca_paths(args.dir)
            print(f"CA certificate: {cert}")
            env_dir = args.dir / _name(args.env, "environment")
            for pem in sorted(env_dir.glob("*.pem")):
                c = x509.load_pem_x509_certificate(pem.read_bytes())
                print(f"{pem}: {', '.join(_san_text(c))}, until "
                      f"{c.not_valid_after_utc.isoformat()}")
            tokens = tokens_path(args.dir, args.env)
            if tokens.is_file():
                print(f"tokens: {tokens} ({len(read_tokens(tokens))})")
    except InvalidInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["CA_DAYS", "CLIENT_VARS", "NODE_DAYS", "TOKEN_RE", "NodeCert", "add_token", "ca_paths",
           "client_check", "ensure_ca", "ensure_scrape_token", "ensure_token", "node_certificate",
           "read_tokens", "retire_token", "scrape_tokens_path", "served_certificate",
           "tokens_path"]
