"""Drift audits against real parts: real Terraform (static provider) and a real moto server.

The lab's drift cases (a package changed on a node, a node container removed) are in
test_lab_e2e.py, which shares its provisioned lab.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stacklock.adapters import aws
from stacklock.core import audit as auditmod

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def sl(manifest: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, NO_COLOR="1", COLUMNS="200")
    return subprocess.run([str(BIN / "stacklock"), "-m", str(manifest), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=env, check=False)


@pytest.fixture()
def static_manifest(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "examples/models", tmp_path / "models",
                    ignore=shutil.ignore_patterns("*.py"))
    text = (ROOT / "examples/static.yaml").read_text()
    text = re.sub(r"^output_dir: .*$", "output_dir: out", text, flags=re.M)
    manifest = tmp_path / "static.yaml"
    manifest.write_text(text)
    for step in (["lock"], ["render"], ["apply", "--all"]):
        res = sl(manifest, *step)
        assert res.returncode == 0, res.stderr
    return manifest


def test_static_changed_fingerprint_is_infrastructure_drift(static_manifest: Path) -> None:
    # only what Terraform sees: these on-prem example hosts are not reachable from here
    res = sl(static_manifest, "audit", "--kinds", "infrastructure", "--format", "json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert [e["status"] for e in json.loads(res.stdout)["environments"]] == ["ok"] * 3

    text = static_manifest.read_text().replace(
        "docker: {version: 28.5.1}",
        "docker: {version: 28.5.2, containerd_apt_version: 1.7.28-1~ubuntu.22.04~jammy}")
    static_manifest.write_text(text)
    assert sl(static_manifest, "lock").returncode == 0
    assert sl(static_manifest, "render").returncode == 0
    md = static_manifest.parent / "audit.md"
    res = sl(static_manifest, "audit", "--kinds", "infrastructure", "--format", "json",
             "--markdown", str(md))
    assert res.returncode == 1, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    prod = next(e for e in doc["environments"] if e["environment"] == "prod")
    subjects = sorted(f["subject"] for f in prod["findings"])
    assert subjects == ['module.nodes.terraform_data.host["gpu-prod-01"]',
                        'module.nodes.terraform_data.host["gpu-prod-02"]'], prod["findings"]
    assert all(f["kind"] == "infrastructure" for f in prod["findings"])
    assert "drift" in md.read_text().lower()
    history = sl(static_manifest, "audit", "history", "prod")
    assert history.returncode == 0 and "drift" in history.stdout


# --------------------------------------------------------------------------- cloud (moto)

IMAGE = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-20251022"
PROJECT = "acme-serving"


def _run(ec2: Any, ami: str, itype: str, env: str, fingerprint: str) -> str:
    tags = [{"Key": "project", "Value": PROJECT}, {"Key": "environment", "Value": env},
            {"Key": "fingerprint", "Value": fingerprint}, {"Key": "managed-by", "Value": "stacklock"}]
    out = ec2.run_instances(ImageId=ami, InstanceType=itype, MinCount=1, MaxCount=1,
                            TagSpecifications=[{"ResourceType": "instance", "Tags": tags}])
    return str(out["Instances"][0]["InstanceId"])


def test_cloud_drift_against_moto(moto: str) -> None:
    import boto3

    ec2 = boto3.client("ec2", region_name="us-east-1")
    ami = ec2.register_image(Name=IMAGE, Architecture="x86_64", RootDeviceName="/dev/sda1",
                             VirtualizationType="hvm")["ImageId"]
    fp = "sha256:" + "cd" * 32
    managed = [_run(ec2, ami, "g6e.xlarge", "prod", fp) for _ in range(3)]
    state = [{"instance_id": i, "address": f"module.nodes.aws_instance.node[{n}]"}
             for n, i in enumerate(managed)]

    def findings() -> list[auditmod.Finding]:
        live = [i.as_dict() for i in aws.live_inventory(PROJECT, "prod", "us-east-1")]
        return auditmod.cloud_findings("prod", state, live, "g6e.xlarge", ami,
                                       expected_fingerprint=fp)

    assert findings() == []  # clean: what the state holds is what runs

    rogue = _run(ec2, ami, "g6e.xlarge", "prod", fp)  # out of band, with the project's tags
    ec2.terminate_instances(InstanceIds=[managed[0]])  # a managed node gone
    ec2.stop_instances(InstanceIds=[managed[1]])
    ec2.modify_instance_attribute(InstanceId=managed[1], InstanceType={"Value": "g6e.2xlarge"})
    ec2.start_instances(InstanceIds=[managed[1]])

    got = {(f.component, f.subject.split(" ")[0]): f for f in findings()}
    kinds = {key[0] for key in got}
    assert {"unmanaged", "missing", "instance_type"} <= kinds, got
    assert any(rogue in f.subject for c, f in got.items() if c[0] == "unmanaged")
    assert any(managed[0] in f.subject for c, f in got.items() if c[0] == "missing")
    typed = [f for c, f in got.items() if c[0] == "instance_type"]
    assert typed[0].expected == "g6e.xlarge" and typed[0].actual == "g6e.2xlarge"
    assert managed[1] in typed[0].subject
    assert all(f.kind == "cloud" for f in got.values())
