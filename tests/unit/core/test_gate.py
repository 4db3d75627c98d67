"""The promotion gate (stacklock.core.gate, stacklock.flows.gate, the action plugin
stacklock_gate of site.yml): one rule on every path that changes a node's revision.

Keys are made in a temporary HOME: the real ~/.config is never read or written."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from stacklock.core import gate as core
from stacklock.core import ledger as ledgercore
from stacklock.core.ledger import Evidence
from stacklock.core.manifest import LoadedManifest, load_manifest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
ORDER = ["dev", "staging", "prod"]
A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
NOW = datetime(2026, 12, 6, 12, 0, 0, tzinfo=UTC)


def ev(env: str, fp: str, *, ago: int = 3600, seq: int = 1) -> Evidence:
    when = (NOW - timedelta(seconds=ago)).strftime(ledgercore.TIME_FORMAT)
    node = f"p-{env}-1"
    return Evidence(seq, when, env, fp, "s", (node,), "p", (node,), ((node, "SHA256:k"),))


# --------------------------------------------------------------------------- the rule


def test_first_environment_takes_any_revision() -> None:
    v = core.decide(ORDER, "dev", B, [], NOW)
    assert v.allowed and v.basis == core.FIRST


def test_no_order_and_environments_outside_it_have_no_gate() -> None:
    assert core.decide([], "prod", B, [], NOW).basis == core.UNORDERED
    assert core.decide(ORDER, "lab", B, [], NOW).allowed


def test_previous_environment_verified_it() -> None:
    v = core.decide(ORDER, "staging", B, [ev("dev", B)], NOW)
    assert v.allowed and v.basis == core.PREVIOUS and v.source == "dev"


def test_not_verified_before_is_refused_saying_what_is_missing_and_the_fix() -> None:
    # evidence of B in dev does not open prod: only the environment just before counts
    v = core.decide(ORDER, "prod", B, [ev("dev", B), ev("staging", A)], NOW)
    assert not v.allowed
    assert "never verified in staging (nor in prod)" in v.reason
    assert "stacklock rollout staging" in v.fix and "environments.prod.stack" in v.fix


def test_too_recent_for_the_soak_is_refused_with_the_wait() -> None:
    evs = [ev("staging", B, ago=600)]
    v = core.decide(ORDER, "prod", B, evs, NOW, soak=3600)
    assert not v.allowed and v.wait_s == 3000
    assert "600 s ago; promotion_soak asks for 3600 s" in v.reason and "wait 3000 s" in v.fix
    assert core.decide(ORDER, "prod", B, evs, NOW + timedelta(seconds=3000), 3600).allowed


def test_the_soak_counts_from_the_first_passing_verify() -> None:
    evs = [ev("staging", B, ago=7200, seq=1), ev("staging", B, ago=10, seq=2)]
    assert core.decide(ORDER, "prod", B, evs, NOW, soak=3600).allowed


def test_own_earlier_revision_is_allowed_without_the_previous_one() -> None:
    # re-applying prod's revision, or rolling back to one prod verified: no soak either
    v = core.decide(ORDER, "prod", A, [ev("prod", A, ago=1)], NOW, soak=86400)
    assert v.allowed and v.basis == core.OWN


# --------------------------------------------------------------------------- a run's waves


def test_a_run_over_the_order_goes_in_waves() -> None:
    p = core.plan(ORDER, {"dev": B, "staging": B, "prod": B}, [], NOW)
    assert p.allowed and p.waves == (("dev",), ("staging",), ("prod",))
    # already verified: one wave, as before
    evs = [ev("dev", B), ev("staging", B)]
    assert core.plan(ORDER, {"dev": B, "staging": B, "prod": B}, evs, NOW).waves == \
        (("dev", "staging", "prod"),)


def test_a_run_that_cannot_reach_an_environment_is_refused_up_front() -> None:
    # configure does not verify: staging's evidence cannot appear during it
    p = core.plan(ORDER, {"dev": B, "staging": B}, [], NOW, verified_in_run=False)
    assert [v.environment for v in p.refused] == ["staging"]
    # another revision than the one before it gets in this run
    p = core.plan(ORDER, {"dev": B, "staging": A}, [], NOW)
    assert [v.environment for v in p.refused] == ["staging"]
    # a soak cannot pass inside one run
    p = core.plan(ORDER, {"dev": B, "staging": B}, [], NOW, soak=60)
    assert not p.allowed and "promotion_soak asks for 60 s" in p.refused[0].reason


def test_the_override_record_kind_is_a_ledger_kind() -> None:
    assert core.OVERRIDE_KIND in ledgercore.KINDS


# --------------------------------------------------------------------------- a real manifest


@pytest.fixture()
def home(tmp_path_factory: pytest.TempPathFactory,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.delenv("STACKLOCK_SIGNING_KEY", raising=False)
    monkeypatch.setenv("STACKLOCK_SIGNER", "gate-test")
    yield home


def upgrade_copy(tmp_path: Path, soak: str | None = None) -> Path:
    """examples/upgrade.yaml (dev -> staging -> prod, all lab), its lock and rendered files."""
    from stacklock.core import lock as lockmod
    from stacklock.core import render

    work = tmp_path / "m"
    (work / "models").mkdir(parents=True)
    for mar in ("tiny-linear.mar", "tiny-linear-2.0.mar"):
        shutil.copy(ROOT / "examples/models" / mar, work / "models" / mar)
    text = (ROOT / "examples/upgrade.yaml").read_text()
    if soak:
        text = text.replace("promotion: [dev, staging, prod]",
                            f"promotion: [dev, staging, prod]\npromotion_soak: {soak}")
    (work / "upgrade.yaml").write_text(text)
    shutil.copy(ROOT / "examples/upgrade.lock", work / "upgrade.lock")
    loaded = load_manifest(work / "upgrade.yaml")
    render.write_tree(loaded, render.render_tree(loaded, lockmod.load_current_lock(loaded)))
    return work / "upgrade.yaml"


def fp_of(loaded: LoadedManifest, env: str) -> str:
    from stacklock.core import lock as lockmod

    lock = lockmod.load_current_lock(loaded)
    return str(lock["stacks"][loaded.manifest.environments[env].stack]["fingerprint"])


def record_verified(loaded: LoadedManifest, env: str) -> None:
    """A passing verify of ENV at its revision, as `stacklock verify ENV` records it."""
    from stacklock.core import lock as lockmod
    from stacklock.core import promotion
    from stacklock.flows import ledger as ledgerflow

    nodes = promotion.expected_nodes(loaded.manifest, env)
    report = {"environments": [env], "observed": {env: {n: {"x": "1"} for n in nodes}}}
    ledgerflow.record_evidence(
        ledgerflow.open_ledger(loaded), lockmod.load_current_lock(loaded),
        ledgerflow.env_stacks(loaded), report, project=loaded.manifest.project,
        node_sets={env: ledgerflow.NodeSet(tuple(nodes), dict.fromkeys(nodes, "SHA256:k"))})


def test_rendered_inventory_carries_what_the_play_needs(home: Path, tmp_path: Path) -> None:
    m = upgrade_copy(tmp_path, soak="30m")
    gv = yaml.safe_load((m.parent / "upgrade/inventories/prod/group_vars/prod/stacklock.yml")
                        .read_text())
    loaded = load_manifest(m)
    assert gv["stacklock_gate"] == {
        "project": "stacklock-upgrade", "environment": "prod",
        "fingerprint": fp_of(loaded, "prod"), "promotion": ORDER, "promotion_soak": "30m",
        "manifest": "../../../upgrade.yaml", "ledger": "../../.stacklock/ledger.jsonl"}


def test_the_play_check_refuses_then_records_an_override_once(home: Path, tmp_path: Path) -> None:
    from stacklock.flows import gate as gateflow
    from stacklock.flows import ledger as ledgerflow

    loaded = load_manifest(upgrade_copy(tmp_path))
    fp = fp_of(loaded, "staging")
    with pytest.raises(gateflow.GateRefused, match=r"never verified in dev \(nor in staging\)"):
        gateflow.check_play(loaded, {"staging": fp})
    res = gateflow.check_play(loaded, {"staging": fp}, override="hotfix INC-42", run_id="r1",
                              command="stacklock configure staging")
    assert [r["kind"] for r in res.recorded] == [core.OVERRIDE_KIND]
    body = res.recorded[0]["body"]
    assert body["reason"] == "hotfix INC-42" and body["environment"] == "staging"
    assert body["fingerprint"] == fp and "never verified in dev" in body["refusal"]
    assert res.verdicts[0].basis == core.OVERRIDE
    # the play started by the run that recorded it: not recorded again
    again = gateflow.check_play(loaded, {"staging": fp}, override="hotfix INC-42", run_id="r1")
    assert again.recorded == [] and again.reused[0]["run"] == "r1"
    records = ledgerflow.open_ledger(loaded).records()  # signed, chain intact, kind known
    assert [r["kind"] for r in records] == [core.OVERRIDE_KIND]
    # an override is never evidence: staging is still refused without one
    with pytest.raises(gateflow.GateRefused):
        gateflow.check_play(loaded, {"staging": fp})
    # dev's passing verify opens staging's gate
    record_verified(loaded, "dev")
    assert gateflow.check_play(loaded, {"staging": fp}).verdicts[0].basis == core.PREVIOUS


# --------------------------------------------------------------------------- the CLI


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, STACKLOCK_HOME=str(ROOT), NO_COLOR="1", COLUMNS="200",
               HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"),
               STACKLOCK_SIGNER="gate-test", STACKLOCK_LOCK_TIMEOUT="5")
    env.pop("STACKLOCK_SIGNING_KEY", None)
    env.pop("CI", None)
    return subprocess.run([sys.executable, "-m", "stacklock.cli", *args], capture_output=True,
                          text=True, env=env, timeout=120, check=False,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("command", ["configure", "apply", "provision"])
def test_mutating_commands_need_env_or_all(home: Path, tmp_path: Path, command: str) -> None:
    m = upgrade_copy(tmp_path)
    res = cli(home, "-m", str(m), command)
    assert res.returncode == 2, res.stderr
    assert f"name the environment(s) to {command}, or --all" in res.stderr
    assert f"stacklock -m {m} {command} ENV, or --all" in res.stderr


def test_configure_refused_by_the_gate_before_any_node(home: Path, tmp_path: Path) -> None:
    m = upgrade_copy(tmp_path)
    # staging was never provisioned: exit 1 (not 2, "not provisioned") shows the gate came first
    res = cli(home, "-m", str(m), "configure", "staging")
    assert res.returncode == 1, res.stderr
    assert "configure refused by the promotion gate" in res.stderr
    assert "never verified in dev (nor in staging)" in res.stderr
    assert "--override-gate REASON" in res.stderr
    res = cli(home, "-m", str(m), "rollout", "staging")
    assert res.returncode == 1 and "never verified in dev (nor in staging)" in res.stderr


def test_last_environment_asks_and_without_a_terminal_needs_yes(home: Path,
                                                                 tmp_path: Path) -> None:
    m = upgrade_copy(tmp_path)
    loaded = load_manifest(m)
    record_verified(loaded, "staging")  # prod's gate is open
    ledger = m.parent / "upgrade/.stacklock/ledger.jsonl"
    before = ledger.read_bytes()
    for command in ("configure", "provision"):
        res = cli(home, "-m", str(m), command, "prod")
        assert res.returncode == 2, res.stderr
        assert "prod is the last environment of the promotion order" in res.stderr
        assert f"stacklock -m {m} {command} prod --yes" in res.stderr
    # with --yes it goes on: here to the missing inventory (exit 2 naming apply), past consent
    res = cli(home, "-m", str(m), "configure", "prod", "--yes")
    assert res.returncode == 2 and f"stacklock -m {m} apply prod" in res.stderr, res.stderr
    assert "last environment" not in res.stderr
    assert ledger.read_bytes() == before  # nothing recorded, nothing changed


def test_provision_all_walks_the_order_or_refuses_a_soak_up_front(home: Path,
                                                                  tmp_path: Path) -> None:
    m = upgrade_copy(tmp_path)
    res = cli(home, "-m", str(m), "provision", "--all")
    # the gate plans dev, then staging, then prod (each verified first); then consent for prod
    assert res.returncode == 2, res.stderr
    assert "staging gets revision" in res.stderr and "--yes" in res.stderr
    m2 = upgrade_copy(tmp_path / "soak", soak="1h")
    res = cli(home, "-m", str(m2), "provision", "--all", "--yes")
    assert res.returncode == 1, res.stderr
    assert "promotion_soak asks for 3600 s" in res.stderr and "nothing was changed" in res.stderr
    assert not (m2.parent / "upgrade/.stacklock/ledger.jsonl").exists()


def test_override_on_the_cli_is_loud(home: Path, tmp_path: Path) -> None:
    m = upgrade_copy(tmp_path)
    res = cli(home, "-m", str(m), "configure", "staging", "--override-gate", "INC-7 hotfix")
    # past the gate (loudly), then the missing inventory stops it before any change, so
    # nothing is recorded: an override is recorded right before the change it allows
    assert "THE PROMOTION GATE IS OVERRIDDEN for staging: INC-7 hotfix" in res.stderr
    assert res.returncode == 2 and f"stacklock -m {m} apply staging" in res.stderr, res.stderr
    assert not (m.parent / "upgrade/.stacklock/ledger.jsonl").exists()


# --------------------------------------------------------------------------- the play


def local_inventory(m: Path, env: str) -> Path:
    inv = m.parent / "upgrade/inventories" / env
    host = f"stacklock-upgrade-{env}-1"
    (inv / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": {env: {"hosts": {
        host: {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
               "ansible_become": False}}}}}}))
    return inv


def play(home: Path, inv: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"),
               STACKLOCK_SIGNER="gate-test", ANSIBLE_NOCOLOR="1")
    env.pop("STACKLOCK_SIGNING_KEY", None)
    argv = [str(BIN / "ansible-playbook"), "-i", str(inv), "ansible/playbooks/site.yml",
            *extra]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=300, check=False)


def _role_tags() -> str:
    """The tags of every role site.yml runs: skipped, so that only the gate acts on this
    machine (a role left out would run against it, as the roles of a real node do)."""
    plays: list[dict[str, Any]] = yaml.safe_load((ROOT / "ansible/playbooks/site.yml").read_text())
    tags = [t for p in plays for r in p.get("roles", []) for t in r.get("tags", [])]
    assert len(tags) >= 5 and "always" not in tags, tags
    return ",".join(tags)


ROLE_TAGS = _role_tags()


def assert_only_the_gate_ran(res: subprocess.CompletedProcess[str]) -> None:
    """Past the gate, the install play started (its facts) and no role's task ran here."""
    tasks = re.findall(r"^TASK \[(.+?)\]", res.stdout, re.M)
    assert tasks == ["Refuse a revision the environment before this one never verified",
                     "Gathering Facts"], tasks


def test_site_yml_refuses_an_unverified_revision_before_any_host_task(
        home: Path, tmp_path: Path) -> None:
    m = upgrade_copy(tmp_path)
    inv = local_inventory(m, "staging")
    # the roles are skipped even here: a gate that let it through must not run them on this
    # machine; the install play's facts (tagged always) would still show that it started
    res = play(home, inv, "--skip-tags", ROLE_TAGS)
    assert res.returncode != 0, res.stdout[-3000:]
    assert "never verified in dev (nor in staging)" in res.stdout, res.stdout[-3000:]
    assert "Gathering Facts" not in res.stdout and "TASK [nvidia_driver" not in res.stdout
    assert "PLAY [Install the pinned GPU serving stack]" not in res.stdout
    # dev verified it: the same play lets it through (roles skipped here: this machine)
    record_verified(load_manifest(m), "dev")
    res = play(home, inv, "--skip-tags", ROLE_TAGS)
    assert res.returncode == 0, res.stdout[-3000:]
    assert "stacklock_gate: staging may take revision" in res.stdout
    assert_only_the_gate_ran(res)


def test_site_yml_override_is_loud_and_recorded(home: Path, tmp_path: Path) -> None:
    m = upgrade_copy(tmp_path)
    inv = local_inventory(m, "prod")
    # JSON: `-e key=value` splits a value at its spaces
    res = play(home, inv, "-e", '{"stacklock_gate_override": "INC-9 by hand"}', "--skip-tags",
               ROLE_TAGS)
    assert res.returncode == 0, res.stdout[-3000:]
    assert "THE PROMOTION GATE IS OVERRIDDEN" in res.stdout + res.stderr
    assert_only_the_gate_ran(res)
    lines = (m.parent / "upgrade/.stacklock/ledger.jsonl").read_text().splitlines()
    bodies = [json.loads(x)["body"] for x in lines if json.loads(x)["kind"] == "gate-override"]
    assert [(b["environment"], b["reason"]) for b in bodies] == [("prod", "INC-9 by hand")]
    # --check (audit --deep) changes nothing: the refusal is a warning, nothing recorded
    res = play(home, inv, "--check", "--skip-tags", ROLE_TAGS)
    assert res.returncode == 0 and "check mode" in res.stdout + res.stderr
    assert len((m.parent / "upgrade/.stacklock/ledger.jsonl").read_text().splitlines()) == 1


def test_site_yml_takes_its_batch_size_from_stacklock_serial() -> None:
    doc: list[dict[str, Any]] = yaml.safe_load((ROOT / "ansible/playbooks/site.yml").read_text())
    assert doc[0]["tasks"][0]["run_once"] is True
    assert doc[0]["tasks"][0]["delegate_to"] == "localhost"
    assert doc[1]["serial"] == "{{ stacklock_serial | default('100%') }}"
