"""What `stacklock rollout | rollback | promote --rollout` report about each node: the table
(node, batch, revision, state) and `--format json` (`stacklock.rollout/v1`, keys pinned),
built from the same outcomes (issue #21). The rollout flow runs for real; Ansible, the
ledger, the gate and the final verify are faked (no nodes needed)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from stacklock.console import err, out
from stacklock.core import rollout as plan
from stacklock.core.parity import Check, NodeResult, ParityReport, Status
from stacklock.errors import ExitCode
from stacklock.flows import gate as gateflow
from stacklock.flows import ledger as ledgerflow
from stacklock.flows import rollback as rollbackflow
from stacklock.flows import rollout as rolloutflow
from stacklock.flows import verify as verifyflow

pytestmark = pytest.mark.unit

NEW = "sha256:" + "a" * 64
OLD = "sha256:" + "b" * 64
HOSTS = ["prod-1", "prod-2", "prod-3", "prod-4"]

TOP = ("schema", "command", "environment", "exit_code", "promote_exit_code", "rollouts")
ROLLOUT = ("kind", "environment", "stack", "revision", "previous_revision", "policy",
           "batches", "halted", "failed", "nodes", "verify_exit_code", "exit_code", "logs")
NODE = ("node", "batch", "attempted", "result", "revision", "detail")


def _report(nodes: list[str], bad: set[str]) -> ParityReport:
    checks = tuple(Check("prod", n, "docker.version", "1", "2" if n in bad else "1",
                         Status.DEVIATION if n in bad else Status.MATCH) for n in nodes)
    return ParityReport(("prod",), tuple(NodeResult("prod", n, True) for n in nodes), checks)


class World:
    """The fakes, and what they saw: `behind` are the nodes not at the revision before the
    rollout; `broken` those whose configure fails."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        from stacklock.adapters import ansible

        self.behind = set(HOSTS[1:])
        self.broken: set[str] = set()
        self.verify_consoles: list[Any] = []
        self.configured: list[list[str]] = []
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        self.target = SimpleNamespace(
            name="prod", stack="s1", gpu=False, hosts=lambda: list(HOSTS),
            inventory=lambda: tmp_path,
            spec=SimpleNamespace(rollout=SimpleNamespace(canary=1, batch=2, max_failures=0)))
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
            return {h: {"failed": int(h in self.broken), "unreachable": 0} for h in batch}

        def verify(_run: Any, _targets: Any, *, console: Any = None) -> ExitCode:
            self.verify_consoles.append(console)
            return ExitCode.OK

        monkeypatch.setattr(rolloutflow, "verify_batch", verify_batch)
        monkeypatch.setattr(ansible, "run_playbook", run_playbook)
        monkeypatch.setattr(verifyflow, "verify", verify)
        monkeypatch.setattr(ledgerflow, "open_ledger",
                            lambda _loaded: SimpleNamespace(records=lambda: []))
        monkeypatch.setattr(rolloutflow, "previous_revision", lambda *_a: OLD)
        monkeypatch.setattr(gateflow, "check", lambda *_a, **_k: None)
        monkeypatch.setattr(gateflow, "record_overrides", lambda *_a: None)
        monkeypatch.setattr(gateflow, "play_vars", lambda _g: {})


@pytest.fixture()
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    return World(tmp_path, monkeypatch)


def test_a_halted_rollout_as_json(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.broken = {"prod-2"}  # the canary
    outcomes = rolloutflow.Outcomes("json")
    code = rolloutflow.run_rollout(world.run, world.target, outcomes=outcomes)  # type: ignore[arg-type]
    assert code == ExitCode.DEVIATION
    assert capsys.readouterr().out == ""  # no table: the envelope is all stdout gets
    rolloutflow.emit("rollout", "prod", code, outcomes)
    doc = json.loads(capsys.readouterr().out)
    assert list(doc) == sorted(TOP) and doc["schema"] == "stacklock.rollout/v1"
    assert (doc["command"], doc["environment"], doc["exit_code"]) == ("rollout", "prod", 1)
    assert doc["promote_exit_code"] is None
    (r,) = doc["rollouts"]
    assert sorted(r) == sorted(ROLLOUT)
    assert (r["kind"], r["revision"], r["previous_revision"]) == ("rollout", NEW, OLD)
    assert r["policy"] == {"canary": 1, "batch": 2, "max_failures": 0}
    assert (r["batches"], r["halted"], r["failed"]) == (2, True, 1)
    assert (r["verify_exit_code"], r["exit_code"]) == (None, 1)
    assert r["logs"] == str(world.run.run_dir)
    nodes = {n["node"]: n for n in r["nodes"]}
    assert [n["node"] for n in r["nodes"]] == HOSTS
    assert all(sorted(n) == sorted(NODE) for n in r["nodes"])
    assert nodes["prod-1"] == {"node": "prod-1", "batch": None, "attempted": False,
                               "result": "current", "revision": NEW, "detail": ""}
    assert nodes["prod-2"]["batch"] == "canary" and nodes["prod-2"]["attempted"] is True
    assert nodes["prod-2"]["result"] == "failed" and nodes["prod-2"]["revision"] is None
    assert nodes["prod-2"]["detail"].startswith("configure failed; see ")
    for n in ("prod-3", "prod-4"):  # the halted rollout never reached batch 2
        assert nodes[n] == {"node": n, "batch": "batch 2", "attempted": False,
                            "result": "untouched", "revision": OLD, "detail": ""}
    assert world.configured == [["prod-2"]] and world.verify_consoles == []


def test_the_table_shows_the_same_outcomes(world: World, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    world.broken = {"prod-2"}
    monkeypatch.setattr(out, "width", 250)  # one line per row, whatever $COLUMNS says
    outcomes = rolloutflow.Outcomes()  # table: what a person reads
    code = rolloutflow.run_rollout(world.run, world.target, outcomes=outcomes)  # type: ignore[arg-type]
    assert code == ExitCode.DEVIATION
    lines = capsys.readouterr().out.splitlines()
    cells = [[c.strip() for c in ln.strip("│┃ ").split("│" if "│" in ln else "┃")]
             for ln in lines if "│" in ln or "┃" in ln]
    assert cells[0] == ["node", "batch", "revision", "state"]
    rows = {c[0]: c[1:] for c in cells[1:]}
    assert rows["prod-1"] == ["-", NEW[7:19], "already at the revision: not touched"]
    batch, revision, state = rows["prod-2"]
    assert (batch, revision) == ("canary", f"{NEW[7:19]} attempted")
    assert state == f"FAILED: configure failed; see {world.run.run_dir}/site-prod-batch1.log"
    assert rows["prod-3"] == rows["prod-4"] == ["batch 2", OLD[7:19], "untouched"]
    assert len(outcomes.rollouts) == 1 and outcomes.rollouts[0].halted  # collected either way


def test_a_finished_rollout_sends_its_verify_table_to_stderr(
        world: World, capsys: pytest.CaptureFixture[str]) -> None:
    outcomes = rolloutflow.Outcomes("json")
    code = rolloutflow.run_rollout(world.run, world.target, kind="rollback",  # type: ignore[arg-type]
                                   outcomes=outcomes)
    assert code == ExitCode.OK and world.verify_consoles == [err]
    rolloutflow.emit("rollback", "prod", code, outcomes)
    doc = json.loads(capsys.readouterr().out)
    (r,) = doc["rollouts"]
    assert (r["kind"], r["halted"], r["verify_exit_code"], r["exit_code"]) == \
        ("rollback", False, 0, 0)
    assert [(n["batch"], n["result"], n["attempted"]) for n in r["nodes"]] == [
        (None, "current", False), ("canary", "updated", True), ("batch 2", "updated", True),
        ("batch 2", "updated", True)]
    assert world.configured == [["prod-2"], ["prod-3", "prod-4"]]
    # the table's default: the final verify's table goes to stdout, as before
    rolloutflow.run_rollout(world.run, world.target)  # type: ignore[arg-type]
    assert world.verify_consoles[-1] is None


def test_auto_rollback_is_the_second_rollout_of_the_envelope(
        world: World, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    world.broken = {"prod-2"}
    seen: list[tuple[str | None, str]] = []

    def rollback(run: Any, target: Any, to: str | None, *, override: str | None = None,
                 kind: str = "rollback",
                 outcomes: rolloutflow.Outcomes | None = None) -> ExitCode:
        seen.append((to, kind))
        world.behind, world.broken = {"prod-2"}, set()  # only the canary changed
        return rolloutflow.run_rollout(run, target, kind=kind, outcomes=outcomes)

    monkeypatch.setattr(rollbackflow, "run_rollback", rollback)
    outcomes = rolloutflow.Outcomes("json")
    code = rollbackflow.rollout_or_roll_back(world.run, world.target,  # type: ignore[arg-type]
                                             auto_rollback=True, outcomes=outcomes)
    assert code == ExitCode.DEVIATION and seen == [(OLD, "auto-rollback")]
    rolloutflow.emit("rollout", "prod", code, outcomes)
    doc = json.loads(capsys.readouterr().out)
    first, back = doc["rollouts"]
    assert (first["kind"], first["halted"], first["exit_code"]) == ("rollout", True, 1)
    assert (back["kind"], back["halted"], back["exit_code"]) == ("auto-rollback", False, 0)
    assert doc["exit_code"] == 1


def test_promote_envelope_says_the_promote_step() -> None:
    doc = plan.RolloutReport("promote", "prod", 1, (), promote_exit_code=1).as_dict()
    assert doc == {"schema": "stacklock.rollout/v1", "command": "promote",
                   "environment": "prod", "exit_code": 1, "promote_exit_code": 1,
                   "rollouts": []}
    assert plan.RolloutReport.__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert plan.NodeOutcome.__dataclass_params__.frozen  # type: ignore[attr-defined]
