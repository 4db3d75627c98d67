"""Run folders (.stacklock/runs): each run gets its own, and old ones are pruned."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from stacklock.errors import InvalidInput
from stacklock.flows.run import new_run_dir, prune_runs

pytestmark = pytest.mark.unit

DEAD_PID = 4_000_000  # above pid_max: never a live process


def _run(runs: Path, name: str, age_days: float) -> Path:
    path = runs / name
    path.mkdir(parents=True)
    (path / "site.log").write_text("log\n")
    stamp = time.time() - age_days * 86400
    os.utime(path, (stamp, stamp))
    return path


def test_keeps_the_newest_and_drops_the_old(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    fresh = [_run(runs, f"2026120{i}T000000-{DEAD_PID}-aaaa0{i}", age_days=i * 0.1)
             for i in range(5)]
    old = _run(runs, f"20261001T000000-{DEAD_PID}-bbbbbb", age_days=40)
    removed = prune_runs(runs, keep=3, days=30)
    assert set(removed) == {fresh[3], fresh[4], old}
    assert sorted(p.name for p in runs.iterdir()) == sorted(p.name for p in fresh[:3])


def test_a_run_still_going_is_never_pruned(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    live = _run(runs, f"20261001T000000-{os.getpid()}-cccccc", age_days=90)
    assert prune_runs(runs, keep=0, days=1) == []
    assert live.is_dir()


def test_zero_days_means_no_age_limit(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    old = _run(runs, f"20200101T000000-{DEAD_PID}-dddddd", age_days=2000)
    assert prune_runs(runs, keep=10, days=0) == []
    assert old.is_dir()


def test_new_run_dir_prunes_by_the_environment_settings(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = tmp_path / ".stacklock" / "runs"
    for i in range(4):
        _run(runs, f"2026110{i}T000000-{DEAD_PID}-eeee0{i}", age_days=1 + i)
    monkeypatch.setenv("STACKLOCK_KEEP_RUNS", "2")
    path = new_run_dir(tmp_path)
    assert path.parent == runs and oct(path.stat().st_mode & 0o777) == "0o700"
    # the two newest old runs survive the prune; then this run's own folder is added
    assert len(list(runs.iterdir())) == 3
    monkeypatch.setenv("STACKLOCK_KEEP_RUNS", "many")
    with pytest.raises(InvalidInput, match="STACKLOCK_KEEP_RUNS"):
        new_run_dir(tmp_path)
