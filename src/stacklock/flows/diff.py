"""`stacklock diff [ENV…]`: compare environments (and the nodes of each) on their full
inventories — the pinned stack, every OS package, every Python distribution — and print what
differs, grouped, as a table or as `stacklock.diff/v1` JSON. In container mode the stack group
holds the serving container (its image digest and id among them) and the Python group the
closure read inside it (stacklock.core.diff)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from stacklock.console import emit_json, err, info, out
from stacklock.core import diff as diffmod
from stacklock.flows.collect import collect_inventory
from stacklock.flows.run import Run, Target


def collect(run: Run, targets: Sequence[Target], *,
            quiet: bool = False) -> diffmod.DiffReport:
    facts = collect_inventory(run, targets, quiet=quiet)
    return diffmod.compare(facts, run.loaded.manifest.parity.diff_ignore)


def print_report(report: diffmod.DiffReport, console: Console) -> None:
    envs = list(report.environments)
    for group, title in diffmod.GROUPS.items():
        found = report.of_group(group)
        across = [d for d in found if d.scope == diffmod.ENVIRONMENTS]
        if across:
            table = Table(title=f"{title}: {len(across)} difference(s) between environments")
            table.add_column(group if group != diffmod.STACK else "component")
            for env in envs:
                table.add_column(env)
            for d in across:
                table.add_row(escape(d.name), *(
                    ("[red]" + escape(d.values[e]) + "[/]") if e in d.differing()
                    else escape(d.values.get(e, "")) for e in envs))
            console.print(table)
        for env in envs:
            within = [d for d in found if d.scope == diffmod.NODES and d.environment == env]
            if not within:
                continue
            nodes = list(report.nodes.get(env, ()))
            table = Table(title=f"{title}: {len(within)} difference(s) between the nodes of {env}")
            table.add_column(group if group != diffmod.STACK else "component")
            for node in nodes:
                table.add_column(node)
            for d in within:
                table.add_row(escape(d.name), *(
                    ("[red]" + escape(d.values.get(n, "")) + "[/]") if n in d.differing()
                    else escape(d.values.get(n, "")) for n in nodes))
            console.print(table)
    for inc in report.incomplete:
        err.print(f"[bold red]could not look:[/] {escape(inc.environment)}/{escape(inc.node)}: "
                  f"{escape(inc.reason)} -- run `stacklock verify {escape(inc.environment)}` for "
                  "the cause", markup=True, highlight=False)
    compared = ", ".join(f"{report.compared.get(g, 0)} {t}" for g, t in diffmod.GROUPS.items())
    ignored = sum(report.ignored.values())
    counts = ", ".join(f"{len(report.of_group(g))} {t}" for g, t in diffmod.GROUPS.items())
    verdict = ("identical" if report.identical
               else f"{len(report.differences)} difference(s) ({counts})")
    info(f"diff {' '.join(envs)}: {verdict}; compared {compared}"
         + (f"; {ignored} name(s) ignored by parity.diff_ignore" if ignored else ""))


def run_diff(run: Run, targets: Sequence[Target], *, fmt: str = "table",
             fail_on_drift: bool = False) -> int:
    run.hold(targets)
    run.ensure_current()
    report = collect(run, targets, quiet=fmt == "json")
    if fmt == "json":
        emit_json(report.as_dict(fail_on_drift))
    else:
        print_report(report, out)
    return report.exit_code(fail_on_drift)
