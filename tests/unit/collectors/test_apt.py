"""apt: dpkg's packages (on a lab node's real `dpkg-query` output), the pinned families, the
apt preferences and unattended-upgrades blacklist the roles write, and the packages sections
when dpkg cannot be read."""

from __future__ import annotations

from typing import Any

import pytest
from ansible.module_utils.stacklock_facts import apt
from ansible.module_utils.stacklock_facts.common import CannotLook
from ansible.module_utils.stacklock_facts.run import Run
from fakenode import LAB_DPKG, LAB_PACKAGES, REPO, dpkg_output, lab_node, protection_files

pytestmark = pytest.mark.unit

#: `dpkg-query -W -f=...` on a provisioned lab prod node (tests/fixtures/apt)
LAB_PROD_DPKG = (REPO / "tests" / "fixtures" / "apt" / "lab-prod-dpkg-query.txt").read_text()


def node_with(dpkg_text: str) -> Any:
    node = lab_node()
    node.commands["dpkg-query -W"] = (0, dpkg_text, "")
    return node


def test_a_real_lab_node_every_package_with_version_and_hold() -> None:
    inventory: list[dict[str, Any]] = []
    pkgs = apt.probe_dpkg(node_with(LAB_PROD_DPKG), inventory)
    assert len(pkgs) == len({line.split("\t")[0] for line in LAB_PROD_DPKG.splitlines()})
    assert pkgs["bash"] == {"version": "5.2.15-2+b13", "status": "installed", "held": False}
    assert pkgs["nvidia-driver"]["held"] is True
    assert pkgs["nvidia-driver"]["version"] == "535.309.01-0+deb12u1"
    assert inventory == sorted(inventory, key=lambda e: (e["name"], e["architecture"] or "",
                                                         e["version"]))
    assert {e["architecture"] for e in inventory} <= {"amd64", "all", "i386"}


def test_dpkg_states_config_files_half_installed_and_multiarch() -> None:
    text = ("gone\t1.0\trc \tamd64\n"         # removed, config files left: no version
            "half\t2.0\tiU \tamd64\n"         # unpacked, not configured: its version counts
            "never\t\tun \tamd64\n"
            "libc6\t2.36\tii \ti386\nlibc6\t2.36\tii \tamd64\n")
    inventory: list[dict[str, Any]] = []
    pkgs = apt.probe_dpkg(node_with(text), inventory)
    assert pkgs["gone"] == {"version": None, "status": "config-files", "held": False}
    assert pkgs["half"] == {"version": "2.0", "status": "half-installed", "held": False}
    assert pkgs["never"]["status"] == "not-installed"
    assert [(e["name"], e["architecture"]) for e in inventory] == [
        ("half", "amd64"), ("libc6", "amd64"), ("libc6", "i386")]


def test_a_failing_dpkg_is_could_not_look() -> None:
    node = lab_node()
    node.commands["dpkg-query -W"] = (2, "", "dpkg-query: error: cannot access archive\n")
    with pytest.raises(CannotLook, match="exited 2: dpkg-query: error"):
        apt.probe_dpkg(node)


def test_family_members_installed_ones_only() -> None:
    pkgs = apt.probe_dpkg(node_with(dpkg_output(LAB_DPKG)))
    fam = apt.family_packages(pkgs, ["nvidia-*", "docker-*"])
    assert set(fam) == {"nvidia-driver", "nvidia-kernel-dkms", "nvidia-container-toolkit",
                        "nvidia-container-toolkit-base"}  # docker-ce is only known to dpkg
    assert fam["nvidia-driver"] == {"version": "535.309.01-0+deb12u1", "held": True}


def test_the_pins_and_the_blacklist_the_roles_write() -> None:
    node = lab_node()
    node.files.update(protection_files(LAB_DPKG, ["containerd"], role="docker"))
    out = apt.probe_apt_protection(node)
    assert set(out["pins"]) == {*LAB_PACKAGES, "containerd"}
    assert out["pins"]["containerd"] == {
        "version": "1.6.20~ds1-1+deb12u2", "priority": 1001,
        "file": "/etc/apt/preferences.d/stacklock-docker.pref"}
    assert out["blacklisted"]["libcudart11.0"] == (
        "/etc/apt/apt.conf.d/51stacklock-stack-unattended-upgrades")
    assert "nvidia-" not in out["blacklisted"]  # a prefix entry, not a package
    assert len(out["files"]) == 4 and all(len(d) == 64 for d in out["files"].values())


def test_packages_sections_say_why_when_dpkg_could_not_be_read() -> None:
    node = lab_node()
    node.commands["dpkg-query -W"] = CannotLook("dpkg-query -W: timed out after 5 s")
    run = Run({"packages": ["docker.io"], "package_families": ["nvidia-*"],
               "inventory": True}, node)
    apt.collect_dpkg(run)
    apt.collect_packages(run)
    assert run.facts["os_packages"] is None
    assert run.facts["packages"] == {"docker.io": {
        "version": None, "held": None, "status": None,
        "error": "could not look: dpkg-query -W: timed out after 5 s"}}
    assert run.facts["holds"] is None and run.facts["family_packages"] is None
    assert run.errors == {"packages": "could not look: dpkg-query -W: timed out after 5 s"}


def test_packages_sections_from_dpkg() -> None:
    run = Run({"packages": ["docker.io", "not-there"]}, lab_node())
    apt.collect_dpkg(run)
    apt.collect_packages(run)
    assert "os_packages" not in run.facts and "family_packages" not in run.facts
    assert run.facts["packages"]["not-there"] == {"version": None, "status": "not-installed",
                                                  "held": False}
    assert run.facts["holds"] == sorted(n for n, _, s in LAB_DPKG if s.startswith("h"))
