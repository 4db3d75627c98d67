"""`--format json` where a table is printed: `stacklock status` (stacklock.status/v1) and
`stacklock audit history` (stacklock.audit-history/v1), keys pinned (issue #21)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stacklock.core.manifest import load_manifest
from stacklock.errors import ExitCode
from stacklock.flows import ledger as flow
from stacklock.flows import promote as promoteflow

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(Path(__file__).parent))
from test_promotion import NOW, _case, _evidence, _private_home  # noqa: E402, F401

TOP = ("schema", "project", "promotion", "ledger", "records", "environments")
ENV = ("environment", "stack", "fingerprint", "latest_passing_verify", "next_step")
EVIDENCE = ("seq", "time", "fingerprint", "nodes", "current")


def test_status_json_keys_are_pinned(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _case(tmp_path)
    _evidence(path, "dev")
    loaded = load_manifest(path)
    assert promoteflow.print_status(loaded, NOW, fmt="json") == ExitCode.OK
    doc = json.loads(capsys.readouterr().out)
    assert tuple(doc) == TOP or sorted(doc) == sorted(TOP)
    assert doc["schema"] == "stacklock.status/v1"
    assert doc["promotion"] == ["dev", "staging", "prod"] and doc["records"] >= 1
    assert doc["ledger"] == str(flow.open_ledger(loaded).where)
    dev, staging, prod = doc["environments"]
    assert sorted(dev) == sorted(ENV) and sorted(dev["latest_passing_verify"]) == sorted(EVIDENCE)
    assert dev["environment"] == "dev" and dev["stack"] == "lab-next"
    assert dev["latest_passing_verify"]["current"] is True
    assert dev["latest_passing_verify"]["fingerprint"] == dev["fingerprint"]
    assert dev["next_step"] == "stacklock promote staging"
    assert staging["latest_passing_verify"] is None and prod["latest_passing_verify"] is None
    assert promoteflow.StatusReport.__dataclass_params__.frozen  # type: ignore[attr-defined]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, STACKLOCK_HOME=str(ROOT), NO_COLOR="1")
    return subprocess.run([sys.executable, "-m", "stacklock.cli", *args], capture_output=True,
                          text=True, env=env, timeout=120, check=False)


def test_status_format_json_on_the_cli(tmp_path: Path) -> None:
    path = _case(tmp_path)
    r = _cli("-m", str(path), "status", "--format", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)  # only the envelope on stdout
    assert doc["schema"] == "stacklock.status/v1"
    assert [e["environment"] for e in doc["environments"]] == ["dev", "staging", "prod"]
    # the hints in it name the manifest given, like the table's
    assert doc["environments"][0]["next_step"].startswith(f"stacklock -m {path} verify dev")


def test_audit_history_format_json(tmp_path: Path) -> None:
    history = tmp_path / "history.jsonl"
    line = {"schema": "stacklock.audit-history/v1", "started_at": "2026-11-04T10:00:00Z",
            "finished_at": "2026-11-04T10:01:00Z", "exit_code": 0,
            "environments": {"dev": {"status": "clean", "findings": 0, "components": []}}}
    history.write_text(json.dumps(line) + "\n")
    r = _cli("-m", str(ROOT / "examples" / "lab.yaml"), "audit", "history", "--history",
             str(history), "--format", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert sorted(doc) == ["bad_lines", "environments", "path", "runs", "schema"]
    assert doc["schema"] == "stacklock.audit-history/v1" and doc["runs"] == 1
    assert doc["environments"][0]["environment"] == "dev"
