"""`stacklock audit | schedule`: drift audits and their schedules."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from stacklock.cli.base import Ctx, cli, get_run, lock_timeout_option, pass_ctx, targets
from stacklock.console import info, step
from stacklock.errors import InvalidInput, Problem


@cli.command()
@click.argument("envs", nargs=-1)
@click.option("--deep", is_flag=True, help="Also run site.yml --check --diff (configuration drift).")
@click.option("--kinds", default="infrastructure,stack,cloud", show_default=True,
              help="Which drift to audit (comma-separated): infrastructure, stack, cloud, "
                   "diff (every OS package and Python distribution across environments).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "markdown"]), default="table",
              show_default=True, help="What to print on stdout.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the JSON report here (atomically).")
@click.option("--markdown", "md_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the Markdown report here.")
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a JUnit XML report here.")
@click.option("--prometheus", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a Prometheus textfile here (node_exporter's textfile collector).")
@click.option("--history", type=click.Path(dir_okay=False, path_type=Path),
              help="The JSONL history: one line appended per run "
                   "[default: <output_dir>/.stacklock/audit/history.jsonl].")
@lock_timeout_option
@pass_ctx
def audit(c: Ctx, envs: tuple[str, ...], deep: bool, kinds: str, fmt: str, json_path: Path | None,
          md_path: Path | None, junit: Path | None, prometheus: Path | None,
          history: Path | None) -> None:
    """Drift audit: terraform plan, live stack vs lock, cloud inventory (exit 0/1/3).

    `stacklock audit history [ENV]` shows when each environment drifted and recovered.
    """
    from stacklock.console import out
    from stacklock.core import audit as auditmod
    from stacklock.core import audit_report

    loaded = c.loaded()
    history = history or loaded.output_root / audit_report.HISTORY_FILE
    if envs and envs[0] == "history":
        if len(envs) > 2:
            raise InvalidInput("usage: stacklock audit history [ENV]")
        env = envs[1] if len(envs) == 2 else None
        if env is not None:
            c.envs([env])
        summary = audit_report.history_summary(history, env)
        if fmt == "json":  # stacklock.audit-history-summary/v1
            from stacklock.console import emit_json

            emit_json(summary.as_dict())
            return
        out.print(audit_report.history_table(summary))
        return
    from stacklock.flows.audit import RealProbes

    chosen = targets(c, envs)
    names = [t.name for t in chosen]
    run = get_run(c)
    run.hold(chosen)
    run.ensure_current()
    wanted = {k.strip() for k in kinds.split(",") if k.strip()}
    unknown = wanted - {"infrastructure", "stack", "cloud", "diff"}
    if unknown or not wanted:
        raise InvalidInput(f"--kinds: unknown kind(s) {', '.join(sorted(unknown)) or '(none)'}",
                           problems=[Problem("--kinds", f"{kinds!r} is not a list of kinds",
                                             "use infrastructure, stack, cloud, diff")])
    probes = RealProbes(run, chosen, deep=deep).probes()
    # the parity report the stack kind reads also feeds the textfile's parity metrics
    parities: list[Mapping[str, Any]] = []
    real_parity = probes.parity  # (`probes` is rebound below: the closure must not call itself)

    def parity(envs: Sequence[str]) -> Mapping[str, Any]:
        assert real_parity is not None
        parities.append(real_parity(envs))
        return parities[-1]

    probes = auditmod.Probes(
        plans=probes.plans if "infrastructure" in wanted else None,
        parity=parity if "stack" in wanted else None,
        cloud=probes.cloud if "cloud" in wanted else None,
        deep=probes.deep,
        deep_all=probes.deep_all,
        diff=probes.diff if "diff" in wanted else None)
    report = auditmod.run_audit(names, probes,
                                workers=len(names) + 1, progress=step)
    audit_report.write_reports(report, audit_report.ReportTargets(
        json=json_path, markdown=md_path, junit=junit, history=history))
    if prometheus is not None:  # the audit's metrics, and the parity metrics of its verify
        from stacklock.core import metrics
        from stacklock.core.files import atomic_write

        atomic_write(prometheus, metrics.audit_textfile(
            report, parities[-1] if parities else None, finished_at=datetime.now(UTC)))
    if fmt == "json":
        sys.stdout.write(audit_report.report_json(report))
    elif fmt == "markdown":
        sys.stdout.write(audit_report.render_markdown(report))
    else:
        audit_report.print_table(report, out)
    raise SystemExit(int(report.exit_code))


@cli.command()
@click.argument("envs", nargs=-1)
@click.option("--interval", default="daily", show_default=True,
              help="hourly, daily, weekly, Nmin, Nh, HH:MM or a systemd calendar time.")
@click.option("--out", "outdir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("schedules"), show_default=True, help="Where to write the files.")
@click.option("--user", default="stacklock", show_default=True,
              help="The unprivileged account that runs the audit (never root: see INSTALL.md).")
@click.option("--repo-dir", default=None, help="The checkout on the audit host [default: here].")
@click.option("--deep", is_flag=True, help="Audit configuration drift too (site.yml --check).")
@pass_ctx
def schedule(c: Ctx, envs: tuple[str, ...], interval: str, outdir: Path, user: str,
             repo_dir: str | None, deep: bool) -> None:
    """Write ready-to-install audit schedules: systemd timer, cron entry, GitHub Actions."""
    from stacklock.core import schedule as schedmod

    loaded = c.loaded()
    names = c.envs(envs)
    repo = repo_dir or str(Path.cwd())
    manifest = os.path.relpath(loaded.path, repo) if loaded.path.is_relative_to(repo) else str(
        loaded.path)
    files = schedmod.render_schedules(names, interval, repo, manifest, user, deep=deep,
                                      output_dir=str(loaded.output_root.resolve()))
    for path in schedmod.write_schedules(outdir, files):
        info(f"wrote {path}")

