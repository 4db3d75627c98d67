"""The lab's own CA and client tokens (stacklock.adapters.tls): a node certificate a client can
verify against the CA for the node's lab address, private files 0600 in 0700 folders,
renewal when anything about the certificate changed or its end nears, token rotation."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from stacklock.adapters import tls
from stacklock.errors import InvalidInput

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_node_certificate_verifies_against_the_lab_ca(tmp_path: Path) -> None:
    issued = tls.node_certificate(tmp_path, "dev", "node-1", ["10.213.1.2"], ["node-1"],
                                  project="demo", now=NOW)
    assert issued.changed
    cert = x509.load_pem_x509_certificate(issued.cert.read_bytes())
    ca = x509.load_pem_x509_certificate(issued.ca.read_bytes())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.213.1.2")]
    assert san.get_values_for_type(x509.DNSName) == ["node-1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert issued.not_after == NOW + dt.timedelta(days=tls.NODE_DAYS)
    # what a client does: Python's ssl accepts the pair, the key matches the certificate
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(issued.cert, issued.key)


def test_private_files_are_the_owners_only(tmp_path: Path) -> None:
    issued = tls.node_certificate(tmp_path / "state", "dev", "node-1", ["10.213.1.2"], now=NOW)
    ca_cert, ca_key = tls.ca_paths(tmp_path / "state")
    assert mode(ca_key) == 0o600 and mode(issued.key) == 0o600
    assert mode(ca_cert) == 0o644 and mode(issued.cert) == 0o644
    for folder in (tmp_path / "state", ca_key.parent, issued.key.parent):
        assert mode(folder) == 0o700
    tokens = tls.ensure_token(tmp_path / "state", "dev")
    assert mode(tokens) == 0o600


def test_the_same_node_keeps_its_certificate(tmp_path: Path) -> None:
    first = tls.node_certificate(tmp_path, "dev", "node-1", ["10.213.1.2"], now=NOW)
    data = first.cert.read_bytes()
    again = tls.node_certificate(tmp_path, "dev", "node-1", ["10.213.1.2"],
                                 now=NOW + dt.timedelta(days=30))
    assert not again.changed and again.cert.read_bytes() == data


@pytest.mark.parametrize(("addresses", "days_later"), [
    (["10.213.1.3"], 1),   # the node moved
    (["10.213.1.2"], 61),  # less than a third of its 90 days left
])
def test_a_changed_or_ageing_certificate_is_issued_again(tmp_path: Path, addresses: list[str],
                                                         days_later: int) -> None:
    first = tls.node_certificate(tmp_path, "dev", "node-1", ["10.213.1.2"], now=NOW)
    data = first.cert.read_bytes()
    again = tls.node_certificate(tmp_path, "dev", "node-1", addresses,
                                 now=NOW + dt.timedelta(days=days_later))
    assert again.changed and again.cert.read_bytes() != data


def test_a_new_ca_reissues_every_node(tmp_path: Path) -> None:
    tls.node_certificate(tmp_path, "dev", "node-1", ["10.213.1.2"], now=NOW)
    for path in tls.ca_paths(tmp_path):
        path.unlink()
    again = tls.node_certificate(tmp_path, "dev", "node-1", ["10.213.1.2"], now=NOW)
    assert again.changed
    cert = x509.load_pem_x509_certificate(again.cert.read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(again.ca.read_bytes()))


@pytest.mark.parametrize(("env", "node", "address"), [
    ("../dev", "node-1", "10.213.1.2"), ("dev", "a/b", "10.213.1.2"), ("dev", "n", "node-1")])
def test_names_and_addresses_are_checked(tmp_path: Path, env: str, node: str,
                                         address: str) -> None:
    with pytest.raises(InvalidInput):
        tls.node_certificate(tmp_path, env, node, [address], now=NOW)


def test_token_rotation_adds_then_retires(tmp_path: Path) -> None:
    path = tls.ensure_token(tmp_path, "dev")
    (old,) = tls.read_tokens(path)
    assert tls.TOKEN_RE.match(old) and len(old) == 64
    assert tls.ensure_token(tmp_path, "dev") == path and tls.read_tokens(path) == [old]
    tls.add_token(tmp_path, "dev")
    tokens = tls.read_tokens(path)
    assert len(tokens) == 2 and tokens[0] == old and tokens[1] != old
    tls.retire_token(tmp_path, "dev", keep_newest=1)
    assert tls.read_tokens(path) == [tokens[1]]
    assert mode(path) == 0o600
    with pytest.raises(InvalidInput):
        tls.retire_token(tmp_path, "dev", keep_newest=0)


def test_a_bad_token_line_is_named_never_shown(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    secret = "short-secret-value"
    path.write_text(f"# comment\n{'a' * 40}\n{secret}\n")
    with pytest.raises(InvalidInput) as exc:
        tls.read_tokens(path)
    text = str(exc.value) + " ".join(p.message + p.hint for p in exc.value.problems)
    assert "line 3" in text and secret not in text


def test_the_command_line_prints_no_token(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert tls.main(["token-add", "--dir", str(tmp_path), "--env", "dev"]) == 0
    tls.node_certificate(tmp_path, "dev", "node-1", ["10.213.1.2"], now=NOW)
    assert tls.main(["show", "--dir", str(tmp_path), "--env", "dev"]) == 0
    out = capsys.readouterr().out
    for token in tls.read_tokens(tls.tokens_path(tmp_path, "dev")):
        assert token not in out
    assert "2 token(s)" in out and "10.213.1.2" in out
