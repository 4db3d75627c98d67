"""osinfo: the distribution from /etc/os-release, kernel and host from uname."""

from __future__ import annotations

import pytest
from ansible.module_utils.stacklock_facts import osinfo
from fakenode import h100_node, lab_node

pytestmark = pytest.mark.unit


def test_the_lab_node_is_debian_12_bookworm() -> None:
    out = osinfo.probe_os(lab_node())
    assert (out["distribution"], out["release"], out["codename"]) == ("debian", "12", "bookworm")
    assert out["pretty_name"] == "Debian GNU/Linux 12 (bookworm)"
    assert out["kernel"] == "6.1.0-27-amd64" and out["hostname"] == "dev-1"
    assert "error" not in out


def test_quotes_are_stripped_and_a_missing_os_release_is_an_error() -> None:
    node = h100_node()
    node.files["/etc/os-release"] = "ID='ubuntu'\nVERSION_ID=\"24.04\"\n# comment\n"
    out = osinfo.probe_os(node)
    assert (out["distribution"], out["release"], out["codename"]) == ("ubuntu", "24.04", None)
    del node.files["/etc/os-release"]
    gone = osinfo.probe_os(node)
    assert gone["error"] == "/etc/os-release not found" and gone["distribution"] is None
