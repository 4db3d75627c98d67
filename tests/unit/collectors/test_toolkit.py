"""toolkit: `nvidia-ctk --version`, else the nvidia-container-toolkit packages."""

from __future__ import annotations

import pytest
from ansible.module_utils.stacklock_facts import toolkit
from fakenode import lab_node

pytestmark = pytest.mark.unit

DPKG = {"nvidia-container-toolkit": {"version": "1.17.8-1", "held": True},
        "nvidia-container-toolkit-base": {"version": "1.17.8-1", "held": True}}


def test_nvidia_ctk_and_its_packages() -> None:
    out = toolkit.probe_toolkit(lab_node(), DPKG)
    assert (out["version"], out["source"]) == ("1.17.8", "nvidia-ctk")
    assert out["packages"] == {"nvidia-container-toolkit": "1.17.8-1",
                               "nvidia-container-toolkit-base": "1.17.8-1"}


def test_a_failing_nvidia_ctk_falls_back_to_the_package_or_is_the_error() -> None:
    node = lab_node()
    node.commands["nvidia-ctk --version"] = (1, "", "nvidia-ctk: bad ELF\n")
    out = toolkit.probe_toolkit(node, DPKG)
    assert (out["version"], out["source"]) == ("1.17.8", "package") and "error" not in out
    alone = toolkit.probe_toolkit(node, {})
    assert alone["version"] is None and alone["error"].endswith("exited 1: nvidia-ctk: bad ELF")
