"""Java on the host in container mode (serving.runtime: container, issue #23): Java is in the
image at the lock's pin, so the host needs none. render keeps the lock's Java pins (the
stacklock_integrity role keeps the java alternative of a Java host mode left only while it
is a pin); verify expects no Java package, hold, apt pin, blacklist entry or .deb files on the
host, compares neither a leftover Java nor its absence across nodes, and compares the Java pin
files host mode left byte for byte where they are still there (optional: absent is fine).
Host mode expects all of it as before."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from stacklock.core import integrity as core_integrity
from stacklock.core import parity
from stacklock.core import render as rendermod
from stacklock.core.serving import container_vars
from stacklock.flows import integrity

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
LAB = ROOT / "examples/lab/inventories/dev/group_vars/dev/stacklock.yml"
STACK = "lab-2026-11"

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/unit
from containerlab import container_lab  # noqa: E402

DIGEST = "sha256:" + "c" * 64
IMAGE = {"registry": "10.213.0.1:5000", "repository": "stacklock-lab/serving", "digest": DIGEST,
         "config_digest": "sha256:" + "d" * 64, "user": "10001:10001",
         "registry_url": "http://10.213.0.1:5000"}
PREF = "/etc/apt/preferences.d/stacklock-torchserve.pref"
UNATTENDED = "/etc/apt/apt.conf.d/51stacklock-torchserve-unattended-upgrades"
PIN_PARTS = ("package.", "hold.", "apt_pin.", "apt_blacklist.")


def _host_hv() -> dict[str, Any]:
    hv: dict[str, Any] = yaml.safe_load(LAB.read_text("utf-8"))
    return hv


def _container_hv() -> dict[str, Any]:
    hv = _host_hv()
    hv.update(container_vars("dev", STACK, {"serving": {"runtime": "container"},
                                            "image": IMAGE}, gpu=False))
    return hv


def _java() -> list[str]:
    names = [str(p["name"]) for p in _host_hv()["torchserve_java_packages"]]
    assert names, "the lab stack pins Java"
    return names


def _java_components(exp: dict[str, Any]) -> list[str]:
    java = set(_java())
    return sorted(c for c in exp if c.startswith("java.") or (
        c.startswith(PIN_PARTS) and c.split(".", 1)[1] in java))


# --------------------------------------------------------------------------- render


def test_render_keeps_the_locks_java_pins_in_container_mode(tmp_path: Path) -> None:
    loaded, lock = container_lab(tmp_path)
    lock["stacks"][STACK]["image"] = dict(IMAGE, fingerprint=lock["stacks"][STACK]["fingerprint"])
    tree = rendermod.render_tree(loaded, lock)
    gv = yaml.safe_load(tree["inventories/dev/group_vars/dev/stacklock.yml"])
    assert gv["serving_runtime"] == "container"
    # the same pins as host mode's (the image holds Java at this pin)
    assert gv["torchserve_java_packages"] == lock["stacks"][STACK]["apt"]["java"]
    assert gv["torchserve_java_packages"] == _host_hv()["torchserve_java_packages"]
    # ... and verify asks nothing of them on the host
    assert _java_components(parity.expected_from_vars(gv)) == []


# --------------------------------------------------------------------------- parity: expected


def test_host_mode_expects_java_pinned_held_and_protected_as_before() -> None:
    exp = parity.expected_from_vars(_host_hv())
    pins = {str(p["name"]): str(p["version"]) for p in _host_hv()["torchserve_java_packages"]}
    for name, version in pins.items():
        assert exp[f"package.{name}"] == version
        assert exp[f"hold.{name}"] == "held"
        assert exp[f"apt_pin.{name}"] == version
        assert exp[f"apt_blacklist.{name}"] == "listed"
    assert exp["java.version"] == "17"
    assert parity.host_java_packages(_host_hv()) == frozenset(pins)


def test_container_mode_expects_no_java_on_the_host_and_the_other_pins_as_before() -> None:
    host, cont = parity.expected_from_vars(_host_hv()), parity.expected_from_vars(
        _container_hv())
    assert _java_components(cont) == []
    # every other pin stays expected, with its hold and its protection
    others = {c: v for c, v in host.items() if c.startswith(PIN_PARTS)
              and c.split(".", 1)[1] not in set(_java())}
    assert others and {c: cont.get(c) for c in others} == others
    assert cont["package.docker.io"] == host["package.docker.io"]


def test_a_java_name_another_role_pins_too_stays_expected() -> None:
    gv = _container_hv()
    shared = copy.deepcopy(gv["torchserve_java_packages"][0])
    gv["docker_packages"] = [*gv["docker_packages"], shared]
    assert str(shared["name"]) not in parity.host_java_packages(gv)
    assert parity.expected_from_vars(gv)[f"hold.{shared['name']}"] == "held"


# --------------------------------------------------------------------------- parity: compare


def _facts(java: bool) -> dict[str, Any]:
    """A node's facts as far as Java goes: installed, held, pinned and listed (left by host
    mode), or never installed (a node in container mode from the start)."""
    names = _java()
    version = str(_host_hv()["torchserve_java_packages"][0]["version"])
    pkgs = {n: ({"version": version, "held": True} if java else {"version": None, "held": False})
            for n in names}
    return {
        "schema": parity.FACTS_SCHEMA,
        "packages": pkgs,
        "apt_protection": {
            "pins": {n: {"version": version, "priority": 1001, "file": PREF} for n in names}
            if java else {},
            "blacklisted": {n: UNATTENDED for n in names} if java else {}},
        "java": {"major": "17", "version": "17.0.13"} if java else {"major": None},
        "commands": {"java": {"path": "/usr/bin/java",
                              "target": "/usr/lib/jvm/java-17-openjdk-amd64/bin/java"}
                     if java else {"path": None, "target": None}},
    }


def _java_checks(report: parity.ParityReport) -> list[parity.Check]:
    java = set(_java())
    return [c for c in report.checks if c.component.startswith(("java.", "command.java."))
            or (c.component.startswith(PIN_PARTS) and c.component.split(".", 1)[1] in java)]


def test_nodes_with_and_without_a_leftover_java_agree_in_container_mode() -> None:
    exp = parity.expected_from_vars(_container_hv())
    facts = {"dev": {"left": _facts(java=True), "fresh": _facts(java=False)}}
    report = parity.compare({"dev": exp}, facts)
    assert _java_checks(report) == []
    # the leftover is still shown as observed (the report's node values)
    name = _java()[0]
    assert report.observed["dev"]["left"][f"hold.{name}"] == "held"
    assert report.observed["dev"]["fresh"][f"package.{name}"] is None
    # two environments, one with and one without: not a difference between them either
    report = parity.compare({"dev": exp, "prod": exp},
                            {"dev": {"n1": _facts(java=True)}, "prod": {"n1": _facts(False)}})
    assert _java_checks(report) == []


def test_host_mode_still_catches_java_missing_or_unheld() -> None:
    exp = parity.expected_from_vars(_host_hv())
    report = parity.compare({"dev": exp}, {"dev": {"fresh": _facts(java=False)}})
    bad = {c.component for c in _java_checks(report) if c.status is parity.Status.DEVIATION}
    name = _java()[0]
    assert {f"package.{name}", f"hold.{name}", f"apt_pin.{name}", f"apt_blacklist.{name}",
            "java.version"} <= bad
    unheld = _facts(java=True)
    unheld["packages"][name]["held"] = False
    report = parity.compare({"dev": exp}, {"dev": {"n1": unheld}})
    assert [c.component for c in _java_checks(report)
            if c.status is parity.Status.DEVIATION] == [f"hold.{name}"]


def test_host_mode_leftovers_are_only_a_container_mode_notion() -> None:
    host = parity.expected_from_vars(_host_hv())
    assert not parity.container_mode(host)
    cont = parity.expected_from_vars(_container_hv())
    assert parity.container_mode(cont)
    name = _java()[0]
    assert parity.host_mode_leftover(f"hold.{name}", cont)
    assert parity.host_mode_leftover("java.version", cont)
    assert parity.host_mode_leftover("command.java.path", cont)
    assert not parity.host_mode_leftover("hold.docker.io", cont)  # expected: compared
    assert not parity.host_mode_leftover("os.kernel", cont)


# --------------------------------------------------------------------------- the files class


def _trees(hv: dict[str, Any]) -> dict[str, core_integrity.Tree]:
    return {t.id: t for t in integrity.trees(hv)}


def test_container_mode_expects_no_java_debs_and_the_pin_files_only_where_left() -> None:
    host, cont = _trees(_host_hv()), _trees(_container_hv())
    java = [f"deb:{n}" for n in _java()]
    assert all(t in host for t in java)
    assert not [t for t in java if t in cont]
    packages = "role:stacklock_packages"
    assert any(line.startswith(PREF + "\t") for line in host[packages].lines)
    assert not any(line.startswith((PREF + "\t", UNATTENDED + "\t"))
                   for line in cont[packages].lines)
    left = cont[f"role:{integrity.LEFT_JAVA_PINS}"]
    assert sorted(line.split("\t")[0] for line in left.lines) == sorted([PREF, UNATTENDED])
    assert left.notes == {PREF: core_integrity.OPTIONAL, UNATTENDED: core_integrity.OPTIONAL}
    assert left.spec["paths"] == sorted([PREF, UNATTENDED])  # owned where present: not unowned
    # host mode: no optional tree, no notes on the role trees (their hashes as before)
    assert f"role:{integrity.LEFT_JAVA_PINS}" not in host
    assert not [t for t in host.values() if t.kind == "paths" and t.notes]


def _node_files(tree: core_integrity.Tree, lines: list[str]) -> dict[str, Any]:
    entry: dict[str, Any] = {"hash": core_integrity.tree_hash(lines), "count": len(lines)}
    if entry["hash"] != tree.hash:
        entry["lines"] = sorted(lines)
    return {"files": {"trees": {tree.id: entry}, "unowned": []}}


def test_the_left_pin_files_absent_match_present_match_changed_deviate(tmp_path: Path) -> None:
    left = _trees(_container_hv())[f"role:{integrity.LEFT_JAVA_PINS}"]
    core_integrity.store([left], tmp_path)
    exp = {f"files.{left.id}": left.hash}
    # a node in container mode from the start: neither file
    none = [f"{PREF}\tmissing", f"{UNATTENDED}\tmissing"]
    (f,) = core_integrity.findings(exp, _node_files(left, none), tmp_path)
    assert f.status == "match" and "absent, and optional" in f.detail
    # host mode left both (byte for byte as the role wrote them), or only one of them
    assert [x.status for x in core_integrity.findings(
        exp, _node_files(left, list(left.lines)), tmp_path)] == ["match"]
    one = [next(x for x in left.lines if x.startswith(PREF)), f"{UNATTENDED}\tmissing"]
    assert [x.status for x in core_integrity.findings(
        exp, _node_files(left, one), tmp_path)] == ["match"]
    # a left file that was edited (an apt.conf.d file is read by apt: never taken on trust)
    edited = [one[0], f"{UNATTENDED}\t{'e' * 64}\troot:root\t0644"]
    got = core_integrity.findings(exp, _node_files(left, edited), tmp_path)
    assert [(x.component, x.status) for x in got] == [
        (f"files.{left.id}", "deviation"), (f"file:{UNATTENDED}", "deviation")]
    assert "file.changed" in got[1].detail and "else remove it" in got[1].detail


def test_a_missing_file_that_is_not_optional_is_still_a_deviation(tmp_path: Path) -> None:
    tree = core_integrity.role_tree("x", [core_integrity.RoleFile("/etc/a", "root", "root",
                                                                  "0644", "a" * 64)])
    core_integrity.store([tree], tmp_path)
    got = core_integrity.findings({f"files.{tree.id}": tree.hash},
                                  _node_files(tree, ["/etc/a\tmissing"]), tmp_path)
    assert [x.status for x in got] == ["deviation", "deviation"]
    assert "file.missing" in got[1].detail


def test_the_files_option_of_container_mode_carries_the_optional_tree() -> None:
    hv = _container_hv()
    option = integrity.files_option(hv)
    ids = [e["tree"] for e in option if "tree" in e]
    assert f"role:{integrity.LEFT_JAVA_PINS}" in ids
    assert not [i for i in ids if i.startswith(tuple(f"deb:{n}" for n in _java()))]
    assert json.dumps(option)  # plain data for the facts module
