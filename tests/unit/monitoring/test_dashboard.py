"""The Grafana dashboard (monitoring/dashboard.py -> monitoring/stacklock-dashboard.json): the
committed JSON is what the code generates, it reads back through the foundation SDK's types
without loss, its queries parse and read only real metrics and labels, and, where Grafana's
JSON schema is at hand (STACKLOCK_GRAFANA_SCHEMA_DIR), it validates against it."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from monitoring_samples import GROUPING, MONITORING, known_metrics, metrics_in

pytestmark = pytest.mark.unit

COMMITTED = MONITORING / "stacklock-dashboard.json"


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("stacklock_dashboard", MONITORING /
                                                  "dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = load_generator()


def panels(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in doc["panels"]:
        yield p
        yield from p.get("panels") or []


def exprs(doc: dict[str, Any]) -> list[str]:
    out = [t["expr"] for p in panels(doc) for t in p.get("targets") or []]
    out += [v["query"] for v in doc["templating"]["list"] if v["type"] == "query"]
    return out


def test_the_committed_json_is_what_the_code_generates() -> None:
    text = gen.render()
    assert text == gen.render(), "not deterministic"
    assert COMMITTED.read_text("utf-8") == text, \
        "stale: run python monitoring/dashboard.py and commit the JSON"


def test_check_mode_fails_on_a_stale_file(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "d.json"
    assert gen.main(["--out", str(out)]) == 0
    assert gen.main(["--out", str(out), "--check"]) == 0
    doc = json.loads(out.read_text("utf-8"))
    doc["title"] = "edited by hand"
    out.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", "utf-8")
    assert gen.main(["--out", str(out), "--check"]) == 1
    assert "stale" in capsys.readouterr().err
    assert gen.main(["--out", str(tmp_path / "missing.json"), "--check"]) == 1


def test_it_reads_back_through_the_sdk_types_without_loss() -> None:
    """Decoding with the SDK's generated types drops every key the schema does not know: the
    round trip is equal only when every key is one of Grafana's."""
    from grafana_foundation_sdk.cog import plugins
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    plugins.register_default_plugins()

    def round_trip(doc: dict[str, Any]) -> Any:
        return json.loads(JSONEncoder().encode(Dashboard.from_json(doc)))

    doc = json.loads(COMMITTED.read_text("utf-8"))
    assert round_trip(doc) == doc
    doc["panels"][5]["options"]["colourMode"] = "background"  # a misspelt option
    assert round_trip(doc) != doc


def test_panels_per_environment_and_model_version() -> None:
    doc = json.loads(COMMITTED.read_text("utf-8"))
    rows = [p for p in doc["panels"] if p["type"] == "row"]
    assert [r.get("repeat") for r in rows] == [None, "environment"]
    names = {v["name"] for v in doc["templating"]["list"]}
    assert {"datasource", "environment", "model_name", "model_version"} <= names
    ids = [p["id"] for p in panels(doc)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    torchserve = [e for e in exprs(doc) if "ts_inference" in e]
    assert torchserve and all("model_version" in e and "$environment" in e for e in torchserve)
    assert any("ts_inference_latency_microseconds" in e for e in torchserve)
    smoke = [e for e in exprs(doc) if "stacklock_model_smoke_ok" in e]
    assert smoke


def test_queries_read_only_real_metrics_and_labels() -> None:
    known = known_metrics()
    for expr in exprs(json.loads(COMMITTED.read_text("utf-8"))):
        used = metrics_in(expr)
        assert used, f"reads no known metric: {expr}"
        assert set(used) <= set(known), f"{sorted(set(used) - set(known))} in {expr}"
        labels = set().union(*(known[m] for m in used))
        for metric, matched in used.items():
            assert set(matched) <= known[metric], f"{metric}{{{matched}}} in {expr}"
        for group in GROUPING.findall(expr):
            names = {x.strip() for x in group.split(",") if x.strip()}
            assert names <= labels, f"{names - labels} in {expr}"
        label_values = re.search(r"label_values\(.*,\s*(\w+)\)\s*$", expr)
        if label_values:
            assert label_values.group(1) in labels, expr


def promql(expr: str) -> str:
    """A dashboard query as PromQL: Grafana's variables replaced by values."""
    if expr.startswith("label_values("):
        expr = expr[len("label_values("):].rsplit(",", 1)[0]
    return (expr.replace("$__rate_interval", "5m").replace("$environment", "prod")
            .replace("$model_name", "tiny-linear").replace("$model_version", "1.0"))


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool is not installed (scripts/promtool.sh installs it)")
def test_queries_parse_as_promql(tmp_path: Path) -> None:
    """promtool parses each query (as a recording rule's expression); a broken one fails."""
    doc = json.loads(COMMITTED.read_text("utf-8"))

    def check(queries: list[str]) -> subprocess.CompletedProcess[str]:
        rules = {"groups": [{"name": "dashboard", "rules": [
            {"record": f"dashboard:query{i}", "expr": promql(q)}
            for i, q in enumerate(queries)]}]}
        path = tmp_path / "queries.yml"
        path.write_text(yaml.safe_dump(rules), "utf-8")
        return subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True,
                              text=True, timeout=60, check=False)

    res = check(exprs(doc))
    assert res.returncode == 0, res.stdout + res.stderr
    assert check(["sum by (node (up)"]).returncode != 0


SCHEMA_DIR = os.environ.get("STACKLOCK_GRAFANA_SCHEMA_DIR")


@pytest.mark.skipif(not SCHEMA_DIR, reason="STACKLOCK_GRAFANA_SCHEMA_DIR is not set: the "
                    "folder with grafana-foundation-sdk's jsonschema/*.jsonschema.json "
                    "(docs/observability.md)")
def test_it_validates_against_grafanas_json_schema() -> None:
    import jsonschema

    folder = Path(str(SCHEMA_DIR))

    def schema(name: str) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((folder / f"{name}.jsonschema.json").read_text())
        return loaded

    board = schema("dashboard")
    # the schema's own note: "Nulls currently appear here when serializing -Infinity to
    # JSON" -- the base step of every threshold list is null in Grafana's JSON
    board["definitions"]["Threshold"]["properties"]["value"]["type"] = ["number", "null"]
    doc = json.loads(COMMITTED.read_text("utf-8"))
    problems = [f"{list(e.absolute_path)}: {e.message[:200]}"
                for e in jsonschema.Draft7Validator(board).iter_errors(doc)]
    query = schema("prometheus")
    for p in panels(doc):
        if p["type"] == "row":
            continue
        kind = schema(p["type"])
        parts = [("Options", p.get("options") or {})]
        custom = (p.get("fieldConfig") or {}).get("defaults", {}).get("custom")
        if custom is not None and "FieldConfig" in kind["definitions"]:
            parts.append(("FieldConfig", custom))
        for definition, value in parts:
            one = {"$ref": f"#/definitions/{definition}", "definitions": kind["definitions"]}
            problems += [f"panel {p['id']} {definition}: {e.message[:200]}"
                         for e in jsonschema.Draft7Validator(one).iter_errors(value)]
        for t in p.get("targets") or []:
            problems += [f"panel {p['id']} target: {e.message[:200]}"
                         for e in jsonschema.Draft7Validator(query).iter_errors(t)]
    assert problems == []
