"""Converge only what deviates: which nodes configure runs site.yml on (stacklock.core.converge)."""

from __future__ import annotations

import pytest

from stacklock.core.converge import Decision, limit, select
from stacklock.core.parity import Check, Kind, NodeResult, ParityReport, Status

HOSTS = {"dev": ["dev-1", "dev-2"], "prod": ["prod-1"]}


def _match(env: str, node: str, component: str = "docker.version") -> Check:
    return Check(env, node, component, "28.5.1", "28.5.1", Status.MATCH)


def _report(*checks: Check, nodes: tuple[NodeResult, ...] | None = None) -> ParityReport:
    if nodes is None:
        nodes = (NodeResult("dev", "dev-1", True), NodeResult("dev", "dev-2", True),
                 NodeResult("prod", "prod-1", True))
    base = [_match(n.environment, n.node) for n in nodes if n.reachable]
    return ParityReport(("dev", "prod"), nodes, (*base, *checks))


def _by_node(decisions: list[Decision]) -> dict[str, Decision]:
    return {d.node: d for d in decisions}


def test_a_clean_fleet_configures_nothing_and_says_why() -> None:
    decisions = select(_report(), HOSTS)
    assert [d.node for d in decisions] == ["dev-1", "dev-2", "prod-1"]
    assert not any(d.configure for d in decisions)
    assert limit(decisions) == []
    assert all("matches its lock" in d.reason for d in decisions)
    assert decisions[0].describe().startswith("skip")


def test_only_the_deviating_node_is_configured() -> None:
    dev = Check("dev", "dev-2", "package.docker-ce", "5:28.5.1-1", "5:28.5.2-1",
                Status.DEVIATION)
    decisions = _by_node(select(_report(dev), HOSTS))
    assert limit(list(decisions.values())) == ["dev-2"]
    assert "package.docker-ce 5:28.5.2-1 (lock: 5:28.5.1-1)" in decisions["dev-2"].reason
    assert decisions["dev-2"].describe().startswith("configure dev/dev-2")


def test_force_configures_every_node() -> None:
    decisions = select(_report(), HOSTS, force=True)
    assert limit(decisions) == ["dev-1", "dev-2", "prod-1"]
    assert all("--force" in d.reason for d in decisions)


def test_new_nodes_and_unreadable_facts_are_configured() -> None:
    hosts = {"dev": ["dev-1", "dev-2", "dev-3"], "prod": ["prod-1"]}
    decisions = _by_node(select(_report(), hosts))
    assert decisions["dev-3"].configure and "new" in decisions["dev-3"].reason
    assert not decisions["dev-1"].configure
    # no report at all (the verify play failed): everything
    assert limit(select(None, hosts)) == ["dev-1", "dev-2", "dev-3", "prod-1"]


def test_unreachable_and_could_not_look_are_never_skipped() -> None:
    nodes = (NodeResult("dev", "dev-1", True), NodeResult("dev", "dev-2", False, "timed out"),
             NodeResult("prod", "prod-1", True))
    blind = Check("prod", "prod-1", "torchserve.running", "true", None, Status.UNVERIFIED,
                  detail="could not look: permission denied")
    decisions = _by_node(select(_report(blind, nodes=nodes), HOSTS))
    assert decisions["dev-2"].configure and "unreachable" in decisions["dev-2"].reason
    assert "timed out" in decisions["dev-2"].reason
    assert decisions["prod-1"].configure and "could not be read" in decisions["prod-1"].reason
    assert not decisions["dev-1"].configure


def test_a_node_that_differs_from_the_others_is_configured_but_a_lock_difference_is_not() -> None:
    cross_node = Check("dev", "dev-1", "java.version", "17.0.16", "17.0.15", Status.DEVIATION,
                       Kind.CROSS)
    cross_env = Check("prod", "*", "docker.version", "28.5.1", "27.0.0", Status.DEVIATION,
                      Kind.CROSS)
    decisions = _by_node(select(_report(cross_node, cross_env), HOSTS))
    assert limit(list(decisions.values())) == ["dev-1"]


def test_a_node_without_any_check_is_not_taken_as_proof() -> None:
    report = ParityReport(("dev",), (NodeResult("dev", "dev-1", True),), ())
    decisions = select(report, {"dev": ["dev-1"]})
    assert decisions[0].configure and "no checks" in decisions[0].reason


def test_many_findings_are_counted_not_all_named() -> None:
    devs = [Check("prod", "prod-1", f"package.p{i}", "1", "2", Status.DEVIATION)
            for i in range(5)]
    decision = _by_node(select(_report(*devs), HOSTS))["prod-1"]
    assert decision.reason.startswith("5 deviation(s)") and "and 2 more" in decision.reason


def test_provision_takes_the_facts_configure_read_as_verdict_when_no_roles_ran(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace
    from typing import Any

    from stacklock.core.gate import Plan
    from stacklock.errors import ExitCode
    from stacklock.flows import provision
    from stacklock.flows.configure import Configured

    verified: list[Any] = []

    def run(recap: dict[str, Any]) -> list[Any]:
        verified.clear()
        fake = SimpleNamespace(run_dir="/tmp/run")
        fake.hold = fake.ensure_current = lambda *a, **k: None
        monkeypatch.setattr(provision, "preflight", lambda *a, **k: None)
        monkeypatch.setattr(provision, "apply", lambda *a, **k: None)
        # the promotion gate (tests/unit/core/test_gate.py): open, one wave
        monkeypatch.setattr(provision.gateflow, "check",
                            lambda *a, **k: provision.gateflow.Gate(Plan((("dev",),))))
        monkeypatch.setattr(provision.configureflow, "configure",
                            lambda *a, **k: Configured(recap, _report()))

        def verify(_run: Any, _targets: Any, collected: Any = None) -> ExitCode:
            verified.append(collected)
            return ExitCode.OK

        monkeypatch.setattr(provision.verifyflow, "verify", verify)
        dev = SimpleNamespace(name="dev", provider="lab")
        assert provision.provision(fake, [dev]) == ExitCode.OK  # type: ignore[arg-type,list-item]
        return list(verified)

    assert isinstance(run({})[0], ParityReport)  # nothing configured: no second facts run
    assert run({"dev-1": {"ok": 3, "changed": 1}}) == [None]  # configured: verified afresh
