"""hosts.yml from `terraform output -json` values."""

from __future__ import annotations

import pytest
import yaml

from stacklock.errors import ToolFailed
from stacklock.inventory import hosts_yaml

pytestmark = pytest.mark.unit


def test_static_hosts_sorted_with_connection_settings() -> None:
    out = {"hosts": {"b": {"address": "192.0.2.2", "user": "ops", "port": 2222},
                     "a": {"address": "192.0.2.1", "user": "root", "port": 22}}}
    doc = yaml.safe_load(hosts_yaml("prod", "static", out, None))
    hosts = doc["all"]["children"]["prod"]["hosts"]
    assert list(hosts) == ["a", "b"]
    assert hosts["b"] == {"ansible_host": "192.0.2.2", "ansible_user": "ops", "ansible_port": 2222}


def test_lab_group_vars_carry_key_and_container() -> None:
    out = {"hosts": {"n1": {"address": "10.213.1.2", "container": "n1"}}}
    doc = yaml.safe_load(hosts_yaml("dev", "lab", out, "{{ inventory_dir }}/k"))
    group = doc["all"]["children"]["dev"]
    assert group["hosts"]["n1"]["stacklock_container"] == "n1"
    assert group["vars"]["ansible_ssh_private_key_file"] == "{{ inventory_dir }}/k"


def test_aws_ssm_and_bastion() -> None:
    out = {"hosts": {
        "i1": {"address": "10.0.0.5", "user": "ubuntu", "connection": "ssm",
               "instance_id": "i-0abc"},
        "i2": {"address": "10.0.0.6", "user": "ubuntu", "connection": "ssh",
               "proxy_jump": "ops@bastion.example.com"},
    }}
    hosts = yaml.safe_load(hosts_yaml("prod", "aws", out, None))["all"]["children"]["prod"]["hosts"]
    assert hosts["i1"]["ansible_connection"] == "community.aws.aws_ssm"
    assert hosts["i1"]["ansible_aws_ssm_instance_id"] == "i-0abc"
    assert hosts["i2"]["ansible_ssh_common_args"] == "-o ProxyJump=ops@bastion.example.com"


def test_missing_hosts_output_is_a_tool_failure() -> None:
    with pytest.raises(ToolFailed):
        hosts_yaml("dev", "static", {}, None)
