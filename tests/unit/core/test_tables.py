"""The verify table as a person reads it at 80 and 120 columns: one value column when every
environment agrees, values wrapped and never cut, and a footer naming what it leaves out
(issue #21)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from stacklock.core.parity import ParityReport, compare, expected_from_vars, show
from stacklock.core.report import build_table, to_text

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "facts"
NODE = json.loads((FIXTURES / "lab-node.json").read_text(encoding="utf-8"))
VARS = json.loads((FIXTURES / "lab-group-vars.json").read_text(encoding="utf-8"))
HASH_CUT = re.compile(r"[0-9a-f]{12}…")  # a sha256 shown by its first 12 digits, on purpose


def report(mutate: Any = None) -> ParityReport:
    facts: dict[str, dict[str, Any]] = {
        "dev": {"dev-1": copy.deepcopy(NODE)},
        "staging": {"staging-1": copy.deepcopy(NODE)},
        "prod": {"prod-1": copy.deepcopy(NODE), "prod-2": copy.deepcopy(NODE)},
    }
    if mutate:
        mutate(facts)
    exp = {e: expected_from_vars(VARS) for e in ("dev", "staging", "prod")}
    return compare(exp, facts, may_differ=["count"])


def docker_on_prod_2(facts: dict[str, Any]) -> None:
    facts["prod"]["prod-2"]["docker"]["version"] = "24.0.5"


def columns(text: str) -> list[str]:
    """Each column of the table's body, its lines joined without spaces (a folded value
    reads whole again)."""
    body = [line for line in text.splitlines() if line.startswith("│")]
    cols: list[str] = []
    for line in body:
        cells = line.strip("│").split("│")
        cols += [""] * (len(cells) - len(cols))
        for i, cell in enumerate(cells):
            cols[i] += cell.replace(" ", "")
    return cols


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("mutate", [None, docker_on_prod_2])
def test_no_value_is_cut(width: int, mutate: Any) -> None:
    rep = report(mutate)
    text = to_text(rep, width=width, compact=True)
    assert all(len(line) <= width for line in text.splitlines())
    cols = columns(text)
    # no cell cut with an ellipsis (a sha256's first 12 digits are shown on purpose)
    assert all("…" not in HASH_CUT.sub("", col) for col in cols), text
    assert all("…" not in line for line in text.splitlines() if not line.startswith("│"))
    for nodes in rep.observed.values():
        for values in nodes.values():
            for component, value in values.items():
                if component in cols[0] and not HASH_CUT.match(show(value)[:12] + "…"):
                    assert show(value).replace(" ", "") in "".join(cols[2:]), (component, value)
    # the Debian version strings, cut at 120 columns before
    assert "20.10.24+dfsg1-1+deb12u1+b6" in cols[1]


def test_one_value_column_when_every_environment_agrees() -> None:
    table = build_table(report(), compact=True)
    assert len(table.columns) == 3
    assert str(table.columns[2].header) == "dev, staging, prod (4 nodes, all the same)"
    deviating = build_table(report(docker_on_prod_2), compact=True)
    assert [str(c.header) for c in deviating.columns][2:] == [
        "dev (1 node)", "staging (1 node)", "prod (2 nodes)"]


def test_footer_counts_the_hidden_checks_by_kind() -> None:
    rep = report()
    compact = to_text(rep, width=120, compact=True)
    hidden = [c for c in rep.checks
              if c.component.split(".", 1)[0] in {"package", "hold", "pip", "apt_blacklist"}]
    kinds = {k: sum(1 for c in hidden if c.component.startswith(k + "."))
             for k in ("package", "hold", "pip", "apt_blacklist")}
    line = next(ln for ln in compact.splitlines() if "checks not shown" in ln)
    assert line.startswith(f"{len(hidden)} of {len(rep.checks)} checks not shown (")
    for kind, n in kinds.items():
        assert f"{n} {kind}" in line
    assert "all matching" in line and "package." not in compact
    full = to_text(rep, width=120, compact=False)  # verify --all
    assert "checks not shown" not in full and "package." in full and "pip." in full
