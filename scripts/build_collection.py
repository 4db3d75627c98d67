#!/usr/bin/env python3
"""Build the stacklock.stack Ansible collection from this repository's ansible/ folder.

A staging folder is assembled (nothing of it is kept in git) and `ansible-galaxy collection
build` turns it into stacklock-stack-VERSION.tar.gz:

    galaxy.yml                     this repository's galaxy.yml (its version must be stacklock's)
    README.md                      generated: the roles, modules, plugins and playbooks
    meta/runtime.yml               requires_ansible, from pyproject's ansible-core range
    roles/                         ansible/roles
    playbooks/                     ansible/playbooks/*.yml
    plugins/modules/               ansible/library (the facts module; its DOCUMENTATION is the doc)
    plugins/module_utils/          ansible/module_utils (the collectors)
    plugins/action/                ansible/action_plugins (parity, gate: they import the
                                   stacklock Python package on the controller)

The facts module and its collectors import `ansible.module_utils.stacklock_facts` (the
checkout's module_utils path); in a collection that package is
`ansible_collections.stacklock.stack.plugins.module_utils.stacklock_facts`, so the staged
copies are rewritten to import it from there.

    python scripts/build_collection.py [--out DIR] [--staging DIR]
"""

from __future__ import annotations

import argparse
import ast
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ANSIBLE = ROOT / "ansible"
OLD_PACKAGE = "ansible.module_utils.stacklock_facts"


def galaxy() -> dict[str, str]:
    data: dict[str, str] = yaml.safe_load((ROOT / "galaxy.yml").read_text("utf-8"))
    return data


def collection_package(meta: dict[str, str]) -> str:
    return f"ansible_collections.{meta['namespace']}.{meta['name']}.plugins.module_utils.stacklock_facts"


def _version() -> str:
    text = (ROOT / "pyproject.toml").read_text("utf-8")
    match = re.search(r'^version = "([^"]+)"', text, re.M)
    assert match, "pyproject.toml has no version"
    return match.group(1)


def _requires_ansible() -> str:
    text = (ROOT / "pyproject.toml").read_text("utf-8")
    match = re.search(r'"ansible-core([^"]+)"', text)
    return match.group(1) if match else ">=2.17"


def _copy_tree(src: Path, dest: Path, pattern: str = "**/*") -> list[Path]:
    out = []
    for path in sorted(src.glob(pattern)):
        if path.is_symlink() or not path.is_file() or "__pycache__" in path.parts:
            continue
        target = dest / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        out.append(target)
    return out


def _rewrite(path: Path, new_package: str) -> None:
    text = path.read_text("utf-8")
    path.write_text(text.replace(OLD_PACKAGE, new_package), "utf-8")


def _short_description(module: Path) -> str:
    for node in ast.parse(module.read_text("utf-8")).body:
        if (isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "DOCUMENTATION" for t in node.targets)
                and isinstance(node.value, ast.Constant)):
            try:
                doc = yaml.safe_load(str(node.value.value))
            except yaml.YAMLError as exc:  # ansible-doc cannot read it either: say so, loudly
                first = str(exc).splitlines()[0]
                print(f"warning: {module.name}: DOCUMENTATION is not valid YAML ({first}); "
                      "ansible-doc will fail on it", file=sys.stderr)
                return "(its DOCUMENTATION is not valid YAML)"
            return str(doc.get("short_description", ""))
    raise SystemExit(f"{module}: no DOCUMENTATION")


def stage(staging: Path) -> Path:
    """Assemble the collection's folder in `staging` (emptied first); return it."""
    meta = galaxy()
    if str(meta["version"]) != _version():
        raise SystemExit(f"galaxy.yml version {meta['version']} is not stacklock's {_version()}")
    fqcn = f"{meta['namespace']}.{meta['name']}"
    package = collection_package(meta)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    shutil.copy2(ROOT / "galaxy.yml", staging / "galaxy.yml")
    _copy_tree(ANSIBLE / "roles", staging / "roles")
    playbooks = _copy_tree(ANSIBLE / "playbooks", staging / "playbooks", "*.yml")
    modules = _copy_tree(ANSIBLE / "library", staging / "plugins" / "modules", "*.py")
    utils = _copy_tree(ANSIBLE / "module_utils", staging / "plugins" / "module_utils")
    actions = _copy_tree(ANSIBLE / "action_plugins", staging / "plugins" / "action", "*.py")
    for path in [*modules, *utils]:
        if path.suffix == ".py":
            _rewrite(path, package)
    (staging / "meta").mkdir()
    (staging / "meta" / "runtime.yml").write_text(
        f'---\nrequires_ansible: "{_requires_ansible()}"\n', "utf-8")
    roles = sorted(p.name for p in (staging / "roles").iterdir() if p.is_dir())
    lines = [
        f"# {fqcn}",
        "",
        str(meta["description"]).strip(),
        "",
        "Built by stacklock's scripts/build_collection.py from its ansible/ folder. The action",
        "plugins import the `stacklock` Python package on the controller: install it beside",
        "Ansible (`pip install stacklock`, or the execution environment in",
        "execution-environment.yml).",
        "",
        "## Modules",
        "",
        *(f"- `{fqcn}.{m.stem}`: {_short_description(m)} (`ansible-doc {fqcn}.{m.stem}`)"
          for m in modules),
        "",
        "## Action plugins",
        "",
        *(f"- `{fqcn}.{a.stem}`" for a in actions),
        "",
        "## Roles",
        "",
        *(f"- `{fqcn}.{r}`" for r in roles),
        "",
        "## Playbooks",
        "",
        *(f"- `{fqcn}.{p.stem}`: `ansible-playbook -i inventories/ENV {fqcn}.{p.stem}`"
          for p in playbooks),
        "",
    ]
    (staging / "README.md").write_text("\n".join(lines), "utf-8")
    return staging


def build(out: Path, staging: Path | None = None) -> Path:
    """Stage and build; return the tarball."""
    with tempfile.TemporaryDirectory(prefix="stacklock-collection-") as tmp:
        folder = stage(staging or Path(tmp) / "stack")
        out.mkdir(parents=True, exist_ok=True)
        galaxy_bin = Path(sys.executable).parent / "ansible-galaxy"
        res = subprocess.run([str(galaxy_bin) if galaxy_bin.exists() else "ansible-galaxy",
                              "collection", "build", str(folder), "--output-path", str(out),
                              "--force"], capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise SystemExit(f"ansible-galaxy collection build failed:\n{res.stdout}{res.stderr}")
    meta = galaxy()
    tarball = out / f"{meta['namespace']}-{meta['name']}-{meta['version']}.tar.gz"
    if not tarball.is_file():
        raise SystemExit(f"ansible-galaxy wrote no {tarball}")
    return tarball


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="where the tarball goes")
    parser.add_argument("--staging", type=Path, default=None,
                        help="keep the staging folder here (default: a temporary one)")
    args = parser.parse_args()
    print(build(args.out, args.staging))


if __name__ == "__main__":
    main()
