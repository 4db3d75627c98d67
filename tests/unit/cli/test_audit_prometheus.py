"""`stacklock audit --prometheus FILE` writes the audit's metrics and the parity metrics of
the verify it ran: the stack kind's parity probe is called once, through the wrapper that
keeps its report (a wrapper that called itself recursed until Python gave up)."""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
GOLDEN = ROOT / "tests" / "golden" / "static-lab"


def test_audit_prometheus_writes_the_parity_metrics(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from stacklock.cli import cli
    from stacklock.core import audit as auditmod
    from stacklock.flows import audit as auditflow

    case = tmp_path / "case"
    shutil.copytree(GOLDEN, case, ignore=shutil.ignore_patterns("expected"))
    manifest = case / "manifest.yaml"
    calls: list[list[str]] = []

    def parity(envs: Sequence[str]) -> Mapping[str, Any]:
        calls.append(list(envs))
        return {"schema": auditmod.PARITY_SCHEMA, "ok": True, "environments": list(envs),
                "nodes": [], "checks": [], "deviations": [], "unreachable": [],
                "problems": []}

    monkeypatch.setattr(auditflow.RealProbes, "probes",
                        lambda self: auditmod.Probes(plans=None, parity=parity, cloud=None))
    prom = tmp_path / "audit.prom"
    envs = sorted(yaml.safe_load(manifest.read_text())["environments"])
    rendered = CliRunner().invoke(cli, ["-m", str(manifest), "render"])
    assert rendered.exit_code == 0, (rendered.output, rendered.exception)
    res = CliRunner().invoke(cli, ["-m", str(manifest), "audit", *envs, "--kinds", "stack",
                                   "--format", "json", "--prometheus", str(prom)])
    assert res.exit_code == 0, (res.output, res.exception)
    assert calls == [envs]
    text = prom.read_text()
    assert "stacklock_drift" in text and "stacklock_parity_ok" in text, text
