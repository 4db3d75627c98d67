"""The files-class comparison (stacklock.core.integrity) inside stacklock.core.parity.compare."""

from __future__ import annotations

from pathlib import Path

import pytest

from stacklock.core import integrity, parity

SHA_A, SHA_B = "a" * 64, "b" * 64


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STACKLOCK_CACHE_DIR", str(tmp_path))
    return tmp_path / "trees"


def _setup(store: Path) -> tuple[list[integrity.Tree], list[dict[str, object]]]:
    trees = [integrity.deb_tree("runc", {"/usr/bin/runc": SHA_A, "/etc/default/runc": SHA_A},
                                conffiles=["/etc/default/runc"]),
             integrity.unchecked_tree("deb:java", "dpkg", "no .deb on the controller")]
    integrity.store(trees)
    return trees, integrity.option(trees, [("/etc/apt/sources.list.d", False)])


def _facts(trees: dict[str, object], unowned: list[str]) -> dict[str, object]:
    return {"schema": parity.FACTS_SCHEMA, "files": {"trees": trees, "unowned": unowned}}


def test_clean_node_matches_and_unchecked_is_visible(store: Path) -> None:
    trees, opt = _setup(store)
    exp = parity.expected_from_vars({"stacklock_files": opt})
    rep = parity.compare({"dev": exp}, {"dev": {"n1": _facts(
        {"deb:runc": {"hash": trees[0].hash}}, [])}})
    assert rep.exit_code == 0
    java = next(c for c in rep.checks if c.component == "files.deb:java")
    assert java.expected.startswith("not checked: ") and java.status is parity.Status.MATCH


def test_changed_missing_and_unowned_files_are_named(store: Path) -> None:
    _trees, opt = _setup(store)
    exp = parity.expected_from_vars({"stacklock_files": opt})
    lines = [f"/usr/bin/runc\t{SHA_B}", "/etc/default/runc\tmissing", f"/usr/bin/x\t{SHA_A}"]
    rep = parity.compare({"dev": exp}, {"dev": {"n1": _facts(
        {"deb:runc": {"hash": integrity.tree_hash(lines), "lines": lines}},
        ["/etc/apt/sources.list.d/evil.list"])}})
    assert rep.exit_code == 1
    found = {c.component: c for c in rep.deviations}
    assert found["file:/usr/bin/runc"].detail.startswith("package.file.changed")
    assert found["file:/etc/default/runc"].detail.startswith("package.file.missing")
    assert "(conffile)" in found["file:/etc/default/runc"].detail
    assert found["file:/usr/bin/x"].detail.startswith("file.unowned")
    assert found["file:/etc/apt/sources.list.d/evil.list"].detail.startswith("file.unowned")
    assert "file:/etc/apt/sources.list.d/evil.list" in found[
        "file:/etc/apt/sources.list.d/evil.list"].detail
    # each unowned file is its own deviation (and waiver item): no second, aggregate one
    assert "files.unowned" not in {c.component for c in rep.checks}


def test_a_node_without_the_files_section_could_not_look(store: Path) -> None:
    _trees, opt = _setup(store)
    exp = parity.expected_from_vars({"stacklock_files": opt})
    rep = parity.compare({"dev": exp}, {"dev": {"n1": {"schema": parity.FACTS_SCHEMA}}})
    assert rep.exit_code == 3
    assert {c.component for c in rep.unverified} == {"files.deb:runc", "files.unowned"}


def test_a_tampered_reference_is_not_used(store: Path) -> None:
    trees, _opt = _setup(store)
    (store / f"{trees[0].hash}.lines").write_text("/usr/bin/runc\tforged\n")
    assert integrity.load(trees[0].hash) is None


def test_wheel_policy_pip_files_pyc_and_scripts() -> None:
    t = integrity.wheel_tree("pip", "/v/lib/python3.11/site-packages", "/v", "3.11",
                             {"pip/__init__.py": SHA_A, "pip/__pycache__/x.pyc": SHA_A,
                              "pip-26.3.dist-info/RECORD": SHA_A,
                              "pip-26.3.dist-info/METADATA": SHA_A},
                             "[console_scripts]\npip = a:b\npip3 = a:b\npip3.13 = a:b\n")
    paths = {line.split("\t")[0]: line.split("\t")[1] for line in t.lines}
    assert paths["/v/bin/pip3.11"] == "*" and "/v/bin/pip3.13" not in paths
    assert not any(p.endswith((".pyc", "/RECORD")) for p in paths)


def test_a_host_without_a_rendered_stack_has_no_files_class() -> None:
    """The files class compares what stacklock rendered; an inventory it did not render (no
    stacklock_fingerprint) gets no option, so the module checks nothing of that host's dirs."""
    from stacklock.flows import integrity as flow

    assert flow.files_option({"stacklock_os_release": "12"}) == []
    assert flow.files_option({"stacklock_fingerprint": ""}) == []


def test_a_package_not_installed_is_one_deviation_not_one_per_file(store: Path) -> None:
    """A bare node (nothing installed) gets one finding per tree: the cost of the comparison
    and the report's length do not grow with the package's file count."""
    many = {f"/usr/lib/x/{i}.so": SHA_A for i in range(500)}
    trees = [integrity.deb_tree("libx", many)]
    integrity.store(trees)
    exp = parity.expected_from_vars({"stacklock_files": integrity.option(trees, [])})
    lines = ["libx\tnot installed"]
    rep = parity.compare({"dev": exp}, {"dev": {"n1": _facts(
        {"deb:libx": {"hash": integrity.tree_hash(lines), "lines": lines}}, [])}})
    assert rep.exit_code == 1
    assert [c.component for c in rep.deviations] == ["files.deb:libx"]
    only = rep.deviations[0]
    assert only.actual == "not installed"
    assert "package.file.missing" in only.detail and "500 locked file(s) absent" in only.detail
