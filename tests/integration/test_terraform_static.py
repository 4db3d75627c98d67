"""The static provider module with real Terraform: records hosts, a new stack fingerprint
shows up in plan as a replacement of every host record."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from stacklock.adapters.terraform import Terraform, TerraformEngine, resource_changes
from stacklock.errors import ToolFailed

pytestmark = pytest.mark.integration

FP1 = "sha256:" + "1" * 64
FP2 = "sha256:" + "2" * 64

HOSTS = [
    {"name": "gpu-a", "address": "10.0.0.11", "user": "ops", "port": 22},
    {"name": "gpu-b", "address": "10.0.0.12", "user": "ops", "port": 2222},
]


def _hcl(value: object) -> str:
    # JSON is valid HCL for strings, numbers, lists and objects with quoted keys.
    return json.dumps(value)


def write_root(root: Path, module: Path, fingerprint: str, hosts: list[dict[str, object]]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "main.tf").write_text(
        f"""module "nodes" {{
  source            = "{os.path.relpath(module, root)}"
  environment       = "staging"
  project           = "stacklock-test"
  stack_name        = "lab-2026-11"
  stack_fingerprint = "{fingerprint}"
  hosts             = {_hcl(hosts)}
}}

output "hosts" {{
  value = module.nodes.hosts
}}
""",
        encoding="utf-8",
    )


def test_static_module_lifecycle(tmp_path: Path, repo_root: Path, terraform_engine: TerraformEngine) -> None:
    module = repo_root / "terraform" / "modules" / "gpu_node_static"
    root = tmp_path / "root"
    write_root(root, module, FP1, HOSTS)
    tf = Terraform(root, engine=terraform_engine)

    tf.init()
    tf.validate()
    first = tf.plan()
    assert first.changes is True
    assert first.exit_code == 2
    assert first.plan_json is not None
    created = resource_changes(first.plan_json)
    assert [(c.address, c.actions) for c in created] == [
        ('module.nodes.terraform_data.host["gpu-a"]', ("create",)),
        ('module.nodes.terraform_data.host["gpu-b"]', ("create",)),
    ]

    tf.apply()
    hosts = tf.output()["hosts"]
    assert hosts == {
        "gpu-a": {
            "address": "10.0.0.11",
            "user": "ops",
            "port": 22,
            "environment": "staging",
            "fingerprint": FP1,
        },
        "gpu-b": {
            "address": "10.0.0.12",
            "user": "ops",
            "port": 2222,
            "environment": "staging",
            "fingerprint": FP1,
        },
    }

    again = tf.plan()
    assert again.changes is False
    assert again.exit_code == 0
    assert again.plan_json is not None
    assert resource_changes(again.plan_json) == []

    write_root(root, module, FP2, HOSTS)
    changed = tf.plan()
    assert changed.changes is True
    assert changed.plan_json is not None
    replaced = resource_changes(changed.plan_json)
    assert [c.address for c in replaced] == [
        'module.nodes.terraform_data.host["gpu-a"]',
        'module.nodes.terraform_data.host["gpu-b"]',
    ]
    for change in replaced:
        assert change.actions in (("delete", "create"), ("create", "delete"))
        assert change.is_replace
        assert "triggers_replace" in change.changed
        assert "input" in change.changed

    tf.destroy()
    assert tf.output() == {}
    assert tf.plan().changes is True  # nothing left: everything would be created again


def test_fmt_check_reports_without_rewriting(
    tmp_path: Path, repo_root: Path, terraform_engine: TerraformEngine
) -> None:
    module = repo_root / "terraform" / "modules" / "gpu_node_static"
    lab_module = repo_root / "terraform" / "modules" / "gpu_node_lab"
    tf = Terraform(module, engine=terraform_engine)
    assert tf.fmt_check([module, lab_module]) == []

    ugly = tmp_path / "ugly.tf"
    text = 'resource "terraform_data" "x" {\ninput = "a"\n}\n'
    ugly.write_text(text, encoding="utf-8")
    assert Terraform(tmp_path, engine=terraform_engine).fmt_check([tmp_path]) == [str(ugly)]
    assert ugly.read_text(encoding="utf-8") == text  # -check never rewrites

    assert Terraform(tmp_path, engine=terraform_engine).fmt_write(tmp_path) == [str(ugly)]
    assert ugly.read_text(encoding="utf-8") != text
    assert Terraform(tmp_path, engine=terraform_engine).fmt_check([tmp_path]) == []


def test_invalid_variable_is_a_tool_failure_with_terraforms_message(
    tmp_path: Path, repo_root: Path, terraform_engine: TerraformEngine
) -> None:
    module = repo_root / "terraform" / "modules" / "gpu_node_static"
    root = tmp_path / "root"
    write_root(root, module, "not-a-fingerprint", HOSTS)
    tf = Terraform(root, engine=terraform_engine)
    tf.init()
    with pytest.raises(ToolFailed) as info:
        tf.plan()
    assert info.value.exit_code == 3
    assert "stack_fingerprint must look like sha256" in info.value.message


def test_duplicate_host_names_are_rejected(
    tmp_path: Path, repo_root: Path, terraform_engine: TerraformEngine
) -> None:
    module = repo_root / "terraform" / "modules" / "gpu_node_static"
    root = tmp_path / "root"
    write_root(root, module, FP1, [HOSTS[0], {**HOSTS[1], "name": "gpu-a"}])
    tf = Terraform(root, engine=terraform_engine)
    tf.init()
    with pytest.raises(ToolFailed, match="host names must be unique"):
        tf.plan()
