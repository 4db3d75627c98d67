"""`stacklock image push ENV` without --registry (issue #23): an aws environment's ECR
repository comes from its Terraform outputs (ecr_repository_url); a lab or static environment
needs --registry (exit 2 naming it). The push itself against moto: tests/integration/
test_ecr_moto.py."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from stacklock.errors import ExitCode, InvalidInput
from stacklock.flows import image as imageflow

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
ECR_HOST = "111122223333.dkr.ecr.us-east-1.amazonaws.com"

sys.path.insert(0, str(ROOT / "tests/unit"))
from clirun import stacklock  # noqa: E402


def test_push_reads_the_ecr_repository_from_the_terraform_outputs() -> None:
    url = f"{ECR_HOST}/acme-serving/dev/serving"
    assert imageflow.ecr_from_outputs("dev", "us-east-1", {"ecr_repository_url": url}) == (
        f"https://{ECR_HOST}", "acme-serving/dev/serving")


@pytest.mark.parametrize("outputs", [
    {}, {"ecr_repository_url": None}, {"ecr_repository_url": ""},
    {"ecr_repository_url": f"{ECR_HOST}"},                           # no repository
    {"ecr_repository_url": "10.213.0.1:5000/acme/serving"},          # not ECR
    {"ecr_repository_url": "111122223333.dkr.ecr.us-west-2.amazonaws.com/a/dev/serving"},
], ids=["none", "null", "empty", "no-repository", "not-ecr", "other-region"])
def test_no_usable_ecr_output_is_exit_2_naming_registry(outputs: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput) as exc:
        imageflow.ecr_from_outputs("dev", "us-east-1", outputs)
    assert exc.value.exit_code == ExitCode.INVALID
    (problem,) = exc.value.problems
    assert problem.path == "--registry"
    assert "stacklock apply dev" in problem.hint and "--registry https://" in problem.hint


@pytest.mark.parametrize("manifest", ["examples/lab.yaml", "examples/static.yaml"])
def test_image_push_without_registry_on_a_lab_or_static_environment_is_exit_2(
        manifest: str, tmp_path: Path) -> None:
    env = yaml.safe_load((ROOT / manifest).read_text())["environments"]
    name = next(iter(env))
    res = stacklock("-m", str(ROOT / manifest), "image", "push", name, "--out", str(tmp_path),
                    env={"STACKLOCK_HOME": str(ROOT), "NO_COLOR": "1", "COLUMNS": "200"})
    assert res.returncode == 2, res.stderr
    assert "--registry" in res.stderr and "needs --registry" in res.stderr
    assert "Traceback" not in res.stderr
    assert not list(tmp_path.iterdir())  # nothing written
