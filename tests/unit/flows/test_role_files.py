"""stacklock.flows.integrity.role_files: the controller knows the sha256 of every file the roles
write, rendered from the host's variables over the roles' defaults (issue #18)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from stacklock.adapters import ansible_template, debfiles, wheelrecord
from stacklock.flows import integrity

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
LAB = ROOT / "examples/lab/inventories/dev/group_vars/dev/stacklock.yml"
ONPREM = ROOT / "examples/onprem/inventories/prod/group_vars/prod/stacklock.yml"
STATIC = ROOT / "examples/static/inventories/dev/group_vars/dev/stacklock.yml"
APT_IDS = ("nvidia_driver", "cuda", "nvidia_container_toolkit", "docker", "torchserve")


def _hv(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text("utf-8"))
    return data


def _hashes(hv: dict[str, Any]) -> dict[str, str | None]:
    return {f.path: f.sha256 for files in integrity.role_files(hv).values() for f in files}


def _written_paths(hv: dict[str, Any]) -> set[str]:
    repos = [r["name"] for r in hv["stacklock_apt_repositories"]]
    return {*(f"/etc/apt/preferences.d/stacklock-{i}.pref" for i in APT_IDS),
            *(f"/etc/apt/apt.conf.d/51stacklock-{i}-unattended-upgrades" for i in APT_IDS),
            *(f"/etc/apt/sources.list.d/{r}.list" for r in repos),
            "/etc/docker/daemon.json", "/etc/systemd/system/torchserve.service",
            "/etc/modprobe.d/stacklock-blacklist-nouveau.conf",
            "/etc/torchserve/config.properties"}


def test_every_file_the_roles_write_on_a_lab_node_has_its_sha256() -> None:
    hv = _hv(LAB)
    hashes = _hashes(hv)
    assert _written_paths(hv) <= set(hashes)
    # only the endpoint's secrets and the lab CA's per-node certificate are compared by
    # presence, owner and mode (examples/lab.yaml gives every environment an endpoint)
    assert {p for p, h in hashes.items() if not h} == {
        "/etc/stacklock-endpoint/tls/key.pem", "/etc/stacklock-endpoint/tls/cert.pem",
        "/etc/stacklock-endpoint/clients.map", "/etc/stacklock-endpoint/scrapers.map"}


def test_on_prem_only_what_the_node_decides_is_left_without_a_sha256() -> None:
    """A static host with docker_container_host `auto` may itself be a container: its
    daemon.json is compared by presence, owner and mode until the inventory says which."""
    hv = _hv(ONPREM)
    hashes = _hashes(hv)
    assert _written_paths(hv) <= set(hashes)
    assert {p for p, h in hashes.items() if not h} == {"/etc/docker/daemon.json"}
    hv["docker_container_host"] = "disabled"
    assert _hashes(hv)["/etc/docker/daemon.json"]


def test_official_sources_naming_the_node_os_are_listed_without_a_sha256() -> None:
    """apt: official -- the toolkit's repository is the same everywhere; NVIDIA's CUDA and
    Docker's repositories name the node's OS (its gathered facts)."""
    hashes = _hashes(_hv(STATIC))
    assert hashes["/etc/apt/sources.list.d/nvidia-container-toolkit.list"]
    assert hashes["/etc/apt/sources.list.d/nvidia-cuda.list"] is None
    assert hashes["/etc/apt/sources.list.d/docker.list"] is None
    assert {p for p, h in hashes.items() if not h} == {
        "/etc/docker/daemon.json", "/etc/apt/sources.list.d/nvidia-cuda.list",
        "/etc/apt/sources.list.d/docker.list"}


@pytest.mark.parametrize("path", [LAB, ONPREM, STATIC], ids=["lab", "onprem", "static"])
def test_the_rendered_config_is_the_locked_one(path: Path) -> None:
    hv = _hv(path)
    assert _hashes(hv)["/etc/torchserve/config.properties"] == hv["torchserve_config_sha256"]


def _changed(hv: dict[str, Any], key: str, value: Any) -> dict[str, str | None]:
    other = copy.deepcopy(hv)
    other[key] = value
    return _hashes(other)


def test_a_relevant_variable_changes_exactly_its_files_hash() -> None:
    hv = _hv(LAB)
    before = _hashes(hv)

    def diff(after: dict[str, str | None]) -> set[str]:
        return {p for p in before if before[p] != after.get(p)}

    pins = copy.deepcopy(hv["nvidia_driver_packages"])
    pins[0]["version"] = "535.999.01-0+deb12u1"
    assert diff(_changed(hv, "nvidia_driver_packages", pins)) == {
        "/etc/apt/preferences.d/stacklock-nvidia_driver.pref"}
    pins[0]["name"] = "nvidia-driver-other"
    assert diff(_changed(hv, "nvidia_driver_packages", pins)) == {
        "/etc/apt/preferences.d/stacklock-nvidia_driver.pref",
        "/etc/apt/apt.conf.d/51stacklock-nvidia_driver-unattended-upgrades"}
    assert diff(_changed(hv, "torchserve_version", "0.12.1")) == {
        "/etc/systemd/system/torchserve.service"}
    assert diff(_changed(hv, "docker_log_max_size", "50m")) == {"/etc/docker/daemon.json"}
    repos = copy.deepcopy(hv["stacklock_apt_repositories"])
    repos[0]["uri"] = "http://10.213.0.1:8701/apt"
    assert diff(_changed(hv, "stacklock_apt_repositories", repos)) == {
        "/etc/apt/sources.list.d/stacklock-lab-mirror.list"}
    # the toolkit no longer pinned: daemon.json without the nvidia runtime
    toolkit = {k: v for k, v in hv.items() if not k.startswith("nvidia_container_toolkit_")}
    after = _hashes(toolkit)
    assert after["/etc/docker/daemon.json"] != before["/etc/docker/daemon.json"]


def test_role_defaults_apply_under_the_host_variables() -> None:
    hv = _hv(LAB)
    source = integrity.role_file_sources(hv)["/etc/apt/preferences.d/stacklock-docker.pref"]
    text = ansible_template.render(source.role, source.template,
                                   source.variables(integrity.host_vars(hv)), dest="/x").decode()
    assert "Pin-Priority: 1001\n" in text  # stacklock_packages' default
    assert "Package: docker.io\nPin: version 20.10.24+dfsg1-1+deb12u1+b6\n" in text
    pref = "/etc/apt/preferences.d/stacklock-docker.pref"
    assert _changed(hv, "stacklock_packages_pin_priority", 990)[pref] != _hashes(hv)[pref]
    # a layout default the group_vars do not set, and the same variable set by the host
    assert "/opt/torchserve/torchserve-ping" in _hashes(hv)
    assert "/srv/ts/torchserve-ping" in _changed(hv, "torchserve_home", "/srv/ts")


def test_credentials_are_neither_read_nor_kept() -> None:
    hv = _hv(LAB)
    secret = {"stacklock-lab-mirror": {"login": "u", "password": "s3cret-value"}}
    with_secret = {**hv, "stacklock_apt_auth": secret, "stacklock_pip_auth": secret}
    assert "stacklock_apt_auth" not in integrity.host_vars(with_secret)
    assert _hashes(with_secret) == _hashes(hv)


@pytest.fixture()
def no_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No .debs or wheels on this controller (their trees are `not checked`); a private
    reference store and an empty memo."""
    monkeypatch.setenv("STACKLOCK_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(debfiles, "deb_files", lambda name, version: None)
    monkeypatch.setattr(wheelrecord, "wheel_files", lambda digests: None)
    monkeypatch.setattr(integrity, "_MEMO", {})


def _tree(option: list[dict[str, Any]], tree: str) -> str:
    return str(next(t["hash"] for t in option if t.get("tree") == tree))


@pytest.mark.usefixtures("no_mirror")
def test_the_files_option_memo_is_keyed_on_the_variables_templates_read() -> None:
    hv = _hv(LAB)
    first = integrity.files_option(hv)
    # docker_log_max_size is no longer one of a fixed list of keys, only a role default and
    # a template's input: a host that sets it gets its own daemon.json hash
    other = integrity.files_option({**hv, "docker_log_max_size": "50m"})
    assert _tree(first, "role:docker") != _tree(other, "role:docker")
    assert _tree(first, "role:torchserve") == _tree(other, "role:torchserve")
    pinned = integrity.files_option({**hv, "stacklock_packages_pin_priority": 990})
    assert _tree(first, "role:stacklock_packages") != _tree(pinned, "role:stacklock_packages")
    # credentials are no part of a key, and change nothing
    secret = {"m": {"login": "u", "password": "s3cret-value"}}
    assert integrity.files_option({**hv, "stacklock_apt_auth": secret}) == first
    assert not any("s3cret-value" in key for key in integrity._MEMO)
