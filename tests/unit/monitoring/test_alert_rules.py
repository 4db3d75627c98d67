"""monitoring/alerts.yml: the rules read only metrics and labels that stacklock's textfiles
and TorchServe really emit; promtool checks them and runs monitoring/alerts_test.yml and
alerts_days_test.yml, where every alert fires in one case and stays quiet in another, and
each case can fail (the tests run again against rules with one alert removed, or loosened,
and must fail).

The promtool parts need promtool (Debian's `prometheus` package; scripts/promtool.sh installs
it) and are skipped without it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from monitoring_samples import GROUPING, MONITORING, TEMPLATE_LABEL, known_metrics, metrics_in

pytestmark = pytest.mark.unit

ALERTS = MONITORING / "alerts.yml"
#: the promtool unit tests: every minute, and hourly over days
TEST_FILES = (MONITORING / "alerts_test.yml", MONITORING / "alerts_days_test.yml")
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (scripts/promtool.sh installs it)")

def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text("utf-8"))
    return [r for g in doc["groups"] for r in g["rules"]]


def cases() -> list[dict[str, Any]]:
    return [case for path in TEST_FILES
            for case in yaml.safe_load(path.read_text("utf-8"))["tests"]]


def test_every_alert_reads_real_metrics_and_labels() -> None:
    known = known_metrics()
    assert rules(), "no rules"
    for rule in rules():
        expr, name = rule["expr"], rule["alert"]
        used = metrics_in(expr)
        assert used, f"{name}: reads no known metric"
        unknown = sorted(set(used) - set(known))
        assert not unknown, f"{name}: {unknown} is not emitted by stacklock or TorchServe"
        labels = set().union(*(known[m] for m in used))
        for metric, matched in used.items():
            assert set(matched) <= known[metric], f"{name}: {metric}{{{matched}}}"
        for group in GROUPING.findall(expr):
            names = {x.strip() for x in group.split(",") if x.strip()}
            assert names <= labels, f"{name}: groups by {names - labels}"
        texts = " ".join(str(v) for v in (rule.get("annotations") or {}).values())
        assert set(TEMPLATE_LABEL.findall(texts)) <= labels, name


def test_the_check_catches_a_misspelt_metric() -> None:
    used = metrics_in('sum by (environment) (stacklock_parity_deviation{status="x"}) > 0')
    assert set(used) - set(known_metrics()) == {"stacklock_parity_deviation"}


def test_the_unit_tests_feed_real_series() -> None:
    """Each input series of alerts_test.yml is a metric with the labels a scrape gives it."""
    known = known_metrics()
    for case in cases():
        for series in case["input_series"]:
            m = re.fullmatch(r"([A-Za-z_:][A-Za-z0-9_:]*)\{(.*)\}", series["series"])
            assert m, series["series"]
            labels = set(re.findall(r'([A-Za-z_][A-Za-z0-9_]*)="', m.group(2)))
            assert m.group(1) in known, series["series"]
            assert labels <= known[m.group(1)], series["series"]
            assert {"job", "instance"} <= labels, series["series"]


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in cases():
        for t in case.get("alert_rule_test") or []:
            (firing if t.get("exp_alerts") else quiet).add(t["alertname"])
    names = {r["alert"] for r in rules()}
    assert names - firing == set(), "alerts never expected to fire"
    assert names - quiet == set(), "alerts never expected to stay quiet"


# --------------------------------------------------------------------------- promtool


def promtool(*args: str | Path, cwd: Path = MONITORING) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=120, check=False)


@needs_promtool
def test_promtool_checks_the_rules_and_runs_their_tests() -> None:
    res = promtool("check", "rules", ALERTS.name)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(rules())} rules found" in res.stdout
    res = promtool("test", "rules", *(p.name for p in TEST_FILES))
    assert res.returncode == 0, res.stdout + res.stderr


#: each alert loosened so that it fires where its test expects it quiet (same labels)
LOOSENED = {
    "StacklockParityDeviation":
        'sum by (environment) (stacklock_parity_checks{status="deviation"}) >= 0',
    "StacklockNodeUnreachable": "stacklock_parity_node_reachable >= 0",
    "StacklockWaiverExpired":
        "stacklock_waiver_expired >= 0 or stacklock_waiver_expiry_timestamp_seconds >= 0",
    "StacklockWaiverExpiresSoon": "stacklock_waiver_expiry_timestamp_seconds >= 0",
    "StacklockSmokeTestFailing": "stacklock_model_smoke_ok >= 0",
    "StacklockVerifyStale": "time() - stacklock_parity_last_run_timestamp_seconds >= 0",
    "StacklockMetricsAbsent": "vector(1)",
    "StacklockAuditFailed": "stacklock_audit_success >= 0",
    "StacklockAuditDrift": "stacklock_audit_findings >= 0",
    "TorchServeDown": 'up{job="torchserve"} >= 0',
    "TorchServeUnlockedModelVersion":
        "count by (environment, node, model_name, model_version) "
        '(ts_inference_requests_total{job="torchserve"})',
}


def test_every_alert_has_a_loosened_form() -> None:
    assert set(LOOSENED) == {r["alert"] for r in rules()}


def mutated_tests(tmp_path: Path, alert: str, how: str) -> subprocess.CompletedProcess[str]:
    doc = yaml.safe_load(ALERTS.read_text("utf-8"))
    for group in doc["groups"]:
        kept = []
        for rule in group["rules"]:
            if rule["alert"] == alert:
                if how == "removed":
                    continue
                rule = {**rule, "expr": LOOSENED[alert]}
            kept.append(rule)
        group["rules"] = kept
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(doc, sort_keys=False), "utf-8")
    for path in TEST_FILES:
        shutil.copy(path, tmp_path / path.name)
    return promtool("test", "rules", *(p.name for p in TEST_FILES), cwd=tmp_path)


@needs_promtool
@pytest.mark.parametrize("how", ["removed", "loosened"])
@pytest.mark.parametrize("alert", sorted(LOOSENED))
def test_each_case_can_fail(tmp_path: Path, alert: str, how: str) -> None:
    res = mutated_tests(tmp_path, alert, how)
    assert res.returncode != 0, f"{alert} {how}: the tests still pass\n{res.stdout}"
    assert f"alertname: {alert}," in res.stdout + res.stderr
