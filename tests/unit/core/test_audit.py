"""The audit core (stacklock.audit): findings from plan JSON, parity reports, cloud and check runs."""

from __future__ import annotations

import copy
import dataclasses
import json
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from stacklock.adapters.aws import Instance
from stacklock.core.audit import (
    CLOUD,
    CONFIGURATION,
    DETAIL_CONFIG,
    DETAIL_OUTSIDE,
    DRIFT,
    ERROR,
    INFRASTRUCTURE,
    OK,
    STACK,
    CloudData,
    DeepData,
    Finding,
    PlanPair,
    Probes,
    changed_tasks_from_output,
    cloud_findings,
    configuration_errors,
    configuration_findings,
    infrastructure_findings,
    report_from_dict,
    run_audit,
    stack_errors,
    stack_findings,
    state_instances_from_show,
)
from stacklock.core.parity import Unreachable, compare, expected_from_vars
from stacklock.core.report import report_dict
from stacklock.errors import ExitCode, InvalidInput, ToolFailed

pytestmark = pytest.mark.unit

FACTS = Path(__file__).resolve().parents[2] / "fixtures" / "facts"
ENVS = ("dev", "staging", "prod")

# --------------------------------------------------------------------------- plan JSON
# Shapes as `terraform show -json` (format 1.2) writes them; CONFIG_REPLACE is a real plan of
# a terraform_data node whose fingerprint trigger changed (Terraform 1.11), trimmed.

NODE = 'terraform_data.node["lab-dev-1"]'
CONFIG_REPLACE: dict[str, Any] = {
    "format_version": "1.2",
    "terraform_version": "1.11.4",
    "resource_changes": [{
        "address": NODE,
        "mode": "managed",
        "type": "terraform_data",
        "name": "node",
        "index": "lab-dev-1",
        "change": {
            "actions": ["delete", "create"],
            "before": {"id": "a82f7030", "input": "x", "output": "x",
                       "triggers_replace": {"fingerprint": "a"}},
            "after": {"input": "x", "triggers_replace": {"fingerprint": "b"}},
            "after_unknown": {"id": True, "output": True, "triggers_replace": {}},
            "before_sensitive": {"triggers_replace": {}},
            "after_sensitive": {"triggers_replace": {}},
            "replace_paths": [["triggers_replace"]],
        },
        "action_reason": "replace_because_cannot_update",
    }],
}

AWS_NODE = 'module.node.aws_instance.this["prod-1"]'


def aws_change(actions: list[str], before: dict[str, Any] | None,
               after: dict[str, Any] | None, address: str = AWS_NODE) -> dict[str, Any]:
    return {
        "address": address,
        "mode": "managed",
        "type": "aws_instance",
        "name": "this",
        "change": {"actions": actions, "before": before, "after": after,
                   "after_unknown": {}, "before_sensitive": {}, "after_sensitive": {}},
    }


LIVE_TYPE = {"instance_type": "g5.2xlarge", "ami": "ami-0aaa", "id": "i-1"}
STATE_TYPE = {"instance_type": "g5.xlarge", "ami": "ami-0aaa", "id": "i-1"}

#: instance type changed in the console: refresh-only sees it, the plan would change it back
REFRESH_DRIFT: dict[str, Any] = {
    "format_version": "1.2",
    "resource_drift": [aws_change(["update"], STATE_TYPE, LIVE_TYPE)],
}
PLAN_UNDO_DRIFT: dict[str, Any] = {
    "format_version": "1.2",
    "resource_drift": [aws_change(["update"], STATE_TYPE, LIVE_TYPE)],
    "resource_changes": [aws_change(["update"], LIVE_TYPE, STATE_TYPE)],
}


def test_config_change_is_not_called_drift_outside() -> None:
    found = infrastructure_findings("dev", CONFIG_REPLACE, {"format_version": "1.2"})
    assert len(found) == 1
    f = found[0]
    assert (f.environment, f.kind, f.component, f.subject) == ("dev", INFRASTRUCTURE,
                                                              "terraform_data", NODE)
    assert f.detail.startswith(DETAIL_CONFIG)
    assert "replace" in f.detail and "triggers_replace" in f.detail
    # the cause is shown, not the ids recomputed by the replacement
    assert f.expected == 'triggers_replace={"fingerprint":"a"}'
    assert f.actual == 'triggers_replace={"fingerprint":"b"}'


def test_drift_outside_terraform_reported_once_with_what_apply_would_do() -> None:
    found = infrastructure_findings("prod", PLAN_UNDO_DRIFT, REFRESH_DRIFT)
    assert len(found) == 1
    f = found[0]
    assert f.detail.startswith(DETAIL_OUTSIDE)
    assert "instance_type" in f.detail and "apply would update it" in f.detail
    assert f.component == "aws_instance" and f.subject == AWS_NODE
    assert f.expected == "instance_type=g5.xlarge"  # as recorded in the state
    assert f.actual == "instance_type=g5.2xlarge"  # as it is now


def test_drift_read_from_the_normal_plan_when_no_refresh_only_plan() -> None:
    found = infrastructure_findings("prod", PLAN_UNDO_DRIFT, None)
    assert [f.detail.split(":")[0] for f in found] == [DETAIL_OUTSIDE]


def test_resource_deleted_outside_terraform() -> None:
    gone = aws_change(["delete"], STATE_TYPE, None)
    plan = {"format_version": "1.2", "resource_drift": [gone],
            "resource_changes": [aws_change(["create"], None, STATE_TYPE)]}
    found = infrastructure_findings("prod", plan, {"format_version": "1.2",
                                                   "resource_drift": [gone]})
    assert len(found) == 1
    assert found[0].detail == f"{DETAIL_OUTSIDE}: deleted; apply would create it"
    assert found[0].actual is None


def test_world_and_code_changes_are_separated() -> None:
    other = 'module.node.aws_instance.this["prod-2"]'
    plan = copy.deepcopy(PLAN_UNDO_DRIFT)
    plan["resource_changes"].append(aws_change(
        ["update"], {"tags": {"stack": "a"}}, {"tags": {"stack": "b"}}, address=other))
    found = infrastructure_findings("prod", plan, REFRESH_DRIFT)
    by_subject = {f.subject: f.detail for f in found}
    assert by_subject[AWS_NODE].startswith(DETAIL_OUTSIDE)
    assert by_subject[other].startswith(DETAIL_CONFIG)
    assert "(tags)" in by_subject[other]


def test_no_op_plan_has_no_findings_even_with_output_changes() -> None:
    """Some Terraform versions exit 2 with "No changes": only the JSON decides."""
    plan = {
        "format_version": "1.2",
        "resource_changes": [aws_change(["no-op"], STATE_TYPE, STATE_TYPE),
                             aws_change(["read"], None, STATE_TYPE, "data.aws_ami.x")],
        "output_changes": {"ids": {"actions": ["update"], "before": [], "after": ["i-1"]}},
    }
    assert infrastructure_findings("dev", plan, {"format_version": "1.2"}) == []


def test_sensitive_values_never_reach_the_report() -> None:
    change = aws_change(["update"], {"user_data": "s3cr3t-one"}, {"user_data": "s3cr3t-two"})
    change["change"]["before_sensitive"] = {"user_data": True}
    change["change"]["after_sensitive"] = {"user_data": True}
    found = infrastructure_findings("dev", {"format_version": "1.2",
                                            "resource_changes": [change]})
    text = json.dumps([f.as_dict() for f in found])
    assert "s3cr3t" not in text
    assert found[0].expected == "user_data=(sensitive)"


@pytest.mark.parametrize("bad", [{"resource_changes": []}, [], "No changes.",
                                 {"format_version": "1.2", "errored": True}])
def test_not_plan_json_is_invalid_input(bad: Any) -> None:
    with pytest.raises(InvalidInput, match="plan"):
        infrastructure_findings("dev", bad)


# --------------------------------------------------------------------------- stack


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FACTS / name).read_text(encoding="utf-8"))
    return data


def parity(mutate: Any = None, unreachable: str | None = None) -> dict[str, Any]:
    node, gvars = load("lab-node.json"), load("lab-group-vars.json")
    expected = {e: expected_from_vars(dict(gvars, stacklock_environment=e)) for e in ENVS}
    facts: dict[str, dict[str, Any]] = {e: {f"{e}-1": copy.deepcopy(node)} for e in ENVS}
    if mutate:
        mutate(facts)
    if unreachable:
        env = unreachable.split("-")[0]
        facts[env][unreachable] = Unreachable("ssh: connect to host 10.213.3.2 port 22: "
                                              "No route to host")
    return report_dict(compare(expected, facts))


def docker_changed(facts: dict[str, dict[str, Any]]) -> None:
    node = facts["prod"]["prod-1"]
    node["docker"]["version"] = "24.0.5"
    node["packages"]["docker.io"]["version"] = "24.0.5+dfsg1-1"


def test_stack_findings_from_a_parity_report() -> None:
    found = stack_findings(parity(docker_changed))
    keyed = {(f.environment, f.subject, f.component): f for f in found}
    f = keyed[("prod", "prod-1", "docker.version")]
    assert (f.kind, f.expected, f.actual) == (STACK, "20.10.24", "24.0.5")
    assert f.detail.startswith("differs from the lock")
    assert ("prod", "prod-1", "package.docker.io") in keyed
    assert {f.environment for f in found} == {"prod"}


def test_stack_findings_work_from_a_saved_report(tmp_path: Path) -> None:
    saved = tmp_path / "verify.json"
    saved.write_text(json.dumps(parity(docker_changed)), encoding="utf-8")
    found = stack_findings(json.loads(saved.read_text(encoding="utf-8")))
    assert any(f.component == "docker.version" for f in found)


def test_clean_parity_report_has_no_findings_and_no_errors() -> None:
    report = parity()
    assert report["exit_code"] == 0
    assert stack_findings(report) == []
    assert stack_errors(report) == {}


def test_unreachable_node_is_an_error_not_a_match() -> None:
    errors = stack_errors(parity(unreachable="staging-2"))
    assert list(errors) == ["staging"]
    assert "staging-2 unreachable" in errors["staging"][0]
    assert "No route to host" in errors["staging"][0]


def test_environment_without_nodes_is_an_error() -> None:
    def empty_dev(facts: dict[str, dict[str, Any]]) -> None:
        facts["dev"] = {}
    errors = stack_errors(parity(empty_dev))
    assert "no nodes" in errors["dev"][0]


def test_parity_report_of_another_schema_is_rejected() -> None:
    with pytest.raises(InvalidInput, match=r"stacklock\.parity/v1"):
        stack_findings({"schema": "something/v9", "deviations": []})


# --------------------------------------------------------------------------- cloud


def instance(iid: str, state: str = "running", itype: str = "g5.xlarge",
             ami: str = "ami-0aaa", name: str = "", fingerprint: str = "sha256:f") -> dict[str, Any]:
    tags = {"project": "demo", "environment": "prod", "fingerprint": fingerprint}
    if name:
        tags["Name"] = name
    return Instance(instance_id=iid, region="eu-west-1", state=state, instance_type=itype,
                    image_id=ami, tags=tags).as_dict()


def test_cloud_clean() -> None:
    live = [instance("i-1", name="prod-1"), instance("i-2", name="prod-2")]
    state = [{"instance_id": "i-1"}, {"id": "i-2"}]
    assert cloud_findings("prod", state, live, "g5.xlarge", "ami-0aaa",
                          expected_fingerprint="sha256:f") == []


def test_cloud_unmanaged_missing_and_mismatch() -> None:
    live = [
        instance("i-1", name="prod-1"),
        instance("i-2", state="terminated", name="prod-2"),
        instance("i-3", itype="g5.2xlarge", name="prod-3"),
        instance("i-4", ami="ami-0bbb", name="prod-4"),
        instance("i-9", name="hand-made"),
        instance("i-8", state="terminated"),  # gone and never managed: nothing to say
        instance("i-6", state="stopped", name="prod-6"),
    ]
    state = [{"instance_id": i} for i in ("i-1", "i-2", "i-3", "i-4", "i-5", "i-6")]
    found = cloud_findings("prod", state, live, "g5.xlarge", "ami-0aaa")
    got = {(f.component, f.subject) for f in found}
    assert got == {
        ("unmanaged", "hand-made (i-9)"),
        ("missing", "prod-2 (i-2)"),
        ("missing", "i-5"),
        ("instance_type", "prod-3 (i-3)"),
        ("ami", "prod-4 (i-4)"),
        ("state", "prod-6 (i-6)"),
    }
    by = {f.component + f.subject: f for f in found}
    assert (by["instance_typeprod-3 (i-3)"].expected,
            by["instance_typeprod-3 (i-3)"].actual) == ("g5.xlarge", "g5.2xlarge")
    assert by["missingprod-2 (i-2)"].actual == "terminated"
    assert by["missingi-5"].actual == "absent"
    assert all(f.kind == CLOUD and f.environment == "prod" for f in found)


def test_cloud_fingerprint_tag() -> None:
    live = [instance("i-1", fingerprint="sha256:old")]
    found = cloud_findings("prod", [{"instance_id": "i-1"}], live, None, None,
                           expected_fingerprint="sha256:new")
    assert [(f.component, f.expected, f.actual) for f in found] == [
        ("fingerprint", "sha256:new", "sha256:old")]


def test_state_instances_from_show_json() -> None:
    state = {"values": {"root_module": {"child_modules": [{"resources": [
        {"address": 'module.node.aws_instance.this["prod-1"]', "mode": "managed",
         "type": "aws_instance", "values": {"id": "i-1", "instance_type": "g5.xlarge",
                                            "ami": "ami-0aaa", "tags": {"Name": "prod-1"}}},
        {"address": "module.node.aws_security_group.x", "mode": "managed",
         "type": "aws_security_group", "values": {"id": "sg-1"}},
    ]}]}}}
    got = state_instances_from_show(state)
    assert [(i["instance_id"], i["image_id"]) for i in got] == [("i-1", "ami-0aaa")]


# --------------------------------------------------------------------------- configuration

CHECK_OUTPUT = """\
PLAY [Configure GPU nodes] *****************************************************

TASK [Gathering Facts] *********************************************************
ok: [lab-dev-1]

TASK [docker : Install pinned Docker packages] *********************************
--- before
+++ after
changed: [lab-dev-1]
ok: [lab-dev-2]

TASK [torchserve : Write config.properties] ************************************
changed: [lab-dev-2] => (item=config.properties)
changed: [lab-dev-1 -> localhost]

RUNNING HANDLER [torchserve : Restart torchserve] ******************************
changed: [lab-dev-1]

PLAY RECAP *********************************************************************
lab-dev-1                  : ok=9    changed=3    unreachable=0    failed=0
lab-dev-2                  : ok=9    changed=1    unreachable=0    failed=0
"""


def test_changed_tasks_from_check_output() -> None:
    assert changed_tasks_from_output(CHECK_OUTPUT) == {
        "lab-dev-1": ["docker : Install pinned Docker packages",
                      "torchserve : Write config.properties",
                      "torchserve : Restart torchserve"],
        "lab-dev-2": ["torchserve : Write config.properties"],
    }


def test_configuration_findings_per_host_and_task() -> None:
    recap = {"lab-dev-1": {"ok": 9, "changed": 3}, "lab-dev-2": {"ok": 9, "changed": 1},
             "lab-dev-3": {"ok": 9, "changed": 2}}
    found = configuration_findings("dev", recap, changed_tasks_from_output(CHECK_OUTPUT))
    got = [(f.subject, f.component) for f in found]
    assert ("lab-dev-1", "docker : Install pinned Docker packages") in got
    assert ("lab-dev-2", "torchserve : Write config.properties") in got
    # counted but not named: still a finding
    assert ("lab-dev-3", "(tasks)") in got
    assert len(found) == 5
    assert all(f.kind == CONFIGURATION for f in found)


def test_configuration_errors() -> None:
    recap = {"a": {"ok": 1, "changed": 0, "unreachable": 1, "failed": 0},
             "b": {"ok": 1, "changed": 0, "unreachable": 0, "failed": 2},
             "c": {"ok": 5, "changed": 0, "unreachable": 0, "failed": 0}}
    errors = configuration_errors("dev", recap)
    assert len(errors) == 2 and "a unreachable" in errors[0] and "b: 2 task(s)" in errors[1]
    assert configuration_errors("dev", {}) != []


# --------------------------------------------------------------------------- run_audit


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def mono(self) -> float:
        self.t += 0.5
        return self.t


def fixed_now() -> datetime:
    return datetime(2026, 11, 23, 17, 0, 0, tzinfo=UTC)


CLEAN_PLAN = PlanPair({"format_version": "1.2"}, {"format_version": "1.2"})


def probes(*, plans: Any = None, parity_report: Any = None, cloud: Any = None,
           deep: Any = None) -> Probes:
    def plan_probe(env: str) -> PlanPair | None:
        value = (plans or {}).get(env, CLEAN_PLAN)
        if isinstance(value, BaseException):
            raise value
        return value  # type: ignore[no-any-return]

    def parity_probe(envs: Sequence[str]) -> dict[str, Any]:
        if isinstance(parity_report, BaseException):
            raise parity_report
        return parity_report if parity_report is not None else parity()

    return Probes(plans=plan_probe, parity=parity_probe, cloud=cloud, deep=deep)


def audit(p: Probes, envs: Sequence[str] = ENVS, **kw: Any) -> Any:
    clock = Clock()
    return run_audit(envs, p, clock=fixed_now, monotonic=clock.mono, **kw)


def test_clean_audit_exit_0_and_every_kind_audited() -> None:
    report = audit(probes())
    assert report.exit_code == ExitCode.OK
    assert [e.status for e in report.environments] == [OK, OK, OK]
    assert all(e.audited == (INFRASTRUCTURE, STACK) for e in report.environments)
    assert report.findings == ()
    assert report.started_at == "2026-11-23T17:00:00Z"
    assert report.duration_s > 0
    assert report.verdict() == "no drift"


def test_drift_exit_1_attributed_to_env_and_kind() -> None:
    report = audit(probes(plans={"staging": PlanPair(CONFIG_REPLACE, None)},
                          parity_report=parity(docker_changed)))
    assert report.exit_code == ExitCode.DEVIATION
    assert report.environment("dev").status == OK
    staging, prod = report.environment("staging"), report.environment("prod")
    assert staging.status == DRIFT and [f.kind for f in staging.findings] == [INFRASTRUCTURE]
    assert prod.status == DRIFT and {f.kind for f in prod.findings} == {STACK}
    assert report.verdict() == "DRIFT in staging, prod"


def test_probe_failure_is_an_error_never_no_drift_and_3_wins() -> None:
    report = audit(probes(plans={"dev": ToolFailed("terraform plan failed: no state")},
                          parity_report=parity(docker_changed)))
    dev = report.environment("dev")
    assert dev.status == ERROR
    assert dev.errors[0].kind == INFRASTRUCTURE and "no state" in dev.errors[0].message
    assert INFRASTRUCTURE not in dev.audited and STACK in dev.audited
    assert report.environment("prod").status == DRIFT
    assert report.exit_code == ExitCode.FAILED


def test_parity_failure_marks_stack_as_not_audited_everywhere() -> None:
    report = audit(probes(parity_report=ToolFailed("ansible-playbook verify.yml failed")))
    assert report.exit_code == ExitCode.FAILED
    for env in report.environments:
        assert [e.kind for e in env.errors] == [STACK]
        assert STACK not in env.audited and INFRASTRUCTURE in env.audited


def test_unreachable_node_makes_its_environment_an_error() -> None:
    report = audit(probes(parity_report=parity(unreachable="prod-2")))
    assert report.environment("prod").status == ERROR
    assert report.environment("dev").status == OK
    assert report.exit_code == ExitCode.FAILED


def test_environment_missing_from_the_parity_report() -> None:
    report = audit(probes(), envs=("dev", "qa"))
    assert report.environment("qa").status == ERROR
    assert "not in the parity report" in report.environment("qa").errors[0].message


def test_cloud_and_deep_probes() -> None:
    def cloud(env: str) -> CloudData | None:
        if env != "prod":
            return None  # not an AWS environment: not applicable
        return CloudData([{"instance_id": "i-1"}], [instance("i-1"), instance("i-9")],
                         "g5.xlarge", "ami-0aaa")

    def deep(env: str) -> DeepData:
        if env == "staging":
            return DeepData({"staging-1": {"ok": 1, "changed": 0, "unreachable": 1}})
        return DeepData({f"{env}-1": {"ok": 3, "changed": 1}},
                        {f"{env}-1": ["docker : Install pinned Docker packages"]})

    report = audit(probes(cloud=cloud, deep=deep))
    dev, staging, prod = report.environments
    assert dev.audited == (INFRASTRUCTURE, STACK, CONFIGURATION)
    assert [f.kind for f in dev.findings] == [CONFIGURATION]
    assert staging.status == ERROR and staging.errors[0].kind == CONFIGURATION
    assert prod.audited == (INFRASTRUCTURE, STACK, CLOUD, CONFIGURATION)
    assert ("unmanaged", CLOUD) in {(f.component, f.kind) for f in prod.findings}


def test_nothing_applicable_is_an_error() -> None:
    report = run_audit(["dev"], Probes())
    assert report.environment("dev").status == ERROR
    assert report.exit_code == ExitCode.FAILED


def test_bugs_in_probes_are_not_swallowed() -> None:
    def broken(env: str) -> PlanPair:
        raise KeyError("bug")
    with pytest.raises(KeyError):
        run_audit(["dev"], Probes(plans=broken))


def test_no_environment_is_invalid_input() -> None:
    with pytest.raises(InvalidInput):
        run_audit([], probes())
    with pytest.raises(InvalidInput):
        run_audit(["dev", "dev"], probes())


def test_parallel_workers_keep_order_and_results() -> None:
    seen: set[str] = set()
    lock = threading.Lock()
    barrier = threading.Barrier(3, timeout=10)

    def plans(env: str) -> PlanPair:
        barrier.wait()  # all three environments in flight at once
        with lock:
            seen.add(threading.current_thread().name)
        return PlanPair(CONFIG_REPLACE if env == "prod" else {"format_version": "1.2"})

    report = run_audit(list(ENVS), Probes(plans=plans), workers=3)
    assert [e.environment for e in report.environments] == list(ENVS)
    assert len(seen) == 3
    assert [e.status for e in report.environments] == [OK, OK, DRIFT]


def test_progress_lines() -> None:
    lines: list[str] = []
    audit(probes(plans={"dev": ToolFailed("boom")}), progress=lines.append)
    assert "stack parity: dev, staging, prod" in lines
    assert "dev: terraform plan" in lines
    assert any(line.startswith("dev: terraform plan: could not audit (boom)") for line in lines)


def test_report_round_trips_through_json() -> None:
    report = audit(probes(plans={"dev": ToolFailed("x")}, parity_report=parity(docker_changed)))
    again = report_from_dict(json.loads(json.dumps(report.as_dict())))
    assert again.as_dict() == report.as_dict()
    with pytest.raises(InvalidInput, match="schema"):
        report_from_dict({"schema": "stacklock.parity/v1"})


def test_finding_describe() -> None:
    f = Finding("prod", STACK, "docker.version", "prod-1", "20.10.24", None, "differs")
    assert f.describe() == ("prod stack prod-1 docker.version: expected 20.10.24, "
                            "actual (missing) [differs]")


def test_probe_known_outside_change_is_attributed_to_the_world() -> None:
    """A lab node whose container was removed: Terraform cannot refresh terraform_data, the
    probe knows the container is gone, the plan replaces the node."""
    found = infrastructure_findings("dev", CONFIG_REPLACE, None,
                                    outside={NODE: "container lab-dev-1 is gone"})
    assert [(f.detail, f.actual) for f in found] == [
        (f"{DETAIL_OUTSIDE}; apply would replace it", "container lab-dev-1 is gone")]
    report = run_audit(["dev"], Probes(plans=lambda env: PlanPair(
        CONFIG_REPLACE, None, outside={NODE: "container lab-dev-1 is gone"})))
    assert report.environment("dev").findings[0].detail.startswith(DETAIL_OUTSIDE)


def test_parity_runs_alongside_the_plans_with_workers() -> None:
    barrier = threading.Barrier(4, timeout=10)  # the parity run and three plans at once

    def plans(env: str) -> PlanPair:
        barrier.wait()
        return CLEAN_PLAN

    def parity_probe(envs: Sequence[str]) -> dict[str, Any]:
        barrier.wait()
        return parity(docker_changed)

    report = run_audit(list(ENVS), Probes(plans=plans, parity=parity_probe), workers=4)
    assert [e.status for e in report.environments] == [OK, OK, DRIFT]
    assert report.environment("prod").audited == (INFRASTRUCTURE, STACK)


def test_deep_in_one_check_run_gives_the_same_report_as_one_run_per_environment() -> None:
    from stacklock.core.audit import changed_tasks_from_output, split_deep

    per_env = {
        "dev": DeepData({"dev-1": {"ok": 3, "changed": 1}},
                        {"dev-1": ["docker : Install pinned Docker packages"]}),
        "staging": DeepData({"staging-1": {"ok": 1, "changed": 0, "unreachable": 1}}),
        "prod": DeepData({"prod-1": {"ok": 3, "changed": 0}}),
    }
    calls: list[list[str]] = []

    def deep_all(envs: Sequence[str]) -> dict[str, DeepData]:
        calls.append(list(envs))
        recap = {h: c for d in per_env.values() for h, c in d.recap.items()}
        text = ("TASK [docker : Install pinned Docker packages] ***\n"
                "changed: [dev-1]\nok: [prod-1]\n")
        hosts = {env: [f"{env}-1"] for env in envs}
        return split_deep(recap, changed_tasks_from_output(text), hosts)

    one = audit(dataclasses.replace(probes(), deep_all=deep_all))
    each = audit(probes(deep=lambda env: per_env[env]))
    assert calls == [list(ENVS)]
    assert one.as_dict() == each.as_dict()
    assert one.environment("staging").status == ERROR
    assert [f.component for f in one.environment("dev").findings] == [
        "docker : Install pinned Docker packages"]


def test_a_failed_shared_check_run_is_an_error_of_every_environment() -> None:
    from stacklock.errors import ToolFailed

    def deep_all(envs: Sequence[str]) -> dict[str, DeepData]:
        raise ToolFailed("ansible-playbook site.yml failed (exit 3)")

    report = audit(dataclasses.replace(probes(), deep_all=deep_all))
    for env in report.environments:
        assert env.status == ERROR
        assert any("site.yml failed" in e.message for e in env.errors)


def test_a_finding_of_no_one_environment_is_every_audited_environments() -> None:
    """An expired waiver scoped to no environment is reported by verify with environment "*";
    the audit keeps it in every environment it audits (it once dropped it: verify 1, audit 0)."""
    report = parity()
    report["deviations"] = [*report.get("deviations", []), {
        "environment": "*", "node": "*", "component": "waiver.file:/etc/x",
        "expected": "in force (until 2026-01-01)", "actual": "expired on 2026-01-01",
        "status": "deviation", "kind": "node", "detail": "waiver expired"}]
    result = audit(probes(parity_report=report), envs=("dev", "prod"))
    assert result.exit_code == ExitCode.DEVIATION
    for env in ("dev", "prod"):
        assert [f.component for f in result.environment(env).findings] == ["waiver.file:/etc/x"]
