"""Audit reports: table, JSON, Markdown, JUnit, Prometheus textfile; and the run history.

Everything here renders an `AuditReport` to text (pure); the writers put text on disk
atomically (a temporary file in the same folder, fsync, rename), so a reader — node_exporter's
textfile collector, a CI artifact upload, a second audit — never sees half a file. History is
one JSON line per run appended under an exclusive `fcntl.flock`, so overlapping runs cannot
lose or interleave lines.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

from stacklock.core.audit import (
    DRIFT,
    ERROR,
    KINDS,
    OK,
    AuditReport,
    Finding,
)
from stacklock.core.files import atomic_write, default_mode, ensure_dir
from stacklock.errors import InvalidInput, ToolFailed

HISTORY_SCHEMA = "stacklock.audit-history/v1"

#: where audits append their history and `stacklock audit history` reads it, relative to the
#: manifest's output dir (the scheduled audits write there too)
HISTORY_FILE = ".stacklock/audit/history.jsonl"
#: at most this many "kind:component" names are kept per environment in a history line
HISTORY_COMPONENTS = 50

_STATUS_STYLE = {OK: "green", DRIFT: "bold yellow", ERROR: "bold red"}


def _show(value: str | None) -> str:
    return "(missing)" if value is None else (value if value != "" else "(none)")


# --------------------------------------------------------------------------- table


def _finding_row(f: Finding) -> list[str]:
    return [f.kind, f.subject, f.component, _show(f.expected), _show(f.actual), f.detail]


def report_table(report: AuditReport) -> Table:
    """One table for people: a section per environment, a row per finding and per error."""
    table = Table(title=f"stacklock audit: {report.verdict()}", title_justify="left")
    table.add_column("Environment", no_wrap=True)
    table.add_column("Kind", no_wrap=True)
    for col in ("Subject", "Component", "Expected", "Actual"):
        table.add_column(col, overflow="fold")
    table.add_column("Detail", overflow="fold", ratio=2)
    for i, env in enumerate(report.environments):
        if i:
            table.add_section()
        style = _STATUS_STYLE[env.status]
        label = f"{_escape(env.environment)} [{style}]{env.status}[/]"
        rows: list[list[str]] = []
        if not env.findings and not env.errors:
            rows.append(["", "", "", "", "",
                         "no drift (audited: " + (", ".join(env.audited) or "nothing") + ")"])
        rows += [_escape_all(_finding_row(f)) for f in env.findings]
        rows += [[e.kind, "", "", "", "", "[red]could not audit:[/] " + _escape(e.message)]
                 for e in env.errors]
        for j, row in enumerate(rows):
            table.add_row(label if j == 0 else "", *row)
    table.caption = report.summary()
    table.caption_justify = "left"
    return table


def _escape(text: str) -> str:
    return text.replace("[", r"\[")


def _escape_all(cells: Sequence[str]) -> list[str]:
    return [_escape(c) for c in cells]


def render_table(report: AuditReport, *, width: int = 160) -> str:
    """The table as plain text (no colour), e.g. for a log file or a test."""
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, force_terminal=False,
            highlight=False).print(report_table(report))
    return buf.getvalue()


def print_table(report: AuditReport, console: Console) -> None:
    console.print(report_table(report))


# --------------------------------------------------------------------------- JSON


def report_json(report: AuditReport) -> str:
    """The `stacklock.audit/v1` envelope as sorted, indented JSON text."""
    return json.dumps(report.as_dict(), indent=2, sort_keys=True) + "\n"


# --------------------------------------------------------------------------- Markdown


def _md(text: str | None) -> str:
    """A table cell: pipes escaped, newlines flattened, code spans for values."""
    value = _show(text) if text is None or text == "" else text
    return value.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


_MD_ICON = {OK: "✅", DRIFT: "⚠️", ERROR: "❌"}


def render_markdown(report: AuditReport) -> str:
    """For a ticket or a chat message: a heading with the verdict, a table per environment."""
    lines = [
        f"# {_MD_ICON[report.status]} stacklock audit: {report.verdict()}",
        "",
        f"{report.summary()} — started {report.started_at}, finished {report.finished_at}, "
        f"exit code {int(report.exit_code)}.",
        "",
    ]
    for env in report.environments:
        audited = ", ".join(env.audited) or "nothing"
        lines += [f"## {_MD_ICON[env.status]} {env.environment}: {env.status}", "",
                  f"Audited: {audited} ({env.duration_s:.1f} s).", ""]
        if env.findings:
            lines += ["| Kind | Subject | Component | Expected | Actual | Detail |",
                      "|---|---|---|---|---|---|"]
            for f in env.findings:
                lines.append("| " + " | ".join([
                    f.kind, f"`{_md(f.subject)}`", f"`{_md(f.component)}`",
                    _md(_show(f.expected)), _md(_show(f.actual)), _md(f.detail),
                ]) + " |")
            lines.append("")
        elif not env.errors:
            lines += ["No drift.", ""]
        if env.errors:
            lines.append("Could not audit:")
            lines.append("")
            for e in env.errors:
                lines.append(f"- **{e.kind}**: {_md(e.message)}")
            lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


# --------------------------------------------------------------------------- JUnit


def render_junit(report: AuditReport) -> str:
    """JUnit XML: a testsuite per environment, a testcase per kind (audited or failed).

    Drift is a <failure> listing the findings; a kind that could not be audited is an <error>.
    """
    suites = ET.Element("testsuites", name="stacklock audit",
                        time=f"{report.duration_s:.3f}", timestamp=report.started_at)
    total = failures = errors = 0
    for env in report.environments:
        suite = ET.SubElement(suites, "testsuite", name=f"audit.{env.environment}",
                              timestamp=report.started_at, time=f"{env.duration_s:.3f}")
        s_tests = s_fail = s_err = 0
        error_kinds = [e.kind for e in env.errors]
        for kind in [*KINDS, *sorted(set(error_kinds) - set(KINDS))]:
            if kind not in env.audited and kind not in error_kinds:
                continue
            case = ET.SubElement(suite, "testcase", classname=f"audit.{env.environment}",
                                 name=kind)
            s_tests += 1
            found = env.findings_of(kind)
            if found:
                s_fail += 1
                failure = ET.SubElement(case, "failure", type="drift",
                                        message=f"{len(found)} {kind} drift finding(s)")
                failure.text = "\n".join(f.describe() for f in found)
            failed = [e.message for e in env.errors if e.kind == kind]
            if failed:
                s_err += 1
                error = ET.SubElement(case, "error", type="could-not-audit",
                                      message=failed[0].splitlines()[0] if failed[0] else kind)
                error.text = "\n".join(failed)
        suite.set("tests", str(s_tests))
        suite.set("failures", str(s_fail))
        suite.set("errors", str(s_err))
        total, failures, errors = total + s_tests, failures + s_fail, errors + s_err
    suites.set("tests", str(total))
    suites.set("failures", str(failures))
    suites.set("errors", str(errors))
    ET.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, "unicode") + "\n"


# --------------------------------------------------------------------------- Prometheus


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def render_prometheus(report: AuditReport) -> str:
    """A textfile for node_exporter's textfile collector.

    * `stacklock_drift{environment,kind,component}`: 1 for each component with drift; for each
      environment and kind audited without drift, one line with `component=""` and value 0. A
      kind that could not be audited (or does not apply) has no line: its absence is visible,
      and `stacklock_audit_success{environment}` is 0.
    * `stacklock_audit_findings{environment,kind}`: the number of findings (0 lines included).
    * `stacklock_audit_success{environment}`, `stacklock_audit_last_run_timestamp_seconds`,
      `stacklock_audit_duration_seconds`, `stacklock_audit_exit_code`.
    """
    out = [
        "# HELP stacklock_drift 1 when the last audit found drift of this kind in this component "
        "of the environment; 0 (component=\"\") when an audited kind had none.",
        "# TYPE stacklock_drift gauge",
    ]
    counts: list[str] = []
    for env in report.environments:
        e = _label(env.environment)
        for kind in KINDS:
            if kind not in env.audited:
                continue
            found = env.findings_of(kind)
            components = sorted({f.component for f in found})
            if components:
                for comp in components:
                    out.append(f'stacklock_drift{{environment="{e}",kind="{kind}",'
                               f'component="{_label(comp)}"}} 1')
            else:
                out.append(f'stacklock_drift{{environment="{e}",kind="{kind}",component=""}} 0')
            counts.append(f'stacklock_audit_findings{{environment="{e}",kind="{kind}"}} '
                          f"{len(found)}")
    out += [
        "# HELP stacklock_audit_findings Number of drift findings of the last audit, per "
        "environment and kind audited.",
        "# TYPE stacklock_audit_findings gauge",
        *counts,
        "# HELP stacklock_audit_success 1 when every part of the environment could be audited "
        "in the last run, else 0.",
        "# TYPE stacklock_audit_success gauge",
    ]
    for env in report.environments:
        ok = 0 if env.status == ERROR else 1
        out.append(f'stacklock_audit_success{{environment="{_label(env.environment)}"}} {ok}')
    out += [
        "# HELP stacklock_audit_last_run_timestamp_seconds When the last audit finished "
        "(Unix time).",
        "# TYPE stacklock_audit_last_run_timestamp_seconds gauge",
        f"stacklock_audit_last_run_timestamp_seconds {_epoch(report.finished_at):.0f}",
        "# HELP stacklock_audit_duration_seconds How long the last audit took.",
        "# TYPE stacklock_audit_duration_seconds gauge",
        f"stacklock_audit_duration_seconds {report.duration_s:.3f}",
        "# HELP stacklock_audit_exit_code Exit code of the last audit (0 no drift, 1 drift, "
        "3 could not audit).",
        "# TYPE stacklock_audit_exit_code gauge",
        f"stacklock_audit_exit_code {int(report.exit_code)}",
    ]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class ReportTargets:
    """Where `write_reports` puts each format (None: not written)."""

    json: Path | None = None
    markdown: Path | None = None
    junit: Path | None = None
    prometheus: Path | None = None
    history: Path | None = None


def write_reports(report: AuditReport, targets: ReportTargets) -> list[Path]:
    """Write every requested format atomically, and append to the history; return the paths."""
    written: list[Path] = []
    renderers = (
        (targets.json, report_json),
        (targets.markdown, render_markdown),
        (targets.junit, render_junit),
        (targets.prometheus, render_prometheus),
    )
    for path, render in renderers:
        if path is not None:
            written.append(atomic_write(path, render(report)))
    if targets.history is not None:
        written.append(append_history(targets.history, report))
    return written


# --------------------------------------------------------------------------- history


def history_entry(report: AuditReport) -> dict[str, Any]:
    """The one line a run adds to the history file."""
    envs: dict[str, Any] = {}
    for env in report.environments:
        kinds: dict[str, int] = {}
        for f in env.findings:
            kinds[f.kind] = kinds.get(f.kind, 0) + 1
        components = sorted({f"{f.kind}:{f.component}" for f in env.findings})
        envs[env.environment] = {
            "status": env.status,
            "findings": len(env.findings),
            "kinds": kinds,
            "components": components[:HISTORY_COMPONENTS],
            "errors": [e.as_dict() for e in env.errors],
            "audited": list(env.audited),
        }
    return {
        "schema": HISTORY_SCHEMA,
        "started_at": report.started_at,
        "finished_at": report.finished_at,
        "duration_s": round(report.duration_s, 3),
        "exit_code": int(report.exit_code),
        "environments": envs,
    }


@contextmanager
def _shared_lock(path: Path) -> Iterator[TextIO]:
    with path.open("r", encoding="utf-8") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_SH)
        try:
            yield fh
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def append_history(path: Path | str, report: AuditReport | Mapping[str, Any]) -> Path:
    """Append one JSON line (the report's `history_entry`) under an exclusive flock."""
    target = Path(path)
    entry = history_entry(report) if isinstance(report, AuditReport) else dict(report)
    # key order kept: environments stay in the order they were audited
    data = (json.dumps(entry, separators=(",", ":")) + "\n").encode("utf-8")
    try:
        ensure_dir(target.parent)
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, default_mode(target))
    except OSError as exc:
        raise ToolFailed(f"cannot append to the audit history {target}: "
                         f"{exc.strerror or exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    except OSError as exc:
        raise ToolFailed(f"cannot append to the audit history {target}: "
                         f"{exc.strerror or exc}") from exc
    finally:
        os.close(fd)  # closing releases the lock
    return target


@dataclass(frozen=True)
class HistoryRead:
    entries: tuple[dict[str, Any], ...]
    bad_lines: tuple[int, ...] = ()


def read_history(path: Path | str) -> HistoryRead:
    """Every valid history line (a shared lock keeps a writer from being half-read).

    Lines that are not a `stacklock.audit-history/v1` object are skipped and their numbers
    returned, so one damaged line never hides the rest.
    """
    target = Path(path)
    if not target.is_file():
        raise InvalidInput(f"audit history {target}: no such file "
                           "(fix: run `stacklock audit --history FILE` first, or give the "
                           "right --history path)")
    entries: list[dict[str, Any]] = []
    bad: list[int] = []
    with _shared_lock(target) as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                bad.append(number)
                continue
            if (not isinstance(item, dict) or item.get("schema") != HISTORY_SCHEMA
                    or not isinstance(item.get("environments"), dict)):
                bad.append(number)
                continue
            entries.append(item)
    entries.sort(key=lambda e: str(e.get("finished_at", "")))
    return HistoryRead(tuple(entries), tuple(bad))


@dataclass(frozen=True)
class Transition:
    """A change of an environment's status between two runs."""

    at: str  # finished_at of the run that saw the new status
    event: str  # "first audit" | "drifted" | "recovered" | "drift changed" | "could not audit"
    status: str
    previous: str | None
    findings: int = 0
    components: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.at, "event": self.event, "status": self.status,
                "previous": self.previous, "findings": self.findings,
                "components": list(self.components)}


@dataclass(frozen=True)
class EnvironmentHistory:
    environment: str
    runs: int
    status: str  # of the last run
    since: str  # when the current status began
    last_run: str
    transitions: tuple[Transition, ...]

    @property
    def last_drift(self) -> str | None:
        return next((t.at for t in reversed(self.transitions) if t.event == "drifted"), None)

    @property
    def last_recovery(self) -> str | None:
        return next((t.at for t in reversed(self.transitions) if t.event == "recovered"), None)

    def as_dict(self) -> dict[str, Any]:
        return {"environment": self.environment, "runs": self.runs, "status": self.status,
                "since": self.since, "last_run": self.last_run,
                "last_drift": self.last_drift, "last_recovery": self.last_recovery,
                "transitions": [t.as_dict() for t in self.transitions]}


@dataclass(frozen=True)
class HistorySummary:
    path: str
    runs: int
    environments: dict[str, EnvironmentHistory] = field(default_factory=dict)
    bad_lines: tuple[int, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"schema": HISTORY_SCHEMA, "path": self.path, "runs": self.runs,
                "bad_lines": list(self.bad_lines),
                "environments": [e.as_dict() for e in self.environments.values()]}


def _event(previous: str | None, status: str) -> str:
    if previous is None:
        return "first audit"
    if status == DRIFT:
        return "drifted" if previous != DRIFT else "drift changed"
    if status == ERROR:
        return "could not audit"
    return "recovered" if previous == DRIFT else "audited again"


def history_summary(path: Path | str, env: str | None = None) -> HistorySummary:
    """Per environment: the runs, and the transitions — when it drifted and when it recovered.

    A run that could not audit an environment is a transition to `error` ("could not
    audit"). A clean run is "recovered" when the last status that was actually seen (ok or
    drift, errors skipped) was drift, else "audited again".
    """
    read = read_history(path)
    states: dict[str, dict[str, Any]] = {}
    last_drift_status: dict[str, str] = {}
    for entry in read.entries:
        at = str(entry.get("finished_at", ""))
        for name, data in entry["environments"].items():
            if env is not None and name != env:
                continue
            if not isinstance(data, dict):
                continue
            status = str(data.get("status", ERROR))
            components = tuple(str(c) for c in data.get("components") or [])
            st = states.setdefault(name, {"runs": 0, "transitions": [], "status": None,
                                          "components": (), "since": at, "last_run": at})
            previous = st["status"]
            # "recovered" compares with the last *known* status (drift, then error, then ok)
            known = last_drift_status.get(name, previous)
            changed = previous != status or (status == DRIFT and components != st["components"])
            if changed:
                event = _event(previous, status)
                if status == OK and previous == ERROR and known == DRIFT:
                    event = "recovered"
                st["transitions"].append(Transition(at, event, status, previous,
                                                    int(data.get("findings", 0)), components))
                if previous != status:
                    st["since"] = at
            if status in (OK, DRIFT):
                last_drift_status[name] = status
            st["status"] = status
            st["components"] = components
            st["runs"] += 1
            st["last_run"] = at
    if env is not None and env not in states:
        raise InvalidInput(f"audit history {path}: no audit of environment {env!r} "
                           "(fix: name an environment that was audited with this history file)")
    return HistorySummary(
        path=str(path),
        runs=len(read.entries),
        environments={
            name: EnvironmentHistory(name, st["runs"], st["status"], st["since"],
                                     st["last_run"], tuple(st["transitions"]))
            for name, st in states.items()
        },
        bad_lines=read.bad_lines,
    )


def history_table(summary: HistorySummary) -> Table:
    """`stacklock audit history`: the transitions per environment, oldest first."""
    table = Table(title=f"stacklock audit history ({summary.runs} run(s), {summary.path})",
                  title_justify="left")
    for col in ("Environment", "When", "Event", "Status", "Findings", "Components"):
        table.add_column(col, overflow="fold")
    for i, hist in enumerate(summary.environments.values()):
        if i:
            table.add_section()
        for t in hist.transitions:
            style = _STATUS_STYLE.get(t.status, "")
            comps = ", ".join(t.components[:5]) + (" …" if len(t.components) > 5 else "")
            table.add_row(hist.environment, t.at, t.event,
                          f"[{style}]{t.status}[/]" if style else t.status,
                          str(t.findings) if t.status == DRIFT else "", _escape(comps))
    now = "; ".join(f"{h.environment}: {h.status} since {h.since} ({h.runs} run(s))"
                    for h in summary.environments.values())
    if summary.bad_lines:
        now += f"; skipped damaged line(s) {', '.join(map(str, summary.bad_lines))}"
    table.caption = now
    table.caption_justify = "left"
    return table


def render_history(summary: HistorySummary, *, width: int = 160) -> str:
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, force_terminal=False,
            highlight=False).print(history_table(summary))
    return buf.getvalue()


__all__ = [
    "HISTORY_SCHEMA",
    "EnvironmentHistory",
    "HistoryRead",
    "HistorySummary",
    "ReportTargets",
    "Transition",
    "append_history",
    "history_entry",
    "history_summary",
    "history_table",
    "print_table",
    "read_history",
    "render_history",
    "render_junit",
    "render_markdown",
    "render_prometheus",
    "render_table",
    "report_json",
    "report_table",
    "write_reports",
]
