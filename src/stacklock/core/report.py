"""Parity report formats: a table for people, JSON (`stacklock.parity/v1`) and JUnit XML. Pure.

* table: rows = components, columns = environments, each cell the value the nodes reported;
  a deviating cell is red and shows what was expected, an unreachable node is yellow; below
  it one line per problem naming environment, node, component, expected and actual.
* JSON: a versioned envelope; `REPORT_KEYS` are its top-level keys (pinned by a test).
* JUnit XML: one testsuite per environment, one testcase per node x component; a deviation is
  a `<failure>`, an unreachable node an `<error>`.
"""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from stacklock.core.parity import (
    OBSERVED_ONLY,
    REACHABLE,
    Check,
    Kind,
    NodeResult,
    ParityReport,
    Status,
    show,
    sort_components,
)
from stacklock.errors import ExitCode

REPORT_SCHEMA = "stacklock.parity/v1"

REPORT_KEYS = (
    "schema",
    "exit_code",
    "ok",
    "summary",
    "environments",
    "may_differ",
    "nodes",
    "checks",
    "deviations",
    "unreachable",
    "problems",
    "expected",
    "observed",
    "waivers",
)

_HEX_LONG = 16


# --------------------------------------------------------------------------- JSON


def report_dict(report: ParityReport) -> dict[str, Any]:
    """The versioned JSON envelope."""
    data = {
        "schema": REPORT_SCHEMA,
        "exit_code": int(report.exit_code),
        "ok": report.exit_code == ExitCode.OK,
        "summary": report.summary(),
        "environments": list(report.environments),
        "may_differ": list(report.may_differ),
        "nodes": [n.as_dict() for n in report.nodes],
        "checks": [c.as_dict() for c in report.checks],
        "deviations": [c.as_dict() for c in report.deviations],
        "unreachable": [n.as_dict() for n in report.unreachable_nodes],
        "problems": report.problems(),
        "expected": {e: dict(v) for e, v in report.expected.items()},
        "observed": {
            e: {n: dict(vals) for n, vals in nodes.items()} for e, nodes in report.observed.items()
        },
        # the waivers in force (parity.waivers); a waived check's status is "waived"
        "waivers": [dict(w) for w in report.waivers],
    }
    assert tuple(data) == REPORT_KEYS
    return data


def from_dict(data: Mapping[str, Any]) -> ParityReport:
    """A report back from its JSON envelope (the CLI reads what the verify play wrote)."""
    schema = data.get("schema")
    if schema != REPORT_SCHEMA:
        raise ValueError(f"not a {REPORT_SCHEMA} report (schema: {schema!r})")
    return ParityReport(
        environments=tuple(data["environments"]),
        nodes=tuple(
            NodeResult(n["environment"], n["node"], bool(n["reachable"]), n.get("error", ""),
                       n.get("facts_seconds"))
            for n in data["nodes"]
        ),
        checks=tuple(
            Check(c["environment"], c["node"], c["component"], c["expected"], c["actual"],
                  Status(c["status"]), Kind(c["kind"]), c.get("detail", ""))
            for c in data["checks"]
        ),
        may_differ=tuple(data.get("may_differ") or ()),
        expected={e: dict(v) for e, v in (data.get("expected") or {}).items()},
        observed={
            e: {n: dict(vals) for n, vals in nodes.items()}
            for e, nodes in (data.get("observed") or {}).items()
        },
        waivers=tuple(dict(w) for w in data.get("waivers") or ()),
    )


def _block(value: Any) -> str:
    """A top-level value: a list one item per line, a mapping one key per line, each item in
    compact JSON (json's C encoder; `indent=` falls back to the pure-Python one, which took
    22 ms per node of a 50-node report)."""
    if isinstance(value, list) and value:
        return "[\n" + ",\n".join("  " + json.dumps(v) for v in value) + "\n ]"
    if isinstance(value, dict) and value:
        return "{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}"
                                   for k, v in value.items()) + "\n }"
    return json.dumps(value)


def to_json(report: ParityReport) -> str:
    """The report as JSON: one top-level key per line, one check (node, environment, ...) per
    line below it, so that a 1,000-node report stays readable with grep and cheap to write."""
    data = report_dict(report)
    return "{\n" + ",\n".join(f"{json.dumps(k)}: {_block(v)}" for k, v in data.items()) + "\n}\n"


# --------------------------------------------------------------------------- JUnit


def to_junit(report: ParityReport, name: str = "stacklock verify") -> str:
    """JUnit XML: testsuite per environment, testcase per node x component."""
    root = ET.Element("testsuites", name=name)
    totals = {"tests": 0, "failures": 0, "errors": 0}
    for env in report.environments:
        cases = [c for c in report.checks if c.environment == env]
        failures = sum(1 for c in cases if c.status is Status.DEVIATION)
        errors = sum(1 for c in cases if c.status in (Status.UNREACHABLE, Status.UNVERIFIED))
        waived = sum(1 for c in cases if c.status is Status.WAIVED)
        suite = ET.SubElement(root, "testsuite", name=env, tests=str(len(cases)),
                              failures=str(failures), errors=str(errors), skipped=str(waived))
        totals["tests"] += len(cases)
        totals["failures"] += failures
        totals["errors"] += errors
        for c in cases:
            case_name = c.component if c.kind is not Kind.CROSS else f"{c.component} (across)"
            case = ET.SubElement(suite, "testcase", classname=f"{env}.{c.node}", name=case_name)
            if c.status is Status.DEVIATION:
                fail = ET.SubElement(case, "failure", type="deviation", message=c.describe())
                fail.text = (f"expected: {show(c.expected)}\nactual: {show(c.actual)}\n"
                             + (f"detail: {c.detail}\n" if c.detail else ""))
            elif c.status in (Status.UNREACHABLE, Status.UNVERIFIED):
                err = ET.SubElement(case, "error", type=c.status.value, message=c.describe())
                err.text = c.detail or c.status.value
            elif c.status is Status.WAIVED:
                ET.SubElement(case, "skipped", message=f"WAIVED {c.describe()}")
    for key, value in totals.items():
        root.set(key, str(value))
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, "unicode") + "\n"


# --------------------------------------------------------------------------- table


def _short(value: str | None) -> str:
    text = show(value)
    if len(text) > _HEX_LONG and all(ch in "0123456789abcdef" for ch in text):
        return text[:12] + "…"
    return text


#: rows left out of the compact table when everything in them matches (the footer counts
#: them by kind; `stacklock verify --all` shows them)
_COMPACT_HIDDEN = ("package.", "hold.", "pip.", "apt_blacklist.", "os.architecture",
                   "gpu.memory_mib")


def table_components(report: ParityReport, *, compact: bool = False) -> list[str]:
    """Rows: every expected component, the observed-only ones, and anything that deviated.

    `compact` leaves out the per-package rows (and a few details) unless they hold a problem.
    """
    names: set[str] = set(OBSERVED_ONLY)
    for exp in report.expected.values():
        names.update(exp)
    bad = {c.component for c in report.checks
           if c.status in (Status.DEVIATION, Status.UNVERIFIED, Status.WAIVED)}
    if compact:
        names = {n for n in names if not n.startswith(_COMPACT_HIDDEN)}
    names.update(bad)
    names.discard(REACHABLE)
    return sort_components(names)


def _cell(report: ParityReport, env: str, component: str,
          by_key: Mapping[tuple[str, str, str], list[Check]]) -> Text:
    nodes = sorted({n.node for n in report.nodes if n.environment == env})
    if not nodes:
        return Text("no nodes", style="yellow")
    parts: list[tuple[str, str | None, str]] = []  # node, value, style
    unreachable = {n.node for n in report.nodes if n.environment == env and not n.reachable}
    for node in nodes:
        if node in unreachable:
            parts.append((node, "unreachable", "bold yellow"))
            continue
        checks = by_key.get((env, node, component), [])
        bad = [c for c in checks if c.status is not Status.MATCH]
        if any(c.status is Status.UNREACHABLE for c in bad):
            parts.append((node, "unreachable", "bold yellow"))
            continue
        if any(c.status is Status.UNVERIFIED for c in bad):
            parts.append((node, "could not look", "bold yellow"))
            continue
        value = report.observed.get(env, {}).get(node, {}).get(component)
        if bad and all(c.status is Status.WAIVED for c in bad):
            parts.append((node, f"{_short(value)} (WAIVED)", "bold cyan"))
            continue
        if bad:
            exp = next((c.expected for c in bad if c.kind is Kind.LOCK), bad[0].expected)
            parts.append((node, f"{_short(value)} (expected {_short(exp)})", "bold red"))
        else:
            parts.append((node, _short(value), ""))
    star = [c for c in by_key.get((env, "*", component), []) if c.status is Status.DEVIATION]
    text = Text()
    distinct = {(v, s) for _, v, s in parts}
    if len(distinct) == 1:
        value, style = next(iter(distinct))
        text.append(str(value), style=style)
    else:
        for i, (node, value, style) in enumerate(parts):
            if i:
                text.append("\n")
            text.append(f"{node}: {value}", style=style)
    for c in star:
        text.append(f"\n(expected {c.expected})", style="bold red")
    return text


def _nodes(count: int) -> str:
    return f"{count} node{'s' if count != 1 else ''}"


def _same(cells: list[Text]) -> bool:
    """Every environment's cell shows the same value in the same style."""
    first = cells[0]
    return all(c.plain == first.plain and c.spans == first.spans and c.style == first.style
               for c in cells[1:])


def build_table(
    report: ParityReport, title: str = "stack parity", *, compact: bool = False
) -> Table:
    """Rows = components; one column per environment, or ONE value column when every
    environment shows the same value in every row (the common case). Cells wrap (fold),
    never cut, so that the table fits 80 columns without an ellipsis in a value."""
    table = Table(title=title, show_lines=False, header_style="bold")
    table.add_column("component", overflow="fold")
    same_exp = _common_expectations(report)
    table.add_column("expected (lock)", overflow="fold")
    by_key: dict[tuple[str, str, str], list[Check]] = {}
    for c in report.checks:
        by_key.setdefault((c.environment, c.node, c.component), []).append(c)
    rows: list[tuple[list[Text], list[Text]]] = []
    for comp in table_components(report, compact=compact):
        exp = same_exp.get(comp)
        if comp in OBSERVED_ONLY and comp not in same_exp:
            exp_text = Text("same everywhere", style="dim")
        elif exp is None:
            exp_text = Text("per environment", style="dim")
        else:
            exp_text = Text(_short(exp[0]))
        cells = [_cell(report, env, comp, by_key) for env in report.environments]
        rows.append(([Text(comp), exp_text], cells))
    one = len(report.environments) > 1 and all(_same(cells) for _, cells in rows)
    if one:
        table.add_column(f"{', '.join(report.environments)} ({_nodes(len(report.nodes))}, "
                         "all the same)", overflow="fold")
    else:
        for env in report.environments:
            count = sum(1 for n in report.nodes if n.environment == env)
            table.add_column(f"{env} ({_nodes(count)})", overflow="fold")
    for head, cells in rows:
        table.add_row(*head, *(cells[:1] if one else cells))
    return table


def hidden_checks(report: ParityReport, *, compact: bool = False) -> str:
    """The footer of a compact table: how many checks of which kinds it does not show."""
    if not compact:
        return ""
    shown = set(table_components(report, compact=True)) | {REACHABLE}
    hidden = [c for c in report.checks if c.component not in shown]
    if not hidden:
        return ""
    kinds: dict[str, int] = {}
    for c in hidden:
        kind = c.component.split(".", 1)[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    which = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])))
    matching = ", all matching" if all(c.status is Status.MATCH for c in hidden) else ""
    return (f"{len(hidden)} of {len(report.checks)} checks not shown ({which}){matching}: "
            "stacklock verify --all shows them")


def _common_expectations(report: ParityReport) -> dict[str, tuple[str | None]]:
    """component -> (value,) when every environment expects the same value."""
    out: dict[str, tuple[str | None]] = {}
    exps = [report.expected.get(e, {}) for e in report.environments]
    if not exps:
        return out
    keys: set[str] = set()
    for e in exps:
        keys.update(e)
    for k in keys:
        values = {e.get(k, "\0absent") for e in exps}
        if len(values) == 1 and "\0absent" not in values:
            out[k] = (next(iter(values)),)
    return out


def verdict(report: ParityReport) -> str:
    code = report.exit_code
    if code == ExitCode.OK:
        return "parity: all nodes match the lock and each other"
    if code == ExitCode.DEVIATION:
        return f"parity: {len(report.deviations)} deviation(s) found"
    if report.unverified and not report.unreachable_nodes:
        return (f"parity: could not look at {len(report.unverified)} value(s) "
                "(permission, timeout, token or probe failure): not verified")
    return "parity: could not verify every node (unreachable, could not look, or no nodes)"


def print_report(
    report: ParityReport, console: Console, *, title: str = "stack parity", compact: bool = False
) -> None:
    """The table, the problems (one per line), the summary and the verdict."""
    console.print(build_table(report, title, compact=compact))
    footer = hidden_checks(report, compact=compact)
    if footer:
        console.print(Text(footer, style="dim"))
    for line in report.problems():
        console.print(Text(f"  ✗ {line}", style="red"))
    console.print(report.summary())
    style = {ExitCode.OK: "bold green", ExitCode.DEVIATION: "bold red"}.get(
        report.exit_code, "bold yellow")
    console.print(Text(verdict(report), style=style))


def to_text(
    report: ParityReport, *, width: int = 160, title: str = "stack parity", compact: bool = False
) -> str:
    """The same report as plain text (for the Ansible play's output and log files)."""
    console = Console(width=width, record=True, color_system=None, force_terminal=False,
                      file=io.StringIO())
    print_report(report, console, title=title, compact=compact)
    return console.export_text()

