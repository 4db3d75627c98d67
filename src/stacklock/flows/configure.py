"""`stacklock configure`: read every node's stack facts first, then run site.yml on the nodes
that deviate from their lock, are new or could not be read (every node with `force`).

Every target's revision passes the promotion gate first (`stacklock.flows.gate`; exit 1 and
nothing changed when refused); site.yml's own gate play then makes the same decision, and an
override this run recorded is not recorded twice."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from stacklock.console import info, step
from stacklock.core import converge
from stacklock.core import report as reportmod
from stacklock.core.files import atomic_write
from stacklock.core.parity import ParityReport
from stacklock.errors import ToolFailed
from stacklock.flows import gate as gateflow
from stacklock.flows import verify as verifyflow
from stacklock.flows.run import Run, Target, inventories, names_of


@dataclass
class Configured:
    """What configure did: the play's recap ({} when every node matched and site.yml did not
    run), and the parity report it read before choosing its nodes (None: not read)."""

    recap: dict[str, Any] = field(default_factory=dict)
    pre_report: ParityReport | None = None


def select_nodes(run: Run, targets: Sequence[Target], *,
                 force: bool = False) -> tuple[list[Any], ParityReport | None]:
    """Which nodes configure runs the roles on, and why (stacklock.core.converge): the
    stack facts of every node are read first (the verify play); a node is skipped only
    when that parity report shows it matches its lock. The report is kept in the run
    folder (`configure-facts.json`) as the proof."""
    hosts = {t.name: t.hosts() for t in targets}
    report = None
    if not force:
        step(f"configure {', '.join(names_of(targets))}: read the stack facts first "
             "(converge only what deviates; --force converges every node)")
        run.prepare(targets)
        try:
            report = verifyflow.collect(run, targets, quiet=True)
        except ToolFailed as exc:
            info(f"  the stack facts could not be read: every node is configured ({exc})")
        if report is not None:
            atomic_write(run.log_file("configure-facts.json"),
                         json.dumps(reportmod.report_dict(report), indent=1,
                                    sort_keys=True) + "\n")
    decisions = converge.select(report, hosts, force=force)
    for decision in decisions:
        info(f"  {decision.describe()}")
    return decisions, report


def configure(run: Run, targets: Sequence[Target], *, force: bool = False,
              gate: gateflow.Gate | None = None, override: str | None = None) -> Configured:
    """Run site.yml on the nodes that deviate from their lock (or are new, or could not be
    read); on every node with `force`. `gate`: the run's gate, checked already (None: checked
    here, with `override`)."""
    from stacklock.adapters import ansible

    names = ", ".join(names_of(targets))
    run.hold(targets)
    run.ensure_current()
    if gate is None:
        gate = gateflow.check(run, targets, override=override)
    run.credentials()  # unusable credentials (a group-readable file) stop here, exit 2
    inventories(targets)
    decisions, report = select_nodes(run, targets, force=force)
    chosen = converge.limit(decisions)
    if not chosen:
        info(f"configured {names}: every node matches its lock, site.yml not run"
             f" (proof: {run.log_file('configure-facts.json')})")
        return Configured({}, report)
    run.prepare(targets, need_mirror=True)
    gateflow.record_overrides(run, gate, names_of(targets))
    every = len(chosen) == len(decisions)
    step(f"configure {names}: ansible-playbook site.yml on "
         + ("every node" if every else f"{len(chosen)} of {len(decisions)} node(s)"))
    recap = ansible.run_playbook(
        "site.yml", inventories(targets), log_file=run.log_file("site.log"),
        credentials=run.credentials(), extra_vars=gateflow.play_vars(gate) or None,
        extra_args=() if every else ("--limit", ",".join(chosen)),
    )
    changed = ansible.recap_changed(recap)
    info(f"configured {names}: {ansible.summarize(recap)}"
         + (" — nothing changed" if changed == 0 else ""))
    return Configured(recap, report)
