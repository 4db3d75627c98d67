"""The `stacklock_dpkg_selections` module (ansible/library): many holds in one execution."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location(
    "stacklock_dpkg_selections",
    Path(__file__).resolve().parents[3] / "ansible/library/stacklock_dpkg_selections.py")
assert SPEC and SPEC.loader
mod = importlib.util.module_from_spec(SPEC)
sys.modules["stacklock_dpkg_selections"] = mod
SPEC.loader.exec_module(mod)


def test_plan_changes_only_what_differs_and_leaves_missing_packages_alone() -> None:
    current = {"runc": "hold", "docker.io": "install", "containerd": "install"}
    todo, missing = mod.plan(["runc", "docker.io", "containerd", "docker.io", "gone"], "hold",
                             current)
    assert todo == ["containerd", "docker.io"]
    assert missing == ["gone"]
    assert mod.plan(["runc"], "install", current) == (["runc"], [])
    assert mod.plan([], "hold", current) == ([], [])


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="no dpkg on this machine")
def test_selections_reads_this_machines_dpkg() -> None:
    """A real dpkg-query: an installed package has a selection; an unknown name is absent."""
    found = mod.selections(["dpkg", "stacklock-no-such-package"])
    assert found["dpkg"] in ("install", "hold")
    assert "stacklock-no-such-package" not in found
    assert mod.selections([]) == {}
