"""What a rollout needs of an AWS environment's load balancer, from Terraform to the inventory:
the generated root's outputs (endpoint_dns_name, endpoint_target_group_arn, only with an
endpoint), `hosts_yaml` writing each node's instance id and the target group's ARN, and
`load_balancer_targets` reading them back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml

from stacklock.core.inventory import (
    INSTANCE_ID_VAR,
    TARGET_GROUP_VAR,
    LoadBalancerTargets,
    hosts_yaml,
    load_balancer_targets,
)
from stacklock.core.lock import build_lock
from stacklock.core.manifest import LoadedManifest, parse_manifest
from stacklock.core.render import render_tree
from stacklock.errors import ToolFailed

pytestmark = pytest.mark.unit

ARN = ("arn:aws:elasticloadbalancing:eu-central-1:111122223333:targetgroup/"
       "slep-20261207/0123456789abcdef")
CERT = "arn:aws:acm:us-east-1:111122223333:certificate/0a1b2c3d-0a1b-0a1b-0a1b-0a1b2c3d4e5f"
AMIS = {"us-east-1": "ami-0123456789abcdef0"}


def _outputs(**extra: Any) -> dict[str, Any]:
    return {"hosts": {
        "acme-prod-2": {"address": "203.0.113.12", "user": "ubuntu", "instance_id": "i-0b2"},
        "acme-prod-1": {"address": "203.0.113.11", "user": "ubuntu", "instance_id": "i-0a1"},
    }, **extra}


def _group(text: str, env: str = "prod") -> dict[str, Any]:
    group: dict[str, Any] = yaml.safe_load(text)["all"]["children"][env]
    return group


# --------------------------------------------------------------------------- hosts.yml


def test_aws_hosts_carry_their_instance_id_and_the_target_group() -> None:
    group = _group(hosts_yaml("prod", "aws", _outputs(endpoint_target_group_arn=ARN), None))
    assert {h: v[INSTANCE_ID_VAR] for h, v in group["hosts"].items()} == {
        "acme-prod-1": "i-0a1", "acme-prod-2": "i-0b2"}
    assert group["vars"][TARGET_GROUP_VAR] == ARN


@pytest.mark.parametrize("arn", [None, ""])
def test_no_endpoint_no_target_group(arn: str | None) -> None:
    outputs = _outputs() if arn == "" else _outputs(endpoint_target_group_arn=arn)
    group = _group(hosts_yaml("prod", "aws", outputs, None))
    assert TARGET_GROUP_VAR not in group["vars"]
    assert all(INSTANCE_ID_VAR in h for h in group["hosts"].values())


@pytest.mark.parametrize("provider", ["static", "lab"])
def test_other_providers_get_neither(provider: str) -> None:
    group = _group(hosts_yaml("prod", provider, _outputs(endpoint_target_group_arn=ARN), None))
    assert TARGET_GROUP_VAR not in group["vars"]
    assert not any(INSTANCE_ID_VAR in h for h in group["hosts"].values())


def test_a_target_group_that_is_not_a_string_is_a_tool_failure() -> None:
    with pytest.raises(ToolFailed, match="endpoint_target_group_arn"):
        hosts_yaml("prod", "aws", _outputs(endpoint_target_group_arn=[ARN]), None)


def test_read_back_what_apply_wrote() -> None:
    text = hosts_yaml("prod", "aws", _outputs(endpoint_target_group_arn=ARN), None)
    lb = load_balancer_targets("prod", text)
    assert lb == LoadBalancerTargets(ARN, {"acme-prod-1": "i-0a1", "acme-prod-2": "i-0b2"})
    assert lb.region == "eu-central-1"
    # another environment's group is not this one's
    assert load_balancer_targets("staging", text) is None


def test_read_back_without_target_group_or_instance_ids() -> None:
    assert load_balancer_targets("prod", hosts_yaml("prod", "aws", _outputs(), None)) is None
    outputs = {"hosts": {"n1": {"address": "10.0.0.5"}}, "endpoint_target_group_arn": ARN}
    lb = load_balancer_targets("prod", hosts_yaml("prod", "aws", outputs, None))
    assert lb is not None and lb.instance_ids == {}
    assert load_balancer_targets("prod", "") is None
    assert LoadBalancerTargets("not-an-arn", {}).region == ""


# --------------------------------------------------------------------------- the root's outputs


def _manifest(endpoint: dict[str, Any] | None) -> dict[str, Any]:
    env: dict[str, Any] = {
        "provider": "aws", "stack": "s1", "region": "us-east-1",
        "instance_type": "g6e.xlarge", "admin_cidrs": ["203.0.113.0/24"],
        "client_cidrs": ["198.51.100.0/24"],
    }
    if endpoint is not None:
        env["endpoint"] = endpoint
    return {
        "version": 1, "project": "acme-serving",
        "stacks": {"s1": {
            "os": {"distribution": "ubuntu", "release": "24.04"},
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
        "environments": {"prod": env},
    }


ENDPOINT = {"port": 8443,
            "tls": {"secret": "stacklock_endpoint_tls", "acm_certificate_arn": CERT},
            "tokens": {"secret": "stacklock_endpoint_tokens"},
            "nginx_apt_version": "1.24.0-2ubuntu7.5"}


def _outputs_tf(tmp_path: Path, endpoint: dict[str, Any] | None) -> dict[str, Any]:
    text = yaml.safe_dump(_manifest(endpoint), sort_keys=False)
    loaded = LoadedManifest(parse_manifest(text), tmp_path / "stacklock.yaml", text)
    tree = render_tree(loaded, build_lock(loaded, {"s1": dict(AMIS)}))
    parsed: dict[str, Any] = hcl2.loads(tree["terraform/environments/prod/outputs.tf"])
    return {name.strip('"'): body for block in parsed["output"] for name, body in block.items()}


def test_the_root_exposes_the_load_balancer_with_an_endpoint(tmp_path: Path) -> None:
    outputs = _outputs_tf(tmp_path, ENDPOINT)
    assert outputs["endpoint_dns_name"]["value"] == "${module.gpu_nodes.endpoint_dns_name}"
    assert outputs["endpoint_target_group_arn"]["value"] == (
        "${module.gpu_nodes.endpoint_target_group_arn}")
    assert "https://<this>:8443" in outputs["endpoint_dns_name"]["description"]
    assert "hosts" in outputs  # the others stay


def test_without_an_endpoint_the_root_has_no_load_balancer_outputs(tmp_path: Path) -> None:
    outputs = _outputs_tf(tmp_path, None)
    assert not any(name.startswith("endpoint_") for name in outputs)
    assert {"hosts", "instance_ids", "ami_id", "instance_type", "security_group_id",
            "stack"} == set(outputs)
