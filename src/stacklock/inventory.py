"""Inventories: `hosts.yml` from `terraform output -json` (never from state files). Pure."""

from __future__ import annotations

from typing import Any

import yaml

from stacklock.errors import ToolFailed

HOSTS_HEADER = "written by stacklock apply from `terraform output -json` — do not edit"

#: connection settings for lab nodes (their host keys are new on every create)
LAB_SSH_ARGS = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"


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
            entry["ansible_ssh_common_args"] = f"-o ProxyJump={h['proxy_jump']}"
        entries[name] = entry
    group: dict[str, Any] = {"hosts": entries}
    if provider == "lab" and ssh_key:
        group["vars"] = {
            "ansible_ssh_private_key_file": ssh_key,
            "ansible_ssh_common_args": LAB_SSH_ARGS,
            "ansible_python_interpreter": "/usr/bin/python3",
        }
    doc = {"all": {"children": {env_name: group}}}
    body = yaml.safe_dump(doc, sort_keys=True, default_flow_style=False, width=1000)
    return f"---\n# {HOSTS_HEADER}\n{body}"
