"""The promotion gate on every path that changes a node (`stacklock.core.gate` decides).

`check` reads the ledger once, decides every target (the revision its stack locks to) and
either returns the run's gate (the waves to configure in, and the overrides to record) or
stops with exit 1 saying what is missing and the command that records it -- before any node
is touched. `record_overrides` writes an explicit override into the ledger (kind
`gate-override`) right before the change it allows. `play_vars` is what the CLI hands
`site.yml`, whose gate play (action plugin `stacklock_gate`) calls `check_play`: the same
decision on the same ledger, and an override this run recorded is not recorded again.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from stacklock.console import info, step
from stacklock.core import gate as core
from stacklock.core import ledger as ledgercore
from stacklock.core import promotion
from stacklock.core.ledger import Evidence
from stacklock.core.manifest import LoadedManifest
from stacklock.errors import ExitCode, StacklockError
from stacklock.flows.run import Run, Target


class GateRefused(StacklockError):
    """The gate refuses a revision: exit 1, nothing changed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.DEVIATION)


@dataclass
class Gate:
    """A run's checked gate."""

    plan: core.Plan
    #: refused verdicts an explicit override lets through (recorded before the change)
    overridden: list[core.Verdict] = field(default_factory=list)
    override: str | None = None
    run_id: str = ""
    #: the environments whose override this run recorded
    recorded: set[str] = field(default_factory=set)

    @property
    def waves(self) -> list[list[str]]:
        return [list(w) for w in self.plan.waves]


def accepted(loaded: LoadedManifest, records: Sequence[Mapping[str, Any]]) -> list[Evidence]:
    """The evidence the gate accepts: this project's passing verifies over each environment's
    whole node set (as the manifest says it is now)."""
    return ledgercore.evidence(records, loaded.manifest.project,
                               promotion.expected_of(loaded.manifest))


def soak_of(loaded: LoadedManifest) -> int:
    return promotion.soak_seconds(loaded.manifest.promotion_soak)


def fingerprints(run: Run, targets: Sequence[Target]) -> dict[str, str]:
    lock = run.ensure_current()
    return {t.name: str(lock["stacks"][t.stack]["fingerprint"]) for t in targets}


def decide_all(loaded: LoadedManifest, targets: Mapping[str, str], *,
               records: Sequence[Mapping[str, Any]] | None = None,
               verified_in_run: bool = False, now: datetime | None = None) -> core.Plan:
    """The plan for `targets` (env -> fingerprint); reads the ledger only with an order."""
    from stacklock.flows import ledger as ledgerflow

    order = list(loaded.manifest.promotion)
    if not order:
        return core.plan(order, targets, [], now or datetime.now(UTC))
    if records is None:
        records = ledgerflow.open_ledger(loaded).records()
    return core.plan(order, targets, accepted(loaded, records), now or datetime.now(UTC),
                     soak_of(loaded), verified_in_run=verified_in_run)


def check(run: Run, targets: Sequence[Target], *, override: str | None = None,
          verified_in_run: bool = False, what: str = "configure",
          records: Sequence[Mapping[str, Any]] | None = None) -> Gate:
    """Decide every target before anything changes. Refused and no `override`: exit 1 naming
    what is missing and the fix. With `override`: printed loudly, recorded by
    `record_overrides` when the change starts."""
    plan = decide_all(run.loaded, fingerprints(run, targets), records=records,
                      verified_in_run=verified_in_run)
    gate = Gate(plan, override=override, run_id=run.run_dir.name)
    if not run.loaded.manifest.promotion:
        return gate
    step(f"promotion gate ({' -> '.join(run.loaded.manifest.promotion)}): "
         + ", ".join(f"{v.environment} {core.short(v.fingerprint)}"
                     for v in plan.verdicts.values()))
    for v in plan.verdicts.values():
        if v.allowed:
            info(f"  allowed  {v.describe()}")
    if plan.allowed:
        return gate
    for v in plan.refused:
        info(f"  REFUSED  {v.describe()}")
    if not override:
        first = plan.refused[0]
        raise GateRefused(
            f"{what} refused by the promotion gate: {first.environment} may not take revision "
            f"{core.short(first.fingerprint)} ({first.reason}); next: {first.fix}; nothing was "
            "changed (an explicit override: --override-gate REASON, recorded in the ledger)")
    loud(f"THE PROMOTION GATE IS OVERRIDDEN for {', '.join(v.environment for v in plan.refused)}"
         f": {override}")
    gate.overridden = list(plan.refused)
    done = [e for w in plan.waves for e in w]
    extra = tuple(v.environment for v in plan.refused if v.environment not in done)
    waves = [list(w) for w in plan.waves] or [[]]
    waves[0] = [*waves[0], *extra]
    gate.plan = core.Plan(tuple(tuple(w) for w in waves if w), plan.verdicts, plan.refused)
    return gate


def check_revision(loaded: LoadedManifest, env: str, fingerprint: str,
                   records: Sequence[Mapping[str, Any]], *, override: str | None = None,
                   what: str = "rollback", now: datetime | None = None) -> core.Verdict:
    """The gate for one environment and a revision it does not name yet (rollback: before the
    manifest edit). Refused without `override`: exit 1."""
    v = core.decide(list(loaded.manifest.promotion), env, fingerprint, accepted(loaded, records),
                    now or datetime.now(UTC), soak_of(loaded))
    if v.allowed:
        info(f"  gate: {v.describe()}")
        return v
    if not override:
        raise GateRefused(f"{what} refused by the promotion gate: {v.describe()}; nothing was "
                          "changed (an explicit override: --override-gate REASON, recorded in "
                          "the ledger)")
    loud(f"THE PROMOTION GATE IS OVERRIDDEN for {env}: {override}")
    return core.overridden(v, override)


def loud(text: str) -> None:
    from rich.markup import escape

    from stacklock.console import err

    err.print(f"[bold red]!!! {escape(text)}[/]", markup=True, highlight=False)


def record_overrides(run: Run, gate: Gate, envs: Sequence[str] | None = None) -> None:
    """Append one `gate-override` record per overridden environment (of `envs`), right before
    the change it allows; printed loudly."""
    from stacklock.flows import ledger as ledgerflow

    todo = [v for v in gate.overridden if (envs is None or v.environment in envs)
            and v.environment not in gate.recorded]
    if not todo:
        return
    command = shlex.join(["stacklock", *sys.argv[1:]])
    entries: list[tuple[str, Mapping[str, Any]]] = [
        (core.OVERRIDE_KIND, core.override_body(
            project=run.loaded.manifest.project, environment=v.environment,
            fingerprint=v.fingerprint, reason=str(gate.override), refusal=v.reason,
            command=command, run=gate.run_id))
        for v in todo]
    written = ledgerflow.open_ledger(run.loaded).append(entries)
    gate.recorded |= {v.environment for v in todo}
    for rec in written:
        loud(f"gate override recorded: {rec['body']['environment']} -> revision "
             f"{core.short(rec['body']['fingerprint'])} (ledger seq {rec['seq']}, reason: "
             f"{rec['body']['reason']})")


def play_vars(gate: Gate | None) -> dict[str, Any]:
    """What the CLI gives site.yml so that its gate play agrees without recording twice."""
    if gate is None:
        return {}
    out: dict[str, Any] = {"stacklock_gate_run": gate.run_id}
    if gate.overridden:
        out["stacklock_gate_override"] = gate.override
    return out


# --------------------------------------------------------------------------- the play's check


@dataclass(frozen=True)
class PlayResult:
    verdicts: list[core.Verdict]
    #: overrides written now (the ledger records)
    recorded: list[dict[str, Any]]
    #: overrides a CLI run recorded already (their bodies)
    reused: list[dict[str, Any]]


def check_play(loaded: LoadedManifest, targets: Mapping[str, str], *,
               override: str | None = None, run_id: str = "", command: str = "",
               now: datetime | None = None) -> PlayResult:
    """The gate of a `site.yml` run (the action plugin `stacklock_gate`): `targets` is env ->
    the fingerprint its inventory installs. Raises GateRefused when refused without an
    override. An override is recorded, unless this run (`run_id`) recorded it already."""
    from stacklock.flows import ledger as ledgerflow

    order = list(loaded.manifest.promotion)
    if not order:
        plan = core.plan(order, targets, [], now or datetime.now(UTC))
        return PlayResult(list(plan.verdicts.values()), [], [])
    led = ledgerflow.open_ledger(loaded)
    records = led.records()
    plan = core.plan(order, targets, accepted(loaded, records), now or datetime.now(UTC),
                     soak_of(loaded), verified_in_run=False)
    verdicts = list(plan.verdicts.values())
    if plan.allowed:
        return PlayResult(verdicts, [], [])
    if not override:
        raise GateRefused("\n".join(v.describe() for v in plan.refused)
                          + "\n(an explicit override, recorded in the ledger: -e "
                            "'{\"stacklock_gate_override\": \"REASON\"}')")
    project = loaded.manifest.project
    reused: list[dict[str, Any]] = []
    entries: list[tuple[str, Mapping[str, Any]]] = []
    for v in plan.refused:
        body = core.recorded_override(records, project=project, environment=v.environment,
                                      fingerprint=v.fingerprint, run=run_id)
        if body is not None:
            reused.append(body)
            continue
        entries.append((core.OVERRIDE_KIND, core.override_body(
            project=project, environment=v.environment, fingerprint=v.fingerprint,
            reason=override, refusal=v.reason, command=command or "ansible-playbook site.yml",
            run=run_id)))
    written = led.append(entries) if entries else []
    by_env = {v.environment: core.overridden(v, override) for v in plan.refused}
    return PlayResult([by_env.get(v.environment, v) for v in verdicts], written, reused)


__all__ = ["Gate", "GateRefused", "check", "check_play", "play_vars", "record_overrides"]
