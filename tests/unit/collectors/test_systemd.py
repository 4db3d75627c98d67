"""systemd: the units' state from one recorded `systemctl show`, and each way it fails."""

from __future__ import annotations

import pytest
from ansible.module_utils.stacklock_facts import systemd
from ansible.module_utils.stacklock_facts.run import Run
from fakenode import SYSTEMCTL_ACTIVE, lab_node

pytestmark = pytest.mark.unit


def test_both_units_from_one_systemctl_show() -> None:
    node = lab_node()
    out = systemd.probe_services(node)
    assert out == {n: {"load": "loaded", "active": "active", "sub": "running",
                       "enabled": "enabled"} for n in ("torchserve", "docker")}
    assert node.ran[-1][-2:] == ["torchserve.service", "docker.service"]


def test_a_stopped_and_unknown_unit() -> None:
    node = lab_node()
    text = SYSTEMCTL_ACTIVE.replace("ActiveState=active\nSubState=running\nUnitFileState="
                                    "enabled\n\nId=docker", "ActiveState=inactive\nSubState=dead"
                                    "\nUnitFileState=disabled\n\nId=docker")
    text = text.replace("Id=docker.service\nLoadState=loaded", "Id=docker.service\n"
                        "LoadState=not-found")
    node.commands["systemctl show"] = (0, text.replace("UnitFileState=enabled\n", "UnitFileState="
                                                       "\n"), "")
    out = systemd.probe_services(node)
    assert out["torchserve"] == {"load": "loaded", "active": "inactive", "sub": "dead",
                                 "enabled": "disabled"}
    assert out["docker"]["load"] == "not-found" and out["docker"]["enabled"] is None


@pytest.mark.parametrize(("answer", "words"), [
    ((1, "", "Failed to connect to bus: Host is down\n"), "exited 1: Failed to connect to bus"),
    ((0, "Id=torchserve.service\nLoadState=loaded\n", ""), "exited 0"),  # one block for two
])
def test_a_failed_systemctl_is_an_error_of_each_unit(answer: tuple[int, str, str],
                                                     words: str) -> None:
    node = lab_node()
    node.commands["systemctl show"] = answer
    run = Run({}, node)
    systemd.collect(run)
    assert set(run.facts["services"]) == {"torchserve", "docker"}
    assert all(words in e["error"] for e in run.facts["services"].values())
    assert set(run.errors) == {"services.torchserve", "services.docker"}


def test_no_systemctl() -> None:
    node = lab_node()
    del node.executables["systemctl"]
    assert systemd.probe_services(node) == {n: {"error": "systemctl not found"}
                                            for n in ("torchserve", "docker")}
