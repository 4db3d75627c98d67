"""Host keys: OpenSSH public key lines, known_hosts, fingerprints, the re-trust hint, the
manifest's `host_key`, and `stacklock trust`'s decisions (without a network)."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stacklock.core import hostkeys
from stacklock.core.hostkeys import Entry, HostKeyError, PublicKey
from stacklock.core.manifest import parse_manifest
from stacklock.errors import InvalidInput

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
GOLDEN = ROOT / "tests" / "golden" / "static-lab" / "manifest.yaml"

needs_keygen = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="no ssh-keygen")


def keygen(tmp: Path, kind: str = "ed25519", name: str = "key") -> tuple[str, str]:
    """A fresh key pair made by ssh-keygen: (public key line, `ssh-keygen -lf` output)."""
    path = tmp / name
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "test@host", "-f", str(path)],
                   check=True)
    listed = subprocess.run(["ssh-keygen", "-lf", f"{path}.pub"], check=True,
                            capture_output=True, text=True).stdout
    return (tmp / f"{name}.pub").read_text().strip(), listed


@needs_keygen
@pytest.mark.parametrize("kind", ["ed25519", "ecdsa", "rsa"])
def test_fingerprint_is_ssh_keygens(tmp_path: Path, kind: str) -> None:
    line, listed = keygen(tmp_path, kind)
    key = hostkeys.parse_public_key(line)
    assert key.comment == "test@host"
    assert key.fingerprint == listed.split()[1]
    assert key.fingerprint.startswith("SHA256:") and not key.fingerprint.endswith("=")


@needs_keygen
def test_known_hosts_round_trip_and_ssh_keygen_reads_it(tmp_path: Path) -> None:
    line, listed = keygen(tmp_path)
    key = hostkeys.parse_public_key(line)
    entries = [Entry(hostkeys.host_pattern("10.0.0.5"), key),
               Entry(hostkeys.host_pattern("gpu-b.example", 2222), key)]
    text = hostkeys.format_known_hosts("prod", entries)
    assert "[gpu-b.example]:2222 ssh-ed25519 " in text
    assert text.startswith("# SSH host keys trusted for environment prod")
    assert hostkeys.parse_known_hosts(text) == sorted(entries, key=lambda e: e.pattern)
    known = tmp_path / "known_hosts"
    known.write_text(text)
    for host in ("10.0.0.5", "[gpu-b.example]:2222"):
        found = subprocess.run(["ssh-keygen", "-F", host, "-f", str(known)],
                               capture_output=True, text=True, check=False)
        assert found.returncode == 0, found.stderr
    assert hostkeys.fingerprint(key) == listed.split()[1]


def test_patterns() -> None:
    assert hostkeys.host_pattern("10.0.0.5", 22) == "10.0.0.5"
    assert hostkeys.host_pattern("10.0.0.5", 2222) == "[10.0.0.5]:2222"
    assert hostkeys.split_pattern("[10.0.0.5]:2222") == ("10.0.0.5", 2222)
    assert hostkeys.split_pattern("gpu-a") == ("gpu-a", 22)


def _ed25519_line() -> str:
    blob = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(range(32))
    return "ssh-ed25519 " + base64.b64encode(blob).decode()


@pytest.mark.parametrize(("text", "why"), [
    ("ssh-dss AAAAB3NzaC1kc3MAAACBAP", "key type"),
    ("ssh-ed25519", "TYPE BASE64"),
    ("ssh-ed25519 not*base64", "not base64"),
    ("ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAABAQ==", "not a ssh-ed25519 key"),
    (_ed25519_line() + "\nssh-ed25519 AAAA", "single line"),
    (_ed25519_line() + " comment\x1b[2J", "control characters"),
])
def test_bad_public_keys(text: str, why: str) -> None:
    with pytest.raises(HostKeyError, match=why):
        hostkeys.parse_public_key(text)


def test_known_hosts_rejects_hashed_and_malformed_lines() -> None:
    with pytest.raises(HostKeyError, match=r"line 2: .*hashed"):
        hostkeys.parse_known_hosts("# c\n|1|abc= ssh-ed25519 AAAA\n")
    with pytest.raises(HostKeyError, match="line 1"):
        hostkeys.parse_known_hosts("10.0.0.1 ssh-ed25519 x\n")


def test_load_known_hosts_malformed_is_invalid_input(tmp_path: Path) -> None:
    bad = tmp_path / "known_hosts"
    bad.write_text("10.0.0.1 ssh-ed25519 !!\n")
    with pytest.raises(InvalidInput) as exc:
        hostkeys.load_known_hosts(bad)
    assert exc.value.exit_code == 2
    assert hostkeys.load_known_hosts(tmp_path / "absent") == []


def test_merge_replaces_by_pattern() -> None:
    a = hostkeys.parse_public_key(_ed25519_line())
    b = PublicKey(a.type, a.body, "other")
    merged = hostkeys.merge([Entry("h1", a), Entry("h2", a)], [Entry("h2", b)])
    assert [(e.pattern, e.key.comment) for e in merged] == [("h1", ""), ("h2", "other")]


def test_best_key_prefers_ed25519() -> None:
    ed = hostkeys.parse_public_key(_ed25519_line())
    rsa = PublicKey("ssh-rsa", "AAAA")
    assert hostkeys.best_key([rsa, ed]) == ed
    assert hostkeys.best_key([]) is None


def test_untrusted_hint_names_host_address_and_command() -> None:
    text = hostkeys.untrusted_hint("gpu-prod-01", "10.0.0.5", 22, "prod")
    assert text == (
        "host key of gpu-prod-01 (10.0.0.5:22) is not the trusted one (changed or not trusted "
        "yet): if the host was rebuilt on purpose, run `stacklock trust prod` and compare the "
        "fingerprint out of band")
    assert "stacklock trust ENV" in hostkeys.untrusted_hint("h", "h", 22, None)


@pytest.mark.parametrize(("text", "expected"), [
    ("Host key verification failed.", True),
    ("@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @", True),
    ("No ED25519 host key is known for 10.0.0.5 and you have requested strict checking.", True),
    ("Permission denied (publickey).", False),
    ("Connection timed out during banner exchange", False),
])
def test_host_key_failure_detection(text: str, expected: bool) -> None:
    assert hostkeys.is_host_key_failure(text) is expected


def test_ssh_args_direct_and_jump() -> None:
    direct = hostkeys.ssh_args("/inv/prod/known_hosts")
    assert direct == ('-o StrictHostKeyChecking=yes -o UserKnownHostsFile="/inv/prod/known_hosts"')
    jump = hostkeys.ssh_args("/inv/prod/known_hosts", "ops@bastion.example.com:2222")
    assert jump.startswith(direct)
    assert ("ProxyCommand='ssh -o StrictHostKeyChecking=yes -o UserKnownHostsFile="
            "\"/inv/prod/known_hosts\" -o BatchMode=yes -p 2222 -W [%h]:%p "
            "ops@bastion.example.com'") in jump
    for bad in ("a,b", "ops@host;rm -rf /", "x@'y'"):
        with pytest.raises(HostKeyError):
            hostkeys.ssh_args("/k", bad)


def test_parse_jump() -> None:
    assert hostkeys.parse_jump("ops@bastion") == ("ops", "bastion", 22)
    assert hostkeys.parse_jump("bastion:2200") == ("", "bastion", 2200)
    assert hostkeys.parse_jump("ops@[2001:db8::1]:2200") == ("ops", "2001:db8::1", 2200)


# --------------------------------------------------------------------------- manifest host_key


def _manifest_with(host_key: object) -> str:
    data = yaml.safe_load(GOLDEN.read_text())
    data["environments"]["onprem"]["hosts"][1]["host_key"] = host_key
    return yaml.safe_dump(data)


def test_manifest_host_key_accepted_and_never_rendered() -> None:
    m = parse_manifest(_manifest_with(_ed25519_line() + " root@gpu-b"))
    host = m.environments["onprem"].hosts[1]  # type: ignore[union-attr]
    assert host.host_key == _ed25519_line() + " root@gpu-b"
    assert "host_key" not in host.model_dump()


@pytest.mark.parametrize("bad", [
    "ssh-dss AAAAB3NzaC1kc3MAAACBAP",
    "ssh-ed25519 %%%%",
    _ed25519_line() + "\nssh-rsa AAAA",
    "ssh-rsa " + _ed25519_line().split()[1],
    42,
])
def test_manifest_bad_host_key_names_the_field(bad: object) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_manifest(_manifest_with(bad))
    assert exc.value.exit_code == 2
    paths = [p.path for p in exc.value.problems]
    assert "environments.onprem.hosts[1].host_key" in paths, paths


def test_cli_bad_host_key_exits_2(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(_manifest_with("ssh-ed25519 not-a-key"))
    res = subprocess.run([sys.executable, "-m", "stacklock.cli", "-m", str(manifest),
                          "validate"], capture_output=True, text=True, check=False,
                         env=dict(os.environ, NO_COLOR="1", COLUMNS="200"), timeout=120)
    assert res.returncode == 2, res.stderr
    assert "environments.onprem.hosts[1].host_key" in res.stderr


# --------------------------------------------------------------------------- trust decisions


def test_classify_new_unchanged_changed_pinned() -> None:
    from stacklock.flows.trust import Offer, classify

    a = hostkeys.parse_public_key(_ed25519_line())
    blob = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(32)
    b = PublicKey("ssh-ed25519", base64.b64encode(blob).decode())
    offers = [Offer("n", "h-new", a), Offer("u", "h-same", a), Offer("c", "h-changed", b),
              Offer("p", "h-pin", a), Offer("m", "h-pin-bad", b)]
    trusted = {"h-same": Entry("h-same", a), "h-changed": Entry("h-changed", a),
               "h-pin": Entry("h-pin", b)}
    pins = {"h-pin": ("p", a), "h-pin-bad": ("m", a)}
    assert [o.status for o in classify(offers, trusted, pins)] == [
        "new", "unchanged", "CHANGED", "pinned", "PINNED-MISMATCH"]


def test_configure_failure_gets_the_re_trust_hint(tmp_path: Path) -> None:
    from stacklock.adapters.ansible import host_key_hints
    from stacklock.core.inventory import hosts_yaml

    inv = tmp_path / "inventories" / "prod"
    inv.mkdir(parents=True)
    (inv / "hosts.yml").write_text(hosts_yaml("prod", "static", {"hosts": {
        "gpu-prod-01": {"address": "10.0.0.5", "port": 2222}}}, None))
    changed = ('gpu-prod-01: Gathering Facts: : UNREACHABLE! => {"msg": "Failed to connect: '
               '@@@\\r\\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @"}')
    assert host_key_hints([changed], [inv]) == [
        hostkeys.untrusted_hint("gpu-prod-01", "10.0.0.5", 2222, "prod")]
    assert host_key_hints(["gpu-prod-01: x: UNREACHABLE! Permission denied (publickey)"],
                          [inv]) == []
