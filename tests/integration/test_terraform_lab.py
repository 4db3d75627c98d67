"""The lab provider module with real Terraform, real containers, real SSH: two nodes, each
in its own network namespace, reachable by SSH, with independent loopbacks, reaching only
host addresses; destroy removes containers and veths."""

from __future__ import annotations

import json
import os
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from stacklock.adapters.proc import Completed, run_command
from stacklock.adapters.terraform import LibTerraformEngine, Terraform, TerraformEngine, resource_changes
from stacklock.errors import ToolFailed

pytestmark = pytest.mark.integration

FP = "sha256:" + "a" * 64
ENV_INDEX = 200  # 10.213.201.0/24: far from the env indexes the demo manifests use
MIRROR = "10.213.0.1"


def ssh(key: Path, address: str, command: str, *, check: bool = True) -> Completed:
    return run_command(
        [
            "ssh",
            "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes",
            "-o", "LogLevel=ERROR",
            "-o", "ConnectTimeout=10",
            "-i", str(key),
            f"root@{address}",
            command,
        ],
        check=check,
        timeout=60,
    )  # fmt: skip


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"mirror-ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        return


PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGm8Mb1cTnW1Qm9hYXxsYW5kLWtleS1vbmx5LWZvci1wbGFu plan-only"


def write_lab_root(root: Path, repo: Path, **overrides: object) -> None:
    args: dict[str, object] = {
        "environment": "staging",
        "project": "stacklock-lab",
        "stack_name": "lab-test",
        "stack_fingerprint": FP,
        "node_count": 3,
        "env_index": 1,
        "ssh_public_key": PUBKEY,
        **overrides,
    }
    body = "\n".join(f"  {k} = {json.dumps(v)}" for k, v in args.items())
    root.mkdir(parents=True, exist_ok=True)
    source = os.path.relpath(repo / "terraform/modules/gpu_node_lab", root)
    (root / "main.tf").write_text(f'module "nodes" {{\n  source = "{source}"\n{body}\n}}\n', encoding="utf-8")


def test_lab_plan_addresses_and_names(
    tmp_path: Path, repo_root: Path, terraform_engine: TerraformEngine
) -> None:
    """Planning runs no provisioner: the addressing scheme is visible without Docker.

    The root names no repo_root: the module finds scripts/ in the repository it lives in
    (module sources are relative paths, as in the rendered environment roots)."""
    write_lab_root(tmp_path, repo_root)
    tf = Terraform(tmp_path, engine=terraform_engine)
    tf.init()
    tf.validate()
    plan = tf.plan()
    assert plan.changes and plan.plan_json is not None
    changes = resource_changes(plan.plan_json)
    assert [c.actions for c in changes] == [("create",)] * 3
    planned = {
        r["values"]["input"]["name"]: r["values"]["input"]
        for r in plan.plan_json["planned_values"]["root_module"]["child_modules"][0]["resources"]
    }
    assert {n: (v["host_address"], v["node_address"]) for n, v in planned.items()} == {
        "stacklock-lab-staging-1": ("10.213.2.1", "10.213.2.2"),
        "stacklock-lab-staging-2": ("10.213.2.5", "10.213.2.6"),
        "stacklock-lab-staging-3": ("10.213.2.9", "10.213.2.10"),
    }
    assert {v["mirror"] for v in planned.values()} == {MIRROR}
    assert {v["script"] for v in planned.values()} == {str(repo_root / "scripts/lab-node.sh")}

    write_lab_root(tmp_path, repo_root, repo_root="/opt/stacklock")
    again = tf.plan().plan_json
    assert again is not None
    scripts = {
        r["values"]["input"]["script"]
        for r in again["planned_values"]["root_module"]["child_modules"][0]["resources"]
    }
    assert scripts == {"/opt/stacklock/scripts/lab-node.sh"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"node_count": 61}, "node_count must be a whole number from 1 to 60"),
        ({"env_index": 254}, "env_index must be a whole number from 0 to 253"),
        ({"ssh_public_key": "/root/.ssh/id_ed25519.pub"}, "ssh_public_key must be an OpenSSH public key"),
        ({"repo_root": "relative/path"}, "repo_root must be an absolute path"),
        ({"image": "stacklock-lab:latest"}, "explicit tag other than latest"),
    ],
)
def test_lab_variables_are_validated(
    tmp_path: Path, repo_root: Path, overrides: dict[str, object], message: str
) -> None:
    write_lab_root(tmp_path, repo_root, **overrides)
    tf = Terraform(tmp_path, engine=LibTerraformEngine())
    tf.init()
    with pytest.raises(ToolFailed) as info:
        tf.plan()
    assert message in " ".join(info.value.message.split())


@pytest.fixture
def lab_root(tmp_path: Path, repo_root: Path, lab_docker: str) -> Iterator[tuple[Terraform, Path]]:
    key = tmp_path / "id_ed25519"
    run_command(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
    project = f"sltest-{secrets.token_hex(3)}"
    root = tmp_path / "root"
    root.mkdir()
    (root / "main.tf").write_text(
        f"""module "nodes" {{
  source            = "{os.path.relpath(repo_root / "terraform/modules/gpu_node_lab", root)}"
  environment       = "dev"
  project           = "{project}"
  stack_name        = "lab-test"
  stack_fingerprint = "{FP}"
  image             = "{lab_docker}"
  node_count        = 2
  env_index         = {ENV_INDEX}
  ssh_public_key    = {json.dumps(key.with_suffix(".pub").read_text().strip())}
  mirror_address    = "{MIRROR}"
}}

output "hosts" {{
  value = module.nodes.hosts
}}
""",
        encoding="utf-8",
    )
    tf = Terraform(root, engine=LibTerraformEngine(), timeout=600)
    tf.init()
    try:
        yield tf, key
    finally:
        tf.destroy()  # idempotent: nothing to do when the test already destroyed


def _exists(argv: list[str]) -> bool:
    return run_command(argv, check=False, timeout=30).returncode == 0


@pytest.mark.slow
def test_lab_nodes(lab_root: tuple[Terraform, Path]) -> None:
    tf, key = lab_root
    assert tf.plan().changes
    tf.apply()
    hosts = tf.output()["hosts"]
    assert len(hosts) == 2
    names = sorted(hosts)
    a, b = (hosts[n] for n in names)
    assert a["address"] == "10.213.201.2"
    assert b["address"] == "10.213.201.6"
    for name, host in hosts.items():
        assert host["user"] == "root"
        assert host["port"] == 22
        assert host["container"] == name
        assert host["environment"] == "dev"
        assert host["fingerprint"] == FP
        labels = run_command(["docker", "inspect", "-f", "{{json .Config.Labels}}", name], timeout=30).stdout
        assert json.loads(labels)["stacklock.fingerprint"] == FP
        assert json.loads(labels)["stacklock.environment"] == "dev"

    # ssh works, and each node is its own machine
    for name, host in hosts.items():
        assert ssh(key, host["address"], "hostname").stdout.strip() == name

    # each node has its own loopback: both serve 127.0.0.1:8080 at once, each its own file
    for name, host in hosts.items():
        ssh(
            key,
            host["address"],
            f"mkdir -p /srv/t && echo {name} > /srv/t/who && cd /srv/t && "
            "(nohup python3 -m http.server 8080 --bind 127.0.0.1 >/tmp/http.log 2>&1 &)",
        )
    fetch = (
        'python3 -c "import time, urllib.request\n'
        "for _ in range(50):\n"
        "    try:\n"
        "        print(urllib.request.urlopen('http://127.0.0.1:8080/who', timeout=2)"
        ".read().decode().strip()); break\n"
        '    except OSError: time.sleep(0.2)"'
    )
    for name, host in hosts.items():
        assert ssh(key, host["address"], fetch).stdout.strip() == name

    # the node reaches the mirror address on the host, and nothing but host addresses
    server = ThreadingHTTPServer((MIRROR, 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        probe = (
            'python3 -c "import socket, sys, urllib.request\n'
            f"print(urllib.request.urlopen('http://{MIRROR}:{port}/', timeout=5).read().decode())\n"
            "for addr in sys.argv[1:]:\n"
            "    s = socket.socket(); s.settimeout(3)\n"
            "    try:\n"
            "        s.connect((addr, 22)); print(addr, 'reachable')\n"
            "    except OSError as e:\n"
            "        print(addr, 'unreachable', e.errno)\" "
            f"{b['address']} 10.213.201.5 192.0.2.10 8.8.8.8 1.1.1.1"
        )
        lines = ssh(key, a["address"], probe).stdout.strip().splitlines()
    finally:
        server.shutdown()
        server.server_close()
    assert lines[0] == "mirror-ok"
    assert lines[1:] == [
        f"{b['address']} unreachable 101",
        "10.213.201.5 unreachable 101",
        "192.0.2.10 unreachable 101",
        "8.8.8.8 unreachable 101",
        "1.1.1.1 unreachable 101",
    ]

    # nothing changes on a second plan
    assert not tf.plan().changes

    tf.destroy()
    assert tf.output() == {}
    for name, host in hosts.items():
        assert not _exists(["docker", "container", "inspect", name])
        octets = host["address"].split(".")
        assert not _exists(["ip", "link", "show", f"slv-{octets[1]}-{octets[2]}-{octets[3]}"])
