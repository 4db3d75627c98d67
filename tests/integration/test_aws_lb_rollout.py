"""A rollout batch out of the environment's load balancer, against a real moto server.

moto builds what terraform/modules/gpu_node_aws/endpoint.tf builds for an endpoint (VPC, two
subnets, GPU instances, an internet-facing ALB, an HTTPS-less listener forwarding to an
instance target group with the module's deregistration delay and health check), the instances
registered. `stacklock.adapters.aws.out_of_service` then runs a stand-in batch action that
looks through the real ELBv2 API while it runs.

What moto reports (moto/elbv2/models.py, FakeTargetGroup.health_for): a registered running
instance is `healthy` at once, a deregistered one is not listed at once (asked for by id:
`unused`, Target.NotRegistered) — no `initial` and no `draining` phase; a registered instance
that is stopped is `unused`, Target.InvalidState; registering a stopped one is refused
(InvalidTarget), as on AWS. The phases moto lacks (draining that takes time or never ends,
initial, unhealthy) are covered by tests/unit/adapters/test_aws_lb.py with a scripted client.
"""

from __future__ import annotations

from typing import Any

import pytest

from stacklock.adapters import aws
from stacklock.errors import ExitCode, StacklockError, ToolFailed

pytestmark = pytest.mark.integration

REGION = "us-east-1"
NODES = ["prod-1", "prod-2", "prod-3", "prod-4"]
#: the module's target group: deregistration_delay 60, health check every 15 s, 2 to be healthy
TIMING = aws.LbTiming(deregistration_delay=60, health_interval=15, health_timeout=5,
                      healthy_threshold=2)


def _client(service: str) -> Any:
    import boto3

    return boto3.client(service, region_name=REGION)


class Env:
    """One environment's nodes and load balancer in moto."""

    def __init__(self) -> None:
        ec2 = _client("ec2")
        elb = _client("elbv2")
        vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
        subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.20.{i}.0/24",
                                     AvailabilityZone=f"{REGION}{z}")["Subnet"]["SubnetId"]
                   for i, z in ((1, "a"), (2, "b"))]
        image = ec2.register_image(Name="gpu-node", Architecture="x86_64",
                                   RootDeviceName="/dev/sda1",
                                   VirtualizationType="hvm")["ImageId"]
        resp = ec2.run_instances(ImageId=image, InstanceType="g6e.xlarge", MinCount=4,
                                 MaxCount=4, SubnetId=subnets[0])
        self.ids = dict(zip(NODES, sorted(i["InstanceId"] for i in resp["Instances"]),
                            strict=True))
        lb = elb.create_load_balancer(Name="acme-serving-prod", Subnets=subnets,
                                      Scheme="internet-facing", Type="application")
        lb_arn = lb["LoadBalancers"][0]["LoadBalancerArn"]
        tg = elb.create_target_group(
            Name="slep-prod", Protocol="HTTPS", Port=8443, VpcId=vpc, TargetType="instance",
            HealthCheckProtocol="HTTPS", HealthCheckPath="/ping", HealthCheckIntervalSeconds=15,
            HealthCheckTimeoutSeconds=5, HealthyThresholdCount=2, UnhealthyThresholdCount=2,
            Matcher={"HttpCode": "200"})
        self.arn = str(tg["TargetGroups"][0]["TargetGroupArn"])
        elb.modify_target_group_attributes(TargetGroupArn=self.arn, Attributes=[
            {"Key": "deregistration_delay.timeout_seconds", "Value": "60"}])
        elb.create_listener(LoadBalancerArn=lb_arn, Protocol="HTTP", Port=80, DefaultActions=[
            {"Type": "forward", "TargetGroupArn": self.arn}])
        elb.register_targets(TargetGroupArn=self.arn,
                             Targets=[{"Id": i, "Port": 8443} for i in self.ids.values()])
        self.lines: list[str] = []

    def states(self) -> dict[str, str]:
        """node -> its state in the target group through the real API ('' = not listed)."""
        resp = _client("elbv2").describe_target_health(TargetGroupArn=self.arn)
        listed = {d["Target"]["Id"]: d["TargetHealth"]["State"]
                  for d in resp["TargetHealthDescriptions"]}
        return {n: listed.get(i, "") for n, i in self.ids.items()}

    def serving(self) -> set[str]:
        return {n for n, s in self.states().items() if s == "healthy"}

    def run(self, batch: list[str], action: Any, **kw: Any) -> dict[str, str]:
        return aws.out_of_service(REGION, self.arn, {n: self.ids[n] for n in batch}, action,
                                  progress=self.lines.append, **kw)


def _note(calls: list[str], what: str) -> dict[str, str]:
    """A batch action that notes that it ran and fails no node."""
    calls.append(what)
    return {}


@pytest.fixture
def lb_env(moto: str) -> Env:
    return Env()


def test_the_module_settings_are_read_from_the_target_group(lb_env: Env) -> None:
    assert aws.target_group_timing(REGION, lb_env.arn) == TIMING
    assert TIMING.drain_bound == 60 + aws.DRAIN_MARGIN_S
    assert TIMING.healthy_bound == 15 * 3 + 5 + aws.HEALTHY_MARGIN_S


def test_the_batch_is_out_while_it_runs_the_others_serve(lb_env: Env) -> None:
    seen: list[dict[str, str]] = []

    def batch_action() -> dict[str, str]:
        seen.append(lb_env.states())
        return {}

    assert lb_env.serving() == set(NODES)
    failed = lb_env.run(["prod-1", "prod-2"], batch_action)
    assert failed == {}
    # while the action ran: the batch not in the target group, the others serving
    assert seen == [{"prod-1": "", "prod-2": "", "prod-3": "healthy", "prod-4": "healthy"}]
    # after it: all back, on the port they were registered with
    assert lb_env.serving() == set(NODES)
    ports = {d["Target"]["Port"] for d in _client("elbv2").describe_target_health(
        TargetGroupArn=lb_env.arn)["TargetHealthDescriptions"]}
    assert ports == {8443}
    text = "\n".join(lb_env.lines)
    assert "drain prod-1, prod-2 from the load balancer" in text
    assert "deregistration delay 60 s" in text
    assert "register prod-1, prod-2 in the load balancer again" in text


def test_a_failed_node_stays_out_of_the_load_balancer(lb_env: Env) -> None:
    failed = lb_env.run(["prod-3", "prod-4"], lambda: {"prod-4": "configure failed"})
    assert list(failed) == ["prod-4"]
    assert failed["prod-4"].startswith("configure failed")
    assert "kept out of the load balancer" in failed["prod-4"]
    assert lb_env.states() == {"prod-1": "healthy", "prod-2": "healthy", "prod-3": "healthy",
                               "prod-4": ""}


def test_a_node_left_out_before_is_registered_once_it_passes(lb_env: Env) -> None:
    lb_env.run(["prod-2"], lambda: {"prod-2": "verify: docker.version differs"})
    assert "prod-2" not in lb_env.serving()
    calls: list[str] = []
    # the next rollout: prod-2 is already out (nothing to drain) and comes back when it passes
    failed = lb_env.run(["prod-2"], lambda: _note(calls, "ran"))
    assert failed == {} and calls == ["ran"]
    assert lb_env.serving() == set(NODES)
    assert any("already out: prod-2" in line for line in lb_env.lines)


def test_an_error_in_the_batch_leaves_it_out(lb_env: Env) -> None:
    def broken() -> dict[str, str]:
        raise ToolFailed("ansible-playbook could not start")

    with pytest.raises(ToolFailed, match="could not start"):
        lb_env.run(["prod-1"], broken)
    assert lb_env.states()["prod-1"] == ""
    assert lb_env.serving() == {"prod-2", "prod-3", "prod-4"}
    assert any("prod-1 stay out of the load balancer" in line for line in lb_env.lines)


def test_a_stopped_node_is_refused_and_stays_out(lb_env: Env) -> None:
    def stop_prod_1() -> dict[str, str]:
        _client("ec2").stop_instances(InstanceIds=[lb_env.ids["prod-1"]])
        return {}

    failed = lb_env.run(["prod-1", "prod-2"], stop_prod_1)
    assert list(failed) == ["prod-1"]
    assert "not registered in the load balancer again" in failed["prod-1"]
    assert "InvalidTarget" in failed["prod-1"]
    assert lb_env.states() == {"prod-1": "", "prod-2": "healthy", "prod-3": "healthy",
                               "prod-4": "healthy"}


def test_a_node_that_does_not_become_healthy_fails_within_the_bound(lb_env: Env) -> None:
    """prod-1 is stopped right after it is registered again (moto then reports it `unused`,
    Target.InvalidState): it fails with that state and reason once the bound has passed on a
    fake clock, and is taken out again."""
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    def progress(line: str) -> None:
        lb_env.lines.append(line)
        if line.startswith("register "):
            _client("ec2").stop_instances(InstanceIds=[lb_env.ids["prod-1"]])

    failed = aws.out_of_service(REGION, lb_env.arn, {n: lb_env.ids[n] for n in NODES[:2]},
                                lambda: {}, progress=progress, timing=TIMING,
                                clock=lambda: now[0], sleep=sleep, poll=5)
    assert list(failed) == ["prod-1"]
    assert "not healthy in the load balancer after 230 s" in failed["prod-1"]
    assert "unused (Target.InvalidState: Target is in the stopped state)" in failed["prod-1"]
    assert "taken out again" in failed["prod-1"]
    # bounded: it waited the bound (health check timing + margin), in polls, and no longer
    assert now[0] == TIMING.healthy_bound and max(slept) <= 5
    assert lb_env.states() == {"prod-1": "", "prod-2": "healthy", "prod-3": "healthy",
                               "prod-4": "healthy"}


def test_a_target_group_that_is_gone_is_a_clear_tool_failure(lb_env: Env) -> None:
    gone = lb_env.arn.rsplit("/", 1)[0] + "/0123456789abcdef"  # e.g. replaced since apply
    calls: list[str] = []
    with pytest.raises(StacklockError) as info:
        aws.out_of_service(REGION, gone, {"prod-1": lb_env.ids["prod-1"]},
                           lambda: _note(calls, "ran"))
    assert info.value.exit_code == ExitCode.FAILED
    assert "does not exist" in info.value.message and "stacklock apply" in info.value.message
    assert calls == []


def test_refused_credentials_say_what_to_fix(lb_env: Env, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.delenv("AWS_SESSION_TOKEN")
    with pytest.raises(StacklockError) as info:
        lb_env.run(["prod-1"], dict)
    assert info.value.exit_code == ExitCode.FAILED
    assert "credentials" in info.value.message
    assert lb_env.serving() == set(NODES)
