"""The AWS example's lock is marked as an example (its AMI ids come from a local moto
server): apply and provision refuse its aws environments, a real lock drops the mark, and a
stale lock names the fields that changed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from stacklock.core import lock as lockmod
from stacklock.core.manifest import load_manifest
from stacklock.errors import ExitCode, InvalidInput

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]


def test_the_committed_aws_example_lock_is_marked() -> None:
    data = json.loads((ROOT / "stacklock.lock").read_text("utf-8"))
    assert "moto" in str(lockmod.example_reason(data))
    # the lab's lock is a real one (built from the local mirror), not an example
    assert lockmod.example_reason(json.loads((ROOT / "examples/lab.lock").read_text())) is None


def _copy(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "stacklock.yaml", tmp_path / "stacklock.yaml")
    shutil.copy(ROOT / "stacklock.lock", tmp_path / "stacklock.lock")
    (tmp_path / "examples" / "models").mkdir(parents=True)
    shutil.copy(ROOT / "examples/models/tiny-linear.mar", tmp_path / "examples/models")
    return tmp_path / "stacklock.yaml"


def test_apply_and_provision_refuse_an_example_lock_before_anything(tmp_path: Path) -> None:
    from stacklock.flows import provision
    from stacklock.flows.run import Run

    loaded = load_manifest(_copy(tmp_path))
    with Run(loaded) as run:
        run._lock = json.loads(loaded.lock_path.read_text("utf-8"))  # skip the render check
        prod = run.target("prod")
        with pytest.raises(InvalidInput) as exc:
            provision.refuse_example(run, [prod])
        assert exc.value.exit_code == ExitCode.INVALID
        assert "stacklock lock" in exc.value.problems[0].render()
        # without the mark: nothing to refuse
        run._lock = {k: v for k, v in run._lock.items() if k != lockmod.EXAMPLE_KEY}
        provision.refuse_example(run, [prod])


def test_lock_check_keeps_the_mark_and_names_changed_fields(tmp_path: Path) -> None:
    path = _copy(tmp_path)
    loaded = load_manifest(path)
    assert lockmod.check_lock(loaded).current
    data = json.loads(loaded.lock_path.read_text("utf-8"))
    stack = sorted(data["stacks"])[0]
    data["stacks"][stack]["torchserve"]["config_sha256"] = "0" * 64
    loaded.lock_path.write_text(lockmod.dump_lock(data), "utf-8")
    status = lockmod.check_lock(loaded)
    assert not status.current
    assert f"stacks.{stack}.torchserve" in status.reason, status.reason


UV_UNSAT = """\
  \u00d7 No solution found when resolving dependencies:
  ╰─▶ Because torchserve==0.12.0 depends on torch>=9 and you require torch==2.13.0, we can
      conclude that torchserve==0.12.0 and torch==2.13.0 are incompatible.
      And because you require torchserve==0.12.0, we can conclude that your requirements are
      unsatisfiable.
"""


def test_lock_gives_uvs_own_reason() -> None:
    from stacklock.adapters import pyresolve

    err = pyresolve.resolve_failure("Resolved 3 packages\n" + UV_UNSAT, ["http://index"])
    assert err.exit_code == ExitCode.INVALID  # the pins are the manifest's to change
    assert "No solution found" in err.message and "unsatisfiable" in err.message
    assert "torchserve==0.12.0 depends on torch>=9" in err.message
    assert "Resolved 3 packages" not in err.message
    net = pyresolve.resolve_failure(
        "error: Failed to fetch: `http://index/simple/torch/`\n  Caused by: connection refused",
        ["http://index"])
    assert net.exit_code == ExitCode.FAILED and "connection refused" in net.message
