"""`stacklock rollback ENV [--to REVISION]`: return an environment to a revision the ledger
holds verified evidence of, using the lock the ledger stored for it (never git history).

The target: `--to` (a fingerprint or its first hex digits), else the newest revision other than
the current one that ENV itself verified. It must have passing evidence in ENV or in the
environment before it in `promotion`. Its stored lock must hash to its fingerprint, and a stack
of the manifest must lock to exactly that text: ENV is then made to name that stack (the same
one-scalar manifest edit as `promote`), the files are rendered, and the environment is rolled
out batch by batch (`stacklock rollout`: pinned packages downgraded and held again, the
TorchServe venv of that pin set switched back side by side, model archives restored, TorchServe
restarted), then verified. Nodes without a GPU skip the driver reload (said so). On AWS with a
load balancer, each batch is out of its target group while it is configured, as in a rollout
(the same `run_rollout`), and a node that fails stays out.

Exit codes: 0 rolled back and verified; 1 the rollout or verify failed; 2 no such verified
revision, or no stack of the manifest is that revision (the message says what to restore).
"""

from __future__ import annotations

import json
from typing import Any

from stacklock.console import info, step
from stacklock.core import ledger as core
from stacklock.core import promotion
from stacklock.core.lock import fingerprint_of
from stacklock.core.manifest import LoadedManifest
from stacklock.errors import ExitCode, InvalidInput, Problem
from stacklock.flows import gate as gateflow
from stacklock.flows import ledger as ledgerflow
from stacklock.flows import promote as promoteflow
from stacklock.flows import rollout as rolloutflow
from stacklock.flows.run import Run, Target


def choose(loaded: LoadedManifest, env: str, to: str | None,
           records: list[dict[str, Any]]) -> dict[str, Any]:
    """The revision body (with its stored lock) ENV returns to."""
    current = promoteflow.revisions(loaded)[env].fingerprint
    order = list(loaded.manifest.promotion)
    # ENV's own evidence, or the environment's before it: a rollback never gives ENV a
    # revision the environment before it did not verify
    allowed = order[max(0, order.index(env) - 1): order.index(env) + 1] if env in order \
        else [env]
    evs = core.evidence(records, loaded.manifest.project)
    verified = {e.fingerprint for e in evs if e.environment in allowed}
    if to:
        found = core.find_revision(records, to)
        if len(found) != 1:
            raise InvalidInput(f"--to {to}: {'no' if not found else 'more than one'} revision "
                               "of the ledger starts so", problems=[Problem(
                                   "--to", "unknown or ambiguous revision",
                                   "stacklock status lists the revisions")])
        body = found[0]
    else:
        older = [e for e in evs if e.environment == env and e.fingerprint != current]
        if not older:
            raise InvalidInput(f"{env} has no verified revision other than the current one "
                               f"({promotion.short(current)}) in the ledger")
        body = core.revisions(records)[older[-1].fingerprint]
    fp = str(body["fingerprint"])
    if fp not in verified:
        raise InvalidInput(f"revision {promotion.short(fp)} was never verified in "
                           f"{' or '.join(allowed)}: not a rollback target")
    if fingerprint_of(json.loads(body["lock_text"])) != fp:
        raise InvalidInput(f"the ledger's lock of {promotion.short(fp)} does not hash to it: "
                           "run stacklock ledger verify")
    return body


def run_rollback(run: Run, target: Target, to: str | None, *,
                 override: str | None = None, kind: str = "rollback",
                 outcomes: rolloutflow.Outcomes | None = None) -> ExitCode:
    """`outcomes`: where the rollout's result goes (`stacklock.flows.rollout.Outcomes`)."""
    from stacklock.core import lock as lockmod

    env = target.name
    run.hold([target])
    with promoteflow.manifest_edit(run.loaded, run.locks.timeout) as loaded:
        records = ledgerflow.open_ledger(loaded).records()
        body = choose(loaded, env, to, records)
        fp = str(body["fingerprint"])
        lock = lockmod.load_current_lock(loaded)
        stacks = promotion.stacks_of_revision(lock, fp)
        step(f"rollback {env} to revision {promotion.short(fp)} (stack {body.get('stack')} "
             "when verified)")
        # the promotion gate (its soak too), before the manifest changes
        gateflow.check_revision(loaded, env, fp, records, override=override,
                                what=f"rollback {env}")
        if not stacks:
            raise InvalidInput(
                f"no stack of {loaded.path.name} locks to revision {promotion.short(fp)}",
                problems=[Problem(f"environments.{env}.stack",
                                  "the verified revision is not among the manifest's stacks",
                                  f"restore stack {body.get('stack')} as it was (its lock is in "
                                  "the ledger's revision record), then roll back again")])
        if loaded.manifest.environments[env].stack != stacks[0]:
            loaded, _diff = promoteflow.edit_stack(loaded, env, stacks[0])
            info(f"  {loaded.path.name}: environments.{env}.stack -> {stacks[0]}")
        run.reload(loaded)  # under the manifest lock: what is on disk now
        target = run.target(env)  # resolved again: it names the rolled-back stack now
    if not target.gpu:
        info(f"  {env}: no GPU on these nodes: the driver reload/reboot step is skipped")
    return rolloutflow.run_rollout(run, target, override=override, kind=kind,
                                   outcomes=outcomes)


def rollout_or_roll_back(run: Run, target: Target, *, auto_rollback: bool = False,
                         override: str | None = None,
                         outcomes: rolloutflow.Outcomes | None = None) -> ExitCode:
    """`rollout` (and `promote --rollout`): with `auto_rollback`, a halted rollout returns the
    target to its previous verified revision, then exits 1. `outcomes` collects both."""
    def back(old_fp: str) -> ExitCode:
        return run_rollback(run, run.target(target.name), old_fp, kind="auto-rollback",
                            outcomes=outcomes)

    return rolloutflow.run_rollout(run, target, on_halt=back if auto_rollback else None,
                                   override=override, outcomes=outcomes)
