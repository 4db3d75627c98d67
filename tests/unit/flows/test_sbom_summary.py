"""`stacklock sbom`'s summary: the table, and `--format json` (`stacklock.sbom/v1`, keys
pinned) with the same documents and problems (issue #21). The documents are written for real
from recorded facts; the inventory play is faked."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from stacklock.core import sbom as sbommod
from stacklock.core.parity import Unreachable
from stacklock.errors import ExitCode
from stacklock.flows import sbom as flow

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tests" / "unit" / "core"))
from test_sbom import LOCK, with_inventory  # noqa: E402

TOP = ("schema", "spec_version", "out_dir", "documents", "problems", "exit_code")
DOCUMENT = ("path", "environment", "node", "components", "total")


class Fake:
    """A run of `sbom` over `nodes` (env -> node -> facts or Unreachable); `quiet`: what the
    inventory play was asked for, per call."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, nodes: dict[str, dict[str, Any]]) -> None:
        self.quiet: list[bool] = []

        def collect(_run: Any, _targets: Any, *, quiet: bool = False) -> dict[str, Any]:
            self.quiet.append(quiet)
            return nodes

        monkeypatch.setattr(flow, "collect_inventory", collect)
        self.run: Any = SimpleNamespace(
            hold=lambda _t: None, ensure_current=lambda: {"stacks": {"lab-2026-11": LOCK}},
            loaded=SimpleNamespace(manifest=SimpleNamespace(project="lab")))
        self.targets: Any = [SimpleNamespace(name=env, stack="lab-2026-11") for env in nodes]


def test_sbom_summary_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    facts = with_inventory("lab-node.json")
    fake = Fake(monkeypatch, {"dev": {"dev-1": facts},
                              "staging": {"staging-1": facts, "staging-2": Unreachable("timeout")}})
    code = flow.run_sbom(fake.run, fake.targets, tmp_path, fmt="json")
    assert code == ExitCode.FAILED and fake.quiet == [True]
    captured = capsys.readouterr()
    doc = json.loads(captured.out)  # only the envelope on stdout
    assert captured.err == ""
    assert list(doc) == sorted(TOP)
    assert (doc["schema"], doc["spec_version"]) == ("stacklock.sbom/v1", "1.6")
    assert doc["out_dir"] == str(tmp_path) and doc["exit_code"] == 3
    assert [(d["path"], d["environment"], d["node"]) for d in doc["documents"]] == [
        ("dev/dev-1.cdx.json", "dev", "dev-1"), ("dev.cdx.json", "dev", None),
        ("staging/staging-1.cdx.json", "staging", "staging-1")]
    for d in doc["documents"]:
        assert sorted(d) == sorted(DOCUMENT)
        counts = sbommod.component_counts((tmp_path / d["path"]).read_text())
        assert d["components"] == counts and d["total"] == sum(counts.values())
    assert doc["documents"][0]["components"]["library"] > 0
    assert doc["problems"] == ["staging/staging-2: could not look: timeout",
                               "staging: no environment document (a node could not be looked "
                               "at)"]


def test_sbom_summary_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    from stacklock.console import out

    monkeypatch.setattr(out, "width", 250)  # one line per row, whatever $COLUMNS says
    fake = Fake(monkeypatch, {"dev": {"dev-1": with_inventory("lab-node.json")}})
    assert flow.run_sbom(fake.run, fake.targets, tmp_path) == ExitCode.OK
    assert fake.quiet == [False]
    captured = capsys.readouterr()
    assert "CycloneDX 1.6 SBOMs in" in captured.out and "dev/dev-1.cdx.json" in captured.out
    assert "2 document(s) written to" in captured.err
    with pytest.raises(json.JSONDecodeError):
        json.loads(captured.out)
