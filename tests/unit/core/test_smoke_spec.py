"""`models[].smoke`: the schema (every mistake named, exit 2), the lock (input, digest and
expectation locked; the fingerprint follows them) and the rendered group_vars the verify play
reads."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from stacklock.core import lock as lockmod
from stacklock.core import render as rendermod
from stacklock.core.manifest import MAX_SMOKE_INPUT_BYTES, load_manifest, parse_manifest
from stacklock.core.parity import expected_from_vars
from stacklock.errors import ExitCode, InvalidInput, Problem

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
GOLDEN = ROOT / "tests" / "golden" / "static-lab"
MODEL = "stacks.s1.models[0]"
INPUT = '{"inputs": [1, 2, 3]}'
GOOD: dict[str, Any] = {"input": INPUT, "content_type": "application/json",
                        "expected": [3.0, 5.0, 7.0], "tolerance": 1.0e-6}


def manifest_with(smoke: Any) -> dict[str, Any]:
    data = yaml.safe_load((GOLDEN / "manifest.yaml").read_text(encoding="utf-8"))
    data["stacks"]["s1"]["models"][0]["smoke"] = copy.deepcopy(smoke)
    assert isinstance(data, dict)
    return data


def problems(data: dict[str, Any] | str) -> list[Problem]:
    text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
    try:
        parse_manifest(text, source="test.yaml")
    except InvalidInput as exc:
        assert exc.exit_code == ExitCode.INVALID
        return exc.problems
    return []


# (smoke spec, the path the problem must name, words of its message or hint)
BAD: list[tuple[dict[str, Any], str, str]] = [
    ({**GOOD, "input_file": "smoke.json"}, f"{MODEL}.smoke", "exactly one of input"),
    ({k: v for k, v in GOOD.items() if k != "input"}, f"{MODEL}.smoke", "exactly one of input"),
    ({**GOOD, "sha256": "a" * 64}, f"{MODEL}.smoke", "exactly one of sha256"),
    ({"input": INPUT}, f"{MODEL}.smoke", "exactly one of sha256"),
    ({"input": INPUT, "sha256": "a" * 64, "tolerance": 0.1}, f"{MODEL}.smoke",
     "tolerance applies to expected numbers only"),
    ({**GOOD, "expected": []}, f"{MODEL}.smoke.expected", "at least 1"),
    ({**GOOD, "expected": ["three"]}, f"{MODEL}.smoke.expected[0]", "number"),
    ({**GOOD, "expected": [True]}, f"{MODEL}.smoke.expected[0]", "number"),
    ({**GOOD, "expected": [1.0] * 1025}, f"{MODEL}.smoke.expected", "at most 1024"),
    ({**GOOD, "tolerance": -1.0}, f"{MODEL}.smoke.tolerance", "greater than or equal to 0"),
    ({**GOOD, "tolerance": "a little"}, f"{MODEL}.smoke.tolerance", "not a number"),
    ({"input": INPUT, "sha256": "ABC"}, f"{MODEL}.smoke.sha256", "64 lowercase hex"),
    ({**GOOD, "content_type": "json"}, f"{MODEL}.smoke.content_type", "a media type"),
    ({**GOOD, "expect": [3.0]}, f"{MODEL}.smoke.expect", "unknown key"),
    ({**GOOD, "input": "line one\nline two"}, f"{MODEL}.smoke.input", "control character"),
    ({**GOOD, "input": "{{ lookup('env', 'HOME') }}"}, f"{MODEL}.smoke.input", "template"),
    ({k: v for k, v in GOOD.items() if k != "input"} | {"input_file": "x;rm -rf"},
     f"{MODEL}.smoke.input_file", "not a plain path"),
]


@pytest.mark.parametrize(("smoke", "path", "words"), BAD, ids=[f"{i}-{c[2][:24]}"
                                                               for i, c in enumerate(BAD)])
def test_a_bad_smoke_spec_is_named_with_its_field(smoke: dict[str, Any], path: str,
                                                  words: str) -> None:
    found = problems(manifest_with(smoke))
    assert [p.path for p in found] == [path], [p.render() for p in found]
    assert words in found[0].render()


def test_good_smoke_specs_validate() -> None:
    assert problems(manifest_with(GOOD)) == []
    assert problems(manifest_with({"input_file": "smoke.bin", "content_type": "image/jpeg",
                                   "sha256": "a" * 64})) == []
    # YAML reads `1e-6` (no dot) as text: it still means the number
    text = yaml.safe_dump(manifest_with({**GOOD, "tolerance": "1e-6"}), sort_keys=False)
    manifest = parse_manifest(text, source="test.yaml")
    smoke = manifest.stacks["s1"].models[0].smoke
    assert smoke is not None and smoke.tolerance == 1e-6
    assert smoke.content_type == "application/json"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "stacklock"
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.fixture()
def case(tmp_path: Path) -> Path:
    """The golden manifest and its model archive, where writing is harmless."""
    dst = tmp_path / "case"
    shutil.copytree(GOLDEN, dst, ignore=shutil.ignore_patterns("expected", "*.lock"))
    return dst / "manifest.yaml"


def write(case: Path, smoke: Any) -> None:
    case.write_text(yaml.safe_dump(manifest_with(smoke), sort_keys=False), encoding="utf-8")


def test_validate_refuses_a_bad_smoke_spec_with_exit_2_and_no_traceback(case: Path) -> None:
    write(case, {**GOOD, "sha256": "a" * 64})
    res = run_cli("-m", str(case), "validate", cwd=case.parent)
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"{MODEL}.smoke" in res.stdout + res.stderr
    assert "exactly one of sha256" in res.stdout + res.stderr
    assert "Traceback" not in res.stdout + res.stderr


def test_lock_refuses_a_smoke_input_file_over_64_kib_with_exit_2(case: Path) -> None:
    (case.parent / "big.json").write_bytes(b"[" + b"1," * (MAX_SMOKE_INPUT_BYTES // 2) + b"1]")
    write(case, {"input_file": "big.json", "expected": [3.0]})
    with pytest.raises(InvalidInput) as exc:
        lockmod.build_lock(load_manifest(case))
    (p,) = exc.value.problems
    assert p.path == f"{MODEL}.smoke.input_file"
    assert f"at most {MAX_SMOKE_INPUT_BYTES} bytes (64 KiB)" in p.message
    res = run_cli("-m", str(case), "lock", "--offline", cwd=case.parent)
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"{MODEL}.smoke.input_file" in res.stdout + res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    assert not (case.parent / "manifest.lock").exists()
    # exactly the limit is fine
    (case.parent / "big.json").write_bytes(b"1" * MAX_SMOKE_INPUT_BYTES)
    lockmod.build_lock(load_manifest(case))


def test_lock_names_a_missing_smoke_input_file(case: Path) -> None:
    write(case, {"input_file": "missing.json", "expected": [3.0]})
    with pytest.raises(InvalidInput) as exc:
        lockmod.build_lock(load_manifest(case))
    (p,) = exc.value.problems
    assert p.path == f"{MODEL}.smoke.input_file" and "no such file" in p.message


def locked_model(case: Path) -> dict[str, Any]:
    model: dict[str, Any] = lockmod.build_lock(load_manifest(case))["stacks"]["s1"]["models"][0]
    return model


def fingerprint(case: Path) -> str:
    return str(lockmod.build_lock(load_manifest(case))["stacks"]["s1"]["fingerprint"])


def test_the_lock_carries_the_input_its_digest_and_the_answer(case: Path) -> None:
    write(case, GOOD)
    smoke = locked_model(case)["smoke"]
    assert smoke == {
        "content_type": "application/json",
        "input_base64": base64.b64encode(INPUT.encode()).decode(),
        "input_sha256": hashlib.sha256(INPUT.encode()).hexdigest(),
        "input_size": len(INPUT),
        "input_source": "inline",
        "expected": [3.0, 5.0, 7.0],
        "tolerance": 1e-6,
    }
    # deterministic: the same manifest, the same lock text
    one = lockmod.dump_lock(lockmod.build_lock(load_manifest(case)))
    assert one == lockmod.dump_lock(lockmod.build_lock(load_manifest(case)))


def test_the_fingerprint_follows_the_smoke_spec_and_the_input_file(case: Path) -> None:
    write(case, None)
    assert "smoke" not in locked_model(case)  # no smoke test: the lock is as before
    without = fingerprint(case)
    (case.parent / "smoke.bin").write_bytes(b"\x00\x01binary \xff input")
    write(case, {"input_file": "smoke.bin", "sha256": "a" * 64})
    with_file = fingerprint(case)
    smoke = locked_model(case)["smoke"]
    assert smoke["input_source"] == "smoke.bin"
    assert base64.b64decode(smoke["input_base64"]) == b"\x00\x01binary \xff input"
    assert smoke["content_type"] == "application/octet-stream" and smoke["sha256"] == "a" * 64
    (case.parent / "smoke.bin").write_bytes(b"another input")
    changed_input = fingerprint(case)
    write(case, {"input_file": "smoke.bin", "sha256": "b" * 64})
    changed_answer = fingerprint(case)
    assert len({without, with_file, changed_input, changed_answer}) == 4


def test_render_hands_the_smoke_test_to_the_verify_play(case: Path) -> None:
    write(case, GOOD)
    loaded = load_manifest(case)
    tree = rendermod.render_tree(loaded, lockmod.build_lock(loaded))
    name = next(n for n in tree if n.endswith("group_vars/onprem/stacklock.yml"))
    gv = yaml.safe_load(tree[name])
    (model,) = gv["torchserve_models"]
    assert base64.b64decode(model["smoke"]["input_base64"]).decode() == INPUT
    assert model["smoke"]["input_sha256"] == hashlib.sha256(INPUT.encode()).hexdigest()
    exp = expected_from_vars(gv)
    assert exp["model.fixture.smoke"] == "[3.0, 5.0, 7.0] within 1e-06"
    # a model without a smoke test has no smoke check
    write(case, None)
    loaded = load_manifest(case)
    gv = yaml.safe_load(rendermod.render_tree(loaded, lockmod.build_lock(loaded))[name])
    assert "smoke" not in gv["torchserve_models"][0]
    assert "model.fixture.smoke" not in expected_from_vars(gv)


def test_the_committed_lab_lock_carries_the_example_smoke_test() -> None:
    lock = json.loads((ROOT / "examples" / "lab.lock").read_text(encoding="utf-8"))
    (model,) = lock["stacks"]["lab-2026-11"]["models"]
    smoke = model["smoke"]
    assert base64.b64decode(smoke["input_base64"]) == INPUT.encode()
    assert smoke["expected"] == [3.0, 5.0, 7.0] and smoke["tolerance"] == 1e-6
