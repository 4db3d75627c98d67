"""java: the JDK's `release` file (no JVM start), else `java -version`, else the package."""

from __future__ import annotations

import pytest
from ansible.module_utils.stacklock_facts import java
from fakenode import h100_node, lab_node

pytestmark = pytest.mark.unit

DPKG = {"openjdk-17-jre-headless": {"version": "17.0.21.1+2-1~deb12u1", "held": True}}


def test_the_release_file_next_to_bin_java() -> None:
    out = java.probe_java(lab_node(), DPKG)
    assert (out["version"], out["major"]) == ("17.0.21.1", "17")
    assert out["source"] == "/usr/lib/jvm/java-17-openjdk-amd64/release"
    assert out["home"] == "/usr/lib/jvm/java-17-openjdk-amd64"
    assert out["packages"] == {"openjdk-17-jre-headless": "17.0.21.1+2-1~deb12u1"}


def test_java_version_when_there_is_no_release_file() -> None:
    out = java.probe_java(h100_node(), {})
    assert (out["version"], out["major"], out["source"]) == ("17.0.16", "17", "java -version")
    node = h100_node()
    node.commands["java -version"] = (0, "", 'java version "1.8.0_402"\n')
    assert java.probe_java(node, {})["major"] == "8"


def test_the_package_when_java_does_not_run() -> None:
    node = h100_node()
    node.commands["java -version"] = (134, "", "Error occurred during initialization of VM\n")
    out = java.probe_java(node, DPKG)
    assert (out["major"], out["version"], out["source"]) == ("17", "17.0.21.1", "package")
    assert "error" not in out
    assert "initialization of VM" in java.probe_java(node, {})["error"]
