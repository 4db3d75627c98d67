"""Sample reports for the monitoring tests: a parity report from the real comparison
(`parity.compare`) with every kind of line the parity metrics have, and an audit report."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

from stacklock.core import parity
from stacklock.core.audit import STACK, AuditError, AuditReport, EnvironmentAudit, Finding

ROOT = Path(__file__).resolve().parents[3]
MONITORING = ROOT / "monitoring"
TODAY = dt.date(2026, 12, 6)
FINISHED = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)
DROP_IN = "unit.docker.drop_in./etc/systemd/system/docker.service.d/site.conf"

EXPECTED = {
    "docker.version": "20.10.24",
    "model.tiny-linear.version": "1.0",
    "model.tiny-linear.smoke": "[3.0, 5.0, 7.0] within 1e-06",
}


def node_facts(*, docker: str = "20.10.24", answer: list[float] | None = None,
               drop_in: bool = False) -> dict[str, Any]:
    """Facts of a node as the facts module reports them (only the parts compared here)."""
    facts: dict[str, Any] = {
        "schema": parity.FACTS_SCHEMA,
        "docker": {"version": docker},
        "torchserve": {
            "running": True,
            "models": {"tiny-linear": {"version": "1.0"}},
            "smoke": {"tiny-linear": {"status": 200, "check": "numbers",
                                      "numbers": answer or [3.0, 5.0, 7.0]}},
        },
    }
    if drop_in:
        facts["units"] = {"docker": {"load": "loaded", "user": "root", "drop_ins": [
            "/etc/systemd/system/docker.service.d/site.conf"]}}
    return facts


def sample_parity(**overrides: Any) -> parity.ParityReport:
    """dev: dev-1 matches; staging: staging-1 unreachable; prod: prod-1 has a docker deviation,
    a wrong smoke answer and a waived drop-in; one waiver expired, one in force."""
    facts: dict[str, Any] = {
        "dev": {"dev-1": node_facts()},
        "staging": {"staging-1": parity.Unreachable("ssh: connect to host 10.213.0.3 port "
                                                    "22: Connection refused")},
        "prod": {"prod-1": node_facts(docker="24.0.5", answer=[3.0, 5.0, 9.0],
                                      drop_in=True)},
    }
    facts.update(overrides)
    waivers = [
        {"item": DROP_IN, "node": "prod-1", "environment": "prod", "reason": "site limit",
         "expires": "2027-01-31"},
        {"item": "docker.version", "environment": "dev", "reason": "old exception",
         "expires": "2026-11-30"},
    ]
    return parity.compare({env: dict(EXPECTED) for env in ("dev", "staging", "prod")}, facts,
                          waivers=waivers, today=TODAY)


def sample_audit() -> AuditReport:
    return AuditReport(
        environments=(
            EnvironmentAudit("dev", audited=(STACK,)),
            EnvironmentAudit("staging", errors=(AuditError(STACK, "staging-1 unreachable"),)),
            EnvironmentAudit("prod", findings=(Finding("prod", STACK, "docker.version", "prod-1",
                                                       "20.10.24", "24.0.5"),),
                             audited=(STACK,)),
        ),
        started_at="2026-12-06T11:59:00Z", finished_at="2026-12-06T12:00:00Z",
        duration_s=60.0)


#: TorchServe 0.12's default Prometheus metrics (ts/configs/metrics.yaml of pytorch/serve,
#: metrics_mode=prometheus): name -> its labels. The frontend's per-model counters carry
#: model_name and model_version; the rest are per host.
TORCHSERVE_METRICS: dict[str, tuple[str, ...]] = {
    "ts_inference_requests_total": ("model_name", "model_version", "hostname"),
    "ts_inference_latency_microseconds": ("model_name", "model_version", "hostname"),
    "ts_queue_latency_microseconds": ("model_name", "model_version", "hostname"),
    "Requests2XX": ("Level", "Hostname"),
    "Requests4XX": ("Level", "Hostname"),
    "Requests5XX": ("Level", "Hostname"),
}
#: labels Prometheus adds to every scraped series (job, instance) and the target labels the
#: lab config gives each TorchServe target (monitoring/prometheus_config.py)
SCRAPE_LABELS = ("job", "instance")
TORCHSERVE_TARGET_LABELS = ("environment", "node")


def stacklock_metrics() -> dict[str, set[str]]:
    """Every metric stacklock's textfiles write (audit and parity), with its label names,
    read back from a real textfile of the sample reports."""
    from prometheus_client.parser import text_string_to_metric_families

    from stacklock.core import metrics
    from stacklock.core import report as reportmod

    text = metrics.audit_textfile(sample_audit(), reportmod.report_dict(sample_parity()),
                                  finished_at=FINISHED)
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        labels = out.setdefault(family.name, set())
        for s in family.samples:
            labels.update(s.labels)
    return out


#: Prometheus's own series: `up` of every target
PROMETHEUS = {"up": set[str]()}

SELECTOR = re.compile(r"\b([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?")
MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|on|without|ignoring|group_left|group_right)\s*\(([^)]*)\)")
TEMPLATE_LABEL = re.compile(r"\$labels\.([A-Za-z_][A-Za-z0-9_]*)")


def known_metrics() -> dict[str, set[str]]:
    """metric -> the label names a scraped series of it can have."""
    scrape = set(SCRAPE_LABELS)
    out = {name: labels | scrape for name, labels in stacklock_metrics().items()}
    out.update({name: set(labels) | scrape | set(TORCHSERVE_TARGET_LABELS)
                for name, labels in TORCHSERVE_METRICS.items()})
    out["up"] = scrape | set(TORCHSERVE_TARGET_LABELS)
    return out


def metrics_in(expr: str) -> dict[str, list[str]]:
    """The metric names an expression reads (stacklock_*, ts_*, up) -> label names matched."""
    found: dict[str, list[str]] = {}
    for m in SELECTOR.finditer(expr):
        name, braces = m.group(1), m.group(2) or ""
        if name.startswith(("stacklock_", "ts_")) or name in PROMETHEUS or name in \
                TORCHSERVE_METRICS:
            found.setdefault(name, []).extend(MATCHER.findall(braces))
    return found
