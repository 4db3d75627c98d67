"""Audit report formats and the run history (stacklock.audit_report)."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stacklock.core.audit import (
    CLOUD,
    CONFIGURATION,
    INFRASTRUCTURE,
    SCHEMA,
    STACK,
    AuditError,
    AuditReport,
    EnvironmentAudit,
    Finding,
)
from stacklock.core.audit_report import (
    HISTORY_SCHEMA,
    ReportTargets,
    append_history,
    history_entry,
    history_summary,
    read_history,
    render_history,
    render_junit,
    render_markdown,
    render_prometheus,
    render_table,
    report_json,
    write_reports,
)
from stacklock.core.files import atomic_write
from stacklock.errors import InvalidInput, ToolFailed

pytestmark = pytest.mark.unit

DOCKER = Finding("prod", STACK, "docker.version", "prod-1", "20.10.24", "24.0.5",
                 "differs from the lock")
PIPE = Finding("prod", INFRASTRUCTURE, "aws_instance", 'module.node.aws_instance.this["prod-1"]',
               "instance_type=g5.xlarge", "instance_type=g5.2xlarge",
               "changed outside Terraform: instance_type | tags")
QUOTE = Finding("prod", CLOUD, 'weird "comp"\\x', "i-9", None, "running", "unmanaged")


def make_report(*, staging_error: bool = True, prod_drift: bool = True,
                finished: str = "2026-11-23T17:00:42Z") -> AuditReport:
    envs = [
        EnvironmentAudit("dev", audited=(INFRASTRUCTURE, STACK), duration_s=3.0),
        EnvironmentAudit(
            "staging",
            errors=(AuditError(STACK, "staging-1 unreachable: No route to host"),)
            if staging_error else (),
            audited=(INFRASTRUCTURE,) if staging_error else (INFRASTRUCTURE, STACK),
            duration_s=4.0,
        ),
        EnvironmentAudit("prod", findings=(PIPE, DOCKER, QUOTE) if prod_drift else (),
                         audited=(INFRASTRUCTURE, STACK, CLOUD), duration_s=5.5),
    ]
    return AuditReport(started_at="2026-11-23T17:00:00Z", finished_at=finished,
                       duration_s=42.25, environments=tuple(envs))


# --------------------------------------------------------------------------- JSON


def test_json_envelope_keys_are_pinned() -> None:
    data = json.loads(report_json(make_report()))
    assert sorted(data) == sorted(["schema", "started_at", "finished_at", "duration_s",
                                   "exit_code", "status", "verdict", "summary",
                                   "environments"])
    assert data["schema"] == SCHEMA == "stacklock.audit/v1"
    assert sorted(data["environments"][0]) == sorted(["environment", "status", "duration_s",
                                                      "audited", "findings", "errors"])
    assert sorted(data["environments"][2]["findings"][0]) == sorted(
        ["environment", "kind", "component", "subject", "expected", "actual", "detail"])
    assert sorted(data["environments"][1]["errors"][0]) == ["kind", "message"]
    assert data["exit_code"] == 3 and data["status"] == "error"
    assert [e["status"] for e in data["environments"]] == ["ok", "error", "drift"]


def test_exit_codes() -> None:
    assert make_report(staging_error=False, prod_drift=False).exit_code == 0
    assert make_report(staging_error=False).exit_code == 1
    assert make_report().exit_code == 3  # could-not-audit wins over drift
    assert AuditReport("a", "b", 0.0, ()).exit_code == 3  # nothing audited is never "ok"


# --------------------------------------------------------------------------- table, Markdown


def test_table_names_every_environment_finding_and_error() -> None:
    text = render_table(make_report(), width=250)
    assert "stacklock audit: DRIFT in prod; could not audit staging" in text
    for needle in ("dev", "no drift", "docker.version", "20.10.24", "24.0.5",
                   "staging-1 unreachable", 'aws_instance.this["prod-1"]'):
        assert needle in text, needle


def test_markdown_heading_and_a_table_per_environment() -> None:
    md = render_markdown(make_report(staging_error=False))
    lines = md.splitlines()
    assert lines[0].startswith("# ") and "stacklock audit: DRIFT in prod" in lines[0]
    assert "## ✅ dev: ok" in lines and "## ⚠️ prod: drift" in lines
    header = "| Kind | Subject | Component | Expected | Actual | Detail |"
    assert lines.count(header) == 1  # only prod has findings
    rows = [line for line in lines if line.startswith("| stack") or line.startswith("| infra")]
    assert len(rows) == 2
    # a pipe inside a value is escaped, so every row keeps 6 cells
    for row in rows:
        assert row.replace("\\|", "").count("|") == 7
    assert "instance_type \\| tags" in md


def test_markdown_lists_what_could_not_be_audited() -> None:
    md = render_markdown(make_report())
    assert "could not audit staging" in md.splitlines()[0]
    assert "- **stack**: staging-1 unreachable: No route to host" in md


# --------------------------------------------------------------------------- JUnit


def test_junit_failures_and_errors() -> None:
    root = ET.fromstring(render_junit(make_report()))
    assert root.tag == "testsuites"
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert list(suites) == ["audit.dev", "audit.staging", "audit.prod"]
    prod = suites["audit.prod"]
    assert (prod.get("tests"), prod.get("failures"), prod.get("errors")) == ("3", "3", "0")
    stack_case = next(c for c in prod.findall("testcase") if c.get("name") == STACK)
    failure = stack_case.find("failure")
    assert failure is not None and "docker.version" in (failure.text or "")
    staging = suites["audit.staging"]
    assert (staging.get("tests"), staging.get("errors")) == ("2", "1")
    error = next(c for c in staging.findall("testcase") if c.get("name") == STACK).find("error")
    assert error is not None and "No route to host" in (error.get("message") or "")
    assert root.get("tests") == "7" and root.get("failures") == "3" and root.get("errors") == "1"


# --------------------------------------------------------------------------- Prometheus


def samples(text: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append(s)
    return out


def test_prometheus_textfile_parses_with_the_real_parser() -> None:
    text = render_prometheus(make_report())
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {"stacklock_drift", "stacklock_audit_success",
            "stacklock_audit_last_run_timestamp_seconds", "stacklock_audit_duration_seconds",
            "stacklock_audit_findings", "stacklock_audit_exit_code"} <= set(families)
    assert all(f.type == "gauge" and f.documentation for f in families.values())
    got = samples(text)
    drift = {(s.labels["environment"], s.labels["kind"], s.labels["component"]): s.value
             for s in got["stacklock_drift"]}
    assert drift == {
        ("dev", INFRASTRUCTURE, ""): 0, ("dev", STACK, ""): 0,
        ("staging", INFRASTRUCTURE, ""): 0,  # stack could not be audited: no line at all
        ("prod", INFRASTRUCTURE, "aws_instance"): 1, ("prod", STACK, "docker.version"): 1,
        ("prod", CLOUD, 'weird "comp"\\x'): 1,  # escaped and read back intact
    }
    success = {s.labels["environment"]: s.value for s in got["stacklock_audit_success"]}
    assert success == {"dev": 1, "staging": 0, "prod": 1}
    assert got["stacklock_audit_last_run_timestamp_seconds"][0].value == 1795453242
    assert got["stacklock_audit_duration_seconds"][0].value == 42.25
    assert got["stacklock_audit_exit_code"][0].value == 3
    counts = {(s.labels["environment"], s.labels["kind"]): s.value
              for s in got["stacklock_audit_findings"]}
    assert counts[("prod", STACK)] == 1 and counts[("dev", STACK)] == 0


def test_prometheus_clean_run_has_zero_lines_for_each_kind_audited() -> None:
    got = samples(render_prometheus(make_report(staging_error=False, prod_drift=False)))
    values = [(s.labels["environment"], s.labels["kind"], s.value) for s in got["stacklock_drift"]]
    assert len(values) == 7 and all(v == 0 for _e, _k, v in values)
    assert ("prod", CLOUD, 0) in values and ("dev", CONFIGURATION, 0) not in values


def test_write_reports_atomically(tmp_path: Path) -> None:
    report = make_report()
    targets = ReportTargets(json=tmp_path / "r" / "audit.json", markdown=tmp_path / "audit.md",
                            junit=tmp_path / "audit.xml", prometheus=tmp_path / "tf" / "s.prom",
                            history=tmp_path / "h" / "history.jsonl")
    written = write_reports(report, targets)
    assert len(written) == 5 and all(p.is_file() for p in written)
    assert json.loads((tmp_path / "r" / "audit.json").read_text())["schema"] == SCHEMA
    prom = tmp_path / "tf" / "s.prom"
    assert samples(prom.read_text())["stacklock_audit_exit_code"][0].value == 3
    # node_exporter (another user) must be able to read it; no temporary file is left over
    assert stat.S_IMODE(prom.stat().st_mode) == 0o644
    assert [p.name for p in prom.parent.iterdir()] == ["s.prom"]
    assert len(read_history(targets.history).entries) == 1  # type: ignore[arg-type]


def test_atomic_write_replaces_and_never_leaves_partial_files(tmp_path: Path) -> None:
    target = tmp_path / "x.prom"
    target.write_text("old\n")
    atomic_write(target, "new\n")
    assert target.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.prom"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write a read-only folder")
def test_atomic_write_unwritable_folder_is_tool_failed(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    with pytest.raises(ToolFailed, match="cannot write"):
        atomic_write(ro / "x.prom", "x")


def test_atomic_write_into_a_file_path_is_tool_failed(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ToolFailed, match="cannot write"):
        atomic_write(tmp_path / "file" / "x.prom", "x")


# --------------------------------------------------------------------------- history


def _append_many(path: str, worker: int, count: int) -> None:
    for i in range(count):
        report = make_report(finished=f"2026-11-23T17:{worker:02d}:{i:02d}Z")
        entry = history_entry(report)
        entry["worker"], entry["seq"] = worker, i
        entry["padding"] = "x" * 20000  # big lines: more than one pipe/page buffer
        append_history(path, entry)


def test_concurrent_appends_from_processes_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(str(path), w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 160
    seen = {(d["worker"], d["seq"]) for d in map(json.loads, lines)}
    assert seen == {(w, i) for w in range(4) for i in range(40)}


def test_concurrent_appends_from_threads_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    threads = [threading.Thread(target=_append_many, args=(str(path), w, 25)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    read = read_history(path)
    assert len(read.entries) == 100 and read.bad_lines == ()


def run_entry(at: str, **status: str) -> dict[str, Any]:
    envs = []
    for name, st in status.items():
        if st == "drift":
            envs.append(EnvironmentAudit(name, findings=(
                Finding(name, STACK, "docker.version", f"{name}-1", "a", "b"),), audited=(STACK,)))
        elif st == "drift2":
            envs.append(EnvironmentAudit(name, findings=(
                Finding(name, CLOUD, "unmanaged", "i-9", None, "running"),), audited=(CLOUD,)))
        elif st == "error":
            envs.append(EnvironmentAudit(name, errors=(AuditError(STACK, "unreachable"),)))
        else:
            envs.append(EnvironmentAudit(name, audited=(STACK,)))
    return history_entry(AuditReport(at, at, 1.0, tuple(envs)))


def test_history_transitions(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    for entry in [
        run_entry("2026-11-20T02:00:00Z", dev="ok", prod="ok"),
        run_entry("2026-11-21T02:00:00Z", dev="ok", prod="drift"),
        run_entry("2026-11-21T03:00:00Z", dev="ok", prod="drift"),  # no change: no event
        run_entry("2026-11-21T04:00:00Z", dev="ok", prod="drift2"),
        run_entry("2026-11-22T02:00:00Z", dev="error", prod="error"),
        run_entry("2026-11-23T02:00:00Z", dev="ok", prod="ok"),
    ]:
        append_history(path, entry)
    with path.open("a") as fh:
        fh.write('{"torn": \n')  # a damaged line is skipped, not fatal
    summary = history_summary(path)
    assert summary.runs == 6 and summary.bad_lines == (7,)
    prod = summary.environments["prod"]
    assert [(t.at[:13], t.event) for t in prod.transitions] == [
        ("2026-11-20T02", "first audit"),
        ("2026-11-21T02", "drifted"),
        ("2026-11-21T04", "drift changed"),
        ("2026-11-22T02", "could not audit"),
        ("2026-11-23T02", "recovered"),  # the last status seen before the gap was drift
    ]
    assert prod.last_drift == "2026-11-21T02:00:00Z"
    assert prod.last_recovery == "2026-11-23T02:00:00Z"
    assert (prod.status, prod.since, prod.runs) == ("ok", "2026-11-23T02:00:00Z", 6)
    dev = summary.environments["dev"]
    assert [t.event for t in dev.transitions] == ["first audit", "could not audit",
                                                  "audited again"]
    assert dev.last_drift is None
    only = history_summary(path, env="dev")
    assert list(only.environments) == ["dev"]
    text = render_history(summary, width=200)
    assert "recovered" in text and "drifted" in text and "prod: ok since" in text
    assert json.loads(json.dumps(summary.as_dict()))["schema"] == HISTORY_SCHEMA


def test_history_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no such file"):
        history_summary(tmp_path / "missing.jsonl")
    path = tmp_path / "h.jsonl"
    append_history(path, run_entry("2026-11-20T02:00:00Z", dev="ok"))
    with pytest.raises(InvalidInput, match="'qa'"):
        history_summary(path, env="qa")


def test_append_waits_for_the_history_lock(tmp_path: Path) -> None:
    """Another run holding the lock (e.g. mid-append) makes the next append wait for it."""
    import fcntl

    path = tmp_path / "history.jsonl"
    path.write_text("")
    holder = path.open("a")
    fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
    done = threading.Event()

    def append() -> None:
        append_history(path, run_entry("2026-11-20T02:00:00Z", dev="ok"))
        done.set()

    thread = threading.Thread(target=append)
    thread.start()
    try:
        assert not done.wait(0.5)
        assert path.read_text() == ""
    finally:
        fcntl.flock(holder.fileno(), fcntl.LOCK_UN)
        holder.close()
    thread.join(10)
    assert done.is_set() and len(read_history(path).entries) == 1
