"""Inventories: `hosts.yml` from `terraform output -json` (never from state files). Pure."""

from __future__ import annotations

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
    group: dict[str, Any] = {"hosts": entries, "vars": group_vars}
    doc = {"all": {"children": {env_name: group}}}
    body = yaml.safe_dump(doc, sort_keys=True, default_flow_style=False, width=1000)
    return f"---\n# {HOSTS_HEADER}\n{body}"
