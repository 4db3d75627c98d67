"""The manifest corpus through the real command line: `stacklock validate --manifest FILE`.

Every file of `tests/corpus/invalid/` has one mistake; `tests/corpus/README.md` names, for
each, the text the output must contain (the field path of the error). Each must exit 2, name
that field, print no traceback and write no file. The valid manifests must exit 0.

Each file goes through the CLI's entry point in this process (tests/unit/clirun.py); a few,
one of each kind of mistake (not a manifest at all, a field) and one valid manifest, also
through the installed `stacklock` in a process of its own, with the same checks.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from clirun import Result, stacklock

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


# run as a process of their own too: each kind of mistake, and the first valid manifest
IN_A_PROCESS = ["01-yaml-syntax-error.yaml", "05-unknown-top-level-key.yaml"]


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


def _validate(manifest: Path, sandbox: Path, *args: str,
              process: bool = False) -> subprocess.CompletedProcess[str] | Result:
    """`stacklock validate` in the sandbox's empty directory with its own HOME: through the
    entry point in this process, or (PROCESS) the installed CLI in a process of its own."""
    home = sandbox / "home"
    env: dict[str, str | None] = {"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"),
                                  "NO_COLOR": "1", "COLUMNS": "300", "STACKLOCK_MANIFEST": None}
    argv = ["validate", "--manifest", str(manifest), *args]
    if not process:
        return stacklock(*argv, cwd=sandbox / "cwd", env=env)
    return subprocess.run(
        [str(STACKLOCK), *argv], cwd=sandbox / "cwd", capture_output=True, text=True,
        env={k: v for k, v in {**os.environ, **env}.items() if v is not None},
        timeout=120, check=False,
    )


def test_the_index_and_the_corpus_agree() -> None:
    assert len(INVALID) >= 25
    assert sorted(INDEXED) == INVALID


def test_the_cli_is_installed() -> None:
    assert STACKLOCK.is_file(), f"{STACKLOCK}: install the project (pip install -e .)"


def test_the_files_run_in_a_process_are_in_the_corpus() -> None:
    assert set(IN_A_PROCESS) <= set(INVALID)
    assert {" " in INDEXED[n] for n in IN_A_PROCESS} == {True, False}  # one of each kind


@dataclass
class Run:
    result: subprocess.CompletedProcess[str] | Result
    sandbox_before: dict[str, tuple[int, int]]
    sandbox_after: dict[str, tuple[int, int]]


@pytest.fixture(scope="module")
def corpus_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Run], bool]:
    """Every invalid manifest through the CLI, each in its own sandbox (those of IN_A_PROCESS
    once more in a process of their own, under `NAME@process`).

    Returns the runs and whether the corpus folder was left exactly as it was."""
    corpus_before = _snapshot(CORPUS)
    runs = {}
    for key in [*INVALID, *(f"{n}@process" for n in IN_A_PROCESS)]:
        name, _, how = key.partition("@")
        box = tmp_path_factory.mktemp(name.removesuffix(".yaml"))
        (box / "cwd").mkdir()
        (box / "home").mkdir()
        before = _snapshot(box)
        result = _validate(CORPUS / "invalid" / name, box, process=how == "process")
        runs[key] = Run(result, before, _snapshot(box))
    return runs, _snapshot(CORPUS) == corpus_before


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.xfail(reason=KNOWN_BUGS[n.partition("@")[0]],
                                               strict=True))
     if n.partition("@")[0] in KNOWN_BUGS else n
     for n in [*INVALID, *(f"{n}@process" for n in IN_A_PROCESS)]],
)
def test_invalid_manifest_is_rejected(name: str, corpus_runs: tuple[dict[str, Run], bool]) -> None:
    runs, corpus_unchanged = corpus_runs
    run = runs[name]
    result = run.result
    name = name.partition("@")[0]
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


@pytest.mark.parametrize("rel", [*VALID, f"{VALID[0]}@process"])
def test_valid_manifest_passes(rel: str, sandbox: Path) -> None:
    rel, _, how = rel.partition("@")
    manifest = ROOT / rel
    if not manifest.exists():
        pytest.skip(f"{rel} not in this tree")
    before = _snapshot(sandbox)
    result = _validate(manifest, sandbox, "--format", "json", process=how == "process")
    assert "Traceback" not in result.stderr
    # the corpus is about the schema and the rules: its model archives and smoke inputs are
    # not in the tree (validate checks them too, and says only that they are missing)
    errors = [p for p in json.loads(result.stdout)["problems"] if p["severity"] == "error"]
    assert all(re.search(r"\.models\[\d+\]\.(archive|smoke\.input_file)$", p["path"])
               and "no such file" in p["message"] for p in errors), result.stdout
    assert _snapshot(sandbox) == before


def test_warnings_fail_only_under_strict(sandbox: Path) -> None:
    manifest = ROOT / "examples" / "lab.yaml"
    plain = _validate(manifest, sandbox, process=True)
    assert plain.returncode == 0
    assert re.search(r"^WARNING stacks\.lab-2026-11\.nvidia_driver\.version: ", plain.stderr,
                     re.M)
    strict = _validate(manifest, sandbox, "--strict")
    assert strict.returncode == 2, strict.stderr
    doc = json.loads(_validate(manifest, sandbox, "--format", "json").stdout)
    assert doc["ok"] is True
    assert {p["rule"] for p in doc["problems"]} == {"driver-branch-eol",
                                                    "torchserve-tested-torch"}
