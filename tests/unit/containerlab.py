"""examples/lab.yaml with its stack in container mode, copied into a test's folder and locked
from the committed lock (no resolver run): shared by the unit tests of container mode. Import
it with `sys.path.insert(0, <tests/unit>)`, as clirun."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from stacklock.core import lock as lockmod
from stacklock.core.manifest import LoadedManifest, load_manifest

ROOT = Path(__file__).resolve().parents[2]
STACK = "lab-2026-11"


def container_lab(folder: Path) -> tuple[LoadedManifest, dict[str, Any]]:
    """The manifest (loaded) and its lock (built, not written) in `folder`."""
    data = yaml.safe_load((ROOT / "examples/lab.yaml").read_text())
    data["stacks"][STACK]["serving"] = {"runtime": "container"}
    (folder / "lab.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    shutil.copy(ROOT / "examples/lab.lock", folder / "lab.lock")
    shutil.copytree(ROOT / "examples/models", folder / "models")
    loaded = load_manifest(folder / "lab.yaml")
    existing = lockmod.read_lock(loaded.lock_path)
    lock = lockmod.build_lock(loaded, {}, lockmod.closures_from_lock(existing, loaded),
                              lockmod.apt_sets_from_lock(existing, loaded))
    return loaded, lock
