"""`stacklock rollout ENV`: configure an environment canary first, then in batches, verifying
each batch (the verify play limited to its hosts) before the next one starts.

Only the hosts of one batch are configured at a time (`site.yml --limit`), so TorchServe
restarts never take down more than one batch. When more nodes than `max_failures` fail
(configure failed or the batch's verify found a deviation or could not look), the rollout
halts: later batches are not touched and keep the previous revision. The report lists each
node with its revision: the new one where its batch passed, the previous one (from the
ledger's latest evidence of another revision) where the rollout never reached it. The end:
`verify ENV` over every node, which records the evidence of the new revision. The result of
each node (batch, attempted or not, updated, failed, untouched or already current) is one
`stacklock.core.rollout.NodeOutcome`: shown as a table, or in the `stacklock.rollout/v1`
envelope that `--format json` prints (`emit`).

On AWS, an environment with an endpoint has a load balancer (its target group's ARN and each
node's instance id are in the inventory, written by `stacklock apply`): each batch is drained
from it before it is configured, and only the nodes that configured, verified and passed the
load balancer's health check are registered again (`stacklock.adapters.aws.out_of_service`); a
failed node stays out of it, and its row says so. Nodes already at the revision that are out
of the load balancer (left out by an earlier rollout) are registered again first. Lab and
static environments have no load balancer of stacklock's.

Exit codes: 0 rolled out and verified; 1 halted (a batch failed) or the final verify found a
deviation; 3 could not finish.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from rich.table import Table

from stacklock.console import emit_json, err, info, out, step
from stacklock.core import inventory as inventorymod
from stacklock.core import ledger as core
from stacklock.core import promotion
from stacklock.core import report as reportmod
from stacklock.core import rollout as plan
from stacklock.core.manifest import AwsEnvironment
from stacklock.core.parity import ParityReport, Status
from stacklock.errors import ExitCode, InvalidInput, Problem, ToolFailed
from stacklock.flows import gate as gateflow
from stacklock.flows import ledger as ledgerflow
from stacklock.flows import verify as verifyflow
from stacklock.flows.run import Run, Target

#: what a halted rollout does with --auto-rollback: return the target to this revision
#: (stacklock.flows.rollback composes it; the rollout itself knows nothing of rollbacks)
OnHalt = Callable[[str], ExitCode]


def policy_of(run: Run, target: Target) -> plan.Policy:
    spec = target.spec.rollout
    if spec is None:
        return plan.default_policy(target.name, run.loaded.manifest.promotion)
    return plan.Policy(spec.canary, spec.batch, spec.max_failures)


def failed_nodes(report: ParityReport, batch: list[str], *,
                 per_node: bool = False) -> dict[str, str]:
    """node -> the first problem of that node in a batch's report. `per_node`: only the
    node's own checks against the lock, not the environment-wide agreement checks."""
    bad: dict[str, str] = {}
    for c in report.checks:
        if c.status is Status.MATCH or (per_node and c.node == "*"):
            continue
        nodes = batch if c.node == "*" else [c.node]
        for n in nodes:
            if n in batch:
                bad.setdefault(n, c.describe())
    for n in batch:
        if not any(r.node == n for r in report.nodes):
            bad.setdefault(n, "not in the verify report")
    return bad


def verify_batch(run: Run, target: Target, batch: list[str], n: int | str) -> ParityReport:
    from stacklock.adapters import ansible

    env = target.name
    name = f"verify-{env}-{n if isinstance(n, str) else f'batch{n}'}"
    path = run.log_file(f"{name}.json")
    path.unlink(missing_ok=True)
    ansible.run_playbook(
        "verify.yml", [target.inventory()], log_file=run.log_file(f"{name}.log"),
        extra_vars={"stacklock_report_path": str(path), "stacklock_verify_fail": False,
                    "stacklock_verify_environments": [env],
                    "stacklock_verify_hosts": ",".join(batch)},
        ok_codes=(0, 2, 4), quiet=True)
    if not path.is_file():
        raise ToolFailed(f"the verify play wrote no report; see {path.with_suffix('.log')}")
    return reportmod.from_dict(json.loads(path.read_text("utf-8")))


def load_balancer(target: Target) -> inventorymod.LoadBalancerTargets | None:
    """The target group a rollout takes each batch out of, from the inventory; None when the
    environment has none (lab, static, AWS without an endpoint). Exit 2 when an AWS
    environment with an endpoint has an inventory without it, or a node without its instance
    id (written before `stacklock apply` recorded them): rolling out then would restart nodes
    the load balancer still sends clients to."""
    hosts_file = target.inventory() / "hosts.yml"
    lb = (inventorymod.load_balancer_targets(target.name, hosts_file.read_text("utf-8"))
          if hosts_file.is_file() else None)
    spec = target.spec
    if lb is None:
        if isinstance(spec, AwsEnvironment) and spec.endpoint is not None:
            raise InvalidInput(
                f"{hosts_file} names no target group of the load balancer", problems=[Problem(
                    f"environments.{target.name}.endpoint",
                    "the environment has a load balancer, but the inventory does not say "
                    f"which target group ({inventorymod.TARGET_GROUP_VAR}): the rollout could "
                    "not take a batch out of it before configuring it",
                    f"run: stacklock apply {target.name} (writes the target group's ARN and "
                    "each node's instance id into the inventory)")])
        return None
    missing = [h for h in target.hosts() if h not in lb.instance_ids]
    if missing:
        raise InvalidInput(
            f"{hosts_file}: no instance id for {', '.join(missing)}", problems=[Problem(
                f"environments.{target.name}", f"the inventory has no "
                f"{inventorymod.INSTANCE_ID_VAR} for {', '.join(missing)}: the rollout could "
                "not take them out of the load balancer",
                f"run: stacklock apply {target.name}")])
    return lb


def _lb_region(target: Target, lb: inventorymod.LoadBalancerTargets) -> str:
    spec = target.spec
    return lb.region or (spec.region if isinstance(spec, AwsEnvironment) else "")


def _progress(prefix: str, line: str) -> None:
    info(f"  {prefix}: {line}")


def return_current(target: Target, lb: inventorymod.LoadBalancerTargets,
                   current: list[str], nodes: dict[str, plan.NodeOutcome]) -> int:
    """Nodes already at the revision (not configured) that are out of the load balancer, left
    out by an earlier rollout: registered again, each a failed node when it does not become
    healthy (`nodes` updated). The number of failed nodes."""
    from stacklock.adapters import aws

    region = _lb_region(target, lb)
    health = aws.target_health(region, lb.target_group_arn)
    out_of_lb = [h for h in current if lb.instance_ids[h] not in health
                 or health[lb.instance_ids[h]].out]
    if not out_of_lb:
        return 0
    step(f"{target.name}: {', '.join(out_of_lb)} at the revision but out of the load "
         "balancer: register again")
    bad = aws.out_of_service(region, lb.target_group_arn,
                             {h: lb.instance_ids[h] for h in out_of_lb}, lambda: {},
                             progress=partial(_progress, target.name))
    for h, why in bad.items():
        nodes[h] = replace(nodes[h], attempted=True, result=plan.FAILED, revision=None,
                           detail=why)
    return len(bad)


def previous_revision(records: list[dict[str, Any]], env: str, new_fp: str,
                      project: str) -> str | None:
    older = [e for e in core.evidence(records, project) if e.environment == env
             and e.fingerprint != new_fp]
    return older[-1].fingerprint if older else None


def what_changes(records: list[dict[str, Any]], old_fp: str | None,
                 new_stack: dict[str, object]) -> list[str]:
    """The summary of what changes on each node: the previous revision's lock (kept in the
    ledger) against the new one."""
    if old_fp is None:
        return ["changes: the previous revision is not in the ledger (no passing verify yet)"]
    body = core.revisions(records).get(old_fp)
    if body is None:
        return [f"changes: revision {promotion.short(old_fp)} has no lock in the ledger"]
    lines = promotion.changes(json.loads(body["lock_text"]), new_stack)
    head = f"changes from revision {promotion.short(old_fp)}:"
    return [head, *(f"  {x}" for x in lines)] if lines else [f"{head} none in the lock"]


def configure_and_verify(run: Run, target: Target, batch: list[str], n: int, label: str,
                         gate: Any) -> dict[str, str]:
    """One batch: `site.yml --limit` the batch, then the verify play on it; the nodes that
    failed (node -> why)."""
    from stacklock.adapters import ansible

    env = target.name
    step(f"{env} {label}: configure {', '.join(batch)}")
    recap = ansible.run_playbook(
        "site.yml", [target.inventory()],
        log_file=run.log_file(f"site-{env}-batch{n}.log"),
        # one batch at a time: a driver change may reboot these nodes (nvidia_driver role)
        extra_vars={"nvidia_driver_reboot": True, **gateflow.play_vars(gate)},
        extra_args=["--limit", ",".join(batch)], ok_codes=(0, 2, 4))
    bad: dict[str, str] = {}
    for h in batch:
        r = recap.get(h) or {}
        if not r or r.get("failed") or r.get("unreachable"):
            bad[h] = ("configure failed" if r else "not in the play recap") + \
                f"; see {run.log_file(f'site-{env}-batch{n}.log')}"
    step(f"{env} {label}: verify {', '.join(batch)}")
    report = verify_batch(run, target, batch, n)
    for h, why in failed_nodes(report, batch).items():
        bad.setdefault(h, why)
    return bad


@dataclass
class Outcomes:
    """The rollouts one command runs, in order (a rollout, then its auto-rollback), and how
    each shows its nodes: `table` on stdout as it ends; `json` not at all (the command prints
    one `stacklock.rollout/v1` envelope at its end, `emit`, and the final verify's table goes
    to stderr, so that stdout holds the envelope only)."""

    fmt: str = "table"
    rollouts: list[plan.RolloutResult] = field(default_factory=list)


def run_rollout(run: Run, target: Target, *, on_halt: OnHalt | None = None,
                override: str | None = None, kind: str = "rollout",
                outcomes: Outcomes | None = None) -> ExitCode:
    """Roll `target` out canary first, then in batches. `on_halt`: what to do with the
    previous revision when a batch fails (--auto-rollback). The revision must pass the
    promotion gate (`stacklock.flows.gate`, exit 1) unless `override` (a reason, recorded).
    `kind`: what the rollout is for (`stacklock.core.rollout.KINDS`); `outcomes`: where its
    result goes (default: the node table on stdout)."""
    outcomes = outcomes if outcomes is not None else Outcomes()
    env = target.name
    started = time.monotonic()
    run.hold([target])
    lock = run.ensure_current()
    stack = target.stack
    new_fp = str(lock["stacks"][stack]["fingerprint"])
    records = ledgerflow.open_ledger(run.loaded).records()  # once: on AWS an S3 read
    project = run.loaded.manifest.project
    gate = gateflow.check(run, [target], override=override, what=f"rollout {env}",
                          records=records)
    old_fp = previous_revision(records, env, new_fp, project)
    hosts = target.hosts()
    lb = load_balancer(target)  # before anything changes: exit 2 when it cannot be used
    pol = policy_of(run, target)
    nodes: dict[str, plan.NodeOutcome] = {
        h: plan.NodeOutcome(h, None, False, plan.UNTOUCHED, old_fp) for h in hosts}
    run.prepare([target], need_mirror=True)
    # nodes whose facts already match the revision are not configured (and not restarted): a
    # rollout resumed after a halt, or a rollback of a halted canary, touches only the nodes
    # that changed
    step(f"rollout {env}: read the stack facts of {len(hosts)} node(s)")
    pre = failed_nodes(verify_batch(run, target, hosts, "before"), hosts, per_node=True)
    for h in hosts:
        if h not in pre:
            nodes[h] = plan.NodeOutcome(h, None, False, plan.CURRENT, new_fp)
    todo = [h for h in hosts if h in pre]
    batches = plan.plan(todo, pol)
    for n, batch in enumerate(batches, start=1):
        for h in batch:  # planned: untouched until its batch runs
            nodes[h] = replace(nodes[h], batch=plan.batch_label(n, pol))
    step(f"rollout {env} to revision {promotion.short(new_fp)} (stack {stack}): "
         f"{len(todo)} of {len(hosts)} node(s) to change, in {len(batches)} batch(es) "
         f"(canary {pol.canary}, batch {pol.batch}, max_failures {pol.max_failures})")
    for line in what_changes(records, old_fp, lock["stacks"][stack]):
        info(f"  {line}")
    failures = 0
    halted = False
    if batches:
        gateflow.record_overrides(run, gate)
    if lb is not None:
        failures = return_current(target, lb, [h for h in hosts if h not in pre], nodes)
        if failures > pol.max_failures:
            halted = True
            info(f"  halted: {failures} failed node(s) > max_failures {pol.max_failures}; "
                 f"{len(batches)} batch(es) untouched")
    for n, batch in enumerate(batches, start=1):
        if halted:
            break
        label = plan.batch_label(n, pol)
        t0 = time.monotonic()
        step(f"{env} {label} ({n}/{len(batches)}): {', '.join(batch)}")
        work = partial(configure_and_verify, run, target, batch, n, label, gate)
        if lb is None:
            bad = work()
        else:
            from stacklock.adapters import aws

            bad = aws.out_of_service(
                _lb_region(target, lb), lb.target_group_arn,
                {h: lb.instance_ids[h] for h in batch}, work,
                progress=partial(_progress, f"{env} {label}"))
        for h in batch:
            nodes[h] = replace(nodes[h], attempted=True, **(
                {"result": plan.FAILED, "revision": None, "detail": bad[h]} if h in bad
                else {"result": plan.UPDATED, "revision": new_fp}))
        failures += len(bad)
        info(f"  {env} {label}: {len(batch) - len(bad)}/{len(batch)} node(s) verified in "
             f"{time.monotonic() - t0:.0f} s" + (f", {len(bad)} failed" if bad else ""))
        if failures > pol.max_failures:
            halted = True
            info(f"  halted: {failures} failed node(s) > max_failures {pol.max_failures}; "
                 f"{len(batches) - n} later batch(es) untouched")
            break

    def result(code: ExitCode, verified: ExitCode | None) -> ExitCode:
        done = plan.RolloutResult(
            kind=kind, environment=env, stack=stack, revision=new_fp, previous_revision=old_fp,
            policy=pol, batches=len(batches), halted=halted,
            nodes=tuple(nodes[h] for h in hosts),
            verify_exit_code=None if verified is None else int(verified),
            exit_code=int(code), logs=str(run.run_dir))
        outcomes.rollouts.append(done)
        return code

    if outcomes.fmt != "json":
        print_nodes(env, [nodes[h] for h in hosts], new_fp)
    if halted:
        info(f"rollout of {env} halted after {time.monotonic() - started:.0f} s; logs in "
             f"{run.run_dir}")
        if on_halt is not None and old_fp is not None:
            step(f"--auto-rollback: return {env} to revision {promotion.short(old_fp)}")
            result(ExitCode.DEVIATION, None)  # before the auto-rollback's own
            code = on_halt(old_fp)
            info(f"auto-rollback of {env} ended with exit code {int(code)}; the rollout "
                 "itself failed: exit 1")
            return ExitCode.DEVIATION
        info(f"  next: fix the failed node(s) and run `stacklock rollout {env}` again (nodes "
             f"already at the revision are not touched), or `stacklock rollback {env}` to "
             "return the updated ones to the previous revision")
        return result(ExitCode.DEVIATION, None)
    code = verifyflow.verify(run, [target], console=err if outcomes.fmt == "json" else None)
    info(f"rollout of {env} finished in {time.monotonic() - started:.0f} s with exit code "
         f"{int(code)}; logs in {run.run_dir}")
    return result(code, code)


def print_nodes(env: str, nodes: Sequence[plan.NodeOutcome], new_fp: str) -> None:
    """The table of a rollout's nodes (stdout): batch, revision, state."""
    table = Table(title=f"rollout of {env}: each node's revision", header_style="bold")
    for col in ("node", "batch", "revision", "state"):
        table.add_column(col)
    for n in nodes:
        table.add_row(n.node, n.batch or "-", n.revision_cell(new_fp), n.state_cell())
    out.print(table)


def emit(command: str, env: str, code: ExitCode | int, outcomes: Outcomes, *,
         promote_code: ExitCode | int | None = None) -> None:
    """`--format json`: the command's `stacklock.rollout/v1` envelope on stdout."""
    emit_json(plan.RolloutReport(
        command=command, environment=env, exit_code=int(code),
        rollouts=tuple(outcomes.rollouts),
        promote_exit_code=None if promote_code is None else int(promote_code)).as_dict())


__all__ = ["Outcomes", "emit", "failed_nodes", "print_nodes", "run_rollout"]
