"""The verify play's reference action builds the files option once per distinct variables for
a whole run, although Ansible runs it in a forked worker per host
(stacklock.flows.integrity.files_option_for_run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stacklock.adapters import runmemo
from stacklock.flows import integrity

HV = {"stacklock_fingerprint": "f1", "torchserve_venv": "/opt/torchserve/venv"}


def _counting(calls: Path) -> Any:
    def fake(hv: Any) -> list[dict[str, Any]]:
        with calls.open("a") as f:
            f.write(f"{os.getpid()}\n")
        return [{"tree": "role:x", "kind": "paths", "hash": str(hv["stacklock_fingerprint"])}]
    return fake


def test_forked_workers_of_one_run_build_once(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    calls = tmp_path / "calls"
    monkeypatch.setattr(integrity, "files_option", _counting(calls))
    scope = runmemo.process_scope(os.getpid())
    assert scope
    children = []
    for _ in range(6):
        pid = os.fork()
        if pid == 0:  # a worker, as Ansible forks one per host
            code = 0 if integrity.files_option_for_run(HV, scope, tmp_path / "runs") == [
                {"tree": "role:x", "kind": "paths", "hash": "f1"}] else 1
            os._exit(code)
        children.append(pid)
    assert all(os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) == 0 for p in children)
    assert len(calls.read_text().splitlines()) == 1
    # other variables (another environment) are built once more
    other = integrity.files_option_for_run({**HV, "stacklock_fingerprint": "f2"}, scope,
                                           tmp_path / "runs")
    assert other[0]["hash"] == "f2"
    assert len(calls.read_text().splitlines()) == 2


def test_another_run_builds_again_and_a_finished_runs_memo_goes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = tmp_path / "calls"
    monkeypatch.setattr(integrity, "files_option", _counting(calls))
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    gone = f"{done.stdout.strip()}-1"  # a run whose process has exited
    runs = tmp_path / "runs"
    (runs / gone).mkdir(parents=True)
    (runs / gone / "x.json").write_text("[]")
    scope = runmemo.process_scope(os.getpid())
    assert scope
    integrity.files_option_for_run(HV, scope, runs)
    assert not (runs / gone).exists()
    assert (runs / scope).stat().st_mode & 0o077 == 0
    assert len(calls.read_text().splitlines()) == 1


def test_no_stack_no_option(tmp_path: Path) -> None:
    assert integrity.files_option_for_run({}, "1-1", tmp_path) == []
    assert runmemo.process_scope(2**22 + 12345) is None
