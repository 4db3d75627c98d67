"""Waivers (parity.waivers): validation (exit 2 naming the field), WAIVED in the report (table,
JSON, JUnit), an expired waiver failing verify (exit 1, naming it), validate's warning, the
rendered group_vars and the waivers in force carried by the report."""

from __future__ import annotations

import copy
import datetime as dt
import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from stacklock.core import parity, report, rules, waivers
from stacklock.core.manifest import parse_manifest
from stacklock.errors import ExitCode, InvalidInput

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
VALID = ROOT / "tests" / "corpus" / "valid" / "aws.yaml"
TODAY = dt.date(2026, 12, 6)
ITEM = "unit.docker.drop_in./etc/systemd/system/docker.service.d/site.conf"


def manifest_with(entries: Any) -> str:
    data = yaml.safe_load(VALID.read_text(encoding="utf-8"))
    data.setdefault("parity", {})["waivers"] = entries
    return yaml.safe_dump(data, sort_keys=False)


def problem_paths(entries: Any) -> list[str]:
    try:
        parse_manifest(manifest_with(entries), source="test.yaml")
    except InvalidInput as exc:
        assert exc.exit_code == ExitCode.INVALID
        return [p.path for p in exc.problems]
    return []


GOOD = {"item": ITEM, "node": "prod-1", "reason": "site file limit", "expires": "2027-01-31"}


def test_a_good_waiver_validates() -> None:
    assert problem_paths([GOOD]) == []
    m = parse_manifest(manifest_with([GOOD]), source="test.yaml")
    assert m.parity.waivers[0].expires == dt.date(2027, 1, 31)


@pytest.mark.parametrize("field,value", [
    ("item", "unit.x y"),          # a blank
    ("item", ""),
    ("reason", ""),
    ("expires", "next week"),
    ("expires", "2027-02-30"),
    ("node", "a\nb"),
    ("colour", "red"),             # unknown key
])
def test_a_bad_entry_is_exit_2_naming_the_field(field: str, value: Any) -> None:
    entry = dict(GOOD, **{field: value})
    paths = problem_paths([entry])
    assert any("parity.waivers" in p and ("0" in p) for p in paths), paths
    assert any(field in p for p in paths) or field == "colour", paths


def test_item_and_reason_and_expiry_are_required() -> None:
    for field in ("item", "reason", "expires"):
        entry = {k: v for k, v in GOOD.items() if k != field}
        assert any(field in p for p in problem_paths([entry])), field


# --------------------------------------------------------------------------- the comparison


def facts(extra_runtime: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"schema": parity.FACTS_SCHEMA, "docker": {"version": "20.10.24"},
            "units": {"docker": {"load": "loaded", "user": "root", "drop_ins": [
                "/etc/systemd/system/docker.service.d/site.conf"]}}}


def run(entries: list[dict[str, Any]] | None) -> parity.ParityReport:
    exp = {"docker.version": "20.10.24"}
    return parity.compare({"prod": exp}, {"prod": {"prod-1": facts()}}, waivers=entries,
                          today=TODAY)


def test_without_a_waiver_the_drop_in_is_a_deviation() -> None:
    rep = run(None)
    assert rep.exit_code == ExitCode.DEVIATION
    assert [c.component for c in rep.deviations] == [ITEM]


def test_a_waiver_in_force_shows_waived_and_passes() -> None:
    rep = run([GOOD])
    assert rep.exit_code == ExitCode.OK
    [w] = rep.waived
    assert w.component == ITEM and "site file limit" in w.detail and "2027-01-31" in w.detail
    data = json.loads(report.to_json(rep))
    assert [c["status"] for c in data["checks"] if c["component"] == ITEM] == ["waived"]
    assert data["waivers"] == [GOOD]
    back = report.from_dict(data)
    assert back.waived == rep.waived and back.waivers == rep.waivers
    console = Console(width=220, record=True, color_system=None, file=io.StringIO())
    report.print_report(rep, console)
    out = console.export_text()
    assert "(WAIVED)" in out and f"WAIVED prod/prod-1 {ITEM}" in out
    assert 'skipped="1"' in report.to_junit(rep)


def test_a_waiver_for_another_node_or_item_waives_nothing() -> None:
    assert run([dict(GOOD, node="prod-2")]).exit_code == ExitCode.DEVIATION
    assert run([dict(GOOD, item=ITEM + "x")]).exit_code == ExitCode.DEVIATION
    assert run([dict(GOOD, environment="dev")]).exit_code == ExitCode.DEVIATION
    assert run([{k: v for k, v in GOOD.items() if k != "node"}]).exit_code == ExitCode.OK


def test_a_waiver_is_valid_through_its_expiry_day() -> None:
    assert run([dict(GOOD, expires=TODAY.isoformat())]).exit_code == ExitCode.OK


def test_an_expired_waiver_fails_naming_it() -> None:
    rep = run([dict(GOOD, expires="2026-12-05")])
    assert rep.exit_code == ExitCode.DEVIATION
    comps = {c.component for c in rep.deviations}
    assert comps == {ITEM, f"waiver.{ITEM}"}
    line = next(p for p in rep.problems() if f"waiver.{ITEM}" in p)
    assert "expired on 2026-12-05" in line
    assert rep.waivers == ()  # not in force: not in the evidence


def test_an_expired_waiver_with_nothing_to_waive_still_fails() -> None:
    rep = parity.compare({"prod": {"docker.version": "20.10.24"}},
                         {"prod": {"prod-1": {"schema": parity.FACTS_SCHEMA,
                                              "docker": {"version": "20.10.24"}}}},
                         waivers=[dict(GOOD, expires="2020-01-01")], today=TODAY)
    assert rep.exit_code == ExitCode.DEVIATION


def test_validate_warns_about_an_expired_waiver() -> None:
    m = parse_manifest(manifest_with([dict(GOOD, expires="2026-01-01")]), source="test.yaml")
    found = [p for p in rules.check(m, today=TODAY) if p.rule == "waiver-expired"]
    assert len(found) == 1 and found[0].severity == "warning"
    assert found[0].path == "parity.waivers[0].expires" and ITEM in found[0].message
    m = parse_manifest(manifest_with([GOOD]), source="test.yaml")
    assert not [p for p in rules.check(m, today=TODAY) if p.rule == "waiver-expired"]


def test_parse_rejects_a_broken_rendered_entry() -> None:
    with pytest.raises(ValueError, match=r"waivers\[0\]: reason is required"):
        waivers.parse([{"item": "x", "expires": "2027-01-01"}])
    with pytest.raises(ValueError, match=r"waivers\[0\].expires"):
        waivers.parse([{"item": "x", "reason": "r", "expires": "soon"}])


def test_the_json_envelope_is_unchanged_without_waivers() -> None:
    rep = copy.deepcopy(run(None))
    assert json.loads(report.to_json(rep))["waivers"] == []


def test_one_waiver_covers_a_drop_in_whichever_class_names_it() -> None:
    """A drop-in of a managed unit is named by the runtime class (unit.U.drop_in.PATH) and by
    the files class (file:PATH): the same file, one waiver."""
    import datetime as _dt

    from stacklock.core import waivers as w

    path = "/etc/systemd/system/docker.service.d/site.conf"
    (waiver,) = w.parse([{"item": f"unit.docker.drop_in.{path}", "reason": "site limit",
                          "expires": _dt.date(2099, 1, 1)}])
    assert waiver.matches("dev", "n1", f"file:{path}")
    assert waiver.matches("dev", "n1", f"unit.docker.drop_in.{path}")
    assert not waiver.matches("dev", "n1", "file:/etc/systemd/system/docker.service.d/other.conf")
    assert not waiver.matches("dev", "n1", "unit.docker.environment.FOO")
