"""Where stacklock finds what it runs besides its Python code, and the repository's vendored
copy of its Terraform modules.

Two homes, decided in one place (`share_root`):

* a checkout (stacklock runs from its own source tree, `pip install -e .`): the repository's
  `ansible/`, `terraform/modules/`, `scripts/` and `examples/`;
* an installed wheel (`pipx install stacklock`): the same files, copied into the package at
  build time (setup.py), read through importlib.resources as `stacklock/share/`.

`$STACKLOCK_HOME` names another folder of that layout (a checkout) and wins over both.

Generated Terraform must not depend on where stacklock lives, so rendered module sources
point into the repository itself: `stacklock init` vendors the modules (and the lab's node
script, which the lab module calls) into `vendor/stacklock/` with a stamp file, and
`modules_home` finds that copy from the output folder upwards. A stacklock source tree counts
as vendored: its own `terraform/modules/` are the modules (so this repository's examples
render as they always did). Files only: no subprocess, no network.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from stacklock import __version__
from stacklock.errors import InvalidInput, Problem

#: the vendored copy, relative to the repository root that `stacklock init` set up
VENDOR_DIR = Path("vendor") / "stacklock"
#: its stamp: the stacklock version and a digest of every vendored file
STAMP = "VERSION"
#: what a vendored copy holds (paths in the share's layout)
VENDORED = ("terraform/modules", "scripts/lab-node.sh")
UPGRADE_HINT = "run: stacklock init --upgrade"

_SKIP_PARTS = {"__pycache__", ".terraform"}
_SKIP_SUFFIXES = (".tfstate", ".tfstate.backup", ".terraform.lock.hcl", ".pyc")


def _is_source_tree(folder: Path) -> bool:
    """A stacklock checkout: its pyproject names the package, and the share's folders are
    there (terraform modules, the roles, the lab script)."""
    try:
        text = (folder / "pyproject.toml").read_text("utf-8")
    except OSError:
        return False
    return ('name = "stacklock"' in text and (folder / "terraform" / "modules").is_dir()
            and (folder / "ansible" / "roles").is_dir()
            and (folder / "scripts" / "lab-node.sh").is_file())


def checkout_root() -> Path | None:
    """The source tree this package runs from (src/stacklock/core/share.py), else None."""
    root = Path(__file__).resolve().parents[3]
    return root if _is_source_tree(root) else None


def installed_share() -> Path:
    """`stacklock/share/` of an installed wheel."""
    share = resources.files("stacklock").joinpath("share")
    path = Path(str(share))
    if not (path / "terraform" / "modules").is_dir():
        raise InvalidInput(
            f"{path}: this stacklock has no shipped files (roles, playbooks, modules)",
            problems=[Problem("stacklock/share", "missing from the installed package",
                              "install stacklock from a wheel built by its setup.py, or set "
                              "STACKLOCK_HOME to a stacklock checkout")])
    return path


def share_root() -> Path:
    """The folder holding ansible/, terraform/modules/, scripts/ and examples/:
    $STACKLOCK_HOME, else the checkout stacklock runs from, else the installed share."""
    env = os.environ.get("STACKLOCK_HOME")
    if env:
        return Path(env).resolve()
    return checkout_root() or installed_share()


def cache_root() -> Path:
    """Downloads, logs and pid files: the checkout's .cache (gitignored), else the user's
    cache folder ($XDG_CACHE_HOME/stacklock, ~/.cache/stacklock) for an installed stacklock."""
    root = checkout_root()
    if root is not None:
        return root / ".cache"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "stacklock"


# --------------------------------------------------------------------------- vendored modules


def vendor_files(root: Path) -> dict[str, bytes]:
    """The files a vendored copy holds, read from a share-layout folder: {relative path: bytes}."""
    out: dict[str, bytes] = {}
    for item in VENDORED:
        base = root / item
        paths = [base] if base.is_file() else sorted(base.rglob("*")) if base.is_dir() else []
        for path in paths:
            rel = path.relative_to(root)
            if (not path.is_file() or _SKIP_PARTS & set(rel.parts)
                    or path.name.endswith(_SKIP_SUFFIXES)):
                continue
            out[rel.as_posix()] = path.read_bytes()
    return out


def stamp_text(files: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for rel in sorted(files):
        digest.update(rel.encode() + b"\0" + hashlib.sha256(files[rel]).digest())
    return ("# vendored by `stacklock init`: the Terraform modules (and the lab's node script)\n"
            "# of this stacklock version. Do not edit; refresh with `stacklock init --upgrade`.\n"
            f"stacklock {__version__}\n"
            f"sha256 {digest.hexdigest()}\n")


def vendored_version(vendor: Path) -> str | None:
    """The stacklock version a vendored copy's stamp names."""
    try:
        text = (vendor / STAMP).read_text("utf-8")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("stacklock "):
            return line.split(" ", 1)[1].strip() or None
    return None


@dataclass(frozen=True)
class ModulesHome:
    """Where rendered roots find terraform/modules/ and scripts/: `path`, and `kind`:
    "vendored" (a repository's vendor/stacklock/), "source" (a stacklock source tree) or
    "share" (STACKLOCK_HOME or the checkout stacklock runs from, as a fallback)."""

    path: Path
    kind: str


def find_vendor(start: Path) -> ModulesHome | None:
    """The nearest vendored copy or stacklock source tree at `start` or above it."""
    folder = start.resolve()
    for candidate in (folder, *folder.parents):
        vendored = candidate / VENDOR_DIR
        if (vendored / STAMP).is_file():
            return ModulesHome(vendored, "vendored")
        if _is_source_tree(candidate):
            return ModulesHome(candidate, "source")
    return None


def modules_home(output_root: Path) -> ModulesHome:
    """The modules rendered roots call, for a repository whose output folder is
    `output_root`: $STACKLOCK_HOME when set; else the nearest vendored copy (or stacklock
    source tree) at or above it; else, when stacklock runs from a checkout, that checkout.
    An installed stacklock without a vendored copy refuses (exit 2): it would write paths
    into its own install folder."""
    env = os.environ.get("STACKLOCK_HOME")
    if env:
        return ModulesHome(Path(env).resolve(), "share")
    found = find_vendor(output_root)
    if found is not None:
        return found
    checkout = checkout_root()
    if checkout is not None:
        return ModulesHome(checkout, "share")
    raise InvalidInput(
        f"{output_root}: no vendored stacklock modules here or above",
        problems=[Problem(str(output_root / VENDOR_DIR), "missing: the Terraform modules the "
                          "rendered roots call are vendored into the repository",
                          f"stacklock init --upgrade <repository root> (writes {VENDOR_DIR}/)")])


def stale_vendor(home: ModulesHome) -> list[str]:
    """Files of a vendored copy that differ from this stacklock's (missing, changed, extra,
    or the stamp), as paths under `home.path`. A source tree or the share is current."""
    if home.kind != "vendored":
        return []
    wanted = vendor_files(share_root())
    have = vendor_files(home.path)
    stale = [rel for rel, data in wanted.items() if have.get(rel) != data]
    stale += [rel for rel in have if rel not in wanted]
    try:
        stamp = (home.path / STAMP).read_text("utf-8")
    except OSError:
        stamp = ""
    if stamp != stamp_text(wanted):
        stale.append(STAMP)
    return sorted(stale)


def write_vendor(repo: Path) -> list[str]:
    """Vendor this stacklock's modules into `repo`/vendor/stacklock (replacing an older copy
    whole: a file stacklock no longer ships goes away); return what changed."""
    dest = repo / VENDOR_DIR
    source = share_root()
    wanted = vendor_files(source)
    have = vendor_files(dest) if dest.is_dir() else {}
    changed = []
    for rel in sorted(set(have) - set(wanted)):
        (dest / rel).unlink()
        changed.append(rel)
    for rel, data in wanted.items():
        if have.get(rel) == data:
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(source / rel, tmp)
        shutil.copymode(source / rel, tmp)  # lab-node.sh stays executable
        os.replace(tmp, target)
        changed.append(rel)
    for folder in sorted((p for p in dest.rglob("*") if p.is_dir()), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
    stamp = stamp_text(wanted)
    path = dest / STAMP
    if not path.is_file() or path.read_text("utf-8") != stamp:
        path.write_text(stamp, "utf-8")
        changed.append(STAMP)
    return sorted(changed)
