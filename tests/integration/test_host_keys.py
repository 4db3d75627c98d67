"""Authenticated SSH on a real node: first trust, a changed host key (exit 3), re-trust.

One lab node container (systemd + sshd, its own network namespace) is started directly with
scripts/lab-node.sh and used as an on-prem host of a `static` environment: apply writes the
inventory, `stacklock trust` records the key the node offers (the same fingerprint as
`ssh-keygen -lf` on the node), Ansible reaches it, then the node gets new host keys and
verify and configure stop with exit 3 naming the host and how to re-trust it; after
`trust --yes` verify reaches it again. Last, a `host_key` pinned in the manifest is written by
apply and never overridden by trust. The tests run in file order.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def unhint(text: str) -> str:
    """Hints name the manifest in use (`stacklock -m PATH COMMAND`); the command is what the
    assertions check."""
    return re.sub(r"stacklock -m \S+ ", "stacklock ", text)

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
NAME = "slhk-node-1"
NODE, HOST_SIDE, MIRROR = "10.214.250.2", "10.214.250.1", "10.214.0.1"
ENV = "hk"
SCRIPT = ROOT / "scripts" / "lab-node.sh"


@dataclass
class Site:
    manifest: Path
    output: Path
    env: dict[str, str]
    control_dir: Path

    @property
    def inventory(self) -> Path:
        return self.output / "inventories" / ENV


def sl(site: Site, *args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "stacklock"), "-m", str(site.manifest), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=site.env,
                          stdin=subprocess.DEVNULL, check=False)


def on_node(script: str) -> str:
    res = subprocess.run(["docker", "exec", NAME, "bash", "-ec", script], capture_output=True,
                         text=True, timeout=120, check=False)
    assert res.returncode == 0, f"{script}: {res.stdout}{res.stderr}"
    return res.stdout


def node_fingerprint() -> str:
    return on_node("ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub").split()[1]


def close_ssh_sessions(site: Site) -> None:
    """End Ansible's persistent SSH connections (ControlPersist) to the node: a rebuilt host
    has no session of the old one left, and a new connection must check the key again."""
    for sock in site.control_dir.iterdir():
        subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "x"],
                       capture_output=True, check=False, timeout=30)
        sock.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, lab_docker: str) -> Iterator[Path]:
    for tool in ("ip", "ssh", "ssh-keyscan", "nsenter"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is missing: run scripts/bootstrap.sh (make test does)")
    keys = tmp_path_factory.mktemp("hk-keys")
    key = keys / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "stacklock-hk-test",
                    "-f", str(key)], check=True)
    created = subprocess.run([str(SCRIPT), "create", NAME, lab_docker, NODE, HOST_SIDE, MIRROR,
                              f"{key}.pub", "stacklock.test=host-keys"],
                             capture_output=True, text=True, timeout=180, check=False)
    try:
        assert created.returncode == 0, created.stderr
        yield key
    finally:
        subprocess.run([str(SCRIPT), "destroy", NAME, NODE], capture_output=True, timeout=120,
                       check=False)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, node: Path) -> Iterator[Site]:
    work = tmp_path_factory.mktemp("hk")
    (work / "models").mkdir()
    shutil.copy(ROOT / "examples/models/tiny-linear.mar", work / "models/tiny-linear.mar")
    data = yaml.safe_load((ROOT / "examples/lab.yaml").read_text())
    data["project"] = "slhk"
    data["output_dir"] = "out"
    stack = next(iter(data["stacks"]))
    data["environments"] = {ENV: {"provider": "static", "stack": stack, "hosts": [
        {"name": NAME, "address": NODE, "user": "root"}]}}
    data.pop("lab", None)
    manifest = work / "stacklock.yaml"
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    # Ansible's SSH control sockets: a short private folder (socket paths stay < 108 bytes)
    control = Path(tempfile.mkdtemp(prefix="slhk-cp-"))
    env = dict(os.environ, NO_COLOR="1", COLUMNS="200", ANSIBLE_PRIVATE_KEY_FILE=str(node),
               ANSIBLE_SSH_CONTROL_PATH_DIR=str(control))
    s = Site(manifest, work / "out", env, control)
    for step in (("lock", "--offline"), ("render",), ("apply", ENV)):
        res = sl(s, *step)
        assert res.returncode == 0, f"{step}: {res.stdout}{res.stderr}"
    try:
        yield s
    finally:
        close_ssh_sessions(s)
        shutil.rmtree(control, ignore_errors=True)


def test_inventory_checks_host_keys(site: Site) -> None:
    hosts = yaml.safe_load((site.inventory / "hosts.yml").read_text())
    args = hosts["all"]["children"][ENV]["vars"]["ansible_ssh_common_args"]
    assert "StrictHostKeyChecking=yes" in args
    assert 'UserKnownHostsFile="{{ inventory_dir }}/known_hosts"' in args
    assert not (site.inventory / "known_hosts").exists()  # nothing trusted before `trust`


def test_untrusted_host_is_exit_3_before_trust(site: Site) -> None:
    res = sl(site, "verify", ENV)
    assert res.returncode == 3, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"stacklock trust {ENV}" in unhint(res.stdout + res.stderr)


def test_trust_prints_the_nodes_fingerprint(site: Site) -> None:
    res = sl(site, "trust", ENV, "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    fp = node_fingerprint()
    line = next(x for x in res.stdout.splitlines() if NAME in x)
    assert re.search(rf"{NAME}\s+{re.escape(NODE)}\s+ssh-ed25519\s+{re.escape(fp)}\s+new", line)
    known = (site.inventory / "known_hosts").read_text()
    assert on_node("cat /etc/ssh/ssh_host_ed25519_key.pub").split()[1] in known


def test_ansible_reaches_the_trusted_node(site: Site) -> None:
    res = subprocess.run([str(BIN / "ansible"), "all", "-i", str(site.inventory), "-m", "ping"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, env=site.env,
                         check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout
    res = sl(site, "verify", ENV)
    assert res.returncode in (0, 1), res.stdout[-3000:] + res.stderr[-3000:]  # bare node: 1


def test_changed_host_key_stops_verify_and_configure_with_exit_3(site: Site) -> None:
    old = node_fingerprint()
    on_node("rm -f /etc/ssh/ssh_host_*; ssh-keygen -A >/dev/null; systemctl restart ssh")
    new = node_fingerprint()
    assert new != old
    close_ssh_sessions(site)
    hint = (f"host key of {NAME} ({NODE}:22) is not the trusted one (changed or not trusted "
            f"yet): if the host was rebuilt on purpose, run `stacklock trust {ENV}`")
    res = sl(site, "verify", ENV)
    text = unhint(res.stdout + res.stderr)
    assert res.returncode == 3, text[-3000:]
    assert hint in text, text[-3000:]
    res = sl(site, "configure", ENV)
    text = unhint(res.stdout + res.stderr)
    assert res.returncode == 3, text[-3000:]
    assert hint in text, text[-3000:]
    # trust without --yes or --replace shows both fingerprints and replaces nothing
    res = sl(site, "trust", ENV)
    assert res.returncode == 3
    assert old in res.stderr and new in res.stderr and "CHANGED" in res.stdout
    assert sl(site, "verify", ENV).returncode == 3


def test_re_trust_after_rebuild_reaches_the_node_again(site: Site) -> None:
    res = sl(site, "trust", ENV, "--replace", NAME)
    assert res.returncode == 0, res.stdout + res.stderr
    assert node_fingerprint() in res.stdout
    res = sl(site, "verify", ENV)
    assert res.returncode in (0, 1), res.stdout[-3000:] + res.stderr[-3000:]


def test_manifest_host_key_is_pinned_by_apply_and_never_overridden(site: Site) -> None:
    # the manifest pins another key than the node's: apply writes it, trust refuses to change it
    other = site.manifest.parent / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    pinned = (other.parent / "other.pub").read_text().strip()
    data = yaml.safe_load(site.manifest.read_text())
    data["environments"][ENV]["hosts"][0]["host_key"] = pinned
    site.manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    res = sl(site, "apply", ENV)
    assert res.returncode == 0, res.stdout + res.stderr
    known = (site.inventory / "known_hosts").read_text()
    assert pinned.split()[1] in known and "(pinned in the manifest)" in known
    res = sl(site, "trust", ENV, "--yes")
    assert res.returncode == 3
    assert "never overrides a pinned key" in res.stderr
    assert (site.inventory / "known_hosts").read_text() == known
    close_ssh_sessions(site)
    res = sl(site, "verify", ENV)
    assert res.returncode == 3 and "stacklock trust" in unhint(res.stdout + res.stderr)
