"""The parity comparison (stacklock.parity) on recorded facts (tests/fixtures/facts/)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from stacklock.core.parity import (
    REACHABLE,
    Kind,
    ParityReport,
    Status,
    Unreachable,
    actual_values,
    apt_package_names,
    compare,
    expected_from_vars,
)
from stacklock.core.report import report_dict
from stacklock.errors import ExitCode

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "facts"
ENVS = ("dev", "staging", "prod")


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return data


LAB_NODE = load("lab-node.json")
LAB_VARS = load("lab-group-vars.json")
H100_NODE = load("h100-node.json")
H100_VARS = load("h100-group-vars.json")


def lab_expected() -> dict[str, dict[str, str | None]]:
    return {env: expected_from_vars(dict(LAB_VARS, stacklock_environment=env)) for env in ENVS}


def lab_facts(prod_nodes: int = 2) -> dict[str, dict[str, Any]]:
    """dev-1, staging-1, prod-1..N: every node the recorded lab node."""
    facts: dict[str, dict[str, Any]] = {"dev": {}, "staging": {}, "prod": {}}
    for env in ENVS:
        for i in range(1, (prod_nodes if env == "prod" else 1) + 1):
            node = copy.deepcopy(LAB_NODE)
            node["os"]["hostname"] = f"{env}-{i}"
            facts[env][f"{env}-{i}"] = node
    return facts


def only(report: ParityReport, *, kind: Kind | None = None) -> list[Any]:
    return [c for c in report.deviations if kind is None or c.kind is kind]


def test_clean_three_environments_exit_0() -> None:
    report = compare(lab_expected(), lab_facts(), may_differ=["count", "hosts"])
    assert report.exit_code == ExitCode.OK
    assert report.deviations == ()
    assert len(report.nodes) == 4
    assert all(n.reachable for n in report.nodes)
    # a meaningful number of real comparisons happened on every node
    per_node = [c for c in report.checks if c.node == "prod-2" and c.kind is Kind.LOCK]
    assert len(per_node) >= 25
    assert all(c.status is Status.MATCH for c in per_node)
    assert report.problems() == []


def test_expected_from_vars_covers_the_contract() -> None:
    exp = expected_from_vars(LAB_VARS)
    assert exp["nvidia_driver.version"] == "535.309.01"
    assert exp["cuda.version"] == "11.8"
    assert exp["docker.version"] == "20.10.24"
    assert exp["nvidia_container_toolkit.version"] == "1.17.8"
    assert exp["java.version"] == "17"
    assert exp["python.version"] == "3.11"
    assert exp["torch.version"] == "2.13.0+cpu"
    assert exp["torch.cuda"] == "none"
    assert exp["torchserve.version"] == "0.12.0"
    assert exp["torch-model-archiver.version"] == "0.12.0"
    assert exp["pip.pyyaml"] == "6.0.3"
    assert exp["torchserve.running"] == "true"
    assert exp["torchserve.models"] == "tiny-linear"
    assert exp["model.tiny-linear.version"] == "1.0"
    assert exp["archive.tiny-linear.mar.sha256"] == LAB_VARS["torchserve_models"][0]["sha256"]
    assert exp["package.docker.io"] == "20.10.24+dfsg1-1+deb12u1+b6"
    assert exp["hold.docker.io"] == "held"
    assert exp["torchserve.config_sha256"] == LAB_VARS["torchserve_config_sha256"]
    assert apt_package_names(LAB_VARS) == sorted(
        p["name"] for v in ("nvidia_driver_packages", "cuda_packages", "docker_packages",
                            "nvidia_container_toolkit_packages", "torchserve_java_packages")
        for p in LAB_VARS[v])


def test_docker_version_differs_on_one_prod_node() -> None:
    facts = lab_facts()
    node = facts["prod"]["prod-2"]
    node["docker"]["version"] = "24.0.5"
    node["packages"]["docker.io"]["version"] = "24.0.5+dfsg1-1"
    report = compare(lab_expected(), facts)
    assert report.exit_code == ExitCode.DEVIATION
    found = {(c.environment, c.node, c.component, c.expected, c.actual) for c in only(report)}
    assert ("prod", "prod-2", "docker.version", "20.10.24", "24.0.5") in found
    assert ("prod", "prod-2", "package.docker.io", "20.10.24+dfsg1-1+deb12u1+b6",
            "24.0.5+dfsg1-1") in found
    assert {c.node for c in only(report)} == {"prod-2"}
    assert any("prod/prod-2 docker.version: expected 20.10.24, actual 24.0.5" in line
               for line in report.problems())


def test_model_archive_replaced_on_staging() -> None:
    facts = lab_facts()
    other = "f" * 64
    facts["staging"]["staging-1"]["torchserve"]["model_store"]["archives"][
        "tiny-linear.mar"] = other
    report = compare(lab_expected(), facts)
    assert report.exit_code == ExitCode.DEVIATION
    [dev] = only(report)
    assert (dev.environment, dev.node, dev.component) == (
        "staging", "staging-1", "archive.tiny-linear.mar.sha256")
    assert dev.expected == LAB_VARS["torchserve_models"][0]["sha256"]
    assert dev.actual == other


def test_torchserve_stopped_on_dev() -> None:
    facts = lab_facts()
    ts = facts["dev"]["dev-1"]["torchserve"]
    ts["running"], ts["models"] = False, {}
    ts["error"] = "GET http://127.0.0.1:8081/models: [Errno 111] Connection refused"
    facts["dev"]["dev-1"]["errors"]["torchserve"] = ts["error"]
    facts["dev"]["dev-1"]["services"]["torchserve"]["active"] = "inactive"
    report = compare(lab_expected(), facts)
    assert report.exit_code == ExitCode.DEVIATION
    found = {c.component: c for c in only(report)}
    assert set(found) == {"torchserve.running", "service.torchserve", "torchserve.models",
                          "model.tiny-linear.version", "model.tiny-linear.ready"}
    running = found["torchserve.running"]
    assert (running.environment, running.node, running.expected, running.actual) == (
        "dev", "dev-1", "true", "false")
    assert "Connection refused" in found["model.tiny-linear.version"].detail
    assert found["service.torchserve"].actual == "inactive"


def test_hold_removed() -> None:
    facts = lab_facts()
    facts["prod"]["prod-1"]["packages"]["nvidia-container-toolkit"]["held"] = False
    report = compare(lab_expected(), facts)
    assert report.exit_code == ExitCode.DEVIATION
    [dev] = only(report)
    assert (dev.environment, dev.node, dev.component, dev.expected, dev.actual) == (
        "prod", "prod-1", "hold.nvidia-container-toolkit", "held", "not held")


def test_driver_differs() -> None:
    facts = lab_facts()
    node = facts["staging"]["staging-1"]
    node["nvidia_driver"]["version"] = "535.247.01"
    report = compare(lab_expected(), facts)
    assert report.exit_code == ExitCode.DEVIATION
    [dev] = only(report)
    assert (dev.environment, dev.node, dev.component, dev.expected, dev.actual) == (
        "staging", "staging-1", "nvidia_driver.version", "535.309.01", "535.247.01")


def test_cross_environment_difference_not_allowed() -> None:
    """A kernel differing in prod: no lock value, but environments must agree."""
    facts = lab_facts(prod_nodes=1)
    facts["prod"]["prod-1"]["os"]["kernel"] = "6.1.0-99-amd64"
    report = compare(lab_expected(), facts, may_differ=["count", "hosts"])
    assert report.exit_code == ExitCode.DEVIATION
    [dev] = only(report)
    assert dev.kind is Kind.CROSS
    assert (dev.environment, dev.node, dev.component, dev.actual) == (
        "prod", "prod-1", "os.kernel", "6.1.0-99-amd64")
    assert dev.expected == "6.1.0-27-amd64 (as in dev, staging)"
    assert "differs between environments" in dev.describe()


def test_cross_environment_locks_that_differ() -> None:
    """dev locked to another docker than staging/prod: reported although dev matches its lock."""
    expected = lab_expected()
    expected["dev"]["docker.version"] = "24.0.5"
    facts = lab_facts(prod_nodes=1)
    facts["dev"]["dev-1"]["docker"]["version"] = "24.0.5"
    report = compare(expected, facts)
    assert report.exit_code == ExitCode.DEVIATION
    [dev] = only(report)
    assert (dev.kind, dev.environment, dev.node, dev.component, dev.actual) == (
        Kind.CROSS, "dev", "*", "docker.version", "24.0.5")
    assert dev.expected == "20.10.24 (as in staging, prod)"
    assert dev.detail == "the dev lock differs from staging, prod"
    # the same comparison with docker allowed to differ passes
    assert compare(expected, facts, may_differ=["docker.version"]).exit_code == ExitCode.OK


def test_may_differ_is_honoured() -> None:
    facts = lab_facts(prod_nodes=1)
    facts["prod"]["prod-1"]["os"]["kernel"] = "6.1.0-99-amd64"
    facts["prod"]["prod-1"]["docker"]["default_runtime"] = "nvidia"
    assert compare(lab_expected(), facts, may_differ=["os.kernel"]).exit_code == 1
    report = compare(lab_expected(), facts, may_differ=["os.kernel", "docker.default_runtime"])
    assert report.exit_code == ExitCode.OK
    # may_differ never excuses a node that deviates from its own lock
    facts["prod"]["prod-1"]["docker"]["version"] = "24.0.5"
    assert compare(lab_expected(), facts, may_differ=["docker"]).exit_code == 1


def test_unreachable_node_exit_3_and_named() -> None:
    facts = lab_facts()
    facts["prod"]["prod-2"] = Unreachable("ssh: connect to host 10.213.3.2 port 22: No route")
    facts["staging"]["staging-1"]["docker"]["version"] = "24.0.5"  # 3 wins over 1
    report = compare(lab_expected(), facts)
    assert report.exit_code == ExitCode.FAILED
    [node] = report.unreachable_nodes
    assert (node.environment, node.node) == ("prod", "prod-2")
    assert "No route" in node.error
    [line] = [p for p in report.problems() if p.startswith("prod/prod-2 unreachable")]
    assert line.startswith("prod/prod-2 unreachable: ssh: connect to host 10.213.3.2 port 22: "
                           "No route")
    # and what to do next
    assert "-- next: check that the host is up" in line and "stacklock verify prod" in line
    # never counted as matching: every one of its checks is unreachable
    mine = [c for c in report.checks if c.node == "prod-2"]
    assert len(mine) > 20
    assert all(c.status is Status.UNREACHABLE for c in mine)


@pytest.mark.parametrize(
    "facts",
    [None, {"unreachable": True, "msg": "Failed to connect"}, {"schema": "other/v9"}, "junk"],
)
def test_unqueried_node_forms(facts: Any) -> None:
    all_facts = lab_facts(prod_nodes=1)
    all_facts["dev"]["dev-1"] = facts
    report = compare(lab_expected(), all_facts)
    assert report.exit_code == ExitCode.FAILED
    assert [n.node for n in report.unreachable_nodes] == ["dev-1"]


def test_empty_is_exit_3() -> None:
    assert compare({}, {}).exit_code == ExitCode.FAILED
    report = compare(lab_expected(), {})
    assert report.exit_code == ExitCode.FAILED
    assert {c.environment for c in report.unreachable} == set(ENVS)
    assert all(c.component == REACHABLE for c in report.unreachable)
    assert any("no nodes" in line for line in report.problems())


def test_environment_without_nodes_is_exit_3() -> None:
    facts = lab_facts()
    facts["staging"] = {}
    assert compare(lab_expected(), facts).exit_code == ExitCode.FAILED


def test_recorded_h100_node_matches_its_lock() -> None:
    expected = {"prod": expected_from_vars(H100_VARS)}
    report = compare(expected, {"prod": {"h100-1": H100_NODE}})
    assert report.problems() == []
    assert report.exit_code == ExitCode.OK
    act = actual_values(H100_NODE)
    assert act["nvidia_driver.version"] == "580.159.04"
    assert act["gpu.present"] == "true"
    assert act["gpu.compute_capability"] == "9.0"
    assert act["cuda.version"] == "13.0"
    assert act["torch.version"] == "2.11.0+cu130"
    assert act["torch.cuda"] == "13.0"


def test_recorded_h100_node_against_the_lab_lock_deviates() -> None:
    report = compare({"prod": expected_from_vars(LAB_VARS)}, {"prod": {"h100-1": H100_NODE}})
    assert report.exit_code == ExitCode.DEVIATION
    found = {c.component: (c.expected, c.actual) for c in report.deviations}
    assert found["nvidia_driver.version"] == ("535.309.01", "580.159.04")
    assert found["cuda.version"] == ("11.8", "13.0")
    assert found["torch.cuda"] == ("none", "13.0")
    assert found["package.nvidia-driver"] == ("535.309.01-0+deb12u1", None)


def test_gpu_node_vs_lab_node_across_environments() -> None:
    """Same lock in both, but one environment has GPUs and the other has none."""
    h100 = copy.deepcopy(H100_NODE)
    expected = {"staging": expected_from_vars(H100_VARS), "prod": expected_from_vars(H100_VARS)}
    no_gpu = copy.deepcopy(H100_NODE)
    no_gpu["gpu"] = {"present": False, "count": 0, "devices": [], "name": None,
                     "compute_capability": None, "memory_mib": None, "source": None}
    report = compare(expected, {"staging": {"s-1": no_gpu}, "prod": {"p-1": h100}})
    assert report.exit_code == ExitCode.DEVIATION
    comps = {c.component for c in report.deviations}
    assert {"gpu.present", "gpu.name", "gpu.count"} <= comps
    # the lock of a GPU environment requires a GPU and the loaded driver: the node without
    # one deviates from its own lock, whatever the other environments show
    lock_devs = {c.component for c in report.deviations if c.kind is Kind.LOCK}
    assert lock_devs == {"gpu.present"}
    assert all(c.environment == "staging" for c in report.deviations if c.kind is Kind.LOCK)


def test_probe_error_is_a_deviation_with_its_reason() -> None:
    facts = lab_facts(prod_nodes=1)
    node = facts["prod"]["prod-1"]
    node["docker"] = {"version": None, "error": "docker info: timed out after 10 s"}
    node["errors"]["docker"] = "docker info: timed out after 10 s"
    report = compare(lab_expected(), facts)
    assert report.exit_code == ExitCode.DEVIATION
    [dev] = [c for c in report.deviations if c.component == "docker.version"]
    assert dev.actual is None
    assert "timed out" in dev.detail
    assert "actual (missing)" in dev.describe()


def test_report_dict_is_the_envelope() -> None:
    facts = lab_facts(prod_nodes=1)
    facts["prod"]["prod-1"]["packages"]["docker.io"]["held"] = False
    data = report_dict(compare(lab_expected(), facts))
    assert data["schema"] == "stacklock.parity/v1"
    assert data["exit_code"] == 1
    assert data["deviations"][0]["component"] == "hold.docker.io"
    json.dumps(data)  # serialisable as is


def test_gpu_environment_needs_a_visible_gpu_and_the_pinned_driver_loaded() -> None:
    """One environment alone is checked as strictly: no GPU, driver not loaded, other driver."""
    expected = {"prod": expected_from_vars(H100_VARS)}
    assert compare(expected, {"prod": {"p-1": copy.deepcopy(H100_NODE)}}).exit_code == ExitCode.OK
    not_loaded = copy.deepcopy(H100_NODE)
    not_loaded["gpu"] = {"present": False, "count": 0, "devices": [], "name": None,
                         "compute_capability": None, "memory_mib": None, "source": None}
    not_loaded["nvidia_driver"]["running_version"] = None
    report = compare(expected, {"prod": {"p-1": not_loaded}})
    found = {c.component: c for c in report.deviations}
    assert set(found) >= {"gpu.present", "nvidia_driver.loaded"}
    assert found["nvidia_driver.loaded"].actual == "not loaded"
    other = copy.deepcopy(H100_NODE)
    other["nvidia_driver"]["running_version"] = "580.95.05"
    found = {c.component: c for c in compare(expected, {"prod": {"p-1": other}}).deviations}
    assert found["nvidia_driver.loaded"].expected == H100_VARS["nvidia_driver_version"]
    assert found["nvidia_driver.loaded"].actual == "580.95.05"


def test_docker_stopped_and_workers_not_ready_are_deviations_in_one_environment() -> None:
    facts = lab_facts(prod_nodes=1)
    node = facts["prod"]["prod-1"]
    node["services"]["docker"]["active"] = "inactive"
    node["torchserve"]["models"]["tiny-linear"]["workers_ready"] = 0
    report = compare({"prod": lab_expected()["prod"]}, {"prod": facts["prod"]})
    found = {c.component: c for c in report.deviations}
    assert report.exit_code == ExitCode.DEVIATION
    assert found["service.docker"].expected == "active"
    assert found["service.docker"].actual == "inactive"
    assert found["model.tiny-linear.ready"].actual == "0/1 workers ready"


def test_blocked_probe_is_could_not_look_exit_3_not_a_deviation() -> None:
    facts = lab_facts(prod_nodes=1)
    node = facts["prod"]["prod-1"]
    cause = "could not look: /etc/torchserve/config.properties: [Errno 13] Permission denied"
    node["torchserve"]["config"] = {"path": "/etc/torchserve/config.properties", "sha256": None,
                                    "error": cause}
    node["errors"]["torchserve.config"] = cause
    node["blocked"] = {"torchserve.config": cause}
    report = compare({"prod": lab_expected()["prod"]}, {"prod": facts["prod"]})
    assert report.exit_code == ExitCode.FAILED
    assert not report.deviations
    (check,) = report.unverified
    assert check.component == "torchserve.config_sha256"
    assert "Permission denied" in check.detail and "stacklock_verify_become" in check.detail
    assert any("could not look" in line for line in report.problems())


def test_stale_facts_from_another_run_are_unreachable() -> None:
    facts = lab_facts(prod_nodes=1)
    facts["prod"]["prod-1"]["run_id"] = "111"
    report = compare({"prod": lab_expected()["prod"]}, {"prod": facts["prod"]}, run_id="222")
    assert report.exit_code == ExitCode.FAILED
    assert "stale facts" in report.unreachable_nodes[0].error
    facts["prod"]["prod-1"]["run_id"] = "222"
    report = compare({"prod": lab_expected()["prod"]}, {"prod": facts["prod"]}, run_id="222")
    assert report.exit_code == ExitCode.OK


def test_nodes_of_one_environment_must_agree_on_what_no_lock_pins() -> None:
    facts = lab_facts(prod_nodes=3)
    facts["prod"]["prod-2"]["os"]["kernel"] = "6.1.0-99-amd64"
    report = compare({"prod": lab_expected()["prod"]}, {"prod": facts["prod"]})
    (dev,) = report.deviations
    assert (dev.node, dev.component, dev.actual) == ("prod-2", "os.kernel", "6.1.0-99-amd64")
    allowed = compare({"prod": lab_expected()["prod"]}, {"prod": facts["prod"]},
                      may_differ=["os.kernel"])
    assert allowed.exit_code == ExitCode.OK


def test_every_problem_line_says_what_to_do_next() -> None:
    facts = lab_facts()
    facts["dev"]["dev-1"]["packages"]["docker.io"]["version"] = "24.0.5"
    facts["prod"]["prod-2"] = Unreachable("ssh: connect to host 10.213.3.2 port 22: No route")
    report = compare(lab_expected(), facts)
    lines = report.problems()
    assert lines and all("-- next: " in line for line in lines)
    [dev] = [line for line in lines if line.startswith("dev/dev-1 package.docker.io")]
    assert "stacklock configure dev" in dev


def test_removed_or_edited_pin_protection_is_a_deviation_naming_the_file() -> None:
    facts = lab_facts(prod_nodes=1)
    node = facts["prod"]["prod-1"]
    prot = node["apt_protection"]
    del prot["pins"]["docker.io"]                       # its stanza removed from the .pref
    prot["pins"]["libcudart11.0"]["priority"] = 500     # edited: a newer version would win
    del prot["blacklisted"]["nvidia-driver"]            # unattended-upgrades may take it
    report = compare({"prod": lab_expected()["prod"]}, {"prod": facts["prod"]})
    found = {c.component: c for c in report.deviations}
    assert report.exit_code == ExitCode.DEVIATION
    assert set(found) == {"apt_pin.docker.io", "apt_pin.libcudart11.0",
                          "apt_blacklist.nvidia-driver"}
    assert found["apt_pin.docker.io"].actual == "not pinned"
    assert "/etc/apt/preferences.d/stacklock-*.pref" in found["apt_pin.docker.io"].detail
    assert "below 1000" in str(found["apt_pin.libcudart11.0"].actual)
    assert "stacklock-stack.pref" in found["apt_pin.libcudart11.0"].detail
    assert "unattended-upgrades" in found["apt_blacklist.nvidia-driver"].detail


def _closure_case() -> tuple[dict[str, dict[str, str | None]], dict[str, Any]]:
    """The lab lock with a whole closure (hashes) and a node whose venv holds exactly it."""
    gv = copy.deepcopy(LAB_VARS)
    gv["torchserve_pip_packages"] = [dict(p, sha256=["ab" * 32]) for p in
                                     gv["torchserve_pip_packages"]]
    gv["torchserve_pip_packages"].append({"name": "filelock", "version": "4.3.1",
                                          "sha256": ["cd" * 32]})
    node = copy.deepcopy(LAB_NODE)
    node["torchserve"]["venv"]["packages"]["filelock"] = "4.3.1"
    node["torchserve"]["venv"]["unlocked"] = {}
    return {"prod": expected_from_vars(gv)}, node


def test_whole_closure_clean_venv_matches() -> None:
    expected, node = _closure_case()
    assert expected["prod"]["venv.unlocked"] == "none"
    report = compare(expected, {"prod": {"p-1": node}})
    assert report.exit_code == ExitCode.OK, report.problems()


def test_transitive_dependency_changed_missing_or_added_by_hand_is_named() -> None:
    expected, node = _closure_case()
    node["torchserve"]["venv"]["packages"]["filelock"] = "4.4.0"     # a transitive dependency
    node["torchserve"]["venv"]["packages"]["pyyaml"] = None          # gone
    node["torchserve"]["venv"]["unlocked"] = {"requests": "2.32.5", "idna": "3.10"}  # by hand
    report = compare(expected, {"prod": {"p-1": node}})
    found = {c.component: c for c in report.deviations}
    assert report.exit_code == ExitCode.DEVIATION
    assert (found["pip.filelock"].expected, found["pip.filelock"].actual) == ("4.3.1", "4.4.0")
    assert found["pip.pyyaml"].actual is None
    assert found["venv.unlocked"].expected == "none"
    assert found["venv.unlocked"].actual == "idna==3.10, requests==2.32.5"


# --------------------------------------------------------------------------- smoke tests

SMOKE_ANSWER_SHA256 = "ee804571387a71962f8dbbc16a44eed1ab08a8c918bd740bb814c1268431b4ce"


def _smoke_vars(**spec: Any) -> dict[str, Any]:
    smoke: dict[str, Any] = {"content_type": "application/json", "input_base64": "e30=",
                             "input_sha256": "0" * 64, "expected": [3.0, 5.0, 7.0],
                             "tolerance": 1e-6}
    smoke.update(spec)
    smoke = {k: v for k, v in smoke.items() if v is not None}
    models = [dict(m, smoke=smoke) for m in LAB_VARS["torchserve_models"]]
    return dict(LAB_VARS, torchserve_models=models)


def _smoke_facts(entry: dict[str, Any] | None = None, *, error: str | None = None,
                 blocked: bool = False) -> dict[str, dict[str, Any]]:
    """The prod node of the lab, whose tiny-linear answered `entry` (default: y = 2x + 1)."""
    facts = lab_facts(prod_nodes=1)
    node = facts["prod"]["prod-1"]
    if entry is None and error is None:
        entry = {"check": "numbers", "status": 200, "size": 23, "sha256": SMOKE_ANSWER_SHA256,
                 "numbers": [3.0, 5.0, 7.0], "excerpt": "[ 3.0, 5.0, 7.0 ]"}
    if error is not None:
        entry = {"check": "numbers", "error": error}
        node["errors"]["torchserve.smoke.tiny-linear"] = error
        if blocked:
            node["blocked"] = {"torchserve.smoke.tiny-linear": error}
    node["torchserve"]["smoke"] = {"tiny-linear": entry}
    return {"prod": facts["prod"]}


def _smoke_check(report: ParityReport) -> Any:
    (check,) = [c for c in report.checks if c.component == "model.tiny-linear.smoke"]
    return check


def test_smoke_numbers_within_the_tolerance_match() -> None:
    exp = {"prod": expected_from_vars(_smoke_vars())}
    assert exp["prod"]["model.tiny-linear.smoke"] == "[3.0, 5.0, 7.0] within 1e-06"
    report = compare(exp, _smoke_facts())
    assert report.exit_code == ExitCode.OK
    check = _smoke_check(report)
    assert check.status is Status.MATCH and check.actual == "[3.0, 5.0, 7.0]"
    # off by less than the tolerance: still a match; by more: a deviation
    near = compare(exp, _smoke_facts({"check": "numbers", "status": 200,
                                      "numbers": [3.0000005, 5.0, 7.0]}))
    assert near.exit_code == ExitCode.OK


def test_a_wrong_answer_is_a_deviation_naming_the_model_expected_and_actual() -> None:
    exp = {"prod": expected_from_vars(_smoke_vars(expected=[3.0, 5.0, 8.0]))}
    report = compare(exp, _smoke_facts())
    assert report.exit_code == ExitCode.DEVIATION
    (check,) = report.deviations
    assert check.component == "model.tiny-linear.smoke"
    assert check.expected == "[3.0, 5.0, 8.0] within 1e-06"
    assert check.actual == "[3.0, 5.0, 7.0]"
    line = check.describe()
    assert "prod/prod-1 model.tiny-linear.smoke" in line
    assert "expected [3.0, 5.0, 8.0] within 1e-06, actual [3.0, 5.0, 7.0]" in line
    # a different count of numbers never matches
    fewer = compare(exp, _smoke_facts({"check": "numbers", "status": 200, "numbers": [3.0]}))
    assert _smoke_check(fewer).status is Status.DEVIATION


def test_smoke_sha256_of_the_response_body() -> None:
    exp = {"prod": expected_from_vars(_smoke_vars(expected=None, tolerance=None,
                                                  sha256=SMOKE_ANSWER_SHA256))}
    entry = {"check": "sha256", "status": 200, "sha256": SMOKE_ANSWER_SHA256,
             "numbers": [3.0, 5.0, 7.0]}
    assert compare(exp, _smoke_facts(entry)).exit_code == ExitCode.OK
    other = dict(entry, sha256="f" * 64)
    report = compare(exp, _smoke_facts(other))
    (check,) = report.deviations
    assert (check.expected, check.actual) == (f"sha256:{SMOKE_ANSWER_SHA256}", f"sha256:{'f' * 64}")


def test_smoke_error_answers_are_deviations_with_the_status_and_text() -> None:
    exp = {"prod": expected_from_vars(_smoke_vars())}
    failed = {"check": "numbers", "status": 503,
              "excerpt": '{ "code": 503, "message": "Prediction failed" }'}
    (check,) = compare(exp, _smoke_facts(failed)).deviations
    assert check.actual is not None and check.actual.startswith("HTTP 503: ")
    assert "Prediction failed" in check.actual
    text = {"check": "numbers", "status": 200, "numbers": None, "excerpt": "cat"}
    (check,) = compare(exp, _smoke_facts(text)).deviations
    assert check.actual == "not numbers: cat"
    # TorchServe does not answer at all: a deviation with the reason (service.* says why)
    report = compare(exp, _smoke_facts(error="POST http://127.0.0.1:8080/predictions/"
                                             "tiny-linear/1.0: [Errno 111] Connection refused"))
    (check,) = report.deviations
    assert check.actual is None and "Connection refused" in check.detail
    assert report.exit_code == ExitCode.DEVIATION


def test_smoke_that_could_not_ask_is_could_not_look_exit_3() -> None:
    exp = {"prod": expected_from_vars(_smoke_vars())}
    cause = ("could not look: POST http://127.0.0.1:8080/predictions/tiny-linear/1.0: HTTP 400: "
             "the inference key was refused even with a fresh key from TorchServe's token API")
    report = compare(exp, _smoke_facts(error=cause, blocked=True))
    assert report.exit_code == ExitCode.FAILED
    assert not report.deviations
    (check,) = report.unverified
    assert check.component == "model.tiny-linear.smoke"
    assert "inference key was refused" in check.detail
    # facts without the smoke test (an older play or module): nothing was asked, exit 3
    facts = _smoke_facts()
    del facts["prod"]["prod-1"]["torchserve"]["smoke"]
    report = compare(exp, facts)
    assert report.exit_code == ExitCode.FAILED
    (check,) = report.unverified
    assert "did not run this smoke test" in check.detail


def test_a_changed_smoke_spec_between_environments_is_a_lock_difference() -> None:
    exp = {"dev": expected_from_vars(_smoke_vars()),
           "prod": expected_from_vars(_smoke_vars(expected=[3.0, 5.0, 8.0]))}
    facts = lab_facts(prod_nodes=1)
    for env in ("dev", "prod"):
        for node in facts[env].values():
            node["torchserve"]["smoke"] = _smoke_facts()["prod"]["prod-1"]["torchserve"]["smoke"]
    report = compare(exp, {"dev": facts["dev"], "prod": facts["prod"]})
    assert {(c.environment, c.component, c.kind) for c in report.deviations} >= {
        ("prod", "model.tiny-linear.smoke", Kind.LOCK)}
    assert any(c.kind is Kind.CROSS and c.component == "model.tiny-linear.smoke"
               for c in report.deviations)
