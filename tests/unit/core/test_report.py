"""Report formats (stacklock.report): table, JSON envelope, JUnit XML."""

from __future__ import annotations

import copy
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from stacklock.core import runtime
from stacklock.core.parity import ParityReport, Unreachable, compare, expected_from_vars
from stacklock.core.report import (
    REPORT_KEYS,
    build_table,
    from_dict,
    print_report,
    report_dict,
    table_components,
    to_json,
    to_junit,
    to_text,
)

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "facts"
NODE = json.loads((FIXTURES / "lab-node.json").read_text(encoding="utf-8"))
VARS = json.loads((FIXTURES / "lab-group-vars.json").read_text(encoding="utf-8"))


def report(mutate: Any = None, *, unreachable: str | None = None) -> ParityReport:
    facts: dict[str, dict[str, Any]] = {
        "dev": {"dev-1": copy.deepcopy(NODE)},
        "staging": {"staging-1": copy.deepcopy(NODE)},
        "prod": {"prod-1": copy.deepcopy(NODE), "prod-2": copy.deepcopy(NODE)},
    }
    if mutate:
        mutate(facts)
    if unreachable:
        env, node = unreachable.split("/")
        facts[env][node] = Unreachable("ssh: connect to host 10.213.3.3 port 22: timed out")
    exp = {e: expected_from_vars(VARS) for e in ("dev", "staging", "prod")}
    return compare(exp, facts, may_differ=["count"])


def docker_on_prod_2(facts: dict[str, Any]) -> None:
    facts["prod"]["prod-2"]["docker"]["version"] = "24.0.5"


def test_json_envelope_keys_are_pinned() -> None:
    data = report_dict(report())
    assert tuple(data) == REPORT_KEYS == (
        "schema", "exit_code", "ok", "summary", "environments", "may_differ", "nodes", "checks",
        "deviations", "unreachable", "problems", "expected", "observed", "waivers",
    )
    assert data["schema"] == "stacklock.parity/v1"
    assert data["exit_code"] == 0 and data["ok"] is True
    assert set(data["checks"][0]) == {"environment", "node", "component", "expected", "actual",
                                      "status", "kind", "detail"}
    assert set(data["nodes"][0]) == {"environment", "node", "reachable", "error",
                                     "facts_seconds"}


def test_json_names_the_deviation() -> None:
    data = json.loads(to_json(report(docker_on_prod_2)))
    assert data["exit_code"] == 1 and data["ok"] is False
    assert data["deviations"] == [{
        "environment": "prod", "node": "prod-2", "component": "docker.version",
        "expected": "20.10.24", "actual": "24.0.5", "status": "deviation", "kind": "lock",
        "detail": ""}]
    assert data["observed"]["prod"]["prod-2"]["docker.version"] == "24.0.5"


def test_json_unreachable() -> None:
    data = report_dict(report(unreachable="prod/prod-2"))
    assert data["exit_code"] == 3
    assert [(n["environment"], n["node"]) for n in data["unreachable"]] == [("prod", "prod-2")]
    assert "prod-2" not in data["observed"]["prod"]


def test_junit_one_case_per_node_and_component() -> None:
    rep = report(docker_on_prod_2, unreachable="dev/dev-1")
    root = ET.fromstring(to_junit(rep))
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert list(suites) == ["dev", "staging", "prod"]
    # + node.reachable; the runtime class is left out for facts without it (no `units`)
    n_components = len([c for c in expected_from_vars(VARS)
                        if not c.startswith(runtime.PREFIXES)]) + 1
    assert int(suites["prod"].get("tests") or 0) == 2 * n_components
    assert suites["prod"].get("failures") == "1"
    assert suites["dev"].get("errors") == str(len(expected_from_vars(VARS)) + 1)
    [failure] = list(root.iter("failure"))
    case = next(c for c in root.iter("testcase") if c.find("failure") is not None)
    assert (case.get("classname"), case.get("name")) == ("prod.prod-2", "docker.version")
    assert "expected 20.10.24, actual 24.0.5" in (failure.get("message") or "")
    assert all(e.get("type") == "unreachable" for e in root.iter("error"))
    assert root.get("failures") == "1"


def test_table_highlights_the_deviation_with_expected() -> None:
    console = Console(width=200, record=True, color_system="truecolor", file=io.StringIO())
    print_report(report(docker_on_prod_2), console)
    text = console.export_text()
    row = next(line for line in text.splitlines() if "docker.version" in line)
    assert "20.10.24" in row
    assert "prod-2: 24.0.5 (expected 20.10.24)" in text
    assert "prod/prod-2 docker.version: expected 20.10.24, actual 24.0.5" in text
    # the deviating cell is highlighted; the matching ones are not
    rep = report(docker_on_prod_2)
    table = build_table(rep)
    rows = table_components(rep)
    i = rows.index("docker.version")
    prod_cell = list(table.columns[4].cells)[i]
    staging_cell = list(table.columns[3].cells)[i]
    red = [prod_cell.plain[s.start:s.end] for s in prod_cell.spans if "red" in str(s.style)]
    assert red == ["prod-2: 24.0.5 (expected 20.10.24)"]
    assert staging_cell.plain == "20.10.24" and not staging_cell.spans
    headers = [str(c.header) for c in table.columns]
    assert headers == ["component", "expected (lock)", "dev (1 node)", "staging (1 node)",
                       "prod (2 nodes)"]
    # every environment the same in every row: one value column (tests/unit/core/test_tables.py)
    headers = [str(c.header) for c in build_table(report()).columns]
    assert headers == ["component", "expected (lock)",
                       "dev, staging, prod (4 nodes, all the same)"]


def test_table_clean_and_unreachable() -> None:
    clean = to_text(report(), width=200)
    assert "all nodes match" in clean
    assert "✗" not in clean
    down = to_text(report(unreachable="staging/staging-1"), width=200, compact=True)
    assert "staging/staging-1 unreachable: ssh: connect to host" in down
    row = next(line for line in down.splitlines() if "docker.version" in line)
    assert "unreachable" in row
    assert "package." not in down  # compact
    assert "could not verify" in down


def test_json_round_trip() -> None:
    """The CLI can read back what the verify play wrote and render the same table."""
    rep = report(docker_on_prod_2, unreachable="dev/dev-1")
    back = from_dict(json.loads(to_json(rep)))
    assert back == rep
    assert back.exit_code == 3
    assert to_text(back, width=200) == to_text(rep, width=200)
    with pytest.raises(ValueError, match=r"stacklock\.parity/v1"):
        from_dict({"schema": "something/else"})


def test_json_is_one_check_per_line_and_the_same_data() -> None:
    rep = report(docker_on_prod_2, unreachable="dev/dev-1")
    text = to_json(rep)
    assert json.loads(text) == json.loads(json.dumps(report_dict(rep)))
    lines = text.splitlines()
    checks = [ln for ln in lines if ln.startswith('  {"environment"')]
    assert len(checks) == len(rep.checks) + len(rep.deviations) + len(rep.nodes) \
        + len(rep.unreachable_nodes)
    assert lines[0] == "{" and lines[-1] == "}"
