"""`stacklock verify`: run the verify play (the one comparison lives in `stacklock.parity`,
called by the play's controller-side action), then show its report as a table, JSON or JUnit.

The CLI and a plain `ansible-playbook ... verify.yml` therefore reach the same verdict.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from stacklock.console import emit_json, err, out, step
from stacklock.core import metrics
from stacklock.core import report as reportmod
from stacklock.core.files import atomic_write
from stacklock.core.parity import ParityReport
from stacklock.errors import ExitCode, InvalidInput, ToolFailed
from stacklock.flows.run import Run, Target, inventories, names_of


def collect(run: Run, targets: Sequence[Target], *, quiet: bool = False,
            deep: bool = False, fast: bool = False) -> ParityReport:
    """Run the verify play over the environments' inventories; return the parity report.
    `deep`: hash every model archive again (no digest reused from the nodes' cache).
    `fast`: the same facts module and comparison, collected over asyncssh instead of the play
    (`stacklock.flows.fastverify`)."""
    from stacklock.adapters import ansible

    envs = names_of(targets)
    report_path = run.log_file("verify.json")
    report_path.unlink(missing_ok=True)
    if fast:
        from stacklock.flows import fastverify

        return fastverify.collect(inventories(targets), envs, report_path=report_path,
                                  deep=deep, quiet=quiet, log_file=run.log_file("verify.log"))
    if not quiet:
        step(f"verify {', '.join(envs)}: stack facts from every node, one comparison")
    ansible.run_playbook(
        "verify.yml",
        inventories(targets),
        log_file=run.log_file("verify.log"),
        extra_vars={"stacklock_report_path": str(report_path), "stacklock_verify_fail": False,
                    "stacklock_verify_environments": envs, "stacklock_verify_deep": deep},
        # 4: some hosts unreachable; the report says which (exit 3 below)
        ok_codes=(0, 2, 4),
        quiet=quiet,
    )
    if not report_path.is_file():
        raise ToolFailed(f"the verify play wrote no report; see {run.log_file('verify.log')}")
    return reportmod.from_dict(json.loads(report_path.read_text("utf-8")))


def verify(
    run: Run, targets: Sequence[Target], *, fmt: str = "table", junit: Path | None = None,
    deep: bool = False, collected: ParityReport | None = None, fast: bool = False,
    show_all: bool = False, console: Console | None = None, prometheus: Path | None = None,
) -> ExitCode:
    """Collect and compare, record evidence when it passes, print the report.

    `console`: where the table goes (default stdout; a rollout printing JSON sends its final
    verify's table to stderr).

    `prometheus`: also write the parity metrics there (`stacklock.core.metrics`), atomically.

    `collected`: a parity report of these environments read in this run, with nothing
    changed on the nodes since (provision when configure ran no roles), instead of a new one."""
    from stacklock.flows import ledger

    run.hold(targets)
    run.ensure_current()
    if collected is None:
        collected = collect(run, targets, quiet=fmt == "json", deep=deep, fast=fast)
    report = ledger.with_revision_checks(run.loaded, collected)
    unrecorded: InvalidInput | None = None
    if report.exit_code == ExitCode.OK:  # evidence of a passing verify, one record per env
        try:
            ledger.record_passing(run.loaded, report)
        except InvalidInput as exc:  # e.g. no trusted signing key: the verdict stands
            unrecorded = exc
    if junit is not None:
        atomic_write(junit, reportmod.to_junit(report))
    if prometheus is not None:
        atomic_write(prometheus, metrics.render_parity(report, finished_at=datetime.now(UTC)))
    if fmt == "json":
        emit_json(reportmod.report_dict(report))
    else:
        reportmod.print_report(report, console or out, compact=not show_all)
    if unrecorded is not None:
        # the nodes match; what failed is signing the evidence, which only the gates read:
        # say so loudly, keep the verdict's exit code (promotion refuses without evidence)
        err.print(f"[bold yellow]no evidence recorded:[/] {escape(unrecorded.message)}",
                  markup=True, highlight=False)
        for p in unrecorded.problems:
            err.print(f"  {p.path}: {p.message}" + (f" (fix: {p.hint})" if p.hint else ""),
                      markup=False, highlight=False)
    return report.exit_code
