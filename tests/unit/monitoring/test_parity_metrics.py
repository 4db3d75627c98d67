"""The parity metrics (core/metrics.py): what `verify --prometheus` and `audit --prometheus`
write, read back with prometheus_client's parser (the text format Prometheus scrapes)."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from monitoring_samples import FINISHED, node_facts, sample_audit, sample_parity
from prometheus_client.parser import text_string_to_metric_families

from stacklock.core import metrics, parity
from stacklock.core import report as reportmod
from stacklock.errors import ExitCode

pytestmark = pytest.mark.unit


def samples(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """metric name -> sorted labels -> value; fails on a series written twice."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    seen: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
    for family in text_string_to_metric_families(text):
        assert family.type == "gauge", family.name
        for s in family.samples:
            key = tuple(sorted(s.labels.items()))
            seen[(s.name, key)] += 1
            out.setdefault(s.name, {})[key] = s.value
    assert [k for k, n in seen.items() if n > 1] == []
    return out


def value(got: dict[str, dict[Any, float]], name: str, **labels: str) -> float:
    return got[name][tuple(sorted(labels.items()))]


def test_every_metric_is_written_with_its_declared_labels() -> None:
    text = metrics.render_parity(sample_parity(), finished_at=FINISHED)
    got = samples(text)
    assert set(got) == set(metrics.METRICS)
    for name, series in got.items():
        for labels in series:
            assert tuple(k for k, _ in labels) == tuple(sorted(metrics.METRICS[name][1])), name


def test_the_sample_report_reads_back() -> None:
    got = samples(metrics.render_parity(sample_parity(), finished_at=FINISHED))
    reach = "stacklock_parity_node_reachable"
    assert value(got, reach, environment="dev", node="dev-1") == 1
    assert value(got, reach, environment="staging", node="staging-1") == 0
    checks = "stacklock_parity_checks"
    assert value(got, checks, environment="prod", node="prod-1", status="deviation") == 2
    assert value(got, checks, environment="prod", node="prod-1", status="waived") == 1
    assert value(got, checks, environment="staging", node="staging-1", status="unreachable") == 4
    # every status is written, zeros included: "no deviation" is a line, not an absence
    assert value(got, checks, environment="dev", node="dev-1", status="deviation") == 0
    assert {k: v for k, v in got["stacklock_parity_ok"].items()} == {
        (("environment", "dev"),): 0,      # its waiver expired: a deviation of its own
        (("environment", "staging"),): 0,  # unreachable
        (("environment", "prod"),): 0}
    smoke = "stacklock_model_smoke_ok"
    assert value(got, smoke, environment="dev", node="dev-1", model_name="tiny-linear",
                 model_version="1.0") == 1
    assert value(got, smoke, environment="prod", node="prod-1", model_name="tiny-linear",
                 model_version="1.0") == 0
    # an unreachable node's smoke test was not looked at: no line, the reachability says why
    assert not any(("node", "staging-1") in k for k in got[smoke])
    assert value(got, "stacklock_model_info", environment="prod", model_name="tiny-linear",
                 model_version="1.0") == 1
    assert got["stacklock_waiver_expired"] == {
        (("environment", "dev"), ("item", "docker.version"), ("node", "*")): 1}
    [(labels, expiry)] = got["stacklock_waiver_expiry_timestamp_seconds"].items()
    assert dict(labels)["node"] == "prod-1"
    # valid through its expiry day (2027-01-31): it stops waiving at the next midnight UTC
    assert expiry == dt.datetime(2027, 2, 1, tzinfo=dt.UTC).timestamp()
    assert got["stacklock_parity_exit_code"] == {(): 3}
    assert got["stacklock_parity_last_run_timestamp_seconds"] == {(): FINISHED.timestamp()}


def test_a_clean_report_is_all_ok() -> None:
    rep = parity.compare({"dev": {"docker.version": "20.10.24"}},
                         {"dev": {"dev-1": node_facts(), "dev-2": node_facts()}},
                         today=dt.date(2026, 12, 6))
    assert rep.exit_code == ExitCode.OK
    got = samples(metrics.render_parity(rep, finished_at=FINISHED))
    assert got["stacklock_parity_ok"] == {(("environment", "dev"),): 1}
    assert set(got["stacklock_parity_node_reachable"].values()) == {1}
    assert "stacklock_waiver_expired" not in got  # HELP and TYPE only: no series
    assert got["stacklock_parity_exit_code"] == {(): 0}


def test_an_environment_without_nodes_is_an_unreachable_none_node() -> None:
    rep = parity.compare({"dev": {"docker.version": "20.10.24"}}, {"dev": {}})
    got = samples(metrics.render_parity(rep, finished_at=FINISHED))
    assert got["stacklock_parity_node_reachable"] == {
        (("environment", "dev"), ("node", "(none)")): 0}


def test_label_values_are_escaped() -> None:
    odd = 'n"1\\x\ny'
    rep = parity.compare({"dev": {"docker.version": "20.10.24"}},
                         {"dev": {odd: node_facts(docker="1")}})
    got = samples(metrics.render_parity(rep, finished_at=FINISHED))
    assert value(got, "stacklock_parity_node_reachable", environment="dev", node=odd) == 1


def test_the_audit_textfile_adds_the_parity_metrics_of_its_verify() -> None:
    audit = sample_audit()
    data = reportmod.report_dict(sample_parity())
    got = samples(metrics.audit_textfile(audit, data, finished_at=FINISHED))
    assert {"stacklock_drift", "stacklock_audit_success", "stacklock_parity_ok",
            "stacklock_model_smoke_ok"} <= set(got)
    # without a parity report (stack kind not audited), or with something else: audit only
    alone = samples(metrics.audit_textfile(audit, None, finished_at=FINISHED))
    assert "stacklock_drift" in alone and "stacklock_parity_ok" not in alone
    other = samples(metrics.audit_textfile(audit, {"schema": "x"}, finished_at=FINISHED))
    assert set(other) == set(alone)


def test_verify_writes_the_textfile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    from stacklock.flows import ledger
    from stacklock.flows import verify as flow

    class FakeRun:
        loaded = None

        def hold(self, _targets: Any) -> None:
            pass

        def ensure_current(self) -> None:
            pass

    monkeypatch.setattr(ledger, "with_revision_checks", lambda _loaded, rep: rep)
    prom = tmp_path / "textfile" / "stacklock.prom"
    code = flow.verify(FakeRun(), [], fmt="json", collected=sample_parity(),  # type: ignore[arg-type]
                       prometheus=prom)
    assert code == ExitCode.FAILED
    got = samples(prom.read_text("utf-8"))
    assert got["stacklock_parity_exit_code"] == {(): 3}
    assert capsys.readouterr().out.startswith("{")  # the JSON report still goes to stdout


def test_verify_and_audit_offer_the_option() -> None:
    from stacklock.cli import cli

    for command in ("verify", "audit"):
        res = CliRunner().invoke(cli, [command, "--help"])
        assert res.exit_code == 0 and "--prometheus" in res.output, res.output


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool is not installed (scripts/promtool.sh installs it)")
def test_promtool_lints_the_textfile_clean() -> None:
    text = metrics.audit_textfile(sample_audit(), reportmod.report_dict(sample_parity()),
                                  finished_at=FINISHED)
    res = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                         text=True, timeout=60, check=False)
    assert (res.returncode, res.stdout + res.stderr) == (0, "")
    # and it would say so: a counter without _total is a lint finding
    bad = "# HELP x_count a\n# TYPE x_count counter\nx_count 1\n"
    res = subprocess.run(["promtool", "check", "metrics"], input=bad, capture_output=True,
                         text=True, timeout=60, check=False)
    assert res.returncode != 0
