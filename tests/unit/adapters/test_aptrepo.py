"""stacklock.adapters.aptrepo without a network: which official repositories a host's roles
configure, with which trust anchor, and how a signed Release is read."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stacklock.adapters import aptrepo

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
STATIC = ROOT / "examples/static/inventories/dev/group_vars/dev/stacklock.yml"


def _os(key: str) -> aptrepo.OsId:
    return next(o for o in aptrepo.supported_os() if o.key == key)


def test_the_supported_os_are_packages_yaml_codenames() -> None:
    assert [(o.key, o.distribution, o.release, o.codename) for o in aptrepo.supported_os()] == [
        ("debian12", "debian", "12", "bookworm"),
        ("ubuntu2204", "ubuntu", "22.04", "jammy"),
        ("ubuntu2404", "ubuntu", "24.04", "noble")]
    assert aptrepo.host_os({"stacklock_os_distribution": "Ubuntu",
                            "stacklock_os_release": "22.04"}) == [_os("ubuntu2204")]
    assert aptrepo.host_os({}) == aptrepo.supported_os()
    assert aptrepo.host_os({"stacklock_os_distribution": "rhel",
                            "stacklock_os_release": "9"}) == []


def test_the_roles_official_repositories_render_per_os_with_their_pinned_keys() -> None:
    hv = yaml.safe_load(STATIC.read_text("utf-8"))
    docker = aptrepo.role_sources(hv, "docker", _os("ubuntu2204"))
    assert docker[0] == aptrepo.AptSource(
        "docker", "https://download.docker.com/linux/ubuntu", "jammy", ("stable",),
        ("https://download.docker.com/linux/ubuntu/gpg",), aptrepo.KEYS["docker"])
    assert docker[0].base == "https://download.docker.com/linux/ubuntu/dists/jammy/"
    assert docker[0].pool == "https://download.docker.com/linux/ubuntu/"
    # then the distribution's archive (what the node's own sources hold)
    assert [(s.name, s.suite) for s in docker[1:]] == [
        ("ubuntu", "jammy"), ("ubuntu", "jammy-updates"), ("ubuntu", "jammy-security")]
    cuda = aptrepo.role_sources(hv, "cuda", _os("debian12"))[0]
    url = "https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64"
    assert (cuda.uri, cuda.suite, cuda.keys, cuda.flat, cuda.base, cuda.pool) == (
        url, "/", (f"{url}/3bf863cc.pub",), True, f"{url}/", f"{url}/")
    toolkit = aptrepo.role_sources(hv, "nvidia_container_toolkit", _os("ubuntu2404"))[0]
    assert toolkit.fingerprints == aptrepo.KEYS["nvidia-container-toolkit"]
    # roles that configure no repository of their own: the distribution's archive only
    java = aptrepo.role_sources(hv, "torchserve", _os("debian12"))
    assert [(s.name, s.suite) for s in java] == [
        ("debian", "bookworm"), ("debian", "bookworm-updates"),
        ("debian-security", "bookworm-security")]
    assert all(len(f) == 40 for s in java for f in s.fingerprints)


def test_a_repository_without_a_pinned_key_is_not_read() -> None:
    hv = {"docker_official_repositories": [
        {"name": "someone-elses", "uri": "https://example.invalid/apt", "suite": "/",
         "components": [], "signing_key": "https://example.invalid/key"}]}
    assert [s.name for s in aptrepo.role_sources(hv, "docker", _os("debian12"))] == [
        "debian", "debian", "debian-security"]


def test_release_hashes_read_the_sha256_field_only() -> None:
    text = ("Origin: x\nMD5Sum:\n 0123 10 main/binary-amd64/Packages\n"
            "SHA256:\n aa11 10 main/binary-amd64/Packages\n BB22 7 main/binary-amd64/Packages.xz\n"
            "Acquire-By-Hash: yes\n")
    assert aptrepo.release_hashes(text) == {
        "main/binary-amd64/Packages": ("aa11", 10),
        "main/binary-amd64/Packages.xz": ("bb22", 7)}


def test_a_host_without_official_sources_is_not_asked() -> None:
    pins = [("docker", "docker.io", "20.10.24+dfsg1-1+deb12u1+b6")]
    assert aptrepo.OfficialDebs({"stacklock_apt_official": False}, pins).files(
        "docker", "docker.io", "20.10.24+dfsg1-1+deb12u1+b6") is None
    assert aptrepo.OfficialDebs({"stacklock_apt_official": True}, []).applies is False
