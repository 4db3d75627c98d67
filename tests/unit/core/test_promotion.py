"""Promotion in order, gated on the ledger's evidence; verify's revision findings; status;
rollout plans. On a copy of the lab example with two stack revisions (no nodes needed)."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from stacklock.core import lock as lockmod
from stacklock.core import promotion
from stacklock.core import rollout as rplan
from stacklock.core.manifest import load_manifest
from stacklock.core.parity import Check, Kind, NodeResult, ParityReport, Status
from stacklock.errors import ExitCode, InvalidInput, StacklockError
from stacklock.flows import ledger as flow
from stacklock.flows import promote as promoteflow

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
PROJECT = "stacklock-lab"  # examples/lab.yaml's


@pytest.fixture(autouse=True)
def _private_home(tmp_path_factory: pytest.TempPathFactory,
                  monkeypatch: pytest.MonkeyPatch) -> Path:
    """Signing keys live in a temporary HOME (a lab manifest creates and trusts one on first
    use): the real ~/.config is never touched."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.delenv("STACKLOCK_SIGNING_KEY", raising=False)
    monkeypatch.setenv("STACKLOCK_SIGNER", "test-writer")
    return home
EXAMPLES = ROOT / "examples"
NOW = datetime(2026, 11, 4, 12, 0, tzinfo=UTC)


def _case(tmp_path: Path, soak: str | None = None) -> Path:
    """examples/lab.yaml with a second stack `lab-next` (another toolkit pin), dev on it,
    staging and prod on the first, and `promotion: [dev, staging, prod]`; the lock built with
    the lab lock's resolved closure."""
    dst = tmp_path / "case"
    dst.mkdir()
    shutil.copytree(EXAMPLES / "models", dst / "models")
    text = (EXAMPLES / "lab.yaml").read_text()
    # one line per environment, without the lab's endpoint (the promotion edits those lines)
    text = (text[:text.index("\n# Every environment serves")] + "\n\nenvironments:\n"
            + "".join(f"  {e}: {{provider: lab, stack: lab-2026-11, count: 1}}\n"
                      for e in ("dev", "staging", "prod"))
            + text[text.index("\nlab:\n"):])
    stack = text[text.index("  lab-2026-11:\n"):text.index("\nenvironments:")]
    nxt = stack.replace("  lab-2026-11:", "  lab-next:  # the next revision").replace(
        "version: 1.17.8 ", "version: 1.18.0 ")
    assert nxt != stack
    text = text.replace(stack, stack + "\n" + nxt)
    text = text.replace("dev: {provider: lab, stack: lab-2026-11, count: 1}",
                        "dev: {provider: lab, stack: lab-next, count: 1}  # first to move")
    text += "\n# dev first, prod last\npromotion: [dev, staging, prod]\n"
    if soak:
        text += f"promotion_soak: {soak}\n"
    path = dst / "stacklock.yaml"
    path.write_text(text)
    loaded = load_manifest(path)
    lab_lock = json.loads((EXAMPLES / "lab.lock").read_text())
    closure = lab_lock["stacks"]["lab-2026-11"]["pip"]
    closures = {n: [{"name": p["name"], "version": p["version"], "files": p["files"]}
                    for p in closure] for n in ("lab-2026-11", "lab-next")}
    loaded.lock_path.write_text(lockmod.dump_lock(lockmod.build_lock(loaded, None, closures)))
    assert lockmod.check_lock(loaded).current
    return path


def _fp(path: Path, env: str) -> str:
    loaded = load_manifest(path)
    lock = json.loads(loaded.lock_path.read_text())
    return str(lock["stacks"][loaded.manifest.environments[env].stack]["fingerprint"])


def _report(envs: list[str], ok: bool = True) -> ParityReport:
    checks = tuple(Check(e, f"{e}-1", "docker.version", "1", "1" if ok else "2",
                         Status.MATCH if ok else Status.DEVIATION) for e in envs)
    return ParityReport(tuple(envs), tuple(NodeResult(e, f"{e}-1", True) for e in envs),
                        checks, observed={e: {f"{e}-1": {"docker.version": "1"}} for e in envs})


def _node_sets(loaded: Any, *envs: str, project: str | None = None,
               drop: int = 0) -> tuple[dict[str, Any], dict[str, flow.NodeSet]]:
    """A report's observed nodes and the node sets (expected nodes, host keys) of `envs`:
    every expected node, less the last `drop` verified."""
    observed, sets = {}, {}
    for env in envs:
        expected = promotion.expected_nodes(loaded.manifest, env)
        if project is not None:
            expected = [n.replace(PROJECT, project) for n in expected]
        verified = expected[:len(expected) - drop]
        observed[env] = {n: {"docker.version": "1"} for n in verified}
        sets[env] = flow.NodeSet(tuple(expected), {n: f"SHA256:key-of-{n}" for n in verified})
    return observed, sets


def _evidence(path: Path, env: str, time: str = "2026-11-04T10:00:00Z", *,
              project: str | None = None, drop: int = 0, ledger: Any = None,
              stacks: dict[str, str] | None = None) -> None:
    """What a passing verify of `env` records (by default: this project, every node)."""
    loaded = load_manifest(path)
    observed, sets = _node_sets(loaded, env, project=project, drop=drop)
    flow.record_evidence(ledger or flow.open_ledger(loaded), flow.current_lock(loaded),
                         stacks or flow.env_stacks(loaded),
                         {"environments": [env], "observed": observed},
                         project=project or loaded.manifest.project, node_sets=sets, time=time)


def test_promotion_refused_without_evidence_then_accepted(tmp_path: Path) -> None:
    path = _case(tmp_path)
    before = path.read_text()
    code, _ = promoteflow.promote(load_manifest(path), "staging", now=NOW)
    assert code == ExitCode.DEVIATION
    assert path.read_text() == before  # nothing changed
    d = promoteflow.decide(load_manifest(path), "staging", NOW)
    assert not d.allowed and "no passing verify of dev" in d.reason
    _evidence(path, "dev")
    code, new = promoteflow.promote(load_manifest(path), "staging", now=NOW)
    assert code == ExitCode.OK
    assert new.manifest.environments["staging"].stack == "lab-next"
    after = path.read_text()
    # a reviewable change: exactly the one stack name changed, comments and layout kept
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True)
               if a != b]
    assert changed == [("  staging: {provider: lab, stack: lab-2026-11, count: 1}",
                        "  staging: {provider: lab, stack: lab-next, count: 1}")]
    assert "# first to move" in after and "# dev first, prod last" in after
    # rendered: staging's group_vars carry the new fingerprint
    gv = (path.parent / "lab" / "inventories" / "staging" / "group_vars" / "staging"
          / "stacklock.yml").read_text()
    assert _fp(path, "dev") in gv
    # again: nothing to do
    code, _ = promoteflow.promote(load_manifest(path), "staging", now=NOW)
    assert code == ExitCode.OK and path.read_text() == after


def test_prod_never_gets_a_revision_staging_did_not_verify(tmp_path: Path) -> None:
    path = _case(tmp_path)
    _evidence(path, "dev")
    assert promoteflow.promote(load_manifest(path), "staging", now=NOW)[0] == ExitCode.OK
    # dev's evidence is not staging's: prod is refused until staging verified it
    d = promoteflow.decide(load_manifest(path), "prod", NOW)
    assert not d.allowed and "no passing verify of staging" in d.reason
    assert promoteflow.promote(load_manifest(path), "prod", now=NOW)[0] == ExitCode.DEVIATION
    # evidence of staging at the *old* revision does not count either
    _evidence(path, "staging")  # staging now runs lab-next: this one counts
    assert promoteflow.decide(load_manifest(path), "prod", NOW).allowed


def test_old_revision_evidence_does_not_count(tmp_path: Path) -> None:
    path = _case(tmp_path)
    _evidence(path, "staging")  # staging at lab-2026-11
    d = promoteflow.decide(load_manifest(path), "prod", NOW)
    assert d.noop  # prod already runs staging's revision
    d = promoteflow.decide(load_manifest(path), "staging", NOW)
    assert not d.allowed  # dev at lab-next was never verified


def test_soak_time(tmp_path: Path) -> None:
    path = _case(tmp_path, soak="1h")
    _evidence(path, "dev", "2026-11-04T11:30:00Z")
    d = promoteflow.decide(load_manifest(path), "staging", NOW)
    assert not d.allowed and "promotion_soak" in d.reason and "1800 s" in d.reason
    assert promoteflow.decide(load_manifest(path), "staging", NOW + timedelta(hours=1)).allowed


def test_invalid_promotions_exit_2(tmp_path: Path) -> None:
    path = _case(tmp_path)
    with pytest.raises(InvalidInput, match="first in the promotion order"):
        promoteflow.decide(load_manifest(path), "dev", NOW)
    with pytest.raises(InvalidInput, match="'qa' is not an environment"):
        promoteflow.decide(load_manifest(path), "qa", NOW)
    # the flow names the closest environment too, with the one helper (core.suggest), not
    # only the CLI's argument check
    with pytest.raises(InvalidInput) as exc:
        promoteflow.promote(load_manifest(path), "prdo", now=NOW)
    assert exc.value.problems[0].hint == ("did you mean 'prod'? use one of: dev, staging, "
                                          "prod")
    path.write_text(path.read_text().replace("promotion: [dev, staging, prod]", ""))
    with pytest.raises(InvalidInput, match="no promotion order"):
        promoteflow.decide(load_manifest(path), "staging", NOW)


@pytest.mark.parametrize("order,error", [
    ("[dev, qa]", "unknown environment"), ("[dev, stagng]", "did you mean 'staging'?"),
    ("[dev, dev]", "more than once"),
    ("[dev]", "at least two"), ('[dev, "prod{{x}}"]', "template"),
    ("[dev, 'staging\\u0000']", ""),
])
def test_promotion_key_is_validated(tmp_path: Path, order: str, error: str) -> None:
    path = _case(tmp_path)
    path.write_text(path.read_text().replace("[dev, staging, prod]", order))
    with pytest.raises(InvalidInput) as exc:
        load_manifest(path)
    text = " ".join(p.render() for p in exc.value.problems)
    assert "promotion" in text and error in text


def test_verify_names_untested_and_behind(tmp_path: Path) -> None:
    path = _case(tmp_path)
    loaded = load_manifest(path)
    fdev, fprod = _fp(path, "dev"), _fp(path, "prod")
    # staging on a revision that dev never verified (an empty ledger): untested
    report = flow.with_revision_checks(loaded, _report(["dev", "staging"]), [])
    extra = [c for c in report.checks if c.component == flow.REVISION_COMPONENT]
    assert len(extra) == 1 and "staging runs revision" in extra[0].detail
    # dev verified the old revision before it moved on: staging is behind dev, both named
    led = flow.open_ledger(loaded, file=tmp_path / "other.jsonl")
    _evidence(path, "dev", ledger=led, stacks={"dev": "lab-2026-11"})
    report = flow.with_revision_checks(loaded, _report(["dev", "staging"]), led.records())
    extra = [c for c in report.checks if c.component == flow.REVISION_COMPONENT]
    assert len(extra) == 1 and extra[0].environment == "staging"
    assert extra[0].detail.startswith("staging is behind dev")
    assert promotion.short(fdev) in extra[0].detail and promotion.short(fprod) in extra[0].detail
    assert report.exit_code == ExitCode.DEVIATION
    # prod alone, on a revision nobody earlier verified: always a deviation
    report = flow.with_revision_checks(loaded, _report(["prod"]), [])
    assert report.exit_code == ExitCode.DEVIATION
    assert "never verified" in report.deviations[0].detail
    # once staging verified it, prod alone passes
    _evidence(path, "staging")
    records = flow.open_ledger(loaded).records()
    assert flow.with_revision_checks(loaded, _report(["prod"]), records).exit_code == 0
    # staging (dev verified its revision) and prod verified together: prod's revision is
    # verified by staging in this very run, but only when staging passes
    both = flow.with_revision_checks(loaded, _report(["staging", "prod"]), led.records())
    assert both.exit_code == ExitCode.OK
    failing = flow.with_revision_checks(loaded, _report(["staging", "prod"], ok=False), [])
    assert any("never verified" in c.detail for c in failing.deviations)


def test_no_promotion_order_leaves_verify_unchanged(tmp_path: Path) -> None:
    path = _case(tmp_path)
    path.write_text(path.read_text().replace("promotion: [dev, staging, prod]", ""))
    report = _report(["prod"])
    assert flow.with_revision_checks(load_manifest(path), report, []) is report


def test_status_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                     monkeypatch: pytest.MonkeyPatch) -> None:
    from stacklock.console import out

    monkeypatch.setattr(out, "width", 250)  # one line per row, whatever $COLUMNS says
    path = _case(tmp_path)
    loaded = load_manifest(path)
    rows = promotion.status(["dev", "staging", "prod"], promoteflow.revisions(loaded), [], NOW,
                            project=PROJECT)
    assert [r.next_step.split(" (")[0] for r in rows] == [
        "stacklock verify dev", "stacklock verify staging", "stacklock verify prod"]
    _evidence(path, "dev")
    records = flow.open_ledger(loaded).records()
    rows = promotion.status(["dev", "staging", "prod"], promoteflow.revisions(loaded),
                            records, NOW, project=PROJECT)
    assert rows[0].next_step == "stacklock promote staging"
    assert promoteflow.print_status(loaded) == ExitCode.OK
    assert "stacklock promote staging" in capsys.readouterr().out


def test_set_stack_round_trip_keeps_block_style(tmp_path: Path) -> None:
    text = ("# top\nenvironments:\n  prod:   # the real one\n    provider: lab\n"
            "    stack: old   # pinned\n    count: 3\n")
    new = promoteflow.set_stack(text, "prod", "new")
    assert new == text.replace("stack: old   # pinned", "stack: new   # pinned")


@pytest.mark.parametrize("hosts,policy,want", [
    (["c", "a", "b"], rplan.Policy(1, "25%", 0), [["a"], ["b"], ["c"]]),
    (["a", "b", "c", "d", "e"], rplan.Policy(1, "50%", 0), [["a"], ["b", "c", "d"], ["e"]]),
    (["a", "b", "c"], rplan.Policy(0, "100%", 0), [["a", "b", "c"]]),
    (["a", "b", "c"], rplan.Policy(5, 1, 0), [["a", "b", "c"]]),
    (["a", "b", "c", "d"], rplan.Policy(1, 2, 0), [["a"], ["b", "c"], ["d"]]),
])
def test_rollout_plan(hosts: list[str], policy: rplan.Policy, want: list[list[str]]) -> None:
    got = rplan.plan(hosts, policy)
    assert got == want
    assert sorted(h for b in got for h in b) == sorted(hosts)


def test_default_policies() -> None:
    assert rplan.default_policy("prod", []) == rplan.PROD_DEFAULT
    assert rplan.default_policy("live", ["dev", "live"]) == rplan.PROD_DEFAULT
    assert rplan.default_policy("dev", ["dev", "live"]) == rplan.OTHER_DEFAULT


def test_failed_nodes_of_a_batch() -> None:
    from stacklock.flows.rollout import failed_nodes

    report = ParityReport(("prod",), (NodeResult("prod", "p1", True),),
                          (Check("prod", "p1", "model.x.sha256", "a", "b", Status.DEVIATION),
                           Check("prod", "*", "x", "a", "b", Status.DEVIATION, Kind.CROSS)))
    bad: dict[str, Any] = failed_nodes(report, ["p1", "p2"])
    assert set(bad) == {"p1", "p2"} and "model.x.sha256" in bad["p1"]
    # the rollout's first read: a node is already at the revision when its own checks match
    # (the environment-wide agreement checks do not make an unchanged node "to change");
    # a node missing from the report is always to change
    assert set(failed_nodes(report, ["p1", "p2"], per_node=True)) == {"p1", "p2"}
    clean = ParityReport(("prod",), (NodeResult("prod", "p1", True),
                                     NodeResult("prod", "p2", True)),
                         (Check("prod", "p1", "model.x.sha256", "a", "a", Status.MATCH),
                          Check("prod", "p2", "model.x.sha256", "a", "b", Status.DEVIATION),
                          Check("prod", "*", "x", "a", "b", Status.DEVIATION, Kind.CROSS)))
    assert set(failed_nodes(clean, ["p1", "p2"], per_node=True)) == {"p2"}


def _refusal(order: list[str], env: str, fp: str, records: list[dict[str, Any]]) -> str | None:
    return promotion.rollout_refusal(order, env, fp, records, project=PROJECT)


def test_rollout_refuses_a_revision_no_earlier_environment_verified(tmp_path: Path) -> None:
    path = _case(tmp_path)
    loaded = load_manifest(path)
    order = list(loaded.manifest.promotion)
    fnew = _fp(path, "dev")
    records = flow.open_ledger(loaded).records()
    assert _refusal(order, "dev", fnew, records) is None  # first: anything
    why = _refusal(order, "prod", fnew, records)
    assert why is not None and "never verified in staging (nor in prod)" in why
    assert "environments.prod.stack" in why
    _evidence(path, "dev")  # dev verified the new revision: staging may get it, prod not yet
    records = flow.open_ledger(loaded).records()
    assert _refusal(order, "staging", fnew, records) is None
    assert _refusal(order, "prod", fnew, records) is not None  # not dev
    # an environment may always return to a revision it verified itself
    fold = _fp(path, "prod")
    assert _refusal(order, "prod", fold, []) is not None
    _evidence(path, "prod")
    records = flow.open_ledger(loaded).records()
    assert _refusal(order, "prod", fold, records) is None
    assert _refusal(["dev", "staging"], "prod", fnew, []) is None  # not in it


def test_rollback_target_from_the_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stacklock.flows import rollback as rb
    from stacklock.flows import rollout as ro

    path = _case(tmp_path)
    fold = _fp(path, "staging")
    _evidence(path, "dev")  # dev verified lab-next
    _evidence(path, "staging")  # staging verified lab-2026-11
    assert promoteflow.promote(load_manifest(path), "staging", now=NOW)[0] == ExitCode.OK
    loaded = load_manifest(path)
    records = flow.open_ledger(loaded).records()
    body = rb.choose(loaded, "staging", None, records)
    assert body["fingerprint"] == fold  # the newest other revision staging verified
    assert rb.choose(loaded, "staging", promotion.short(fold), records) == body
    with pytest.raises(InvalidInput, match="no verified revision other"):
        rb.choose(loaded, "dev", None, records)
    with pytest.raises(InvalidInput, match="no verified revision other"):
        rb.choose(loaded, "prod", None, records)  # prod has no evidence at all
    fnew = _fp(path, "dev")
    with pytest.raises(InvalidInput, match="never verified in staging or prod"):
        rb.choose(loaded, "prod", promotion.short(fnew), records)  # only dev verified it

    from stacklock.flows.run import Run, Target

    rolled: list[tuple[str, str]] = []

    def fake_rollout(_run: object, target: Target, **_kw: object) -> ExitCode:
        rolled.append((target.name, target.stack))
        return ExitCode.OK

    monkeypatch.setattr(ro, "run_rollout", fake_rollout)
    with Run(loaded) as run:
        assert rb.run_rollback(run, run.target("staging"), None) == ExitCode.OK
    # the rollout got the target resolved again, naming the rolled-back stack
    assert rolled == [("staging", "lab-2026-11")]
    assert load_manifest(path).manifest.environments["staging"].stack == "lab-2026-11"
    # the stack's lock no longer matches what was verified: refused, nothing changed
    text = path.read_text().replace("job_queue_size: 50", "job_queue_size: 51", 1)
    path.write_text(text)
    loaded = load_manifest(path)
    lab_lock = json.loads(loaded.lock_path.read_text())
    closures = {n: s["pip"] for n, s in lab_lock["stacks"].items()}
    loaded.lock_path.write_text(lockmod.dump_lock(lockmod.build_lock(loaded, None, closures)))
    before = path.read_text()
    with Run(load_manifest(path)) as run, pytest.raises(
            InvalidInput, match=r"no stack of stacklock\.yaml locks to revision"):
        rb.run_rollback(run, run.target("staging"), promotion.short(fold))
    assert path.read_text() == before


def test_changes_between_two_revisions_name_what_changes() -> None:
    stacks = json.loads((Path(__file__).resolve().parents[3] / "examples/upgrade.lock")
                        .read_text())["stacks"]
    a, b = stacks["lab-2026-11"], stacks["lab-2026-12"]
    lines = promotion.changes(a, b)
    assert "nvidia_container_toolkit.version: 1.17.8 -> 1.18.0" in lines
    assert "apt nvidia-container-toolkit: 1.17.8-1 -> 1.18.0-1" in lines
    assert any(x.startswith("model tiny-linear: 1.0 (sha256 ") and "-> 2.0" in x for x in lines)
    assert not any(x.startswith(("pip ", "torchserve", "os")) for x in lines), lines
    assert promotion.changes(a, a) == []
    back = promotion.changes(b, a)  # a rollback reads the other way
    assert "apt nvidia-container-toolkit: 1.18.0-1 -> 1.17.8-1" in back
    gone = dict(a, pip=a["pip"][1:])
    assert promotion.changes(a, gone) == [f"pip {a['pip'][0]['name']}: "
                                          f"{a['pip'][0]['version']} -> (none)"]


# --------------------------------------------------------------------------- issue #19 holes


def test_another_projects_evidence_in_a_shared_ledger_does_not_count(tmp_path: Path) -> None:
    """Hole: two projects sharing a ledger satisfied each other's gates."""
    path = _case(tmp_path)
    fnew = _fp(path, "dev")
    _evidence(path, "dev", project="someone-else")  # same fingerprint, another project
    d = promoteflow.decide(load_manifest(path), "staging", NOW)
    assert not d.allowed and f"of project {PROJECT}" in d.reason
    records = flow.open_ledger(load_manifest(path)).records()
    assert _refusal(["dev", "staging", "prod"], "staging", fnew, records) is not None
    assert promoteflow.promote(load_manifest(path), "staging", now=NOW)[0] == ExitCode.DEVIATION
    _evidence(path, "dev")  # this project's own
    assert promoteflow.decide(load_manifest(path), "staging", NOW).allowed


def test_evidence_of_a_trimmed_node_set_does_not_count(tmp_path: Path) -> None:
    """Hole: a verify against a trimmed hosts.yml recorded passing evidence that gates took."""
    path = _case(tmp_path)
    path.write_text(path.read_text().replace(
        "dev: {provider: lab, stack: lab-next, count: 1}",
        "dev: {provider: lab, stack: lab-next, count: 2}"))
    _evidence(path, "dev", drop=1)  # one of dev's two nodes verified
    d = promoteflow.decide(load_manifest(path), "staging", NOW)
    assert not d.allowed
    _evidence(path, "dev")
    assert promoteflow.decide(load_manifest(path), "staging", NOW).allowed
    # evidence of two nodes no longer counts once dev has three
    path.write_text(path.read_text().replace("stack: lab-next, count: 2}",
                                             "stack: lab-next, count: 3}"))
    assert not promoteflow.decide(load_manifest(path), "staging", NOW).allowed


def _known_hosts_line(address: str) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pub = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return f"{address} {pub}\n"


def _inventory(loaded: Any, env: str, names: list[str]) -> None:
    from stacklock.core.inventory import hosts_yaml

    inv = loaded.output_root / "inventories" / env
    inv.mkdir(parents=True, exist_ok=True)
    hosts: dict[str, dict[str, Any]] = {n: {"address": f"10.9.0.{i + 2}", "port": 22}
                                        for i, n in enumerate(names)}
    (inv / "hosts.yml").write_text(hosts_yaml(env, "lab", {"hosts": hosts}, None))
    (inv / "known_hosts").write_text("".join(_known_hosts_line(h["address"])
                                             for h in hosts.values()))


def _passing(loaded: Any, env: str, names: list[str]) -> ParityReport:
    return ParityReport((env,), tuple(NodeResult(env, n, True) for n in names),
                        tuple(Check(env, n, "docker.version", "1", "1", Status.MATCH)
                              for n in names),
                        observed={env: {n: {"docker.version": "1"} for n in names}})


@pytest.mark.parametrize("case", ["trimmed", "other-project", "unpinned"])
def test_verify_records_no_evidence_for_other_than_the_expected_nodes(
        tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]) -> None:
    """verify on a trimmed hosts.yml, or on another project's, records nothing, and says why."""
    path = _case(tmp_path)
    path.write_text(path.read_text().replace("stack: lab-next, count: 1}",
                                             "stack: lab-next, count: 2}"))
    loaded = load_manifest(path)
    full = promotion.expected_nodes(loaded.manifest, "dev")
    assert full == [f"{PROJECT}-dev-1", f"{PROJECT}-dev-2"]
    names = {"trimmed": full[:1], "other-project": ["other-dev-1", "other-dev-2"],
             "unpinned": full}[case]
    _inventory(loaded, "dev", names)
    if case == "unpinned":
        (loaded.output_root / "inventories/dev/known_hosts").write_text(
            _known_hosts_line("10.9.0.2"))  # dev-2's key is not pinned
    assert flow.record_passing(loaded, _passing(loaded, "dev", names)) == []
    err = " ".join(capsys.readouterr().err.split())
    assert "no evidence recorded for dev" in err
    assert ("no pinned host key" if case == "unpinned" else "missing") in err
    assert flow.open_ledger(loaded).records() == []
    # the whole node set, each node's key pinned: evidence with their identities
    _inventory(loaded, "dev", full)
    written = flow.record_passing(loaded, _passing(loaded, "dev", full))
    ev = next(r for r in written if r["kind"] == "evidence")["body"]
    assert ev["project"] == PROJECT and ev["expected_nodes"] == full
    assert set(ev["node_keys"]) == set(full)
    assert all(v.startswith("SHA256:") for v in ev["node_keys"].values())


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".stacklock" not in p.parts}


@pytest.mark.parametrize("where", ["render", "rename"])
def test_promote_failing_mid_way_changes_nothing(tmp_path: Path, where: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Hole: promote rewrote the manifest first and left it rewritten when a later step
    failed."""
    import os as _os

    from stacklock.core import render as rendermod

    path = _case(tmp_path)
    loaded = load_manifest(path)
    rendermod.write_tree(loaded, rendermod.render_tree(loaded, flow.current_lock(loaded)))
    _evidence(path, "dev")
    before = _snapshot(path.parent)
    if where == "render":
        def broken(*_a: object, **_kw: object) -> dict[str, str]:
            raise InvalidInput("render failed")

        monkeypatch.setattr(rendermod, "render_tree", broken)
        with pytest.raises(InvalidInput):
            promoteflow.promote(load_manifest(path), "staging", now=NOW)
    else:  # the third rename fails: the two already replaced are put back
        real = _os.replace
        calls: list[str] = []

        def flaky(src: Any, dst: Any) -> None:
            calls.append(str(dst))
            if len(calls) == 3:
                raise OSError(28, "No space left on device", str(dst))
            real(src, dst)

        monkeypatch.setattr(_os, "replace", flaky)
        with pytest.raises(StacklockError, match="nothing was changed"):
            promoteflow.promote(load_manifest(path), "staging", now=NOW)
        assert len(calls) >= 3  # then the restore's own renames
    assert _snapshot(path.parent) == before  # manifest, lock, rendered files: as they were
    assert not list(path.parent.rglob(".*.tmp"))
    monkeypatch.undo()
    assert promoteflow.promote(load_manifest(path), "staging", now=NOW)[0] == ExitCode.OK


def test_concurrent_manifest_edits_both_land(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Hole: promote and rollback edited the one manifest holding only their environment's
    lock: two at once lost one edit."""
    import threading
    import time as _time

    path = _case(tmp_path)
    _evidence(path, "dev")
    assert promoteflow.promote(load_manifest(path), "staging", now=NOW)[0] == ExitCode.OK
    _evidence(path, "staging")
    real = promoteflow.set_stack

    def slow(text: str, env: str, stack: str) -> str:  # widen the race window
        _time.sleep(0.5)
        return real(text, env, stack)

    monkeypatch.setattr(promoteflow, "set_stack", slow)
    # prod moves up to staging's revision while dev is set back to the old stack
    stale = load_manifest(path)  # both commands loaded the manifest before either edit
    errors: list[BaseException] = []

    def promote_prod() -> None:
        try:
            assert promoteflow.promote(stale, "prod", now=NOW)[0] == ExitCode.OK
        except BaseException as exc:
            errors.append(exc)

    def edit_dev() -> None:  # what rollback does to the manifest
        try:
            with promoteflow.manifest_edit(stale) as current:
                promoteflow.edit_stack(current, "dev", "lab-2026-11")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=promote_prod), threading.Thread(target=edit_dev)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    envs = load_manifest(path).manifest.environments
    assert envs["prod"].stack == "lab-next" and envs["dev"].stack == "lab-2026-11"


def test_rollback_finds_the_revision_when_its_ami_regions_changed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hole: on AWS, rollback looked for an exact lock match, AMI region map included."""
    import yaml

    from stacklock.flows import rollback as rb
    from stacklock.flows import rollout as ro
    from stacklock.flows.run import Run, Target

    text = (ROOT / "stacklock.yaml").read_text()
    data = yaml.safe_load(text)
    data["ledger"] = {"store": "local"}
    data["promotion"] = ["dev", "staging", "prod"]
    path = tmp_path / "stacklock.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    (tmp_path / "examples").mkdir()
    shutil.copytree(EXAMPLES / "models", tmp_path / "examples" / "models")
    lock = json.loads((ROOT / "stacklock.lock").read_text())
    shutil.copyfile(ROOT / "stacklock.lock", tmp_path / "stacklock.lock")
    loaded = load_manifest(path)
    project = loaded.manifest.project
    stack = loaded.manifest.environments["prod"].stack
    locked = lock["stacks"][stack]
    assert locked.get("ami"), "the AWS example's lock has per-region AMI ids"
    fp = locked["fingerprint"]
    # the lock of that revision as the ledger stored it when prod verified it, back when
    # the stack's image was used in one more region than now
    then = dict(locked, ami=dict(locked["ami"], **{"eu-west-1": "ami-0123456789abcdef0"}))
    assert then != locked and lockmod.fingerprint_of(then) == fp
    assert promotion.stacks_of_revision(lock, fp) == [
        n for n, s in lock["stacks"].items() if s["fingerprint"] == fp]
    from stacklock.core import signing

    key = signing.generate("ci")

    led = flow.LocalLedger(tmp_path / "l.jsonl", trust=signing.Trust.of([key.public]),
                           signer=lambda: key)
    expected = promotion.expected_nodes(loaded.manifest, "prod")
    from stacklock.core import ledger as core

    led.append([("revision", core.revision_body(fp, stack, project, then)),
                ("evidence", core.evidence_body("prod", fp, stack, expected, {}, {},
                                                project=project, expected=expected,
                                                node_keys={n: "SHA256:k" for n in expected}))])
    records = led.records()
    # prod now names another stack; rollback returns it to the verified revision
    other = [n for n in lock["stacks"] if lock["stacks"][n]["fingerprint"] != fp]
    if other:
        body = rb.choose(loaded, "prod", promotion.short(fp), records)
        assert json.loads(body["lock_text"]) == then
    rolled: list[str] = []

    def fake_rollout(_run: object, target: Target, **_kw: object) -> ExitCode:
        rolled.append(target.stack)
        return ExitCode.OK

    monkeypatch.setattr(ro, "run_rollout", fake_rollout)
    monkeypatch.setattr(flow, "open_ledger", lambda _loaded, file=None: led)
    with Run(loaded) as run:  # prod already names that stack: found by fingerprint anyway
        assert rb.run_rollback(run, run.target("prod"), promotion.short(fp)) == ExitCode.OK
    assert rolled == [stack]


def test_lab_manifest_creates_and_trusts_a_key_others_refuse(
        tmp_path: Path, _private_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from stacklock.core import signing
    from stacklock.flows import keys

    path = _case(tmp_path)
    _evidence(path, "dev")  # a lab: the key is made and trusted on first use
    err = " ".join(capsys.readouterr().err.split())
    assert "created your ledger signing key" in err and "trusted your key" in err
    key_file = _private_home / ".config" / "stacklock" / "keys" / "test-writer.key"
    assert key_file.is_file() and (key_file.stat().st_mode & 0o777) == 0o600
    trusted = signing.read_signers(path.with_suffix(".signers"))
    assert [k.name for k in trusted.keys.values()] == ["test-writer"]
    head = path.with_suffix(".ledger-head").read_text()
    assert "seq: 2" in head  # the revision and the evidence
    # a static environment: no key made, exit 2 naming the commands
    text = path.read_text().replace(
        "prod: {provider: lab, stack: lab-2026-11, count: 1}",
        "prod: {provider: static, stack: lab-2026-11, gpu: false, hosts: [{name: p1, "
        "address: 10.1.1.1}]}")
    assert text != path.read_text()
    static = tmp_path / "static.yaml"
    static.write_text(text)
    shutil.copyfile(path.with_suffix(".lock"), static.with_suffix(".lock"))
    loaded = load_manifest(static)
    with pytest.raises(InvalidInput) as exc:
        keys.signer_for(loaded)
    assert exc.value.exit_code == ExitCode.INVALID
    hint = exc.value.problems[0].render()
    assert "not a trusted signer" in hint and "ledger key trust" in hint
    key_file.unlink()
    with pytest.raises(InvalidInput) as exc:
        keys.signer_for(loaded)
    assert "ledger key new" in exc.value.problems[0].render()
    assert not key_file.exists()  # nothing created for a non-lab manifest
