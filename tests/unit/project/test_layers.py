"""The package's layers hold: imports go down only (cli > flows > adapters > core > console,
errors) and no two sibling modules import each other, directly or in a circle. The contracts
live in pyproject.toml ([tool.importlinter]); this test runs them so that `pytest` alone fails
on a new upward import or circle, and shows that they can fail."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
PACKAGE = ROOT / "src" / "stacklock"
TOP_LEVEL = {"__init__.py", "console.py", "errors.py", "cli", "core", "flows", "adapters"}


def _lint(cwd: Path, src: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "import-linter is not installed (pip install -e '.[dev]')"
    return subprocess.run([exe, "--no-cache"], cwd=cwd, capture_output=True, text=True,
                          env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"}, timeout=120)


def test_the_package_keeps_its_layers_and_has_no_circles() -> None:
    res = _lint(ROOT, ROOT / "src")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 kept, 0 broken" in res.stdout


def test_only_the_entry_points_stay_at_the_top_of_the_package() -> None:
    found = {p.name for p in PACKAGE.iterdir()
             if p.name not in {"__pycache__", "py.typed", "data", "templates"}}
    assert found == TOP_LEVEL


@pytest.mark.parametrize("module, line, broken", [
    # core reaching up into a flow
    ("core/parity.py", "from stacklock.flows import run as _up", "Layers"),
    # two flows importing each other
    ("flows/collect.py", "from stacklock.flows import diff as _circle", "No import circles"),
])
def test_an_upward_import_or_a_circle_breaks_the_contracts(
        tmp_path: Path, module: str, line: str, broken: str) -> None:
    copy = tmp_path / "src"
    shutil.copytree(PACKAGE, copy / "stacklock",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = copy / "stacklock" / module
    target.write_text(target.read_text("utf-8") + textwrap.dedent(f"\n{line}  # noqa\n"),
                      "utf-8")
    res = _lint(tmp_path, copy)
    assert res.returncode != 0
    assert f"{broken}" in res.stdout and "BROKEN" in res.stdout
