"""The AWS root templates (src/stacklock/templates/terraform/aws) for each manifest setting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml

from stacklock.core.lock import build_lock
from stacklock.core.manifest import LoadedManifest, parse_manifest
from stacklock.core.render import TF_HEADER, render_tree, repo_root

pytestmark = pytest.mark.unit

AMIS = {"us-east-1": "ami-0123456789abcdef0", "eu-central-1": "ami-0fedcba9876543210"}


def _manifest(env_over: dict[str, Any], *, os_: dict[str, str] | None = None) -> dict[str, Any]:
    env = {
        "provider": "aws", "stack": "s1", "region": "us-east-1",
        "instance_type": "g6e.xlarge", "admin_cidrs": ["203.0.113.0/24"],
        "client_cidrs": ["198.51.100.0/24", "192.0.2.0/24"],
    }
    env.update(env_over)
    return {
        "version": 1,
        "project": "acme-serving",
        "stacks": {"s1": {
            "os": os_ or {"distribution": "ubuntu", "release": "24.04"},
            "nvidia_driver": {"version": "580.95.05", "kernel_module": "open"},
            "cuda": {"version": "13.0.2"},
            "docker": {"version": "28.5.1"},
            "nvidia_container_toolkit": {"version": "1.18.0"},
            "python": {"version": "3.12"},
            "torch": {"version": "2.9.1+cu130"},
            "torchserve": {"version": "0.12.0"},
            "java": {"version": "17", "apt_version": "17.0.16+8~us1-0ubuntu1~24.04.1"},
            "ami": {"owner": "099720109477",
                    "name": "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-20251022"},
        }},
        "environments": {"dev": env},
    }


def _render(data: dict[str, Any], tmp_path: Path) -> dict[str, str]:
    text = yaml.safe_dump(data, sort_keys=False)
    loaded = LoadedManifest(parse_manifest(text), tmp_path / "stacklock.yaml", text)
    lock = build_lock(loaded, {"s1": dict(AMIS)})
    tree = render_tree(loaded, lock)
    assert tree == render_tree(loaded, lock), "rendering must be deterministic"
    return {rel.rsplit("/", 1)[-1]: body for rel, body in tree.items()
            if rel.startswith("terraform/environments/dev/")}


def _parse(text: str) -> dict[str, Any]:
    parsed: dict[str, Any] = hcl2.loads(text)
    return parsed


def _q(s: str) -> str:
    return f'"{s}"'


def test_files_and_header(tmp_path: Path) -> None:
    files = _render(_manifest({}), tmp_path)
    assert sorted(files) == ["main.tf", "outputs.tf", "providers.tf", "versions.tf"]
    for body in files.values():
        assert body.startswith(TF_HEADER + "\n") and body.endswith("}\n")


def test_defaults_backend_and_no_account_guard(tmp_path: Path) -> None:
    files = _render(_manifest({}), tmp_path)
    backend = _parse(files["versions.tf"])["terraform"][0]["backend"][0][_q("s3")]
    assert backend["bucket"] == _q("acme-serving-tfstate")
    assert backend["key"] == _q("acme-serving/dev/terraform.tfstate")
    assert backend["region"] == _q("us-east-1")
    assert backend["use_lockfile"] is True and backend["encrypt"] is True
    assert "allowed_account_ids" not in backend
    provider = _parse(files["providers.tf"])["provider"][0][_q("aws")]
    assert "allowed_account_ids" not in provider
    assert provider["region"] == _q("us-east-1")


def test_account_state_bucket_and_region(tmp_path: Path) -> None:
    files = _render(_manifest({"region": "eu-central-1", "account_id": "444455556666",
                               "state_bucket": "acme-state", "state_region": "us-east-1"}),
                    tmp_path)
    backend = _parse(files["versions.tf"])["terraform"][0]["backend"][0][_q("s3")]
    assert backend["bucket"] == _q("acme-state") and backend["region"] == _q("us-east-1")
    assert backend["allowed_account_ids"] == [_q("444455556666")]
    provider = _parse(files["providers.tf"])["provider"][0][_q("aws")]
    assert provider["region"] == _q("eu-central-1")
    assert provider["allowed_account_ids"] == [_q("444455556666")]
    call = _parse(files["main.tf"])["module"][0][_q("gpu_nodes")]
    assert call["ami_id"] == _q(AMIS["eu-central-1"])


def test_module_call_carries_every_node_setting(tmp_path: Path) -> None:
    files = _render(_manifest({
        "count": 3, "root_volume_size": 500, "key_name": "ops",
        "vpc_id": "vpc-0123456789abcdef0",
        "subnet_ids": ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"],
        "availability_zones": ["us-east-1a"],
    }), tmp_path)
    call = _parse(files["main.tf"])["module"][0][_q("gpu_nodes")]
    source = (tmp_path / "terraform" / "environments" / "dev" / call["source"].strip('"'))
    assert source.resolve() == (repo_root() / "terraform" / "modules" / "gpu_node_aws").resolve()
    assert call["instance_count"] == 3 and call["root_volume_size"] == 500
    assert call["key_name"] == _q("ops")
    assert call["vpc_id"] == _q("vpc-0123456789abcdef0")
    assert call["subnet_ids"] == [_q("subnet-0123456789abcdef0"), _q("subnet-0123456789abcdef1")]
    assert call["availability_zones"] == [_q("us-east-1a")]
    assert call["client_cidrs"] == [_q("198.51.100.0/24"), _q("192.0.2.0/24")]
    assert call["ami_id"] == _q(AMIS["us-east-1"])
    assert call["fingerprint"].startswith('"sha256:')


def test_unset_optional_settings_are_null(tmp_path: Path) -> None:
    text = _render(_manifest({}), tmp_path)["main.tf"]
    assert "  key_name           = null\n" in text
    assert "  vpc_id             = null\n" in text
    assert "  subnet_ids         = []\n" in text


@pytest.mark.parametrize(
    ("over", "connection", "proxy"),
    [
        ({"access": "public"}, "ssh", "null"),
        ({"access": "ssm"}, "ssm", "null"),
        ({"access": "bastion", "bastion": "ops@bastion.example.com"}, "ssh",
         '"ops@bastion.example.com"'),
    ],
)
def test_hosts_output_per_access(tmp_path: Path, over: dict[str, str], connection: str,
                                 proxy: str) -> None:
    files = _render(_manifest(over), tmp_path)
    outputs = files["outputs.tf"]
    assert f'connection        = "{connection}"' in outputs
    assert f"proxy_jump        = {proxy}" in outputs
    assert 'user              = "ubuntu"' in outputs
    call = _parse(files["main.tf"])["module"][0][_q("gpu_nodes")]
    assert call["access"] == _q(over["access"])


def test_debian_images_log_in_as_admin(tmp_path: Path) -> None:
    files = _render(_manifest({}, os_={"distribution": "debian", "release": "12"}), tmp_path)
    assert 'user              = "admin"' in files["outputs.tf"]


def test_values_are_quoted_as_hcl_strings(tmp_path: Path) -> None:
    # the schema refuses such a key_name (tests/unit/core/test_hostile.py); the writer quotes anyway
    from stacklock.core.render import hcl
    from stacklock.errors import InvalidInput

    hostile = 'ops"} resource "x" "y" {'
    with pytest.raises(InvalidInput):
        _render(_manifest({"key_name": hostile}), tmp_path)
    parsed = _parse(f"key_name = {hcl(hostile)}\n")
    assert parsed["key_name"] == '"ops\\"} resource \\"x\\" \\"y\\" {"'
    assert "resource" not in parsed
