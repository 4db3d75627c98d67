"""hosts.yml from `terraform output -json` values."""

from __future__ import annotations

import pytest
import yaml

from stacklock.core.inventory import hosts_yaml
from stacklock.errors import ToolFailed

pytestmark = pytest.mark.unit


def test_static_hosts_sorted_with_connection_settings() -> None:
    out = {"hosts": {"b": {"address": "192.0.2.2", "user": "ops", "port": 2222},
                     "a": {"address": "192.0.2.1", "user": "root", "port": 22}}}
    doc = yaml.safe_load(hosts_yaml("prod", "static", out, None))
    hosts = doc["all"]["children"]["prod"]["hosts"]
    assert list(hosts) == ["a", "b"]
    assert hosts["b"] == {"ansible_host": "192.0.2.2", "ansible_user": "ops", "ansible_port": 2222}
    # every SSH host is checked against the environment's known_hosts, resolved by Ansible
    args = doc["all"]["children"]["prod"]["vars"]["ansible_ssh_common_args"]
    assert args == ('-o StrictHostKeyChecking=yes '
                    '-o UserKnownHostsFile="{{ inventory_dir }}/known_hosts"')


def test_lab_group_vars_carry_key_and_container() -> None:
    out = {"hosts": {"n1": {"address": "10.213.1.2", "container": "n1"}}}
    doc = yaml.safe_load(hosts_yaml("dev", "lab", out, "{{ inventory_dir }}/k"))
    group = doc["all"]["children"]["dev"]
    assert group["hosts"]["n1"]["stacklock_container"] == "n1"
    assert group["vars"]["ansible_ssh_private_key_file"] == "{{ inventory_dir }}/k"
    args = group["vars"]["ansible_ssh_common_args"]
    assert "StrictHostKeyChecking=yes" in args
    assert 'UserKnownHostsFile="{{ inventory_dir }}/known_hosts"' in args
    assert "StrictHostKeyChecking=no" not in args and "/dev/null" not in args


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
    args = hosts["i2"]["ansible_ssh_common_args"]
    known = '-o UserKnownHostsFile="{{ inventory_dir }}/known_hosts"'
    # the target and the jump host (its own ssh, in the ProxyCommand) check the same file
    assert args.startswith(f"-o StrictHostKeyChecking=yes {known} -o ProxyCommand='ssh ")
    assert args.count("StrictHostKeyChecking=yes") == 2 and args.count(known) == 2
    assert args.endswith("-p 22 -W [%h]:%p ops@bastion.example.com'")
    assert "ProxyJump" not in args  # -J would not pass the options on to the jump host
    assert hosts["i2"]["stacklock_proxy_jump"] == "ops@bastion.example.com"
    assert "ansible_ssh_common_args" not in hosts["i1"]  # SSM: no SSH


def test_rendered_args_parse_like_ansible_does() -> None:
    import shlex

    out = {"hosts": {"i2": {"address": "10.0.0.6", "proxy_jump": "ops@bastion:2200"}}}
    hosts = yaml.safe_load(hosts_yaml("prod", "aws", out, None))["all"]["children"]["prod"]
    argv = shlex.split(hosts["hosts"]["i2"]["ansible_ssh_common_args"].replace(
        "{{ inventory_dir }}", "/srv/my inv/prod"))
    assert argv[:4] == ["-o", "StrictHostKeyChecking=yes", "-o",
                        "UserKnownHostsFile=/srv/my inv/prod/known_hosts"]
    proxy = argv[5].removeprefix("ProxyCommand=")
    assert shlex.split(proxy) == [
        "ssh", "-o", "StrictHostKeyChecking=yes", "-o",
        "UserKnownHostsFile=/srv/my inv/prod/known_hosts", "-o", "BatchMode=yes",
        "-p", "2200", "-W", "[%h]:%p", "ops@bastion"]


def test_bad_jump_host_is_a_tool_failure() -> None:
    out = {"hosts": {"i2": {"address": "10.0.0.6", "proxy_jump": "a@b,c@d"}}}
    with pytest.raises(ToolFailed, match="one jump host"):
        hosts_yaml("prod", "aws", out, None)


def test_missing_hosts_output_is_a_tool_failure() -> None:
    with pytest.raises(ToolFailed):
        hosts_yaml("dev", "static", {}, None)
