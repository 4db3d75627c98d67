"""Resolve the complete Python closure of the serving venv, with hashes, through uv.

`uv pip compile --format pylock.toml` (PEP 751) resolves the top-level requirements against
the manifest's package sources for the nodes' Python and platform, without installing
anything, and lists every distribution file with its sha256. stacklock keeps, per
distribution, the files a node can install (wheels whose tags the target accepts; the sdist
only when no wheel fits), so the lock holds one exact set: name, version, sha256 and the file.

Index semantics: uv's default `first-index` strategy takes every package from the first index
that has it (extra indexes first, then the index URL), never the best version across several
indexes: one index per package, never a union for the same name.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)

from stacklock.adapters.proc import run_command
from stacklock.errors import ExitCode, Problem, StacklockError

#: the platform every supported OS satisfies (Debian 12: glibc 2.36, Ubuntu 22.04: 2.35)
PLATFORM = "x86_64-manylinux_2_28"
MANYLINUX_MAX = (2, 28)


@dataclass(frozen=True)
class Sources:
    """Where distributions come from: as given to uv (and, on the node, to pip)."""

    index_url: str
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()


def uv_binary() -> str:
    """uv from this environment (the `uv` PyPI package), else from PATH."""
    here = Path(sys.executable).parent / "uv"
    if here.exists():
        return str(here)
    try:
        from uv import find_uv_bin  # type: ignore[import-not-found,unused-ignore]

        return str(find_uv_bin())
    except ImportError:
        found = shutil.which("uv")
        if found:
            return found
    raise StacklockError("uv is not installed: `pip install uv` (stacklock depends on it)",
                         ExitCode.FAILED)


def target_tags(python: str) -> set[Tag]:
    """Wheel tags a CPython `python` (3.11) on x86_64 manylinux 2.28 (and older) accepts."""
    major, minor = (int(x) for x in python.split(".")[:2])
    platforms = [f"manylinux_{MANYLINUX_MAX[0]}_{m}_x86_64" for m in range(MANYLINUX_MAX[1], 4, -1)]
    platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64",
                  "linux_x86_64"]
    tags = set(cpython_tags((major, minor), platforms=platforms))
    tags |= set(compatible_tags((major, minor), f"cp{major}{minor}", platforms=platforms))
    return tags


def _pick_files(pkg: dict[str, Any], tags: set[Tag]) -> list[dict[str, Any]]:
    wheels = []
    for wheel in pkg.get("wheels") or []:
        name = _file_name(wheel)
        try:
            _, _, _, wtags = parse_wheel_filename(name)
        except InvalidWheelFilename:
            continue
        if wtags & tags:
            wheels.append(wheel)
    if wheels:
        return wheels
    sdist = pkg.get("sdist")
    if isinstance(sdist, dict):
        try:
            parse_sdist_filename(_file_name(sdist))
            return [sdist]
        except InvalidSdistFilename:
            return []
    return []


def _file_name(entry: dict[str, Any]) -> str:
    from urllib.parse import unquote

    return unquote(str(entry.get("name") or str(entry.get("url", "")).rsplit("/", 1)[-1]))


def closure_from_pylock(text: str, python: str) -> list[dict[str, Any]]:
    """[{name, version, files: [{file, url, sha256}]}] from a pylock.toml, sorted by name."""
    data = tomllib.loads(text)
    tags = target_tags(python)
    out = []
    for pkg in data.get("packages") or []:
        name = canonicalize_name(str(pkg["name"]))
        files = []
        for f in _pick_files(pkg, tags):
            digest = (f.get("hashes") or {}).get("sha256")
            if not digest:
                continue
            files.append({"file": _file_name(f), "url": str(f.get("url", "")),
                          "sha256": str(digest)})
        if not files:
            raise StacklockError(
                f"{name} {pkg.get('version')}: no file with a sha256 that a CPython {python} "
                "x86_64 node can install", ExitCode.INVALID,
                [Problem("package_sources.pip", f"{name} has no installable file with a hash",
                         "check the index serves wheels for the nodes' Python")])
        files.sort(key=lambda f: f["file"])
        out.append({"name": str(name), "version": str(pkg["version"]), "files": files})
    return sorted(out, key=lambda p: p["name"])


def resolve_closure(requirements: Sequence[str], python: str, sources: Sources, *,
                    netrc: str = "") -> list[dict[str, Any]]:
    """Resolve `requirements` (exact pins) to their complete closure with hashes (exit 3 when
    the sources cannot be reached; the message names them and the `--offline` way out).

    `netrc`: index credentials (netrc text, see stacklock.core.credentials), given to uv as a
    0600 file in the private temporary folder (`$NETRC`), removed with it."""
    argv = [uv_binary(), "pip", "compile", "-", "--format", "pylock.toml", "--quiet",
            "--python-version", python, "--python-platform", PLATFORM,
            "--index-strategy", "first-index", "--no-config",
            "--index-url", sources.index_url]
    for url in sources.extra_index_urls:
        argv += ["--extra-index-url", url]
    for link in sources.find_links:
        argv += ["--find-links", link]
    with tempfile.TemporaryDirectory(prefix="stacklock-resolve-") as tmp:
        out = Path(tmp) / "pylock.toml"
        env = {"UV_NO_PROGRESS": "1"}
        if netrc:
            netrc_path = Path(tmp) / "netrc"
            fd = os.open(netrc_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(netrc)
            env["NETRC"] = str(netrc_path)
        result = run_command([*argv, "-o", str(out)], input_text="\n".join(requirements) + "\n",
                             check=False, timeout=600, env=env)
        if result.returncode != 0:
            raise resolve_failure((result.stderr or result.stdout),
                                  [sources.index_url, *sources.extra_index_urls,
                                   *sources.find_links])
        text = out.read_text("utf-8")
    return closure_from_pylock(text, python)


def uv_reason(output: str, limit: int = 30) -> list[str]:
    """uv's own explanation: from its first error line (a cross, `error:`) on, every line (a
    resolution's "Because ... we can conclude ..." runs over several), at most `limit`."""
    lines = [line.rstrip() for line in output.strip().splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines)
                  if line.lstrip().startswith(("\u00d7", "error:", "Error:"))), max(0, len(lines) - 6))
    return lines[start:start + limit]


def resolve_failure(output: str, where: list[str]) -> StacklockError:
    """The error of a failed resolution, with uv's reason: pins that cannot be satisfied are
    the manifest's to change (exit 2); anything else (an index that does not answer) could not
    finish (exit 3)."""
    reason = uv_reason(output)
    text = "\n  ".join(reason)
    if "No solution found" in output or "unsatisfiable" in output:
        return StacklockError(
            f"the stack's Python pins cannot be satisfied together (uv):\n  {text}",
            ExitCode.INVALID,
            [Problem("stacks.NAME.torch / torchserve / python",
                     "no set of distributions satisfies the pins",
                     "change the pins uv names above (a torch build the torchserve release "
                     "accepts, a Python version they support)")])
    return StacklockError(
        f"could not resolve the Python closure against {', '.join(where)}:\n  {text}",
        ExitCode.FAILED,
        [Problem("package_sources.pip", "the closure could not be resolved",
                 "run `stacklock lock` where these indexes are reachable, or "
                 "`stacklock lock --offline` to keep the closure of the existing lock")])


__all__ = ["PLATFORM", "Sources", "closure_from_pylock", "resolve_closure", "resolve_failure",
           "target_tags", "uv_reason"]
