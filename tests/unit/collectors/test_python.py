"""python: the node's interpreter, and TorchServe's venv read by the in-venv script (its
recorded JSON answer, and the script itself on this project's virtualenv)."""

from __future__ import annotations

import json
import sys

import pytest
from ansible.module_utils.stacklock_facts import python
from ansible.module_utils.stacklock_facts.node import System
from ansible.module_utils.stacklock_facts.run import Run
from fakenode import lab_node

pytestmark = pytest.mark.unit

VENV = "/opt/torchserve/venv"


def test_the_venv_answer_with_every_distribution_and_the_unlocked_ones() -> None:
    node = lab_node()
    data = json.loads(node.commands["python -I"][1])
    data["distributions"] = {"torch": "2.13.0+cpu", "torchserve": "0.12.0",
                             "torch-model-archiver": "0.12.0", "pyyaml": "6.0.3",
                             "requests": "2.32.5"}
    node.commands["python -I"] = (0, "a warning first\n" + json.dumps(data) + "\n", "")
    out = python.probe_venv(node, VENV, ["PyYAML", "torch"])
    assert out["python"] == "3.11.2" and out["torch"]["version"] == "2.13.0+cpu"
    assert out["torch"]["cuda"] is None
    assert list(out["distributions"]) == sorted(data["distributions"])
    assert out["unlocked"] == {"requests": "2.32.5"}  # PyYAML is pyyaml (PEP 503)
    argv = node.ran[-1]
    assert argv[:3] == [f"{VENV}/bin/python", "-I", "-c"]
    assert json.loads(argv[4]) == ["torch", "torchserve", "torch-model-archiver", "PyYAML"]


@pytest.mark.parametrize(("answer", "error"), [
    ((1, "", "Traceback...\nModuleNotFoundError: No module named 'encodings'\n"),
     f"{VENV}/bin/python exited 1: ModuleNotFoundError: No module named 'encodings'"),
    ((0, "not json\n", ""), f"{VENV}/bin/python printed no JSON: not json"),
])
def test_a_venv_that_does_not_answer(answer: tuple[int, str, str], error: str) -> None:
    node = lab_node()
    node.commands["python -I"] = answer
    out = python.probe_venv(node, VENV, [])
    assert out["error"] == error and out["packages"] == {}


def test_no_venv() -> None:
    node = lab_node()
    del node.files[f"{VENV}/bin/python"]
    assert python.probe_venv(node, VENV, [])["error"] == f"{VENV}/bin/python not found"


def test_the_node_python() -> None:
    run = Run({}, lab_node())
    python.collect(run)
    assert run.facts["python"] == {"version": "3.11.2", "executable": "/usr/bin/python3"}


def test_the_venv_script_for_real_on_this_virtualenv() -> None:
    out = python.probe_venv(System(60.0), sys.prefix, ["pyyaml", "no-such-dist-xyz"])
    assert "error" not in out, out
    assert out["python"].startswith("{}.{}.".format(*sys.version_info[:2]))
    assert out["packages"]["pyyaml"] and out["packages"]["no-such-dist-xyz"] is None
    assert out["distributions"]["pyyaml"] == out["packages"]["pyyaml"]
    assert "pytest" in out["unlocked"]
