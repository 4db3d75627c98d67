"""Every command that takes ENV names the closest environment for a misspelt one, once, with
exit 2 and nothing on stdout; the `--format` options of rollout, rollback, promote and sbom
(issue #21)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from clirun import Result, stacklock

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
GOLDEN = ROOT / "tests" / "golden" / "static-lab"

#: every command with an ENV argument (test_the_list_is_complete keeps it so), and
#: `audit history [ENV]` (the audit command's first argument)
ENV_COMMANDS = ["plan", "apply", "destroy", "provision", "configure", "trust", "verify", "sbom",
                "diff", "audit", "schedule", "promote", "rollout", "rollback", "image build",
                "image push"]


#: these also run as a process of their own (the others through the CLI's entry point here)
IN_A_PROCESS = {"verify", "image push", "rollout"}


def run(*args: str, process: bool = False) -> subprocess.CompletedProcess[str] | Result:
    env = {"STACKLOCK_HOME": str(ROOT), "NO_COLOR": "1", "COLUMNS": "200"}
    if not process:
        return stacklock(*args, env=env)
    return subprocess.run([sys.executable, "-m", "stacklock.cli", *args], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=120, check=False)


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("case") / "case"
    shutil.copytree(GOLDEN, dst, ignore=shutil.ignore_patterns("expected", "*.lock"))
    return dst / "manifest.yaml"


def _with_env(group: click.Group, prefix: str = "") -> list[str]:
    found = []
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            found += _with_env(cmd, f"{prefix}{name} ")
        elif any(isinstance(p, click.Argument) and p.name in ("env", "envs")
                 for p in cmd.params):
            found.append(prefix + name)
    return found


def test_the_list_is_complete() -> None:
    from stacklock.cli import cli

    assert sorted(_with_env(cli)) == sorted(ENV_COMMANDS)


@pytest.mark.parametrize("command", [*ENV_COMMANDS, "audit history",
                                     *(f"{c}@process" for c in sorted(IN_A_PROCESS))])
def test_a_misspelt_environment_names_the_closest(case: Path, command: str) -> None:
    command, _, how = command.partition("@")
    required = {"image push": ["--registry", "http://127.0.0.1:9"]}  # required options
    r = run("-m", str(case), *command.split(), *required.get(command, []), "lbb",
            process=how == "process")
    assert r.returncode == 2 and r.stdout == ""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines == ["ERROR ENV: 'lbb' is not an environment of the manifest (fix: did you "
                     "mean 'lab'? use one of: onprem, lab)"], r.stderr


@pytest.mark.parametrize("command", ["promote", "rollout", "rollback"])
def test_json_of_a_misspelt_environment_is_the_error_alone(case: Path, command: str) -> None:
    r = run("-m", str(case), command, "lbb", "--format", "json")
    assert r.returncode == 2 and r.stdout == "" and "did you mean 'lab'?" in r.stderr


def test_promote_json_needs_the_rollout(case: Path) -> None:
    r = run("-m", str(case), "promote", "lab", "--format", "json")
    assert r.returncode == 2 and r.stdout == ""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines == [f"ERROR --format: json describes the rollout: it needs --rollout (fix: "
                     f"stacklock -m {case} promote lab --rollout --format json, or leave "
                     "--format out)"], r.stderr  # once


@pytest.mark.parametrize(("command", "schema"), [
    ("rollout", "stacklock.rollout/v1"), ("rollback", "stacklock.rollout/v1"),
    ("promote", "stacklock.rollout/v1"), ("sbom", "stacklock.sbom/v1")])
def test_format_options(command: str, schema: str) -> None:
    from click.testing import CliRunner

    from stacklock.cli import cli

    r = CliRunner().invoke(cli, [command, "--help"], terminal_width=200)
    assert r.exit_code == 0
    text = " ".join(r.output.split())
    assert "--format [table|json]" in text and schema in text
