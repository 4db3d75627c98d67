"""The promotion gate: may an environment's nodes be given a revision? Pure: decisions from the
promotion order, the ledger's accepted evidence, the soak and the time.

One rule, on every path that changes a node's revision (configure, provision, apply of an aws
environment, rollout, rollback, demo, and the standalone `site.yml` through the
`stacklock_gate` action plugin). Environment E may be configured to revision F (its lock
fingerprint) when:

1. E is not in the promotion order (or there is none), or E is first in it; or
2. E's own nodes verified F before (re-applying its revision, or returning to one it ran); or
3. the environment just before E in the order verified F, and its first passing verify of F
   is at least `promotion_soak` old.

Anything else is refused, saying what is missing and the command that records it. `evidence`
is what a gate of the project accepts (`stacklock.core.ledger.evidence`: this project's
complete, passing verifies of each environment's node set); the caller reads the ledger.

An override (`--override-gate REASON`, `-e stacklock_gate_override=REASON`) lets a refused
revision through and is itself a ledger record of kind `gate-override` (`override_body`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from stacklock.core.ledger import Evidence, first_evidence, latest_evidence
from stacklock.core.manifest import LoadedManifest, ledger_location

#: the ledger record kind of an override of the gate
OVERRIDE_KIND = "gate-override"

#: how the gate let a revision through
UNORDERED, FIRST, OWN, PREVIOUS, OVERRIDE = "unordered", "first", "own", "previous", "override"


def short(fingerprint: str | None) -> str:
    """The first 12 hex digits of a fingerprint (`sha256:` dropped)."""
    return (fingerprint or "(none)").removeprefix("sha256:")[:12]


@dataclass(frozen=True)
class Verdict:
    """The gate's answer for one environment and revision."""

    environment: str
    fingerprint: str
    allowed: bool
    #: UNORDERED, FIRST, OWN, PREVIOUS (allowed), OVERRIDE, or "" (refused)
    basis: str
    #: why it is allowed, or exactly what is missing
    reason: str
    #: the command that fixes a refusal ("" when allowed)
    fix: str = ""
    #: the environment whose evidence decided (None: none needed)
    source: str | None = None
    evidence: Evidence | None = None
    #: refused only for the soak: seconds left
    wait_s: int = 0

    def describe(self) -> str:
        if self.allowed:
            return f"{self.environment} may take revision {short(self.fingerprint)}: {self.reason}"
        return (f"{self.environment} may not take revision {short(self.fingerprint)}: "
                f"{self.reason} -- next: {self.fix}")


def previous(order: Sequence[str], env: str) -> str | None:
    """The environment just before `env` in `order` (None: first, or not in it)."""
    names = list(order)
    if env not in names:
        return None
    i = names.index(env)
    return names[i - 1] if i > 0 else None


def decide(order: Sequence[str], env: str, fingerprint: str, evidence: Sequence[Evidence],
           now: datetime, soak: int = 0) -> Verdict:
    """May `env` be configured to revision `fingerprint`? (the module's rule)"""
    fp = fingerprint
    names = list(order)
    if env not in names:
        why = ("no promotion order" if not names
               else f"{env} is not in the promotion order ({', '.join(names)})")
        return Verdict(env, fp, True, UNORDERED, f"{why}: no gate")
    if names.index(env) == 0:
        return Verdict(env, fp, True, FIRST,
                       f"{env} is first in the promotion order: new revisions start here")
    own = latest_evidence(evidence, env, fp)
    if own is not None:
        return Verdict(env, fp, True, OWN,
                       f"{env} verified revision {short(fp)} itself at {own.time} (ledger seq "
                       f"{own.seq}): re-applying it, or returning to it", source=env,
                       evidence=own)
    prev = names[names.index(env) - 1]
    first = first_evidence(evidence, prev, fp)
    if first is None:
        return Verdict(
            env, fp, False, "",
            f"revision {short(fp)} was never verified in {prev} (nor in {env}): no passing "
            f"verify of it on all of {prev}'s nodes in the ledger",
            f"roll it out and verify it in {prev} first (`stacklock rollout {prev}`, or "
            f"`stacklock configure {prev}` then `stacklock verify {prev}`; `stacklock promote "
            f"{env}` then moves {env} to it), or put environments.{env}.stack back",
            source=prev)
    age = int((now - first.when).total_seconds())
    if age < soak:
        return Verdict(
            env, fp, False, "",
            f"{prev} verified revision {short(fp)} at {first.time} (ledger seq {first.seq}), "
            f"{age} s ago; promotion_soak asks for {soak} s",
            f"wait {soak - age} s, then run it again", source=prev, evidence=first,
            wait_s=soak - age)
    latest = latest_evidence(evidence, prev, fp) or first
    soaked = f", {age} s ago (promotion_soak {soak} s)" if soak else ""
    return Verdict(env, fp, True, PREVIOUS,
                   f"{prev} verified revision {short(fp)} at {first.time}{soaked}; latest on "
                   f"{len(latest.nodes)} node(s) at ledger seq {latest.seq}", source=prev,
                   evidence=latest)


def overridden(verdict: Verdict, reason: str) -> Verdict:
    """A refused verdict let through by an explicit override."""
    return Verdict(verdict.environment, verdict.fingerprint, True, OVERRIDE,
                   f"GATE OVERRIDDEN ({reason}): {verdict.reason}", source=verdict.source)


@dataclass(frozen=True)
class Plan:
    """What a run that configures several environments may do, in order: `waves` of
    environments configured together (each wave verified before the next starts: its evidence
    opens the gate of the next), and the refusals that stop it before anything changes."""

    waves: tuple[tuple[str, ...], ...]
    verdicts: Mapping[str, Verdict] = field(default_factory=dict)
    refused: tuple[Verdict, ...] = ()

    @property
    def allowed(self) -> bool:
        return not self.refused


def plan(order: Sequence[str], targets: Mapping[str, str], evidence: Sequence[Evidence],
         now: datetime, soak: int = 0, *, verified_in_run: bool = True) -> Plan:
    """The waves of a run over `targets` (env -> the fingerprint it gets). An environment the
    gate refuses now is still allowed when the environment just before it is in the same run,
    gets the same revision, and will be verified before it (`verified_in_run`) with no soak to
    wait for: it goes in a later wave. Refusals are decided up front, so a run that could not
    reach an environment changes nothing."""
    names = list(order)
    verdicts: dict[str, Verdict] = {}
    wave_of: dict[str, int] = {}
    refused: list[Verdict] = []
    ordered = [e for e in targets if e not in names] + [e for e in names if e in targets]
    for env in ordered:
        v = decide(order, env, targets[env], evidence, now, soak)
        verdicts[env] = v
        if v.allowed:
            wave_of[env] = 0
            continue
        prev = previous(order, env)
        if (verified_in_run and soak == 0 and prev is not None and prev in wave_of
                and targets.get(prev) == targets[env]):
            wave_of[env] = wave_of[prev] + 1
            verdicts[env] = Verdict(env, targets[env], True, PREVIOUS,
                                    f"{prev} gets revision {short(targets[env])} in this run "
                                    f"and is verified before {env}", source=prev)
            continue
        if soak and prev is not None and prev in wave_of and targets.get(prev) == targets[env] \
                and v.wait_s == 0 and verified_in_run:
            v = Verdict(env, v.fingerprint, False, "",
                        f"{v.reason}; {prev} is verified in this run, but promotion_soak asks "
                        f"for {soak} s between them",
                        f"run {prev} first, then {env} after {soak} s", source=prev)
            verdicts[env] = v
        refused.append(v)
    count = max(wave_of.values(), default=-1) + 1
    waves = tuple(tuple(e for e in ordered if wave_of.get(e) == i) for i in range(count))
    return Plan(waves, verdicts, tuple(refused))


def override_body(*, project: str, environment: str, fingerprint: str, reason: str,
                  refusal: str, command: str, run: str) -> dict[str, Any]:
    """The ledger record of an override: who let what through, why, and what the gate said."""
    return {"project": project, "environment": environment, "fingerprint": fingerprint,
            "reason": reason, "refusal": refusal, "command": command, "run": run}


def overrides(records: Sequence[Mapping[str, Any]], project: str) -> list[dict[str, Any]]:
    """The bodies of this project's override records, oldest first."""
    return [dict(r.get("body") or {}) for r in records
            if r.get("kind") == OVERRIDE_KIND and (r.get("body") or {}).get("project") == project]


def recorded_override(records: Sequence[Mapping[str, Any]], *, project: str, environment: str,
                      fingerprint: str, run: str) -> dict[str, Any] | None:
    """The override this run recorded for `environment` and `fingerprint` (None: none): the
    play started by a CLI run that recorded it does not record it again."""
    for body in reversed(overrides(records, project)):
        if (body.get("environment"), body.get("fingerprint"), body.get("run")) == \
                (environment, fingerprint, run) and run:
            return dict(body)
    return None


#: the local ledger file, relative to the manifest's output_dir (stacklock.flows.ledger)
LOCAL_LEDGER = ".stacklock/ledger.jsonl"


def vars_for(loaded: LoadedManifest, env: str, fingerprint: str, inventory_dir: Path
             ) -> dict[str, Any]:
    """The `stacklock_gate` group variable of an environment's rendered inventory: what the
    `stacklock_gate` action plugin of site.yml needs (the environment, the revision this
    inventory installs, the promotion order and soak, the project, the manifest and where its
    ledger lives). Paths are relative to the inventory folder (the checkout may move); the
    ledger is an s3:// URL or such a path."""
    m = loaded.manifest
    loc, _problems = ledger_location(m)
    ledger = loc.url or _rel(loaded.output_root / LOCAL_LEDGER, inventory_dir)
    return {
        "project": m.project,
        "environment": env,
        "fingerprint": fingerprint,
        "promotion": list(m.promotion),
        "promotion_soak": m.promotion_soak or "",
        "manifest": _rel(loaded.path.resolve(), inventory_dir),
        "ledger": ledger,
    }


def _rel(target: Path, start: Path) -> str:
    return Path(os.path.relpath(target, start)).as_posix()


__all__ = [
    "OVERRIDE_KIND",
    "Plan",
    "Verdict",
    "decide",
    "overridden",
    "override_body",
    "plan",
    "vars_for",
]
