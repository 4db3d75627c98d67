"""`stacklock.adapters.aws.out_of_service` with a scripted ELBv2 client: the target states AWS
reports and moto does not (a drain that takes the deregistration delay, one that never ends,
`initial` before `healthy`, `unhealthy`), on a fake clock. The real API is exercised against
moto in tests/integration/test_aws_lb_rollout.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from stacklock.adapters import aws
from stacklock.errors import ExitCode, ToolFailed

pytestmark = pytest.mark.unit

ARN = "arn:aws:elasticloadbalancing:us-east-1:111122223333:targetgroup/slep-x/0123456789abcdef"
TIMING = aws.LbTiming(deregistration_delay=60, health_interval=15, health_timeout=5,
                      healthy_threshold=2)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        assert s > 0
        self.now += s


class FakeElb:
    """Targets by id: (state, reason, since); `after_deregister(t)` and `after_register(t)`
    give a target's state `t` seconds after the call (None: not listed)."""

    def __init__(self, clock: Clock, ids: list[str],
                 after_deregister: Callable[[float], tuple[str, str] | None],
                 after_register: Callable[[str, float], tuple[str, str]]) -> None:
        self.clock = clock
        self.registered = {i: ("healthy", "", None) for i in ids}
        self.deregistered: dict[str, float] = {}
        self.registered_at: dict[str, float] = {}
        self.after_deregister = after_deregister
        self.after_register = after_register
        self.calls: list[tuple[str, list[str]]] = []

    def deregister_targets(self, TargetGroupArn: str, Targets: list[dict[str, Any]]) -> None:
        assert TargetGroupArn == ARN
        self.calls.append(("deregister", [t["Id"] for t in Targets]))
        for t in Targets:
            self.deregistered[t["Id"]] = self.clock()
            self.registered_at.pop(t["Id"], None)

    def register_targets(self, TargetGroupArn: str, Targets: list[dict[str, Any]]) -> None:
        self.calls.append(("register", [t["Id"] for t in Targets]))
        for t in Targets:
            assert t["Port"] == 8443  # the port it had
            self.deregistered.pop(t["Id"], None)
            self.registered_at[t["Id"]] = self.clock()

    def describe_target_health(self, TargetGroupArn: str) -> dict[str, Any]:
        out = []
        for i in self.registered:
            if i in self.deregistered:
                state = self.after_deregister(self.clock() - self.deregistered[i])
            elif i in self.registered_at:
                state = self.after_register(i, self.clock() - self.registered_at[i])
            else:
                state = ("healthy", "")
            if state is not None:
                out.append({"Target": {"Id": i, "Port": 8443},
                            "TargetHealth": {"State": state[0], "Reason": state[1],
                                             "Description": f"{state[1]} says so"}})
        return {"TargetHealthDescriptions": out}


def draining_for(seconds: float) -> Callable[[float], tuple[str, str] | None]:
    return lambda t: ("draining", "Target.DeregistrationInProgress") if t < seconds else None


def healthy_after(seconds: float) -> Callable[[str, float], tuple[str, str]]:
    return lambda _i, t: (("initial", "Elb.InitialHealthChecking") if t < seconds
                          else ("healthy", ""))


def _note(calls: list[str], what: str) -> dict[str, str]:
    """A batch action that notes that it ran and fails no node."""
    calls.append(what)
    return {}


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _run(monkeypatch: pytest.MonkeyPatch, clock: Clock, elb: FakeElb, nodes: dict[str, str],
         action: Callable[[], dict[str, str]]) -> tuple[dict[str, str], list[str]]:
    monkeypatch.setattr(aws, "elbv2_client", lambda _region: elb)
    lines: list[str] = []
    got = aws.out_of_service("us-east-1", ARN, nodes, action, progress=lines.append,
                             timing=TIMING, clock=clock, sleep=clock.sleep, poll=5)
    return got, lines


def test_the_action_waits_for_the_drain(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> None:
    elb = FakeElb(clock, ["i-1", "i-2"], draining_for(42), healthy_after(31))
    started: list[float] = []

    def action() -> dict[str, str]:
        started.append(clock())
        assert elb.describe_target_health(ARN)["TargetHealthDescriptions"] == [
            {"Target": {"Id": "i-2", "Port": 8443},
             "TargetHealth": {"State": "healthy", "Reason": "", "Description": " says so"}}]
        return {}

    got, lines = _run(monkeypatch, clock, elb, {"n1": "i-1"}, action)
    assert got == {}
    assert started and 42 <= started[0] < 42 + 5  # after the drain, not before
    assert elb.calls == [("deregister", ["i-1"]), ("register", ["i-1"])]
    assert 42 + 31 <= clock() < 42 + 31 + 10
    assert any(line.startswith("in the load balancer and healthy: n1") for line in lines)


def test_a_drain_that_never_ends_puts_the_batch_back(monkeypatch: pytest.MonkeyPatch,
                                                     clock: Clock) -> None:
    elb = FakeElb(clock, ["i-1", "i-2"], draining_for(10_000), healthy_after(0))
    ran: list[str] = []
    with pytest.raises(ToolFailed) as info:
        _run(monkeypatch, clock, elb, {"n1": "i-1", "n2": "i-2"}, lambda: _note(ran, "x"))
    assert ran == []  # never configured
    assert clock() == TIMING.drain_bound == 90
    msg = info.value.message
    assert info.value.exit_code == ExitCode.FAILED
    assert "did not drain n1 (i-1: draining (Target.DeregistrationInProgress" in msg
    assert "n2 (i-2" in msg and "within 90 s" in msg
    assert "fix:" in msg and "back in target group" in msg
    assert elb.calls[-1] == ("register", ["i-1", "i-2"])


def test_unhealthy_after_register_fails_with_state_and_reason(monkeypatch: pytest.MonkeyPatch,
                                                               clock: Clock) -> None:
    initial = healthy_after(20)

    def after_register(i: str, t: float) -> tuple[str, str]:
        return ("unhealthy", "Target.ResponseCodeMismatch") if i == "i-1" else initial(i, t)

    elb = FakeElb(clock, ["i-1", "i-2"], draining_for(0), after_register)
    got, _ = _run(monkeypatch, clock, elb, {"n1": "i-1", "n2": "i-2"}, dict)
    assert list(got) == ["n1"]
    assert got["n1"] == ("not healthy in the load balancer after 230 s: unhealthy "
                         "(Target.ResponseCodeMismatch: Target.ResponseCodeMismatch says so); "
                         "taken out again")
    assert clock() == TIMING.healthy_bound  # bounded: it waited no longer
    assert elb.calls[-1] == ("deregister", ["i-1"])
    assert "i-2" in elb.registered_at and "i-1" not in elb.registered_at


def test_failed_nodes_of_the_action_are_not_registered(monkeypatch: pytest.MonkeyPatch,
                                                       clock: Clock) -> None:
    elb = FakeElb(clock, ["i-1", "i-2", "i-3"], draining_for(5), healthy_after(0))
    got, _ = _run(monkeypatch, clock, elb, {"n1": "i-1", "n2": "i-2"},
                  lambda: {"n2": "configure failed; see site.log"})
    assert got == {"n2": "configure failed; see site.log; kept out of the load balancer"}
    assert elb.calls == [("deregister", ["i-1", "i-2"]), ("register", ["i-1"])]


def test_described_states() -> None:
    h = aws.TargetHealth("i-1", 8443, "unused", "Target.NotRegistered", "not registered")
    assert h.out and h.describe() == "unused (Target.NotRegistered: not registered)"
    assert not aws.TargetHealth("i-1", 8443, "unused", "Target.InvalidState").out
    assert not aws.TargetHealth("i-1", 8443, "draining").out
    assert aws.TargetHealth("i-1", None, "healthy").describe() == "healthy"
    assert TIMING.drain_bound == 60 + aws.DRAIN_MARGIN_S
    assert TIMING.healthy_bound == 15 * 3 + 5 + aws.HEALTHY_MARGIN_S


def test_a_refused_deregistration_stops_before_the_batch(monkeypatch: pytest.MonkeyPatch,
                                                         clock: Clock) -> None:
    from botocore.exceptions import ClientError

    elb = FakeElb(clock, ["i-1"], draining_for(0), healthy_after(0))

    def refuse(TargetGroupArn: str, Targets: list[dict[str, Any]]) -> None:
        raise ClientError({"Error": {"Code": "ValidationError", "Message": "no such target"}},
                          "DeregisterTargets")

    monkeypatch.setattr(elb, "deregister_targets", refuse)
    ran: list[str] = []
    with pytest.raises(ToolFailed) as info:
        _run(monkeypatch, clock, elb, {"n1": "i-1"}, lambda: _note(ran, "x"))
    assert ran == []
    msg = info.value.message
    assert "DeregisterTargets" in msg and "ValidationError: no such target" in msg
    assert "the batch was not configured" in msg and "fix:" in msg
