"""Nodes that pull the serving image from Amazon ECR (issue #23): what render writes for an
image in ECR (serving_container.registry and registry_auth, Docker's credential helper for ECR
pinned with Docker's packages), what the serving_container role writes from it (root's Docker
config, rendered through Ansible's own templating as the files class does) and what verify's
files class expects; the lab registry path unchanged."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from stacklock.adapters import ansible_template
from stacklock.core import lock as lockmod
from stacklock.core import render as rendermod
from stacklock.core import serving
from stacklock.errors import ExitCode, InvalidInput
from stacklock.flows import integrity

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
STACK = "lab-2026-11"

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/unit
from containerlab import container_lab  # noqa: E402

DIGEST = "sha256:" + "a" * 64
ECR_HOST = "111122223333.dkr.ecr.us-east-1.amazonaws.com"
HELPER = {"name": "amazon-ecr-credential-helper", "version": "0.6.0-1+b2"}
LAB_GV = ROOT / "examples/lab/inventories/dev/group_vars/dev/stacklock.yml"
UNIT = "/etc/systemd/system/stacklock-serving.service"


def _image(registry: str, scheme: str = "https") -> dict[str, Any]:
    return {"config_digest": "sha256:" + "e" * 64, "digest": DIGEST, "fingerprint": "x",
            "reference": f"{registry}/acme/dev/serving@{DIGEST}", "registry": registry,
            "registry_url": f"{scheme}://{registry}", "repository": "acme/dev/serving",
            "user": "10001:10001"}


def _locked(registry: str = ECR_HOST, *, os_: tuple[str, str] = ("debian", "12"),
            runtime: str = "container", scheme: str = "https") -> dict[str, Any]:
    return {"serving": {"runtime": runtime}, "image": _image(registry, scheme),
            "os": {"distribution": os_[0], "release": os_[1]},
            "apt": {"docker": [{"name": "docker.io", "version": "20.10.24+dfsg1-1+deb12u1"}]}}


# --------------------------------------------------------------------------- core.serving


@pytest.mark.parametrize("host", [ECR_HOST, "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn"])
def test_an_ecr_image_gets_the_login_and_the_helper_pinned_with_docker(host: str) -> None:
    locked = _locked(host)
    assert serving.ecr_registry(locked) == host
    gv = serving.container_vars("dev", STACK, locked, gpu=True)
    spec = gv["serving_container"]
    assert (spec["registry"], spec["registry_auth"]) == (host, "ecr")
    assert spec["image"] == f"{host}/acme/dev/serving@{DIGEST}"
    assert "docker_daemon_options" not in gv  # TLS: nothing insecure
    assert serving.docker_packages("dev", STACK, locked) == [*locked["apt"]["docker"], HELPER]


@pytest.mark.parametrize("locked", [
    _locked("10.213.0.1:5000", scheme="http"),            # the lab registry
    _locked("registry.example.com"),                      # another registry over TLS
    _locked("111122223333.dkr.ecr.us-east-1.amazonaws.com.evil.example"),
    _locked(runtime="host"),                              # host mode: no image is pulled
], ids=["lab", "other", "lookalike", "host-mode"])
def test_no_login_and_no_helper_for_any_other_registry_or_host_mode(
        locked: dict[str, Any]) -> None:
    assert serving.ecr_registry(locked) is None
    assert serving.docker_packages("dev", STACK, locked) == locked["apt"]["docker"]
    spec = serving.container_vars("dev", STACK, locked, gpu=False).get("serving_container", {})
    assert "registry_auth" not in spec and "registry" not in spec


def test_an_ecr_image_on_an_os_without_a_recorded_helper_is_exit_2() -> None:
    locked = _locked(os_=("ubuntu", "24.04"))
    with pytest.raises(InvalidInput) as exc:
        serving.docker_packages("prod", STACK, locked)
    assert exc.value.exit_code == ExitCode.INVALID
    (problem,) = exc.value.problems
    assert problem.path == f"stacks.{STACK}.os"
    assert "ubuntu2404" in exc.value.message and "0.6.0-1+b2" in problem.message
    assert "Debian 12" in problem.hint and "serving.runtime: host" in problem.hint
    # the lab registry needs no helper there
    assert serving.docker_packages("prod", STACK, _locked("10.213.0.1:5000", scheme="http",
                                                          os_=("ubuntu", "24.04")))


def test_the_helper_pin_is_debian_12s_package() -> None:
    """The pin is the version Debian 12's archive serves (bookworm main, read with apt-cache
    show amazon-ecr-credential-helper), outside every family the lock holds whole."""
    from stacklock.core.aptclosure import in_family

    assert serving.ECR_LOGIN_PACKAGES == {"debian12": (HELPER,)}
    families = lockmod.package_data()["families"]["debian12"]
    assert not any(in_family(HELPER["name"], globs) for globs in families.values())


# --------------------------------------------------------------------------- render


def _lab_container(tmp_path: Path, registry: str, scheme: str) -> tuple[Any, dict[str, Any]]:
    """examples/lab.yaml in container mode, its lock holding an image pushed to `registry`."""
    loaded, lock = container_lab(tmp_path)
    lock["stacks"][STACK]["image"] = dict(_image(registry, scheme),
                                          fingerprint=lock["stacks"][STACK]["fingerprint"])
    return loaded, lock


def test_render_writes_the_ecr_login_and_the_pinned_helper(tmp_path: Path) -> None:
    loaded, lock = _lab_container(tmp_path, ECR_HOST, "https")
    gv = yaml.safe_load(rendermod.render_tree(loaded, lock)[
        "inventories/dev/group_vars/dev/stacklock.yml"])
    assert gv["serving_container"]["registry_auth"] == "ecr"
    assert gv["serving_container"]["registry"] == ECR_HOST
    assert gv["docker_packages"] == [*lock["stacks"][STACK]["apt"]["docker"], HELPER]
    assert "docker_daemon_options" not in gv


def test_render_of_the_lab_registry_is_as_before(tmp_path: Path) -> None:
    loaded, lock = _lab_container(tmp_path, "10.213.0.1:5000", "http")
    gv = yaml.safe_load(rendermod.render_tree(loaded, lock)[
        "inventories/dev/group_vars/dev/stacklock.yml"])
    assert "registry_auth" not in gv["serving_container"]
    assert gv["docker_packages"] == lock["stacks"][STACK]["apt"]["docker"]
    assert gv["docker_daemon_options"] == {"insecure-registries": ["10.213.0.1:5000"]}


# --------------------------------------------------------------------------- role and verify


def _hv(registry: str = ECR_HOST, scheme: str = "https") -> dict[str, Any]:
    hv: dict[str, Any] = yaml.safe_load(LAB_GV.read_text("utf-8"))
    locked = {**_locked(registry, scheme=scheme), "apt": {"docker": hv["docker_packages"]}}
    hv.update(serving.container_vars("dev", STACK, locked, gpu=False))
    hv["docker_packages"] = serving.docker_packages("dev", STACK, locked)
    return hv


def _rendered(hv: dict[str, Any], path: str) -> bytes:
    source = integrity.role_file_sources(hv)[path]
    return ansible_template.render(source.role, source.template,
                                   source.variables(integrity.host_vars(hv)), dest=path)


def test_the_role_writes_roots_docker_config_for_the_helper_and_verify_expects_it() -> None:
    hv = _hv()
    role_vars = yaml.safe_load((ROOT / "ansible/roles/serving_container/vars/main.yml").read_text())
    assert role_vars["_serving_container_docker_config"] == serving.DOCKER_CONFIG
    files = {f.path: f for f in integrity.role_files(hv)["serving_container"]}
    config = files[serving.DOCKER_CONFIG]
    assert (config.owner, config.group, config.mode) == ("root", "root", "0600")
    data = _rendered(hv, serving.DOCKER_CONFIG)
    assert json.loads(data) == {"credHelpers": {ECR_HOST: "ecr-login"}}
    assert config.sha256 == ansible_template.sha256(data)
    # the pull in the unit (an image removed by hand) keeps no token on disk either
    assert "Environment=AWS_ECR_DISABLE_CACHE=true" in _rendered(hv, UNIT).decode().splitlines()


def test_the_lab_registry_gets_no_docker_config_and_the_same_unit() -> None:
    hv = _hv("10.213.0.1:5000", "http")
    paths = {f.path for f in integrity.role_files(hv)["serving_container"]}
    assert paths == {UNIT}
    assert "AWS_ECR" not in _rendered(hv, UNIT).decode()


def test_the_role_preflight_and_tasks_read_what_render_writes() -> None:
    """The role's ECR tasks are keyed on the rendered registry_auth and the preflight checks
    the helper is in docker_packages (the tasks run only where render wrote them)."""
    role = ROOT / "ansible/roles/serving_container"
    preflight = (role / "tasks/preflight.yml").read_text()
    assert "serving_container_spec.registry_auth is defined" in preflight
    assert "'amazon-ecr-credential-helper' in (docker_packages" in preflight
    configure = yaml.safe_load((role / "tasks/configure.yml").read_text())
    login = next(t for t in configure if "ecr_login.yml" in str(t))
    assert login["when"] == "_serving_container_ecr | bool"
    tasks = yaml.safe_load((role / "tasks/ecr_login.yml").read_text())
    written = next(t for t in tasks if "ansible.builtin.template" in t)
    assert written["ansible.builtin.template"]["mode"] == "0600"
    pull = next(t for t in configure if "pull" in t["name"])
    assert pull["environment"] == {"AWS_ECR_DISABLE_CACHE": "true"}
