"""core/diff.py: environments and nodes compared on the pinned stack, every OS package and
every Python distribution; parity.diff_ignore; exit codes; the audit's `diff` kind; the
manifest key's validation."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from stacklock.core import audit as auditmod
from stacklock.core import diff as diffmod
from stacklock.core.manifest import Parity
from stacklock.core.parity import Unreachable

pytestmark = pytest.mark.unit

FACTS = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "facts"


def node(**changes: Any) -> dict[str, Any]:
    facts: dict[str, Any] = json.loads((FACTS / "lab-node.json").read_text())
    facts["os_packages"] = [
        {"name": "docker.io", "version": "20.10.24+dfsg1-1+deb12u1+b6", "architecture": "amd64",
         "status": "installed"},
        {"name": "libstdc++6", "version": "12.2.0-14+deb12u1", "architecture": "amd64",
         "status": "installed"},
        {"name": "linux-image-6.1.0-27-amd64", "version": "6.1.115-1", "architecture": "amd64",
         "status": "installed"}]
    venv = facts["torchserve"]["venv"]
    venv["distributions"] = {**venv["packages"], "filelock": "4.3.1"}
    for key, value in changes.items():
        facts[key] = value
    return facts


def clean() -> dict[str, dict[str, Any]]:
    return {env: {f"{env}-1": node()} for env in ("dev", "staging", "prod")}


def test_identical_environments_have_no_difference() -> None:
    report = diffmod.compare(clean())
    assert report.identical and report.exit_code(fail_on_drift=True) == 0
    assert report.compared["os"] == 3 and report.compared["python"] >= 4
    assert report.compared["stack"] > 20


def test_an_extra_os_package_is_named_with_its_environment_and_grouped() -> None:
    envs = clean()
    envs["prod"]["prod-1"]["os_packages"].append(
        {"name": "curl", "version": "7.88.1-10+deb12u14", "architecture": "amd64",
         "status": "installed"})
    envs["staging"]["staging-1"]["torchserve"]["venv"]["distributions"]["filelock"] = "3.0"
    report = diffmod.compare(envs)
    assert report.exit_code() == 0 and report.exit_code(fail_on_drift=True) == 1
    (curl,) = report.of_group("os")
    assert curl.name == "curl" and curl.scope == "environments"
    assert curl.values == {"dev": "(absent)", "staging": "(absent)",
                           "prod": "7.88.1-10+deb12u14"}
    assert curl.differing() == ["prod"]
    (fl,) = report.of_group("python")
    assert fl.name == "filelock" and fl.differing() == ["staging"] and fl.reference == "4.3.1"
    doc = report.as_dict(fail_on_drift=True)
    assert doc["schema"] == "stacklock.diff/v1" and doc["exit_code"] == 1
    assert doc["counts"] == {"stack": 0, "os": 1, "python": 1}


def test_pinned_stack_group_and_ignore_patterns() -> None:
    envs = clean()
    envs["dev"]["dev-1"]["os"] = dict(envs["dev"]["dev-1"]["os"], kernel="6.1.0-99-amd64")
    envs["dev"]["dev-1"]["os_packages"][2]["name"] = "linux-image-6.1.0-99-amd64"
    report = diffmod.compare(envs)
    assert {d.name for d in report.of_group("stack")} == {"os.kernel"}
    assert {d.name for d in report.of_group("os")} == {"linux-image-6.1.0-27-amd64",
                                                       "linux-image-6.1.0-99-amd64"}
    quiet = diffmod.compare(envs, ["os.kernel", "linux-image-*"])
    assert quiet.identical and quiet.exit_code(fail_on_drift=True) == 0
    assert quiet.ignored == {"stack": 1, "os": 2, "python": 0}


def test_nodes_of_one_environment_are_compared() -> None:
    a, b = node(), node()
    b["os_packages"] = b["os_packages"][:1]
    report = diffmod.compare({"prod": {"prod-1": a, "prod-2": b, "prod-3": node()}})
    diffs = report.of_group("os")
    assert [(d.scope, d.environment, d.name) for d in diffs] == [
        ("nodes", "prod", "libstdc++6"), ("nodes", "prod", "linux-image-6.1.0-27-amd64")]
    assert diffs[0].differing() == ["prod-2"] and diffs[0].values["prod-2"] == "(absent)"


def test_multiarch_packages_are_keyed_by_architecture() -> None:
    facts = node()
    facts["os_packages"] += [
        {"name": "libc6", "version": "2.36-9", "architecture": "amd64", "status": "installed"},
        {"name": "libc6", "version": "2.36-9", "architecture": "i386", "status": "installed"}]
    inv = diffmod.inventory(facts)
    assert inv["os"]["libc6:amd64"] == "2.36-9" and "libc6:i386" in inv["os"]


def test_a_node_that_could_not_be_looked_at_is_exit_3() -> None:
    envs = clean()
    envs["dev"]["dev-1"] = Unreachable("ssh: connection refused")
    envs["prod"]["prod-1"]["os_packages"] = None
    report = diffmod.compare(envs)
    assert report.exit_code() == 3 and report.exit_code(fail_on_drift=True) == 3
    assert [(i.environment, i.node) for i in report.incomplete] == [("dev", "dev-1"),
                                                                    ("prod", "prod-1")]
    blocked = clean()
    blocked["dev"]["dev-1"]["blocked"] = {"docker": "could not look: timed out"}
    assert diffmod.compare(blocked).exit_code() == 3


def test_audit_diff_kind_findings() -> None:
    envs = clean()
    envs["prod"]["prod-1"]["os_packages"].append(
        {"name": "curl", "version": "7.88.1", "architecture": "amd64", "status": "installed"})
    report = diffmod.compare(envs).as_dict()
    audit = auditmod.run_audit(["dev", "staging", "prod"],
                               auditmod.Probes(diff=lambda names: report))
    assert [e.status for e in audit.environments] == ["ok", "ok", "drift"]
    (finding,) = audit.environment("prod").findings
    assert finding.kind == "diff" and finding.component == "os:curl"
    assert finding.expected == "(absent)" and finding.actual == "7.88.1"
    assert audit.exit_code == 1


def test_audit_diff_kind_could_not_look_is_an_error() -> None:
    envs = copy.deepcopy(clean())
    envs["staging"]["staging-1"] = Unreachable("gone")
    report = diffmod.compare(envs).as_dict()
    audit = auditmod.run_audit(["dev", "staging"], auditmod.Probes(diff=lambda names: report))
    assert audit.environment("staging").status == "error" and audit.exit_code == 3


def test_default_audit_kinds_do_not_include_diff() -> None:
    from click.testing import CliRunner

    from stacklock.cli import cli

    audit_cmd = cli.commands["audit"]
    kinds = next(p for p in audit_cmd.params if p.name == "kinds")
    assert kinds.default == "infrastructure,stack,cloud"
    res = CliRunner().invoke(cli, ["diff", "--help"])
    assert "--fail-on-drift" in res.output


@pytest.mark.parametrize("pattern", ["os.kernel", "linux-image-*", "pip.nvidia-*", "lib?c6",
                                     "libc6:i386", "python-[0-9]*"])
def test_diff_ignore_accepts_name_globs(pattern: str) -> None:
    assert Parity(diff_ignore=[pattern]).diff_ignore == [pattern]
    assert Parity().diff_ignore == []


@pytest.mark.parametrize("pattern", ["a b", "${x}", "{{ x }}", "a\nb", "[a", "", "x" * 300,
                                     "a;rm -rf /", "\u2028"])
def test_diff_ignore_refuses_hostile_strings(pattern: str) -> None:
    with pytest.raises(ValueError, match="diff_ignore"):
        Parity(diff_ignore=[pattern])
