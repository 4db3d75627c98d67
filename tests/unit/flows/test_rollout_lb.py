"""`stacklock rollout` of an AWS environment with a load balancer: each batch out of the target
group while it is configured and verified, only the nodes that pass registered again, a failed
node out of it in the node table and `stacklock.rollout/v1`; an inventory without the target
group refused before anything changes; no load balancer calls without one. The rollout flow
and `stacklock.adapters.aws.out_of_service` run for real against an in-memory ELBv2 client;
Ansible, the ledger, the gate and the final verify are faked (no nodes needed)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from stacklock.adapters import aws
from stacklock.core.inventory import hosts_yaml
from stacklock.core.manifest import AwsEnvironment
from stacklock.core.parity import Check, NodeResult, ParityReport, Status
from stacklock.errors import ExitCode, InvalidInput
from stacklock.flows import gate as gateflow
from stacklock.flows import ledger as ledgerflow
from stacklock.flows import rollout as rolloutflow
from stacklock.flows import verify as verifyflow

pytestmark = pytest.mark.unit

NEW = "sha256:" + "a" * 64
OLD = "sha256:" + "b" * 64
HOSTS = ["prod-1", "prod-2", "prod-3", "prod-4"]
IDS = {h: f"i-0{n}" for n, h in enumerate(HOSTS, start=1)}
ARN = "arn:aws:elasticloadbalancing:us-east-1:111122223333:targetgroup/slep-x/0123456789abcdef"


class Elb:
    """An ELBv2 target group that drains and registers at once (the timing is
    tests/unit/adapters/test_aws_lb.py's concern)."""

    def __init__(self) -> None:
        self.registered = set(IDS.values())
        self.calls: list[tuple[str, list[str]]] = []
        self.sick: set[str] = set()

    def describe_target_groups(self, TargetGroupArns: list[str]) -> dict[str, Any]:
        assert TargetGroupArns == [ARN]
        return {"TargetGroups": [{"HealthCheckIntervalSeconds": 15,
                                  "HealthCheckTimeoutSeconds": 5, "HealthyThresholdCount": 2}]}

    def describe_target_group_attributes(self, TargetGroupArn: str) -> dict[str, Any]:
        return {"Attributes": [{"Key": "deregistration_delay.timeout_seconds", "Value": "0"}]}

    def describe_target_health(self, TargetGroupArn: str) -> dict[str, Any]:
        return {"TargetHealthDescriptions": [
            {"Target": {"Id": i, "Port": 8443},
             "TargetHealth": {"State": "unhealthy" if i in self.sick else "healthy",
                              "Reason": "Target.Timeout" if i in self.sick else ""}}
            for i in sorted(self.registered)]}

    def deregister_targets(self, TargetGroupArn: str, Targets: list[dict[str, Any]]) -> None:
        self.calls.append(("deregister", [t["Id"] for t in Targets]))
        self.registered -= {t["Id"] for t in Targets}

    def register_targets(self, TargetGroupArn: str, Targets: list[dict[str, Any]]) -> None:
        self.calls.append(("register", [t["Id"] for t in Targets]))
        self.registered |= {t["Id"] for t in Targets}

    def serving(self) -> set[str]:
        return {h for h, i in IDS.items() if i in self.registered and i not in self.sick}


def _report(nodes: list[str], bad: set[str]) -> ParityReport:
    checks = tuple(Check("prod", n, "docker.version", "1", "2" if n in bad else "1",
                         Status.DEVIATION if n in bad else Status.MATCH) for n in nodes)
    return ParityReport(("prod",), tuple(NodeResult("prod", n, True) for n in nodes), checks)


class World:
    """`behind`: nodes not at the revision before the rollout; `broken`: their configure
    fails; `in_lb_at_configure`: which nodes the load balancer served during each configure."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *,
                 target_group: bool = True, spec: Any = None) -> None:
        from stacklock.adapters import ansible

        self.behind = set(HOSTS[1:])
        self.broken: set[str] = set()
        self.elb = Elb()
        self.configured: list[list[str]] = []
        self.in_lb_at_configure: list[set[str]] = []
        outputs: dict[str, Any] = {"hosts": {
            h: {"address": f"203.0.113.{n}", "instance_id": IDS[h]}
            for n, h in enumerate(HOSTS, start=1)}}
        if target_group:
            outputs["endpoint_target_group_arn"] = ARN
        (tmp_path / "hosts.yml").write_text(hosts_yaml("prod", "aws", outputs, None))
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        self.target = SimpleNamespace(
            name="prod", stack="s1", gpu=False, hosts=lambda: list(HOSTS),
            inventory=lambda: tmp_path,
            spec=spec or SimpleNamespace(rollout=SimpleNamespace(canary=1, batch=2,
                                                                 max_failures=0)))
        self.run = SimpleNamespace(
            loaded=SimpleNamespace(manifest=SimpleNamespace(project="p", promotion=[])),
            run_dir=run_dir, hold=lambda _t: None, prepare=lambda _t, need_mirror=False: None,
            ensure_current=lambda: {"stacks": {"s1": {"fingerprint": NEW}}},
            log_file=lambda name: run_dir / name, target=lambda _name: self.target)

        def verify_batch(_run: Any, _target: Any, batch: list[str], n: Any) -> ParityReport:
            return _report(batch, self.behind if n == "before" else self.broken)

        def run_playbook(_play: str, _invs: Any, **kw: Any) -> dict[str, Any]:
            batch = kw["extra_args"][1].split(",")
            self.configured.append(batch)
            self.in_lb_at_configure.append(self.elb.serving())
            return {h: {"failed": int(h in self.broken), "unreachable": 0} for h in batch}

        monkeypatch.setattr(rolloutflow, "verify_batch", verify_batch)
        monkeypatch.setattr(ansible, "run_playbook", run_playbook)
        monkeypatch.setattr(verifyflow, "verify", lambda *_a, **_k: ExitCode.OK)
        monkeypatch.setattr(ledgerflow, "open_ledger",
                            lambda _loaded: SimpleNamespace(records=lambda: []))
        monkeypatch.setattr(rolloutflow, "previous_revision", lambda *_a: OLD)
        monkeypatch.setattr(gateflow, "check", lambda *_a, **_k: None)
        monkeypatch.setattr(gateflow, "record_overrides", lambda *_a: None)
        monkeypatch.setattr(gateflow, "play_vars", lambda _g: {})
        monkeypatch.setattr(aws, "elbv2_client", lambda region: self.elb)
        monkeypatch.setattr(aws, "LB_POLL_S", 0.01)
        monkeypatch.setattr(aws, "HEALTHY_MARGIN_S", -49.9)  # 0.1 s: the sick node's bound

    def rollout(self, fmt: str = "json") -> tuple[ExitCode, dict[str, Any]]:
        self.outcomes = outcomes = rolloutflow.Outcomes(fmt)
        code = rolloutflow.run_rollout(self.run, self.target, outcomes=outcomes)  # type: ignore[arg-type]
        (result,) = outcomes.rollouts
        return code, {n.node: n.as_dict() for n in result.nodes}


def test_each_batch_is_out_of_the_load_balancer_while_it_is_configured(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(tmp_path, monkeypatch)
    code, nodes = world.rollout()
    assert code == ExitCode.OK
    assert world.configured == [["prod-2"], ["prod-3", "prod-4"]]
    assert world.in_lb_at_configure == [{"prod-1", "prod-3", "prod-4"}, {"prod-1", "prod-2"}]
    assert world.elb.serving() == set(HOSTS)
    assert world.elb.calls == [("deregister", ["i-02"]), ("register", ["i-02"]),
                               ("deregister", ["i-03", "i-04"]),
                               ("register", ["i-03"]), ("register", ["i-04"])]
    assert all(n["result"] in ("updated", "current") for n in nodes.values())


def test_a_failed_node_stays_out_and_its_row_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    world = World(tmp_path, monkeypatch)
    world.broken = {"prod-2"}  # the canary
    code, nodes = world.rollout()
    capsys.readouterr()
    assert code == ExitCode.DEVIATION
    assert world.elb.serving() == {"prod-1", "prod-3", "prod-4"}
    assert nodes["prod-2"]["result"] == "failed"
    assert nodes["prod-2"]["detail"].endswith("; kept out of the load balancer")
    assert world.configured == [["prod-2"]]  # halted: batch 2 never drained
    assert world.elb.calls == [("deregister", ["i-02"])]
    rolloutflow.emit("rollout", "prod", code, world.outcomes)
    doc = json.loads(capsys.readouterr().out)
    (row,) = [n for n in doc["rollouts"][0]["nodes"] if n["node"] == "prod-2"]
    assert "kept out of the load balancer" in row["detail"]


def test_a_node_that_is_not_healthy_again_fails_and_stays_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(tmp_path, monkeypatch)
    world.elb.sick = {"i-02"}  # the load balancer's health check fails on the canary
    code, nodes = world.rollout()
    assert code == ExitCode.DEVIATION
    assert "unhealthy (Target.Timeout)" in nodes["prod-2"]["detail"]
    assert "i-02" not in world.elb.registered
    assert world.configured == [["prod-2"]]


def test_a_current_node_left_out_earlier_is_registered_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(tmp_path, monkeypatch)
    world.elb.registered.discard(IDS["prod-1"])  # out since an earlier rollout; at the revision
    code, nodes = world.rollout()
    assert code == ExitCode.OK
    assert world.elb.calls[0] == ("register", ["i-01"])
    assert world.in_lb_at_configure[0] == {"prod-1", "prod-3", "prod-4"}
    assert nodes["prod-1"]["result"] == "current"
    assert world.elb.serving() == set(HOSTS)


def test_no_target_group_no_load_balancer_calls(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(tmp_path, monkeypatch, target_group=False)
    code, _ = world.rollout()
    assert code == ExitCode.OK
    assert world.elb.calls == []
    assert world.configured == [["prod-2"], ["prod-3", "prod-4"]]


def test_an_aws_endpoint_without_the_target_group_in_the_inventory_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = AwsEnvironment.model_validate({
        "provider": "aws", "stack": "s1", "region": "us-east-1", "instance_type": "g6e.xlarge",
        "admin_cidrs": ["203.0.113.0/24"], "client_cidrs": ["198.51.100.0/24"],
        "endpoint": {"tls": {"secret": "stacklock_endpoint_tls", "acm_certificate_arn":
                             "arn:aws:acm:us-east-1:111122223333:certificate/"
                             "0a1b2c3d-0a1b-0a1b-0a1b-0a1b2c3d4e5f"},
                     "tokens": {"secret": "stacklock_endpoint_tokens"}}})
    world = World(tmp_path, monkeypatch, target_group=False, spec=spec)
    with pytest.raises(InvalidInput) as info:
        world.rollout()
    assert info.value.exit_code == ExitCode.INVALID
    (problem,) = info.value.problems
    assert problem.path == "environments.prod.endpoint"
    assert "stacklock apply prod" in problem.hint
    assert world.configured == [] and world.elb.calls == []



def test_a_node_without_its_instance_id_is_refused(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(tmp_path, monkeypatch)
    outputs: dict[str, Any] = {"hosts": {h: {"address": "203.0.113.9", "instance_id": IDS[h]}
                                         for h in HOSTS if h != "prod-3"},
                               "endpoint_target_group_arn": ARN}
    outputs["hosts"]["prod-3"] = {"address": "203.0.113.3"}
    (tmp_path / "hosts.yml").write_text(hosts_yaml("prod", "aws", outputs, None))
    with pytest.raises(InvalidInput) as info:
        world.rollout()
    assert "no instance id for prod-3" in info.value.message
    assert world.configured == [] and world.elb.calls == []
