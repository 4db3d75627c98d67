"""On-prem hosts end to end: the `static` provider against real Debian 12 hosts, as `deploy`.

The test starts two Debian 12 hosts itself (systemd + sshd, the lab image started by
`scripts/lab-node.sh`, each in its own network namespace in this test's own range 10.215.x),
NOT through the lab's Terraform module: the static module, its inventory and its SSH path are
what run. On each host it creates a non-root user `deploy` with passwordless sudo and the
test's SSH key, and removes root's authorized_keys, so only `deploy` can log in. The local
mirror is served on the hosts' mirror address for the whole module, as an internal mirror of a
site would be.

The manifest is `examples/onprem/stacklock.yaml` itself, copied with the test's addresses,
mirror URL and project name, so that what a user copies is what is tested. Through the real
CLI: validate, lock, render, apply (static Terraform -> hosts.yml), trust (host keys),
configure (site.yml as `deploy` with sudo); then verify clean, real deviations, the standalone
play, TorchServe's key expiry, a changed host key and a stopped host (last).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
EXAMPLE = ROOT / "examples" / "onprem" / "stacklock.yaml"
LAB_NODE = ROOT / "scripts" / "lab-node.sh"
PROJECT = "slonprem"
ENV = "prod"
USER = "deploy"
MIRROR = "10.215.0.1"  # this test's own range (the demo's is 10.213, the lab e2e's 10.214)
MIRROR_PORT = 8700
#: the example's placeholders -> this test's addresses
EXAMPLE_MIRROR = "198.51.100.5"
#: at least this many checks per node must match in a clean verify (the lab's nodes have 52)
MIN_CHECKS_PER_NODE = 45


@dataclass(frozen=True)
class Host:
    name: str  # the manifest's host name (the inventory hostname)
    address: str  # node side of the veth pair
    host_side: str  # host side of the veth pair
    example_address: str  # the address in examples/onprem/stacklock.yaml

    @property
    def container(self) -> str:
        return f"{PROJECT}-{self.name}"


HOSTS = (
    Host("gpu-01", "10.215.1.2", "10.215.1.1", "198.51.100.41"),
    Host("gpu-02", "10.215.1.6", "10.215.1.5", "198.51.100.42"),
)
GPU01, GPU02 = HOSTS


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the on-prem hosts need root (network namespaces, veth pairs, dockerd)"
    for tool in ("ip", "nsenter", "ssh", "ssh-keygen", "ssh-keyscan", "debootstrap", "dockerd",
                 "dpkg-scanpackages"):
        if shutil.which(tool) is None:
            return f"{tool} is missing: run scripts/bootstrap.sh (make test does)"
    return None


def _run(argv: list[str], *, timeout: int = 300, check: bool = True,
         input: str | None = None) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                         input=input)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} -> exit {res.returncode}\n"
                             f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def on_host(host: Host, script: str, check: bool = True, user: str = "root",
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    """A command on the host itself (docker exec: the test's back door, not the product's path)."""
    return _run(["docker", "exec", "-i", "-u", user, host.container, "bash", "-ec", script],
                check=check, input=input)


@dataclass
class Deployment:
    manifest: Path
    work: Path
    key: Path  # the test's private key (deploy's authorized key)
    env: dict[str, str]  # the environment of every stacklock / ansible-playbook run

    @property
    def output(self) -> Path:
        return self.manifest.parent

    @property
    def inventory(self) -> Path:
        return self.output / "inventories" / ENV


def sl(dep: Deployment, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess[str]:
    """The real CLI, as a user runs it: `stacklock -m MANIFEST ...` from the checkout."""
    return subprocess.run([str(BIN / "stacklock"), "-m", str(dep.manifest), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=dep.env,
                          stdin=subprocess.DEVNULL, check=False)


def verify_json(dep: Deployment) -> tuple[int, dict[str, Any], str]:
    res = sl(dep, "verify", "--format", "json", timeout=600)
    try:
        return res.returncode, json.loads(res.stdout), res.stderr
    except json.JSONDecodeError:
        raise AssertionError(f"verify printed no JSON (exit {res.returncode}):\n"
                             f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}") from None


def deviation(report: dict[str, Any], node: str, component: str) -> dict[str, Any]:
    found = [c for c in report["deviations"]
             if c["environment"] == ENV and c["node"] == node and c["component"] == component]
    assert found, (f"no deviation {ENV}/{node}/{component}; deviations: "
                   + json.dumps(report["deviations"], indent=1)[:3000])
    return found[0]


def assert_clean(code: int, report: dict[str, Any], stderr: str = "") -> None:
    assert code == 0, json.dumps(report["problems"], indent=1)[:3000] + stderr[-2000:]
    assert report["ok"] is True and report["deviations"] == [] and report["unreachable"] == []
    per_node: dict[str, int] = {}
    for check in report["checks"]:
        assert check["status"] == "match", check
        per_node[check["node"]] = per_node.get(check["node"], 0) + 1
    assert set(per_node) == {h.name for h in HOSTS}, per_node
    assert all(n >= MIN_CHECKS_PER_NODE for n in per_node.values()), per_node


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def onprem_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test's own SSH key pair (ed25519, private key 0600): deploy's authorized key."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    d = tmp_path_factory.mktemp("onprem-ssh")
    d.chmod(0o700)
    key = d / "id_ed25519"
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "stacklock-onprem-e2e",
          "-f", str(key)])
    key.chmod(0o600)
    return key


def _has_address(address: str) -> bool:
    out = _run(["ip", "-o", "addr", "show"]).stdout
    return f" inet {address}/" in out


def _has_unreachable_route(net: str) -> bool:
    return bool(_run(["ip", "route", "show", "type", "unreachable", net]).stdout.strip())


@pytest.fixture(scope="module")
def onprem_mirror(lab_docker: str, onprem_key: Path) -> Iterator[str]:
    """The local mirror served on MIRROR:MIRROR_PORT for the module (the site's internal
    mirror); only what this fixture started or added is stopped or removed at the end."""
    from stacklock.adapters import mirror

    had_address = _has_address(MIRROR)
    had_route = _has_unreachable_route("10.215.0.0/16")
    root = mirror.build_mirror()  # reused as it is when the demo or another test built it
    _run([str(LAB_NODE), "mirror", MIRROR], timeout=60)
    handle = mirror.start_server(MIRROR, MIRROR_PORT, root)
    try:
        yield handle.url
    finally:
        mirror.stop_server(handle)  # a server that was already answering is left alone
        if not had_address:
            for dev in ("sl-mirror", "lo"):
                subprocess.run(["ip", "addr", "del", f"{MIRROR}/32", "dev", dev],
                               capture_output=True, check=False)
        if not had_route:
            subprocess.run(["ip", "route", "del", "unreachable", "10.215.0.0/16"],
                           capture_output=True, check=False)


SETUP_DEPLOY = r"""
id deploy >/dev/null 2>&1 || useradd --create-home --shell /bin/bash deploy
usermod -p '*' deploy                      # no password: key login only (not "locked")
install -d -m 0700 -o deploy -g deploy /home/deploy/.ssh
cat > /home/deploy/.ssh/authorized_keys    # the test's public key, from stdin
chown deploy:deploy /home/deploy/.ssh/authorized_keys
chmod 0600 /home/deploy/.ssh/authorized_keys
printf 'deploy ALL=(ALL:ALL) NOPASSWD: ALL\n' > /root/deploy.sudoers
visudo -cf /root/deploy.sudoers >/dev/null
install -m 0440 -o root -g root /root/deploy.sudoers /etc/sudoers.d/deploy
rm -f /root/deploy.sudoers
visudo -c >/dev/null
rm -f /root/.ssh/authorized_keys            # only deploy can log in
"""


@pytest.fixture(scope="module")
def onprem_hosts(lab_docker: str, onprem_key: Path, onprem_mirror: str) -> Iterator[tuple[Host, ...]]:
    """Two Debian 12 hosts (systemd + sshd), each in its own network namespace, reachable
    over SSH as `deploy` only; removed (container and veth pair) at the end."""
    pub = onprem_key.with_suffix(".pub")
    try:
        for h in HOSTS:
            _run([str(LAB_NODE), "create", h.container, lab_docker, h.address, h.host_side,
                  MIRROR, str(pub), "stacklock.test=onprem-e2e"], timeout=300)
            on_host(h, SETUP_DEPLOY, input=pub.read_text())
        yield HOSTS
    finally:
        for h in HOSTS:
            subprocess.run([str(LAB_NODE), "destroy", h.container, h.address],
                           capture_output=True, text=True, check=False, timeout=120)


def _manifest_text(key: Path) -> str:
    """examples/onprem/stacklock.yaml with this test's project, addresses and mirror."""
    text = EXAMPLE.read_text("utf-8")
    text, n = re.subn(r"^project: \S+", f"project: {PROJECT}", text, flags=re.M)
    assert n == 1
    assert text.count(f"{EXAMPLE_MIRROR}:8700") == 2
    text = text.replace(f"{EXAMPLE_MIRROR}:8700", f"{MIRROR}:{MIRROR_PORT}")
    text = text.replace(EXAMPLE_MIRROR, MIRROR)
    for h in HOSTS:
        assert text.count(h.example_address) == 1, h
        text = text.replace(h.example_address, h.address)
    # TorchServe's keys expire after one minute: verify and configure must still pass after
    text, n = re.subn(r"^(    torchserve_config:\n)", r"\1      token_expiration_min: 1\n", text,
                      flags=re.M)
    assert n == 1
    return text


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, onprem_key: Path,
               onprem_hosts: tuple[Host, ...]) -> Deployment:
    """The example copied, then validate, lock, render, apply, trust and configure (exit 0)."""
    work = tmp_path_factory.mktemp("onprem")
    (work / "models").mkdir()
    shutil.copy(ROOT / "examples/models/tiny-linear.mar", work / "models/tiny-linear.mar")
    (work / "onprem").mkdir()
    manifest = work / "onprem" / "stacklock.yaml"
    manifest.write_text(_manifest_text(onprem_key), "utf-8")
    env = dict(os.environ, NO_COLOR="1", COLUMNS="200",
               # the site's SSH key for its sudo user, as an operator would set it
               ANSIBLE_PRIVATE_KEY_FILE=str(onprem_key))
    dep = Deployment(manifest=manifest, work=work, key=onprem_key, env=env)
    timings: dict[str, float] = {}
    steps: list[tuple[str, ...]] = [
        ("validate",), ("lock",), ("render",), ("apply", ENV),
        ("trust", ENV, "--yes"),  # first trust of the hosts' SSH keys (ssh-keyscan)
        ("configure", ENV),
    ]
    for step in steps:
        started = time.monotonic()
        res = sl(dep, *step, timeout=2400)
        timings[step[0]] = time.monotonic() - started
        assert res.returncode == 0, (f"stacklock {' '.join(step)} -> exit {res.returncode}:\n"
                                     f"{res.stdout[-3000:]}\n{res.stderr[-6000:]}")
    sys.stderr.write(f"\non-prem deployment: {', '.join(f'{k} {v:.0f}s' for k, v in timings.items())}\n")
    return dep


# --------------------------------------------------------------------------- the hosts


def _ssh(host: Host, user: str, key: Path, command: str) -> subprocess.CompletedProcess[str]:
    return _run(["ssh", "-i", str(key), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                 "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                 "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10",
                 f"{user}@{host.address}", command], check=False, timeout=60)


def test_only_deploy_can_log_in_and_has_sudo(onprem_hosts: tuple[Host, ...],
                                             onprem_key: Path) -> None:
    for h in onprem_hosts:
        res = _ssh(h, USER, onprem_key, "id -un && sudo -n id -un")
        assert res.returncode == 0, res.stderr
        assert res.stdout.split() == [USER, "root"]
        assert _ssh(h, "root", onprem_key, "true").returncode != 0  # root cannot log in
        mode = on_host(h, "stat -c '%a %U' /etc/sudoers.d/deploy").stdout.split()
        assert mode == ["440", "root"]


# --------------------------------------------------------------------------- deployment


def test_apply_writes_the_static_inventory(deployment: Deployment) -> None:
    hosts_yml = deployment.inventory / "hosts.yml"
    doc = yaml.safe_load(hosts_yml.read_text("utf-8"))
    hosts = doc["all"]["children"][ENV]["hosts"]
    assert sorted(hosts) == [h.name for h in HOSTS]
    for h in HOSTS:
        assert hosts[h.name]["ansible_host"] == h.address
        assert hosts[h.name]["ansible_user"] == USER
        assert hosts[h.name]["ansible_port"] == 22
    gv = yaml.safe_load((deployment.inventory / "group_vars" / ENV / "stacklock.yml")
                        .read_text("utf-8"))
    assert gv["stacklock_provider"] == "static"
    assert gv["nvidia_driver_require_gpu"] is False  # `gpu: false` in the manifest
    assert gv["stacklock_pip_index_url"] == f"http://{MIRROR}:{MIRROR_PORT}/simple"
    assert [r["uri"] for r in gv["stacklock_apt_repositories"]] == [
        f"http://{MIRROR}:{MIRROR_PORT}/apt"]


def test_trust_records_the_host_keys(deployment: Deployment) -> None:
    known = (deployment.inventory / "known_hosts").read_text("utf-8")
    for h in HOSTS:
        real = on_host(h, "cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[1]
        assert real in known, f"{h.name}: its ed25519 host key is not in known_hosts"


def test_clean_verify_as_deploy_with_privilege_escalation(deployment: Deployment) -> None:
    code, report, stderr = verify_json(deployment)
    assert_clean(code, report, stderr)
    # the comparison really saw the stack (the root-only parts too), not an empty report
    for h in HOSTS:
        observed = report["observed"][ENV][h.name]
        assert observed["os.distribution"] == "debian" and observed["os.release"] == "12"
        assert observed["docker.version"] == "20.10.24"
        assert observed["torch.version"] == "2.13.0+cpu"
        assert observed["torchserve.running"] == "true"
        assert observed["torchserve.config_sha256"]
        assert observed["archive.tiny-linear.mar.sha256"]
        assert observed["hold.docker.io"] == "held"
        assert observed["gpu.present"] == "false"
    # TorchServe's config, keys and model store are root/torchserve only: deploy itself
    # cannot read them, so the clean verdict above came from the facts module run with sudo
    denied = on_host(GPU01, "cat /var/lib/torchserve/key_file.json", user=USER, check=False)
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    denied = on_host(GPU01, "cat /etc/torchserve/config.properties", user=USER, check=False)
    assert denied.returncode != 0


def test_table_report_names_every_host(deployment: Deployment) -> None:
    res = sl(deployment, "verify", timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert "parity: all nodes match the lock and each other" in out
    for h in HOSTS:
        assert h.name in out


def standalone_verify(dep: Deployment, report: Path) -> subprocess.CompletedProcess[str]:
    """`ansible-playbook -i <output>/inventories/prod ansible/playbooks/verify.yml` from the
    checkout, as docs/onprem.md shows: no CLI."""
    argv = [str(BIN / "ansible-playbook"), "-i", str(dep.inventory),
            "ansible/playbooks/verify.yml", "-e", f"stacklock_report_path={report}"]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          check=False, env=dep.env)


def test_standalone_playbook_reaches_the_same_verdict(deployment: Deployment) -> None:
    path = deployment.work / "standalone.json"
    res = standalone_verify(deployment, path)
    assert res.returncode == 0, res.stdout[-4000:]
    report = json.loads(path.read_text("utf-8"))
    assert report["exit_code"] == 0 and report["ok"] is True
    assert sorted(n["node"] for n in report["nodes"]) == [h.name for h in HOSTS]
    assert all(c["status"] == "match" for c in report["checks"])


# --------------------------------------------------------------------------- key expiry


#: the management API with the key in key_file.json, on the host itself: prints the status
MANAGEMENT_PROBE = """
import json, urllib.request, urllib.error
key = json.load(open("/var/lib/torchserve/key_file.json"))["management"]["key"]
req = urllib.request.Request("http://127.0.0.1:8081/models",
                             headers={"Authorization": "Bearer " + key})
try:
    print(urllib.request.urlopen(req, timeout=30).status)
except urllib.error.HTTPError as exc:
    print(exc.code)
except OSError:
    print(0)
""".strip()


def _key_expiry(host: Host) -> dt.datetime:
    """The latest expiry time in TorchServe's key_file.json on the host (UTC)."""
    doc = json.loads(on_host(host, "cat /var/lib/torchserve/key_file.json").stdout)
    times = []
    for entry in doc.values():
        stamp = entry.get("expiration time") if isinstance(entry, dict) else None
        if stamp:  # 2026-11-27T17:01:01.109839128Z
            times.append(dt.datetime.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")
                         .replace(tzinfo=dt.UTC) + dt.timedelta(seconds=1))
    assert times, f"no expiration time in key_file.json: {sorted(doc)}"
    return max(times)


def test_verify_and_configure_pass_after_the_keys_expired(deployment: Deployment) -> None:
    expiry = _key_expiry(GPU01)
    now = dt.datetime.now(dt.UTC)
    wait = (expiry - now).total_seconds() + 5
    assert wait <= 80, f"the keys expire in {wait:.0f} s: token_expiration_min 1 not applied?"
    if wait > 0:
        time.sleep(wait)
    # the keys really are expired now: TorchServe refuses them
    for h in HOSTS:
        status = on_host(h, "python3 -", input=MANAGEMENT_PROBE).stdout.strip()
        assert status not in ("200", "0"), f"{h.name}: the expired key still works ({status})"
    code, report, stderr = verify_json(deployment)
    assert_clean(code, report, stderr)
    assert _key_expiry(GPU01) > expiry  # the facts probe had TorchServe issue a fresh key
    res = sl(deployment, "configure", ENV, timeout=1800)  # ends with TorchServe's /ping
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    assert_clean(*verify_json(deployment))


# --------------------------------------------------------------------------- deviations


TOOLKIT = ("nvidia-container-toolkit", "nvidia-container-toolkit-base",
           "libnvidia-container-tools", "libnvidia-container1")


def install_toolkit(host: Host, version: str, hold: bool) -> None:
    """Another (or the pinned) toolkit from the site's mirror, by hand: what an operator
    might do on one host."""
    pins = " ".join(f"{p}={version}" for p in TOOLKIT)
    on_host(host, f"apt-mark unhold {' '.join(TOOLKIT)} >/dev/null; "
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --allow-downgrades "
            f"--allow-change-held-packages {pins} >/dev/null"
            + (f"; apt-mark hold {' '.join(TOOLKIT)} >/dev/null" if hold else ""))


def test_other_package_version_on_one_host_is_caught_and_configure_repairs_it(
    deployment: Deployment,
) -> None:
    install_toolkit(GPU02, "1.18.0-1", hold=False)
    repaired = False
    try:
        code, report, _ = verify_json(deployment)
        assert code == 1, report["problems"]
        dev = deviation(report, GPU02.name, "package.nvidia-container-toolkit")
        assert dev["expected"] == "1.17.8-1" and dev["actual"] == "1.18.0-1"
        deviation(report, GPU02.name, "hold.nvidia-container-toolkit")
        assert not any(c["node"] == GPU01.name for c in report["deviations"])
        # the table names environment, node, component, expected and actual too
        res = sl(deployment, "verify", timeout=600)
        assert res.returncode == 1
        lines = [ln for ln in (res.stdout + res.stderr).splitlines()
                 if "package.nvidia-container-toolkit" in ln and GPU02.name in ln]
        assert any(ENV in ln and "1.17.8-1" in ln and "1.18.0-1" in ln for ln in lines), (
            res.stdout[-3000:])
        # the standalone play fails too, naming it
        play = standalone_verify(deployment, deployment.work / "standalone-deviation.json")
        assert play.returncode != 0 and "nvidia-container-toolkit" in play.stdout
        # the way back: configure installs the pinned versions again and holds them
        res = sl(deployment, "configure", ENV, timeout=1800)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
        repaired = True
    finally:
        if not repaired:
            install_toolkit(GPU02, "1.17.8-1", hold=True)
    assert_clean(*verify_json(deployment))


def test_hold_removed_is_caught(deployment: Deployment) -> None:
    on_host(GPU01, "apt-mark unhold docker.io >/dev/null")
    try:
        code, report, _ = verify_json(deployment)
        assert code == 1, report["problems"]
        dev = deviation(report, GPU01.name, "hold.docker.io")
        assert dev["expected"] == "held" and dev["actual"] == "not held"
        assert len(report["deviations"]) == 1, report["deviations"]
    finally:
        on_host(GPU01, "apt-mark hold docker.io >/dev/null")
    assert_clean(*verify_json(deployment))


# --------------------------------------------------------------------------- exit 3 (last)


def test_changed_host_key_is_exit_3_with_a_re_trust_hint(deployment: Deployment) -> None:
    known = deployment.inventory / "known_hosts"
    trusted = known.read_text("utf-8")
    # a rebuilt host: new host keys, and no SSH session of the old one survives (a rebuild
    # drops them; here they would otherwise live on in Ansible's ControlPersist master)
    on_host(GPU01, "rm -f /etc/ssh/ssh_host_*; ssh-keygen -A >/dev/null; systemctl restart ssh\n"
            "main=$(systemctl show -p MainPID --value ssh)\n"
            'for pid in $(pgrep -x sshd); do [ "$pid" = "$main" ] || kill "$pid" || true; done')
    new_key = on_host(GPU01, "cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[1]
    code, report, stderr = verify_json(deployment)
    assert code == 3, report["problems"]
    assert [n["node"] for n in report["unreachable"]] == [GPU01.name]
    text = json.dumps(report["unreachable"]) + "\n".join(report["problems"]) + stderr
    assert re.search(r"host key", text, re.I), text[-3000:]
    assert re.search(rf"stacklock\b.*\btrust {ENV}\b", text), text[-3000:]  # how to re-trust
    assert not any(c["node"] == GPU01.name and c["status"] == "match" for c in report["checks"])
    # the other host is still verified
    assert any(c["node"] == GPU02.name and c["status"] == "match" for c in report["checks"])
    # trust without --yes (no one to ask) keeps the old key and says so: exit 3
    res = sl(deployment, "trust", ENV, timeout=300)
    assert res.returncode == 3, res.stdout[-3000:] + res.stderr[-3000:]
    assert GPU01.name in res.stdout + res.stderr
    assert known.read_text("utf-8") == trusted
    # re-trusting the rebuilt host brings the environment back to a clean verdict
    res = sl(deployment, "trust", ENV, "--yes", timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert new_key in known.read_text("utf-8")
    assert_clean(*verify_json(deployment))


def test_stopped_host_is_exit_3_naming_it(deployment: Deployment) -> None:
    # last: the stopped host is not started again (its veth pair went with its namespace);
    # the module's teardown removes it
    _run(["docker", "stop", "-t", "2", GPU02.container])
    code, report, _ = verify_json(deployment)
    assert code == 3, report["problems"]
    assert [n["node"] for n in report["unreachable"]] == [GPU02.name]
    assert any(GPU02.name in p for p in report["problems"]), report["problems"]
    assert not any(c["node"] == GPU02.name and c["status"] == "match"
                   for c in report["checks"])
    res = sl(deployment, "verify", timeout=600)
    assert res.returncode == 3 and GPU02.name in res.stdout + res.stderr
