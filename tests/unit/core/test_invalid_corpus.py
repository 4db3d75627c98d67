"""The manifest corpus through the real command line: `stacklock validate --manifest FILE`.

Every file of `tests/corpus/invalid/` has one mistake; `tests/corpus/README.md` names, for
each, the text the output must contain (the field path of the error). Each must exit 2, name
that field, print no traceback and write no file. The valid manifests must exit 0.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
CORPUS = ROOT / "tests" / "corpus"
INDEX = CORPUS / "README.md"
STACKLOCK = Path(sys.executable).parent / "stacklock"

# These keep failing until the bug named is fixed; strict: the fix turns them into a failure
# that says to remove the entry.
KNOWN_BUGS: dict[str, str] = {}


def _index() -> dict[str, str]:
    rows = re.findall(r"^\| `([^`]+\.yaml)` \| .+? \| `(.+)` \|$", INDEX.read_text("utf-8"), re.M)
    return dict(rows)


INDEXED = _index()
INVALID = sorted(p.name for p in (CORPUS / "invalid").glob("*.yaml"))
VALID = [
    *(str(p.relative_to(ROOT)) for p in sorted((CORPUS / "valid").glob("*.yaml"))),
    "stacklock.yaml",
    "examples/static.yaml",
    "examples/lab.yaml",
]


def _snapshot(*dirs: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns)
        for d in dirs
        for p in sorted(d.rglob("*"))
    }


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    """An empty working directory and HOME (`cwd/`, `home/`) for one run of the CLI."""
    (tmp_path / "cwd").mkdir()
    (tmp_path / "home").mkdir()
    return tmp_path


def _validate(manifest: Path, sandbox: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed CLI in the sandbox's empty directory with its own HOME."""
    home = sandbox / "home"
    env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"),
           "NO_COLOR": "1", "COLUMNS": "300"}
    env.pop("STACKLOCK_MANIFEST", None)
    return subprocess.run(
        [str(STACKLOCK), "validate", "--manifest", str(manifest), *args],
        cwd=sandbox / "cwd", env=env, capture_output=True, text=True, timeout=120, check=False,
    )


def test_the_index_and_the_corpus_agree() -> None:
    assert len(INVALID) >= 25
    assert sorted(INDEXED) == INVALID


def test_the_cli_is_installed() -> None:
    assert STACKLOCK.is_file(), f"{STACKLOCK}: install the project (pip install -e .)"


@dataclass
class Run:
    result: subprocess.CompletedProcess[str]
    sandbox_before: dict[str, tuple[int, int]]
    sandbox_after: dict[str, tuple[int, int]]


@pytest.fixture(scope="module")
def corpus_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Run], bool]:
    """Every invalid manifest through the CLI, in parallel, each in its own sandbox.

    Returns the runs and whether the corpus folder was left exactly as it was."""
    boxes = {}
    for name in INVALID:
        box = tmp_path_factory.mktemp(name.removesuffix(".yaml"))
        (box / "cwd").mkdir()
        (box / "home").mkdir()
        boxes[name] = box
    corpus_before = _snapshot(CORPUS)
    befores = {name: _snapshot(box) for name, box in boxes.items()}
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        results = dict(zip(INVALID, pool.map(
            lambda n: _validate(CORPUS / "invalid" / n, boxes[n]), INVALID), strict=True))
    runs = {n: Run(results[n], befores[n], _snapshot(boxes[n])) for n in INVALID}
    return runs, _snapshot(CORPUS) == corpus_before


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.xfail(reason=KNOWN_BUGS[n], strict=True))
     if n in KNOWN_BUGS else n for n in INVALID],
)
def test_invalid_manifest_is_rejected(name: str, corpus_runs: tuple[dict[str, Run], bool]) -> None:
    runs, corpus_unchanged = corpus_runs
    run = runs[name]
    result = run.result
    expect = INDEXED[name]
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    assert "internal error" not in output
    if " " in expect:  # a message: the file is not a manifest at all
        assert re.search(rf"^ERROR .*{re.escape(expect)}", result.stderr, re.M), output
    else:  # a field path: an ERROR line names it
        assert re.search(rf"^ERROR {re.escape(expect)}: ", result.stderr, re.M), output
    assert run.sandbox_after == run.sandbox_before, "validate wrote a file"
    assert corpus_unchanged, "validate wrote into the corpus folder"


@pytest.mark.parametrize("name", INVALID)
def test_invalid_manifest_json(
    name: str, sandbox: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same through `--format json`, in this process (the subprocess runs are above)."""
    from stacklock.cli import main

    monkeypatch.chdir(sandbox / "cwd")
    monkeypatch.delenv("STACKLOCK_MANIFEST", raising=False)
    with pytest.raises(SystemExit) as exited:
        main(["validate", "--manifest", str(CORPUS / "invalid" / name), "--format", "json"])
    result = capsys.readouterr()
    assert exited.value.code == 2, result.out + result.err
    assert "Traceback" not in result.out + result.err
    doc = json.loads(result.out)
    assert set(doc) == {"schema", "ok", "problems"}
    assert doc["schema"] == "stacklock.validate/v1" and doc["ok"] is False
    errors = [p for p in doc["problems"] if p["severity"] == "error"]
    for p in doc["problems"]:
        assert set(p) == {"path", "message", "hint", "severity", "rule", "source"}
    expect = INDEXED[name]
    if " " in expect:
        assert any(expect in p["message"] for p in errors), errors
    else:
        assert any(p["path"] == expect for p in errors), errors


@pytest.mark.parametrize("rel", VALID)
def test_valid_manifest_passes(rel: str, sandbox: Path) -> None:
    manifest = ROOT / rel
    if not manifest.exists():
        pytest.skip(f"{rel} not in this tree")
    before = _snapshot(sandbox)
    result = _validate(manifest, sandbox, "--format", "json")
    # the corpus is about the schema and the rules: its model archives and smoke inputs are
    # not in the tree (validate checks them too, and says only that they are missing)
    errors = [p for p in json.loads(result.stdout)["problems"] if p["severity"] == "error"]
    assert all(re.search(r"\.models\[\d+\]\.(archive|smoke\.input_file)$", p["path"])
               and "no such file" in p["message"] for p in errors), result.stdout
    assert _snapshot(sandbox) == before


def test_warnings_fail_only_under_strict(sandbox: Path) -> None:
    manifest = ROOT / "examples" / "lab.yaml"
    plain = _validate(manifest, sandbox)
    assert plain.returncode == 0
    assert re.search(r"^WARNING stacks\.lab-2026-11\.nvidia_driver\.version: ", plain.stderr,
                     re.M)
    strict = _validate(manifest, sandbox, "--strict")
    assert strict.returncode == 2, strict.stderr
    doc = json.loads(_validate(manifest, sandbox, "--format", "json").stdout)
    assert doc["ok"] is True
    assert {p["rule"] for p in doc["problems"]} == {"driver-branch-eol",
                                                    "torchserve-tested-torch"}
