"""Blast radius on AWS (issue 13, item 5): the plan is shown and approved, replaced instances
go create-before-destroy one batch at a time, destroy names what goes. Tested against plan
JSON in the shape `terraform show -json PLANFILE` produces (the AWS provider cannot be
installed here) and a fake Terraform that records what it was asked to do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hcl2
import pytest

from stacklock.core import blast
from stacklock.core.plan_json import resource_changes
from stacklock.core.render import repo_root
from stacklock.errors import InvalidInput, ToolFailed
from stacklock.flows.infra import apply_approved, destroy_approved

pytestmark = pytest.mark.unit

MOD = "module.gpu_nodes"
AMI_OLD, AMI_NEW = "ami-0123456789abcdef0", "ami-0fedcba9876543210"


def instance_change(index: int, actions: list[str]) -> dict[str, Any]:
    """One aws_instance entry of resource_changes (a new AMI forces replacement)."""
    before = None if actions == ["create"] else {
        "ami": AMI_OLD, "instance_type": "g6e.xlarge", "id": f"i-0000000000000000{index}",
        "tags": {"Name": f"acme-prod-{index + 1}"}}
    after = None if actions == ["delete"] else {
        "ami": AMI_NEW, "instance_type": "g6e.xlarge",
        "tags": {"Name": f"acme-prod-{index + 1}"}}
    return {
        "address": f"{MOD}.aws_instance.this[{index}]",
        "module_address": MOD, "mode": "managed", "type": "aws_instance", "name": "this",
        "index": index, "provider_name": "registry.terraform.io/hashicorp/aws",
        "change": {"actions": actions, "before": before, "after": after,
                   "after_unknown": {"id": True, "public_ip": True} if after else {},
                   "replace_paths": [["ami"]] if "delete" in actions and after else []},
        **({"action_reason": "replace_because_cannot_update"}
           if "delete" in actions and after else {}),
    }


def sg_update() -> dict[str, Any]:
    return {"address": f"{MOD}.aws_security_group.this", "module_address": MOD,
            "mode": "managed", "type": "aws_security_group", "name": "this",
            "change": {"actions": ["update"], "before": {"description": "a"},
                       "after": {"description": "b"}, "after_unknown": {}}}


def plan(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"format_version": "1.2", "terraform_version": "1.15.5",
            "resource_changes": list(entries), "output_changes": {}}


# create-before-destroy: Terraform plans a replacement as ["create", "delete"]
CBD = ["create", "delete"]
AMI_CHANGE = plan(*(instance_change(i, CBD) for i in (0, 1, 2, 10)), sg_update(),
                  instance_change(11, ["create"]))


# --------------------------------------------------------------------------- the module


def test_the_aws_module_replaces_instances_create_before_destroy() -> None:
    text = (repo_root() / "terraform" / "modules" / "gpu_node_aws" / "main.tf").read_text()
    parsed = hcl2.loads(text)
    instances = [r['"aws_instance"'] for r in parsed["resource"] if '"aws_instance"' in r]
    assert len(instances) == 1
    lifecycle = instances[0]['"this"']["lifecycle"]
    assert lifecycle[0]["create_before_destroy"] is True
    # the security group the instances use is create-before-destroy too (a dependency of a
    # create-before-destroy resource must be)
    groups = [r['"aws_security_group"'] for r in parsed["resource"]
              if '"aws_security_group"' in r]
    assert groups[0]['"this"']["lifecycle"][0]["create_before_destroy"] is True


# --------------------------------------------------------------------------- batching


def test_batches_take_replaced_instances_in_index_order() -> None:
    changes = resource_changes(AMI_CHANGE)
    assert blast.replaced_instances(changes) == [
        f"{MOD}.aws_instance.this[{i}]" for i in (0, 1, 2, 10)]
    assert blast.replacement_batches(changes, 1) == [
        [f"{MOD}.aws_instance.this[{i}]"] for i in (0, 1, 2, 10)]
    assert blast.replacement_batches(changes, 3) == [
        [f"{MOD}.aws_instance.this[{i}]" for i in (0, 1, 2)], [f"{MOD}.aws_instance.this[10]"]]
    # as many replacements as one batch: the approved plan is applied at once
    assert blast.replacement_batches(changes, 4) == []
    with pytest.raises(InvalidInput, match="--batch-size"):
        blast.replacement_batches(changes, 0)


def test_one_replacement_or_none_needs_no_batches() -> None:
    assert blast.replacement_batches(resource_changes(plan(instance_change(0, CBD))), 1) == []
    only_new = resource_changes(plan(instance_change(0, ["create"]), sg_update()))
    assert blast.replacement_batches(only_new, 1) == []
    # delete-then-create (a module without create_before_destroy) is a replacement too
    old_style = resource_changes(plan(instance_change(0, ["delete", "create"]),
                                      instance_change(1, ["delete", "create"])))
    assert len(blast.replacement_batches(old_style, 1)) == 2


def test_plan_lines_and_summary_as_plan_prints_them() -> None:
    changes = resource_changes(AMI_CHANGE)
    lines = blast.plan_lines(changes)
    assert f"   replace  {MOD}.aws_instance.this[0]" in lines
    assert f"    create  {MOD}.aws_instance.this[11]" in lines
    assert f"    update  {MOD}.aws_security_group.this" in lines
    assert blast.summary(changes) == "1 to create, 1 to update, 4 to replace"


def test_unapproved_changes_are_named() -> None:
    approved = resource_changes(AMI_CHANGE)
    later = resource_changes(plan(instance_change(0, CBD), instance_change(3, CBD),
                                  instance_change(11, ["delete"])))
    assert {(blast.action(c), c.address) for c in blast.unapproved(later, approved)} == {
        ("replace", f"{MOD}.aws_instance.this[3]"), ("delete", f"{MOD}.aws_instance.this[11]")}


# --------------------------------------------------------------------------- approval


def _approval(**kw: Any) -> str:
    args: dict[str, Any] = {"what": "apply", "env": "prod", "provider": "aws",
                            "auto_approve": False, "environ": {}, "stdin_tty": True}
    args.update(kw)
    return blast.approval(**args)


def test_aws_asks_on_a_terminal() -> None:
    assert _approval() == "ask"
    assert _approval(what="destroy") == "ask"


@pytest.mark.parametrize(("environ", "tty", "why"), [
    ({}, False, "stdin is not a terminal"),
    ({"CI": "true"}, True, "CI=true"),
    ({"CI": "1"}, False, "CI=1"),
])
def test_without_a_terminal_or_in_ci_aws_is_refused_with_exit_2(
        environ: dict[str, str], tty: bool, why: str) -> None:
    with pytest.raises(InvalidInput) as info:
        _approval(environ=environ, stdin_tty=tty)
    assert info.value.exit_code == 2
    assert why in info.value.message and "nothing was changed" in info.value.message
    assert info.value.problems[0].path == "--auto-approve"
    assert "--auto-approve" in info.value.problems[0].hint


def test_auto_approve_lab_static_and_implied_go_ahead() -> None:
    assert _approval(auto_approve=True, environ={"CI": "true"}, stdin_tty=False) == "go"
    assert _approval(provider="lab", environ={"CI": "true"}, stdin_tty=False) == "go"
    assert _approval(provider="static", stdin_tty=False) == "go"
    assert _approval(implied=True, stdin_tty=False) == "go"
    assert _approval(environ={"CI": "false"}) == "ask"


# --------------------------------------------------------------------------- the flows


class FakeTerraform:
    """Plans come from a queue of plan JSON documents; every call is recorded."""

    def __init__(self, *plans: dict[str, Any]) -> None:
        self.plans = list(plans)
        self.calls: list[tuple[str, Any]] = []

    def plan(self, *, detailed_exitcode: bool = True, out: Path | None = None,
             destroy: bool = False, target: list[str] | None = None, **_: Any) -> Any:
        from stacklock.adapters.terraform import PlanResult

        data = self.plans.pop(0)
        assert out is not None
        out.write_text("saved plan")
        self.calls.append(("plan", {"target": list(target or []), "destroy": destroy}))
        changes = bool(resource_changes(data))
        return PlanResult(changes=changes, exit_code=2 if changes else 0, plan_json=data,
                          plan_file=out)

    def apply(self, *, plan_file: Path | None = None, **kw: Any) -> None:
        assert plan_file is not None and plan_file.is_file(), "only saved plans are applied"
        self.calls.append(("apply", plan_file.name))

    def output(self) -> dict[str, Any]:
        self.calls.append(("output", None))
        return {"hosts": {}}


class FakeOrch:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.inventories: list[str] = []

    def write_inventory(self, env: str, outputs: dict[str, Any]) -> None:
        self.inventories.append(env)


def _targeted(i: int) -> dict[str, Any]:
    return plan(instance_change(i, CBD))


def test_apply_replaces_one_batch_at_a_time_with_an_inventory_refresh_each(
        tmp_path: Path) -> None:
    tf = FakeTerraform(AMI_CHANGE, _targeted(0), _targeted(1), _targeted(2), _targeted(10),
                       plan(sg_update(), instance_change(11, ["create"])))
    orch = FakeOrch(tmp_path)
    seen: list[list[str]] = []
    batches = apply_approved(orch, "prod", tf, provider="aws", auto_approve=True,
                             after_batch=lambda env, batch: seen.append(list(batch)))
    assert len(batches) == 4 and seen == batches
    plans = [c[1]["target"] for c in tf.calls if c[0] == "plan"]
    assert plans == [[], *([f"{MOD}.aws_instance.this[{i}]"] for i in (0, 1, 2, 10)), []]
    applied = [c[1] for c in tf.calls if c[0] == "apply"]
    assert applied == ["batch1-prod.tfplan", "batch2-prod.tfplan", "batch3-prod.tfplan",
                       "batch4-prod.tfplan", "rest-prod.tfplan"]
    # the inventory is refreshed after every batch and once at the end
    assert orch.inventories == ["prod"] * 5
    # each batch's apply is followed by the refresh before the next batch's plan
    kinds = [c[0] for c in tf.calls]
    assert kinds[1:4] == ["plan", "apply", "output"]
    assert list(tmp_path.glob("*.tfplan")) == []  # saved plans are removed


def test_a_single_replacement_applies_the_approved_plan_as_saved(tmp_path: Path) -> None:
    tf = FakeTerraform(plan(instance_change(0, CBD), sg_update()))
    orch = FakeOrch(tmp_path)
    assert apply_approved(orch, "dev", tf, provider="aws", auto_approve=True) == []
    assert [c for c in tf.calls if c[0] == "apply"] == [("apply", "apply-dev.tfplan")]
    assert orch.inventories == ["dev"]


def test_no_terminal_refuses_before_anything_is_applied(tmp_path: Path) -> None:
    tf = FakeTerraform(AMI_CHANGE)
    with pytest.raises(InvalidInput) as info:
        apply_approved(FakeOrch(tmp_path), "prod", tf, provider="aws", environ={},
                       stdin_tty=False)
    assert info.value.exit_code == 2
    assert [c[0] for c in tf.calls] == ["plan"]


def test_the_question_names_the_changes_and_no_applies_nothing(tmp_path: Path) -> None:
    asked: list[str] = []

    def no(question: str) -> bool:
        asked.append(question)
        return False

    tf = FakeTerraform(AMI_CHANGE)
    with pytest.raises(ToolFailed, match="not approved: nothing was changed"):
        apply_approved(FakeOrch(tmp_path), "prod", tf, provider="aws", confirm=no,
                       environ={}, stdin_tty=True)
    assert asked == ["apply prod: 1 to create, 1 to update, 4 to replace. Go ahead?"]
    assert [c[0] for c in tf.calls] == ["plan"]


def test_a_batch_plan_with_an_unapproved_change_stops_the_rollout(tmp_path: Path) -> None:
    surprise = plan(instance_change(0, CBD), instance_change(5, ["delete"]))
    tf = FakeTerraform(AMI_CHANGE, surprise)
    with pytest.raises(ToolFailed, match=r"plan changed since it was approved \(delete "):
        apply_approved(FakeOrch(tmp_path), "prod", tf, provider="aws", confirm=lambda q: True,
                       environ={}, stdin_tty=True)
    assert [c[0] for c in tf.calls if c[0] == "apply"] == []


def test_lab_and_static_apply_without_asking(tmp_path: Path) -> None:
    tf = FakeTerraform(plan(instance_change(0, CBD)))
    apply_approved(FakeOrch(tmp_path), "dev", tf, provider="static", environ={"CI": "true"},
                   stdin_tty=False)
    assert ("apply", "apply-dev.tfplan") in tf.calls


def test_destroy_names_what_goes_and_asks(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    doomed = plan(instance_change(0, ["delete"]), instance_change(1, ["delete"]),
                  {**sg_update(), "change": {"actions": ["delete"], "before": {}, "after": None}})
    tf = FakeTerraform(doomed)
    with pytest.raises(InvalidInput, match="refusing to destroy aws environment prod"):
        destroy_approved(FakeOrch(tmp_path), "prod", tf, provider="aws", environ={},
                         stdin_tty=False)
    assert tf.calls[0] == ("plan", {"target": [], "destroy": True})
    assert not [c for c in tf.calls if c[0] == "apply"]
    err = capsys.readouterr().err
    assert f"destroy  {MOD}.aws_instance.this[0]" in err
    assert f"destroy  {MOD}.aws_security_group.this" in err

    tf = FakeTerraform(doomed)
    gone = destroy_approved(FakeOrch(tmp_path), "prod", tf, provider="aws", auto_approve=True)
    assert len(gone) == 3 and ("apply", "destroy-prod.tfplan") in tf.calls
