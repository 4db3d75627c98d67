# Copyright: stacklock contributors. Apache-2.0.
"""Python: the node's interpreter (``python``) and what TorchServe's virtualenv holds (its
Python, every distribution with its version, torch and its CUDA), read by a short script run
inside the venv (``torchserve.venv``)."""

from __future__ import annotations

import json
import os
import re
from typing import Any

from ansible.module_utils.stacklock_facts.common import first_line
from ansible.module_utils.stacklock_facts.node import System
from ansible.module_utils.stacklock_facts.run import Run

#: run inside TorchServe's venv: versions via importlib.metadata, torch.version.cuda without
#: importing torch when possible (parsing torch/version.py is ~1000x faster than `import torch`)
VENV_SCRIPT = r"""
import ast, importlib.metadata as md, importlib.util, json, os, sys
out = {"python": "%d.%d.%d" % sys.version_info[:3], "executable": sys.executable,
       "packages": {}, "torch": {}}
import re
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
for name in json.loads(sys.argv[1]):
    try:
        out["packages"][name] = md.version(name)
    except md.PackageNotFoundError:
        out["packages"][name] = None
out["distributions"] = {}
for dist in md.distributions():
    name = dist.metadata["Name"] if dist.metadata else None
    if name:
        out["distributions"][norm(name)] = dist.version
try:
    spec = importlib.util.find_spec("torch")
except Exception as exc:
    spec = None
    out["torch"]["error"] = "%s: %s" % (type(exc).__name__, exc)
if spec is not None and spec.origin:
    path = os.path.join(os.path.dirname(spec.origin), "version.py")
    try:
        values = {}
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read())
        for node in tree.body:
            target = None
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                target, value = node.target, node.value
            if isinstance(target, ast.Name):
                try:
                    values[target.id] = ast.literal_eval(value)
                except ValueError:
                    pass
        out["torch"] = {"version": values["__version__"], "cuda": values.get("cuda"),
                        "source": "torch/version.py"}
    except Exception:
        try:
            import torch
            out["torch"] = {"version": torch.__version__, "cuda": torch.version.cuda,
                            "source": "import torch"}
        except Exception as exc:
            out["torch"] = {"error": "import torch: %s: %s" % (type(exc).__name__, exc)}
elif "error" not in out["torch"]:
    out["torch"]["error"] = "torch is not installed in %s" % sys.prefix
print(json.dumps(out))
"""


def _norm(name: object) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", str(name)).lower()


def probe_venv(sy: System, venv: str, extra: list[str]) -> dict[str, Any]:
    py = os.path.join(venv, "bin", "python")
    out: dict[str, Any] = {"path": venv, "python": None, "packages": {}, "torch": None}
    if not sy.exists(py):
        out["error"] = f"{py} not found"
        return out
    names = ["torch", "torchserve", "torch-model-archiver"]
    names += [n for n in extra if n not in names]
    argv = [py, "-I", "-c", VENV_SCRIPT, json.dumps(names)]
    res = sy.run(argv)
    if res.rc != 0:
        out["error"] = f"{py} exited {res.rc}: {first_line(res.stderr)}"
        return out
    try:
        data = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        out["error"] = f"{py} printed no JSON: {first_line(res.stdout)}"
        return out
    out["python"] = data.get("python")
    out["packages"] = data.get("packages") or {}
    out["torch"] = data.get("torch") or {}
    dists = data.get("distributions")
    if isinstance(dists, dict):
        out["distributions"] = dict(sorted(dists.items()))
        if extra:  # the locked closure was named: what else is in the venv
            locked = {_norm(n) for n in names}
            out["unlocked"] = {n: v for n, v in out["distributions"].items() if n not in locked}
    return out


def collect(run: Run) -> None:
    """`python`: the interpreter this module runs on (the venv's is under torchserve.venv)."""
    run.facts["python"] = run.section("python", run.sy.python)
