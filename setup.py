"""The one build step of the wheel: copy what stacklock runs besides its Python code into the
package, under `stacklock/share/`, laid out as in this repository (stacklock.core.share finds
it there when no checkout is around). The repository's own folders are the single source:
nothing is duplicated in git. Everything else is in pyproject.toml."""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

#: (source in the repository, globs under it); copied to stacklock/share/<source>
SHARE = (
    ("ansible.cfg", ("",)),
    ("ansible", ("ansible.cfg", "roles/**/*", "playbooks/*.yml", "library/*.py",
                 "module_utils/**/*.py", "action_plugins/*.py")),
    ("terraform/modules", ("*/*.tf", "*/README.md")),
    ("scripts/lab-node.sh", ("",)),
    # what `stacklock init` starts a repository from, and the lab mirror's closure (lab.lock)
    ("examples", ("lab.yaml", "lab.lock", "static.yaml", "static.lock", "models/*.mar")),
    ("stacklock.yaml", ("",)),
    ("stacklock.lock", ("",)),
)


def share_files(root: Path) -> list[str]:
    """Every file of the share, relative to the repository root (symlinks and caches left out)."""
    out: set[str] = set()
    for source, globs in SHARE:
        base = root / source
        for pattern in globs:
            found = [base] if not pattern else base.glob(pattern)
            for path in found:
                if path.is_file() and not path.is_symlink() and "__pycache__" not in path.parts:
                    out.add(path.relative_to(root).as_posix())
    return sorted(out)


class BuildPyWithShare(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install runs from the checkout, which is its own share
        root = Path(__file__).resolve().parent
        dest = Path(self.build_lib) / "stacklock" / "share"
        files = share_files(root)
        if not any(f.startswith("terraform/modules/") for f in files):
            raise SystemExit(f"{root}: no terraform/modules to ship (a partial source tree?)")
        for rel in files:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / rel, target)  # modes kept: lab-node.sh stays executable


setup(cmdclass={"build_py": BuildPyWithShare})
