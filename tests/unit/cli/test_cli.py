"""The CLI as a user meets it: exit codes, messages, and nothing written on bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
GOLDEN = ROOT / "tests" / "golden" / "static-lab"
STACKLOCK = [sys.executable, "-m", "stacklock.cli"]

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from clirun import Result, stacklock  # noqa: E402


def run(*args: str, cwd: Path | None = None,
        process: bool = False) -> subprocess.CompletedProcess[str] | Result:
    """`stacklock ARGS` through the CLI's entry point in this process; with PROCESS, in a
    process of its own (kept where the exit status, stderr or the files written are the
    point, once per kind)."""
    env = {"STACKLOCK_HOME": str(ROOT), "NO_COLOR": "1", "COLUMNS": "200"}
    if not process:
        return stacklock(*args, cwd=cwd, env=env)
    return subprocess.run([*STACKLOCK, *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **env}, timeout=120, check=False)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def case(tmp_path: Path) -> Path:
    dst = tmp_path / "case"
    shutil.copytree(GOLDEN, dst, ignore=shutil.ignore_patterns("expected", "*.lock"))
    return dst / "manifest.yaml"


def test_lock_render_check_cycle(case: Path) -> None:
    m = str(case)
    assert run("-m", m, "lock", "--check", process=True).returncode == 1  # no lock yet
    r = run("-m", m, "render", process=True)
    assert r.returncode == 2 and f"stacklock -m {m} lock" in r.stderr  # needs a current lock
    r = run("-m", m, "lock", process=True)
    assert r.returncode == 0, r.stderr
    assert "wrote manifest.lock" in r.stderr
    assert run("-m", m, "lock", "--check").returncode == 0
    assert run("-m", m, "render", "--check").returncode == 1
    assert run("-m", m, "render").returncode == 0
    r = run("-m", m, "render", "--check")
    assert r.returncode == 0 and "4 generated file(s) are current" in r.stderr
    before = snapshot(case.parent)
    assert run("-m", m, "render").returncode == 0
    assert run("-m", m, "lock").returncode == 0
    assert snapshot(case.parent) == before  # re-running changes no byte


def test_render_check_names_stale_file(case: Path) -> None:
    m = str(case)
    assert run("-m", m, "lock").returncode == 0
    assert run("-m", m, "render").returncode == 0
    gv = case.parent / "expected/inventories/lab/group_vars/lab/stacklock.yml"
    gv.write_text(gv.read_text().replace("28.5.1", "28.5.0"))
    r = run("-m", m, "render", "--check")
    assert r.returncode == 1
    assert "inventories/lab/group_vars/lab/stacklock.yml" in r.stderr


def test_changed_pin_makes_lock_stale(case: Path) -> None:
    m = str(case)
    assert run("-m", m, "lock").returncode == 0
    case.write_text(case.read_text().replace("docker: {version: 28.5.1}",
                                             "docker: {version: 28.5.2}"))
    r = run("-m", m, "lock", "--check")
    assert r.returncode == 1 and "stale" in r.stderr


def test_bad_manifest_exit_2_nothing_written(case: Path) -> None:
    case.write_text(case.read_text().replace("count: 2", "count: two"))
    before = snapshot(case.parent)
    for cmd in (["validate"], ["lock"], ["render"], ["plan", "lab"]):
        r = run("-m", str(case), *cmd, process=cmd == ["lock"])
        assert r.returncode == 2, (cmd, r.stderr)
        assert "environments.lab.count" in r.stderr
        assert "Traceback" not in r.stderr + r.stdout
    assert snapshot(case.parent) == before


def test_validate_json_is_versioned(case: Path) -> None:
    r = run("-m", str(case), "validate", "--format", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["schema"] == "stacklock.validate/v1" and doc["ok"] is True
    assert {p["severity"] for p in doc["problems"]} <= {"warning"}


def test_strict_turns_warnings_into_errors(case: Path) -> None:
    r = run("-m", str(case), "validate", "--strict")
    assert r.returncode == 2  # the TorchServe tested-torch warning counts under --strict


def test_unknown_environment_is_usage_error(case: Path) -> None:
    assert run("-m", str(case), "lock").returncode == 0
    assert run("-m", str(case), "render").returncode == 0
    r = run("-m", str(case), "plan", "nope")
    assert r.returncode == 2 and "'nope' is not an environment" in r.stderr


def test_missing_manifest() -> None:
    r = run("-m", "/nonexistent/stacklock.yaml", "validate", process=True)
    assert r.returncode == 2 and "no such" in r.stderr and "Traceback" not in r.stderr


def test_manifest_option_after_subcommand(case: Path) -> None:
    r = run("validate", "--manifest", str(case))
    assert r.returncode == 0, r.stderr


def test_validate_checks_the_model_archives(case: Path) -> None:
    """validate is the whole pre-merge gate: an archive that changed or went missing fails it,
    not only `lock` (issue #21)."""
    archive = case.parent / "models" / "fixture.mar"
    archive.write_bytes(archive.read_bytes() + b"changed")
    r = run("-m", str(case), "validate")
    assert r.returncode == 2
    assert "stacks.s1.models[0].sha256: does not match models/fixture.mar" in r.stderr
    archive.unlink()
    r = run("-m", str(case), "validate", "--format", "json")
    assert r.returncode == 2
    (p,) = [p for p in json.loads(r.stdout)["problems"] if p["severity"] == "error"]
    assert p["path"] == "stacks.s1.models[0].archive" and "no such file" in p["message"]


def test_unknown_environment_once_with_did_you_mean(case: Path) -> None:
    """`verify lbb`: one line, naming the closest environment (issue #21)."""
    r = run("-m", str(case), "verify", "lbb", process=True)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines == ["ERROR ENV: 'lbb' is not an environment of the manifest (fix: did you "
                     "mean 'lab'? use one of: onprem, lab)"], r.stderr


def test_run_target_names_the_closest_environment(case: Path) -> None:
    from stacklock.core.manifest import load_manifest
    from stacklock.errors import InvalidInput
    from stacklock.flows.run import Run

    run_ = Run(load_manifest(case))
    try:
        with pytest.raises(InvalidInput) as exc:
            run_.target("onprme")
    finally:
        run_.close()
    assert "did you mean 'onprem'?" in exc.value.problems[0].hint


def test_a_summary_that_adds_something_is_kept(case: Path) -> None:
    """Several problems keep their count; a path the one problem lacks keeps the summary."""
    text = case.read_text().replace("count: 2", "count: two").replace("project: ", "projekt: ")
    case.write_text(text)
    r = run("-m", str(case), "validate")
    assert r.returncode == 2 and "did you mean 'project'?" in r.stderr
    r = run("-m", str(case), "lock")
    assert r.stderr.count("environments.lab.count") == 1
    assert "error: " in r.stderr and "problem(s)" in r.stderr


@pytest.mark.parametrize("where", ["end", "middle"])
def test_verbose_anywhere_on_the_line(case: Path, where: str) -> None:
    args = (["-m", str(case), "lock", "--check", "-v"] if where == "end"
            else ["lock", "--verbose", "-m", str(case), "--check"])
    r = run(*args, process=True)
    assert "No such option" not in r.stderr and r.returncode == 1, r.stderr  # no lock yet
