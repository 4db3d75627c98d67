"""Inventories: `hosts.yml` from `terraform output -json` (never from state files). Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from stacklock.core.hostkeys import KNOWN_HOSTS, HostKeyError, ssh_args
from stacklock.errors import ToolFailed

HOSTS_HEADER = "written by stacklock apply from `terraform output -json` — do not edit"

#: the environment's trusted host keys, resolved by Ansible at run time, so that a plain
#: `ansible-playbook -i inventories/ENV ...` checks them too
KNOWN_HOSTS_FILE = "{{ inventory_dir }}/" + KNOWN_HOSTS

#: connection settings of every SSH host: the host key must be the one in the environment's
#: known_hosts (lab nodes' keys are collected through Docker after apply, others by `trust`)
SSH_ARGS = ssh_args(KNOWN_HOSTS_FILE)

#: host var: an AWS node's EC2 instance id (`terraform output` hosts[NAME].instance_id)
INSTANCE_ID_VAR = "stacklock_instance_id"
#: group var: the ARN of the target group of the environment's load balancer (the root output
#: `endpoint_target_group_arn`, rendered for an AWS environment with an endpoint); what
#: `stacklock rollout` takes each batch out of while it is configured
TARGET_GROUP_VAR = "stacklock_target_group_arn"


def hosts_yaml(env_name: str, provider: str, outputs: dict[str, Any], ssh_key: str | None) -> str:
    hosts = outputs.get("hosts")
    if not isinstance(hosts, dict):
        raise ToolFailed(f"environment {env_name}: terraform output has no `hosts` map")
    entries: dict[str, dict[str, Any]] = {}
    for name in sorted(hosts):
        h = hosts[name]
        entry: dict[str, Any] = {
            "ansible_host": h["address"],
            "ansible_user": h.get("user", "root"),
            "ansible_port": int(h.get("port", 22)),
        }
        if provider == "lab":
            entry["stacklock_container"] = h.get("container", name)
        if provider == "aws" and h.get("instance_id"):
            entry[INSTANCE_ID_VAR] = str(h["instance_id"])
        if h.get("connection") == "ssm":
            entry["ansible_connection"] = "community.aws.aws_ssm"
            entry["ansible_aws_ssm_instance_id"] = h.get("instance_id", name)
        elif h.get("proxy_jump"):
            try:
                entry["ansible_ssh_common_args"] = ssh_args(KNOWN_HOSTS_FILE, h["proxy_jump"])
            except HostKeyError as exc:
                raise ToolFailed(f"environment {env_name}, host {name}: {exc}") from None
            entry["stacklock_proxy_jump"] = h["proxy_jump"]
        entries[name] = entry
    group_vars: dict[str, Any] = {"ansible_ssh_common_args": SSH_ARGS}
    if provider == "lab" and ssh_key:
        group_vars.update({
            "ansible_ssh_private_key_file": ssh_key,
            "ansible_python_interpreter": "/usr/bin/python3",
        })
    arn = outputs.get("endpoint_target_group_arn")
    if provider == "aws" and arn:
        if not isinstance(arn, str):
            raise ToolFailed(f"environment {env_name}: terraform output "
                             f"endpoint_target_group_arn is not a string: {arn!r}")
        group_vars[TARGET_GROUP_VAR] = arn
    group: dict[str, Any] = {"hosts": entries, "vars": group_vars}
    doc = {"all": {"children": {env_name: group}}}
    body = yaml.safe_dump(doc, sort_keys=True, default_flow_style=False, width=1000)
    return f"---\n# {HOSTS_HEADER}\n{body}"


@dataclass(frozen=True)
class LoadBalancerTargets:
    """What a rollout needs of an AWS environment's load balancer, read back from hosts.yml:
    the target group's ARN and each node's instance id (host name -> id; a host without one
    is missing from the map)."""

    target_group_arn: str
    instance_ids: dict[str, str]

    @property
    def region(self) -> str:
        """The target group's region (arn:PARTITION:elasticloadbalancing:REGION:...)."""
        parts = self.target_group_arn.split(":")
        return parts[3] if len(parts) > 5 else ""


def load_balancer_targets(env_name: str, hosts_text: str) -> LoadBalancerTargets | None:
    """The load balancer of `env_name` as `hosts_yaml` wrote it into hosts.yml; None when the
    inventory names no target group (no endpoint, another provider, or written before
    `stacklock apply` recorded it)."""
    doc = yaml.safe_load(hosts_text) or {}
    group = ((doc.get("all") or {}).get("children") or {}).get(env_name) or {}
    arn = (group.get("vars") or {}).get(TARGET_GROUP_VAR)
    if not arn:
        return None
    hosts = group.get("hosts") or {}
    ids = {str(name): str(h[INSTANCE_ID_VAR]) for name, h in sorted(hosts.items())
           if isinstance(h, dict) and h.get(INSTANCE_ID_VAR)}
    return LoadBalancerTargets(str(arn), ids)
