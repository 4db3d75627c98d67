"""The files of a pinned apt package, read on the controller from its locked .deb: every
path of data.tar with its sha256 (`l:TARGET` for a symlink; directories left out) and the
package's conffiles, cached by the .deb's sha256 in ~/.cache/stacklock/debfiles/SHA.json.
The .deb is found through the lab mirror's Packages index (Package, Version, Filename,
SHA256) and checked against that sha256. data.tar.xz/.gz/.bz2 are read with the standard
library; anything else (data.tar.zst) through `dpkg-deb --fsys-tarfile`. The .debs of the
official repositories come through stacklock.adapters.aptrepo, which uses the same index
parsing and extraction (`packages_index`, `read_deb`)."""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import os
import tarfile
import tempfile
from pathlib import Path
from typing import IO, Any

from stacklock.adapters.mirror import mirror_dir
from stacklock.adapters.proc import run_command
from stacklock.adapters.wheelrecord import cache_root

_INDEXES: dict[Path, dict[tuple[str, str], tuple[Path, str]]] = {}


def packages_index(text: str) -> dict[tuple[str, str], tuple[str, str]]:
    """(package, version) -> (Filename, SHA256) of an apt Packages index's text (also used
    for the official repositories' indexes: stacklock.adapters.aptrepo)."""
    out: dict[tuple[str, str], tuple[str, str]] = {}
    for para in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in para.splitlines():
            if line and not line[0].isspace() and ":" in line:
                k, _, v = line.partition(":")
                fields[k] = v.strip()
        if {"Package", "Version", "Filename", "SHA256"} <= set(fields):
            out[(fields["Package"], fields["Version"])] = (fields["Filename"], fields["SHA256"])
    return out


def _packages(repo: Path) -> dict[tuple[str, str], tuple[Path, str]]:
    """(package, version) -> (.deb path, sha256) from repo/Packages."""
    index = repo / "Packages"
    if not index.is_file():
        return {}
    return {key: ((repo / filename).resolve(), digest) for key, (filename, digest)
            in packages_index(index.read_text("utf-8", "replace")).items()}


def find_deb(package: str, version: str, repo: Path | None = None) -> tuple[Path, str] | None:
    repo = repo or (mirror_dir() / "apt")
    if repo not in _INDEXES:
        _INDEXES[repo] = _packages(repo)
    found = _INDEXES[repo].get((package, version))
    if found is None or not found[0].is_file():
        return None
    return found


def _ar_members(data: bytes) -> dict[str, bytes]:
    if not data.startswith(b"!<arch>\n"):
        raise ValueError("not a .deb (ar archive)")
    out: dict[str, bytes] = {}
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos:pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        out[name] = data[pos + 60:pos + 60 + size]
        pos += 60 + size + (size % 2)
    return out


def _open_tar(name: str, blob: bytes, deb: Path) -> tarfile.TarFile:
    if name.endswith(".xz"):
        return tarfile.open(fileobj=io.BytesIO(lzma.decompress(blob)))
    if name.endswith((".gz", ".bz2", ".tar")):
        return tarfile.open(fileobj=io.BytesIO(blob))
    raise ValueError(f"{deb.name}: {name} needs dpkg-deb")


def _entries(tar: tarfile.TarFile) -> dict[str, str]:
    files: dict[str, str] = {}
    links: dict[str, str] = {}
    for m in tar.getmembers():
        path = "/" + m.name.lstrip("./") if m.name not in (".", "./") else "/"
        if m.isdir():
            continue
        if m.issym():
            files[path] = f"l:{m.linkname}"
        elif m.islnk():
            links[path] = "/" + m.linkname.lstrip("./")
        elif m.isfile():
            fh: IO[bytes] | None = tar.extractfile(m)
            h = hashlib.sha256()
            if fh is not None:
                for block in iter(lambda fh=fh: fh.read(1 << 20), b""):  # type: ignore[misc]
                    h.update(block)
            files[path] = h.hexdigest()
    for path, target in links.items():
        files[path] = files.get(target, "type:other")
    return files


def deb_files(package: str, version: str, repo: Path | None = None) -> dict[str, Any] | None:
    """{sha256, file, files: {path: digest}, conffiles: [...]}, or None without a .deb."""
    found = find_deb(package, version, repo)
    if found is None:
        return None
    deb, digest = found
    return cached_files(digest) or read_deb(deb, digest)


def _cache_file(digest: str) -> Path:
    return cache_root() / "debfiles" / f"{digest}.json"


def cached_files(digest: str) -> dict[str, Any] | None:
    """What `read_deb` took from the .deb with this sha256 earlier, or None."""
    cached = _cache_file(digest)
    if not cached.is_file():
        return None
    data: dict[str, Any] = json.loads(cached.read_text("utf-8"))
    return data


def read_deb(deb: Path, digest: str, name: str | None = None) -> dict[str, Any] | None:
    """The files and conffiles of `deb`, which must have this sha256 (None when it has not),
    kept in the cache by that sha256; `name`: the file name to record (default deb's)."""
    blob = deb.read_bytes()
    if hashlib.sha256(blob).hexdigest() != digest:
        return None  # the file is not the one its index (and the lock) names
    members = _ar_members(blob)
    control = next(n for n in members if n.startswith("control.tar"))
    conffiles: list[str] = []
    with _open_tar(control, members[control], deb) as tar:
        for m in tar.getmembers():
            if m.name.lstrip("./") == "conffiles":
                fh = tar.extractfile(m)
                text = fh.read().decode() if fh else ""
                conffiles = [x.split()[-1] if x.startswith("remove-on-upgrade") else x.strip()
                             for x in text.splitlines() if x.strip()]
    data_name = next(n for n in members if n.startswith("data.tar"))
    try:
        with _open_tar(data_name, members[data_name], deb) as tar:
            files = _entries(tar)
    except ValueError:  # data.tar.zst: dpkg-deb writes the tar, the standard library reads it
        with tempfile.TemporaryDirectory() as tmpdir:
            tar_path = Path(tmpdir) / "data.tar"
            run_command(["sh", "-c", 'exec dpkg-deb --fsys-tarfile "$1" > "$2"', "sh",
                         str(deb), str(tar_path)])
            with tarfile.open(tar_path) as tar:
                files = _entries(tar)
    out = {"sha256": digest, "file": name or deb.name, "files": files, "conffiles": conffiles}
    cached = _cache_file(digest)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(out, sort_keys=True), "utf-8")
    tmp.replace(cached)
    return out


__all__ = ["cached_files", "deb_files", "find_deb", "packages_index", "read_deb"]
