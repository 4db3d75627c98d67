"""Parity metrics: a parity report as a Prometheus textfile. Pure.

`stacklock verify --prometheus FILE` writes this text alone; `stacklock audit --prometheus
FILE` writes it after the audit's own metrics (`core.audit_report.render_prometheus`) when the
stack kind was audited. node_exporter's textfile collector (or any HTTP server in front of the
file) makes it scrapable; the alert rules in `monitoring/alerts.yml` and the dashboard in
`monitoring/stacklock-dashboard.json` read these names, and a unit test holds them to it.

Every metric is a gauge describing the *last* run:

* `stacklock_parity_node_reachable{environment,node}`: 1 when the node's facts were read, 0
  when it could not be reached or queried. An environment without nodes has one line with
  `node="(none)"` and value 0.
* `stacklock_parity_checks{environment,node,status}`: the number of checks of that node per
  status (`match`, `deviation`, `waived`, `unreachable`, `could-not-look`), every status listed
  (0 included). Cross-environment findings have `node="*"`, and so does an expired waiver
  scoped to no node (`environment="*"` when scoped to no environment).
* `stacklock_parity_ok{environment}`: 1 when every check of the environment matched or was
  waived and every node was reached (the environment's part of exit code 0).
* `stacklock_model_info{environment,model_name,model_version}`: 1 for each model the lock
  serves in the environment (the label names are TorchServe's, so the two can be joined).
* `stacklock_model_smoke_ok{environment,node,model_name,model_version}`: 1 when the model gave
  the locked answer to its smoke test, 0 when it answered something else. No line when the
  answer could not be read (the node is unreachable: see above) or the deviation is waived.
* `stacklock_waiver_expiry_timestamp_seconds{environment,node,item}`: when each waiver in
  force stops waiving (the end of its expiry day, UTC). `*` for a scope it does not have.
* `stacklock_waiver_expired{environment,node,item}`: 1 for each waiver past its expiry (it
  waives nothing and is itself a deviation).
* `stacklock_parity_last_run_timestamp_seconds`, `stacklock_parity_exit_code` (0, 1 or 3).
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from stacklock.core import report as parity_report
from stacklock.core.audit import AuditReport
from stacklock.core.audit_report import render_prometheus
from stacklock.core.parity import REACHABLE, Kind, ParityReport, Status

#: statuses in the order their lines are written
STATUSES = (Status.MATCH, Status.DEVIATION, Status.WAIVED, Status.UNREACHABLE,
            Status.UNVERIFIED)

_SMOKE = re.compile(r"model\.([^.]+)\.smoke")
_VERSION = re.compile(r"model\.([^.]+)\.version")
_WAIVER = "waiver."

#: metric name -> (HELP text, label names): every metric `render_parity` can write
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "stacklock_parity_node_reachable": (
        "1 when the last verify read the node's facts, 0 when it could not reach or query it.",
        ("environment", "node")),
    "stacklock_parity_checks": (
        "Checks of the node in the last verify, per status.",
        ("environment", "node", "status")),
    "stacklock_parity_ok": (
        "1 when every check of the environment matched (or was waived) and every node was "
        "reached in the last verify, else 0.",
        ("environment",)),
    "stacklock_model_info": (
        "1 for each model (and version) the lock serves in the environment.",
        ("environment", "model_name", "model_version")),
    "stacklock_model_smoke_ok": (
        "1 when the model gave the locked answer to its smoke test in the last verify, 0 when "
        "it answered something else.",
        ("environment", "node", "model_name", "model_version")),
    "stacklock_waiver_expiry_timestamp_seconds": (
        "When the waiver stops waiving (end of its expiry day, UTC; Unix time).",
        ("environment", "node", "item")),
    "stacklock_waiver_expired": (
        "1 for each waiver past its expiry date: it waives nothing and is itself a deviation.",
        ("environment", "node", "item")),
    "stacklock_parity_last_run_timestamp_seconds": (
        "When the last verify finished (Unix time).", ()),
    "stacklock_parity_exit_code": (
        "Exit code of the last verify (0 match, 1 deviation, 3 could not look).", ()),
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _line(name: str, labels: Mapping[str, str], value: float | int) -> str:
    want = METRICS[name][1]
    assert tuple(labels) == want, (name, tuple(labels), want)
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    text = repr(float(value)) if isinstance(value, float) else str(value)
    return f"{name}{{{inner}}} {text}" if inner else f"{name} {text}"


def _block(name: str, lines: Iterable[str]) -> list[str]:
    return [f"# HELP {name} {METRICS[name][0]}", f"# TYPE {name} gauge", *lines]


def _end_of_day(day: str) -> int | None:
    """Unix time of the end of an ISO date (UTC), or None when it is not a date."""
    try:
        date = _dt.date.fromisoformat(day)
    except ValueError:
        return None
    end = datetime.combine(date + _dt.timedelta(days=1), _dt.time(), tzinfo=_dt.UTC)
    return int(end.timestamp())


def _model_versions(report: ParityReport, env: str) -> dict[str, str]:
    """model name -> the version the lock serves in `env` ("" when the lock has none)."""
    out: dict[str, str] = {}
    for comp, value in (report.expected.get(env) or {}).items():
        m = _VERSION.fullmatch(comp)
        if m:
            out[m.group(1)] = value or ""
    return out


def render_parity(report: ParityReport, *, finished_at: datetime) -> str:
    """The textfile of one parity report (`finished_at`: when the verify ended, aware)."""
    reach: dict[tuple[str, str], int] = {}
    counts: dict[tuple[str, str], dict[Status, int]] = {}
    bad_envs: set[str] = set()
    smoke: dict[tuple[str, str, str], int] = {}
    expired: list[tuple[str, str, str]] = []
    for c in report.checks:
        key = (c.environment, c.node)
        counts.setdefault(key, dict.fromkeys(STATUSES, 0))[c.status] += 1
        if c.status in (Status.DEVIATION, Status.UNREACHABLE, Status.UNVERIFIED):
            bad_envs.add(c.environment)
        if c.component == REACHABLE:
            reach[key] = 1 if c.status is Status.MATCH else 0
        elif c.component.startswith(_WAIVER) and c.status is Status.DEVIATION:
            expired.append((c.environment, c.node, c.component[len(_WAIVER):]))
        elif ((m := _SMOKE.fullmatch(c.component)) and c.kind is Kind.LOCK
              and c.status in (Status.MATCH, Status.DEVIATION)):
            smoke[(c.environment, c.node, m.group(1))] = int(c.status is Status.MATCH)
    for n in report.nodes:  # a node known only from the node list still shows
        reach.setdefault((n.environment, n.node), 1 if n.reachable else 0)
        if not n.reachable:
            bad_envs.add(n.environment)

    out = _block("stacklock_parity_node_reachable", (
        _line("stacklock_parity_node_reachable", {"environment": e, "node": n}, v)
        for (e, n), v in sorted(reach.items())))
    out += _block("stacklock_parity_checks", (
        _line("stacklock_parity_checks", {"environment": e, "node": n, "status": s.value},
              per[s])
        for (e, n), per in sorted(counts.items()) for s in STATUSES))
    out += _block("stacklock_parity_ok", (
        _line("stacklock_parity_ok", {"environment": e}, 0 if e in bad_envs else 1)
        for e in report.environments))
    versions = {e: _model_versions(report, e) for e in report.environments}
    out += _block("stacklock_model_info", (
        _line("stacklock_model_info",
              {"environment": e, "model_name": name, "model_version": version}, 1)
        for e in report.environments for name, version in sorted(versions[e].items())))
    out += _block("stacklock_model_smoke_ok", (
        _line("stacklock_model_smoke_ok",
              {"environment": e, "node": n, "model_name": model,
               "model_version": versions.get(e, {}).get(model, "")}, v)
        for (e, n, model), v in sorted(smoke.items())))
    in_force: dict[tuple[str, str, str], int] = {}
    for w in report.waivers:  # two waivers of one item and scope: the later expiry counts
        end = _end_of_day(str(w.get("expires", "")))
        scope = (str(w.get("environment") or "*"), str(w.get("node") or "*"),
                 str(w.get("item", "")))
        if end is not None:
            in_force[scope] = max(end, in_force.get(scope, end))
    out += _block("stacklock_waiver_expiry_timestamp_seconds", (
        _line("stacklock_waiver_expiry_timestamp_seconds",
              {"environment": e, "node": n, "item": i}, end)
        for (e, n, i), end in sorted(in_force.items())))
    out += _block("stacklock_waiver_expired", (
        _line("stacklock_waiver_expired", {"environment": e, "node": n, "item": i}, 1)
        for e, n, i in sorted(set(expired))))
    out += _block("stacklock_parity_last_run_timestamp_seconds", [
        _line("stacklock_parity_last_run_timestamp_seconds", {},
              int(finished_at.timestamp()))])
    out += _block("stacklock_parity_exit_code", [
        _line("stacklock_parity_exit_code", {}, int(report.exit_code))])
    return "\n".join(out) + "\n"


def audit_textfile(report: AuditReport, parity: Mapping[str, Any] | None, *,
                   finished_at: datetime) -> str:
    """What `stacklock audit --prometheus` writes: the audit's metrics, then the parity metrics
    of the parity report its stack kind read (`stacklock.parity/v1`; none when the stack kind
    was not audited, or the report was not one: the audit itself says why)."""
    text = render_prometheus(report)
    if parity is not None and parity.get("schema") == parity_report.REPORT_SCHEMA:
        text += render_parity(parity_report.from_dict(parity), finished_at=finished_at)
    return text
