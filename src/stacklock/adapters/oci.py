"""OCI images written byte for byte by stacklock: reproducible layers, an OCI image layout,
a `docker load` archive of it, and the Debian pieces an image is assembled from.

Nothing here runs `docker build`: a build with Dockerfile steps stamps times and ids into
its layers and config. Instead every layer is a tar written here from a folder:

* entries in byte order of their paths (directories before what they hold), relative
  names without `./`, GNU format (no PAX headers, so no atime or ctime);
* every mtime set to one time (`SOURCE_DATE_EPOCH`), uid/gid numeric with no user or
  group names, modes as on disk, hard links kept as links;
* gzip with no file name, mtime 0 and a fixed level, so the blob's digest follows from
  the tar's.

The image config and manifest are canonical JSON (sorted keys, no spaces); the config's
`created` and each history entry's time are the same epoch. So the same folders give the
same layer digests, the same config and the same manifest digest.

    python -m stacklock.adapters.oci digest LAYOUT   # the manifest digest of a layout
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import stat
import sys
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from stacklock.adapters import mirror
from stacklock.adapters.proc import run_command
from stacklock.errors import ToolFailed

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_ANNOTATION = "org.opencontainers.image.ref.name"
#: gzip level of every layer (a fixed level: the same tar gives the same blob)
GZIP_LEVEL = 6


def canonical_json(data: Any) -> bytes:
    """The one byte form of a JSON document stacklock writes into an image."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Layer:
    """One layer blob: `digest` of the gzip blob, `diff_id` of the tar inside, its size."""

    path: Path
    digest: str
    diff_id: str
    size: int
    comment: str

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": MEDIA_LAYER_GZIP, "digest": self.digest, "size": self.size}


class _Hashing(io.RawIOBase):
    """A write-only stream that hashes and counts what passes through it to `inner`."""

    def __init__(self, inner: IO[bytes] | io.BufferedIOBase | None) -> None:
        self.inner = inner
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.sha.update(view)
        self.size += len(view)
        if self.inner is not None:
            self.inner.write(view)
        return len(view)


def _walk(root: Path) -> Iterator[Path]:
    """Every path under `root` (not root itself), parents first, in byte order of names."""
    with os.scandir(root) as it:
        names = sorted((e.name for e in it), key=os.fsencode)
    for name in names:
        child = root / name
        yield child
        if child.is_dir() and not child.is_symlink():
            yield from _walk(child)


def _tarinfo(path: Path, name: str, epoch: int,
             links: dict[tuple[int, int], str]) -> tuple[tarfile.TarInfo, bool]:
    st = path.lstat()
    info = tarfile.TarInfo(name)
    info.mtime = epoch
    info.uid, info.gid = st.st_uid, st.st_gid
    info.uname = info.gname = ""
    info.mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(path)
        return info, False
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
        return info, False
    if stat.S_ISREG(st.st_mode):
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in links:
            info.type = tarfile.LNKTYPE
            info.linkname = links[key]
            return info, False
        if st.st_nlink > 1:
            links[key] = name
        info.size = st.st_size
        return info, True
    raise ToolFailed(f"{path}: not a file, folder or link; an image layer holds no devices, "
                     "fifos or sockets")


def write_layer(root: Path, dest_dir: Path, *, epoch: int, comment: str,
                skip: Sequence[str] = ()) -> Layer:
    """The gzip'd tar layer of everything under `root` (paths relative to it), written to
    `dest_dir/<digest hex>`; `skip`: relative paths left out with what is below them."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = dest_dir / ".layer.part"
    skipped = tuple(s.strip("/") for s in skip)
    links: dict[tuple[int, int], str] = {}
    with tmp.open("wb") as fh:
        blob = _Hashing(fh)
        with gzip.GzipFile(filename="", mode="wb", fileobj=blob, mtime=0,
                           compresslevel=GZIP_LEVEL) as gz:
            diff = _Hashing(gz)
            with tarfile.open(fileobj=diff, mode="w|", format=tarfile.GNU_FORMAT) as tar:
                for path in _walk(root):
                    name = path.relative_to(root).as_posix()
                    if any(name == s or name.startswith(s + "/") for s in skipped):
                        continue
                    info, regular = _tarinfo(path, name, epoch, links)
                    if regular:
                        with path.open("rb") as src:
                            tar.addfile(info, src)
                    else:
                        tar.addfile(info)
    digest = "sha256:" + blob.sha.hexdigest()
    final = dest_dir / digest.split(":", 1)[1]
    tmp.replace(final)
    return Layer(final, digest, "sha256:" + diff.sha.hexdigest(), blob.size, comment)


def layer_from_tar(tar_path: Path, dest_dir: Path, *, comment: str) -> Layer:
    """An existing uncompressed layer tar (e.g. the lab image's, from `docker save`) as a
    gzip blob, its bytes unchanged: its diff_id stays the one Docker knows."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = dest_dir / ".layer.part"
    with tmp.open("wb") as fh, tar_path.open("rb") as src:
        blob = _Hashing(fh)
        with gzip.GzipFile(filename="", mode="wb", fileobj=blob, mtime=0,
                           compresslevel=GZIP_LEVEL) as gz:
            diff = _Hashing(gz)
            shutil.copyfileobj(src, diff, 1 << 20)
    digest = "sha256:" + blob.sha.hexdigest()
    final = dest_dir / digest.split(":", 1)[1]
    tmp.replace(final)
    return Layer(final, digest, "sha256:" + diff.sha.hexdigest(), blob.size, comment)


def image_config(layers: Sequence[Layer], *, created: str, config: Mapping[str, Any]) -> bytes:
    """The image config (canonical JSON): `config` is the runtime part (User, Env,
    Entrypoint, Cmd, ExposedPorts, Labels, WorkingDir)."""
    return canonical_json({
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": dict(config),
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": created, "created_by": f"stacklock: {layer.comment}"}
                    for layer in layers],
    })


@dataclass(frozen=True)
class Image:
    """An image in an OCI layout: where, under which reference, and its digests."""

    layout: Path
    ref: str
    manifest_digest: str
    config_digest: str
    layers: tuple[Layer, ...]
    size: int  # bytes of its blobs (config, manifest and layers: what a registry stores)


def _put_blob(layout: Path, data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest.split(":", 1)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_bytes(data)
    return digest, len(data)


def write_layout(layout: Path, layers: Sequence[Layer], config: bytes, *, ref: str,
                 annotations: Mapping[str, str] | None = None) -> Image:
    """An OCI image layout at `layout` (layer blobs moved in) holding one image, `ref`."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    for layer in layers:
        target = blobs / layer.digest.split(":", 1)[1]
        if layer.path != target:
            layer.path.replace(target)
    config_digest, config_size = _put_blob(layout, config)
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [layer.descriptor() for layer in layers],
    }
    if annotations:
        manifest["annotations"] = dict(sorted(annotations.items()))
    manifest_bytes = canonical_json(manifest)
    manifest_digest, manifest_size = _put_blob(layout, manifest_bytes)
    index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [{
        "mediaType": MEDIA_MANIFEST, "digest": manifest_digest, "size": manifest_size,
        "annotations": {REF_ANNOTATION: ref}}]}
    (layout / "index.json").write_bytes(canonical_json(index))
    (layout / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
    kept = tuple(Layer(blobs / la.digest.split(":", 1)[1], la.digest, la.diff_id, la.size,
                       la.comment) for la in layers)
    size = config_size + manifest_size + sum(la.size for la in layers)
    return Image(layout, ref, manifest_digest, config_digest, kept, size)


def read_layout(layout: Path) -> Image:
    """The one image of an OCI layout this module wrote (its digests checked)."""
    try:
        index = json.loads((layout / "index.json").read_bytes())
        desc = index["manifests"][0]
        manifest_bytes = (layout / "blobs" / "sha256" / desc["digest"].split(":", 1)[1]).read_bytes()
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise ToolFailed(f"{layout}: not an OCI image layout stacklock wrote ({exc})") from None
    if "sha256:" + hashlib.sha256(manifest_bytes).hexdigest() != desc["digest"]:
        raise ToolFailed(f"{layout}: the manifest blob does not match its digest")
    manifest = json.loads(manifest_bytes)
    blobs = layout / "blobs" / "sha256"
    config_bytes = (blobs / manifest["config"]["digest"].split(":", 1)[1]).read_bytes()
    config = json.loads(config_bytes)
    diff_ids = config["rootfs"]["diff_ids"]
    layers = tuple(
        Layer(blobs / d["digest"].split(":", 1)[1], d["digest"], diff_ids[i], int(d["size"]),
              str(config["history"][i].get("created_by", "")))
        for i, d in enumerate(manifest["layers"]))
    size = len(config_bytes) + len(manifest_bytes) + sum(la.size for la in layers)
    return Image(layout, str(desc.get("annotations", {}).get(REF_ANNOTATION, "")),
                 desc["digest"], manifest["config"]["digest"], layers, size)


def write_docker_archive(image: Image, dest: Path, *, tag: str) -> Path:
    """A `docker load` archive of `image` (Docker 20.10 loads no OCI layout): the same
    config bytes (so the image id Docker shows is the config digest) and gzip layers."""
    blobs = image.layout / "blobs" / "sha256"
    cfg = image.config_digest.split(":", 1)[1]
    manifest = [{"Config": f"{cfg}.json", "RepoTags": [tag],
                 "Layers": [f"{la.digest.split(':', 1)[1]}/layer.tar" for la in image.layers]}]
    with tarfile.open(dest, "w", format=tarfile.GNU_FORMAT) as tar:
        tar.add(blobs / cfg, arcname=f"{cfg}.json")
        for la in image.layers:
            tar.add(la.path, arcname=f"{la.digest.split(':', 1)[1]}/layer.tar")
        data = canonical_json(manifest)
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return dest


def docker_load(image: Image, work: Path, *, tag: str, docker: str = "docker") -> str:
    """Load `image` into the Docker daemon under `tag`; return the image id it got."""
    archive = write_docker_archive(image, work / "docker-archive.tar", tag=tag)
    try:
        run_command([docker, "load", "-i", str(archive)], timeout=900)
        res = run_command([docker, "image", "inspect", "-f", "{{.Id}}", tag], timeout=60)
    finally:
        archive.unlink(missing_ok=True)
    return res.stdout.strip()


# --------------------------------------------------------------------------- Debian pieces


def docker_save_layer(image: str, dest: Path, *, docker: str = "docker") -> Path:
    """The one layer of a single-layer image (the lab's `docker import`ed Debian rootfs) as
    its uncompressed tar, at `dest`."""
    work = dest.parent / f".{dest.name}.save"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        archive = work / "image.tar"
        run_command([docker, "save", "-o", str(archive), image], timeout=900)
        with tarfile.open(archive) as tar:
            manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
            layers = manifest[0]["Layers"]
            if len(layers) != 1:
                raise ToolFailed(f"{image} has {len(layers)} layers; the base must have one "
                                 "(the lab image is one `docker import`)")
            member = tar.extractfile(layers[0])
            if member is None:
                raise ToolFailed(f"{image}: its layer {layers[0]} is not a file in `docker save`")
            with dest.open("wb") as out:
                shutil.copyfileobj(member, out, 1 << 20)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


def extract_tar(tar_path: Path, dest: Path) -> None:
    """Unpack a layer tar as root would (owners, modes, links kept): GNU tar, not Python's."""
    dest.mkdir(parents=True, exist_ok=True)
    run_command(["tar", "-C", str(dest), "--numeric-owner", "--same-owner", "-xpf",
                 str(tar_path)], timeout=900)


def deb_extract(deb: Path, dest: Path) -> list[str]:
    """Unpack a .deb's files (no maintainer scripts) into `dest`; return the paths it holds
    as dpkg lists them (`/.`, `/usr`, ...)."""
    run_command(["dpkg-deb", "-x", str(deb), str(dest)], timeout=600)
    listing = run_command(["dpkg-deb", "-c", str(deb)], timeout=600).stdout
    paths = []
    for line in listing.splitlines():
        name = line.split(None, 5)[-1].split(" -> ", 1)[0].split(" link to ", 1)[0]
        name = name.removeprefix(".")
        paths.append(name.rstrip("/") or "/.")
    return paths


def deb_control(deb: Path) -> str:
    """The control stanza of a .deb (as `dpkg-deb -f` prints it)."""
    return run_command(["dpkg-deb", "-f", str(deb)], timeout=120).stdout


def deb_md5sums(deb: Path) -> str:
    """The md5sums control file of a .deb ("" when it has none)."""
    res = run_command(["dpkg-deb", "-I", str(deb), "md5sums"], check=False, timeout=120)
    return res.stdout if res.returncode == 0 else ""


def resolve_debs(repo: Path, status: Path, packages: Sequence[str], work: Path) -> list[Path]:
    """The .deb files of `repo` (a flat apt repository: the lab mirror's) that installing
    `packages` (NAME or NAME=VERSION) adds to a system whose dpkg status is `status`,
    resolved by apt itself offline; sorted by file name."""
    state = work / "apt"
    for sub in ("lists/partial", "archives/partial", "cache", "state"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    (state / "sources.list").write_text(f"deb [trusted=yes] file:{repo.resolve()} ./\n")
    (state / "preferences").write_text("")
    opts = mirror.apt_options(state, status)
    run_command(["apt-get", *opts, "update"], timeout=300)
    res = run_command(["apt-get", *opts, "-s", "install", *packages],
                      env={"DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}, timeout=300)
    wanted: set[tuple[str, str]] = set()
    for line in res.stdout.splitlines():
        found = re.match(r"Inst (\S+) (?:\[[^\]]*\] )?\((\S+)", line)
        if found:
            wanted.add((found.group(1).split(":", 1)[0], found.group(2)))
    files: dict[tuple[str, str], Path] = {}
    name = version = ""
    for line in (repo / "Packages").read_text().splitlines():
        if line.startswith("Package: "):
            name = line.split(": ", 1)[1]
        elif line.startswith("Version: "):
            version = line.split(": ", 1)[1]
        elif line.startswith("Filename: "):
            files[(name, version)] = repo / line.split(": ", 1)[1].removeprefix("./")
    missing = sorted(f"{n}={v}" for n, v in wanted if (n, v) not in files)
    if missing:
        raise ToolFailed(f"apt chose packages the mirror does not hold: {', '.join(missing)}")
    return sorted((files[k] for k in wanted), key=lambda p: p.name)


# --------------------------------------------------------------------------- registry


def _request(method: str, url: str, *, data: bytes | Path | None = None,
             headers: Mapping[str, str] | None = None,
             timeout: float = 600) -> tuple[int, dict[str, str], bytes]:
    body: Any = data
    hdrs = dict(headers or {})
    if isinstance(data, Path):
        hdrs["Content-Length"] = str(data.stat().st_size)
        body = data.open("rb")
    req = urllib.request.Request(url, data=body, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()
    except (urllib.error.URLError, OSError) as exc:
        raise ToolFailed(f"{method} {url}: {exc}") from None
    finally:
        if hasattr(body, "close"):
            body.close()


def push(image: Image, registry: str, repository: str, *, tag: str | None = None) -> str:
    """Push `image` to a registry (Docker Registry HTTP API v2, no authentication: the lab's)
    at `registry` (http://HOST:PORT), blobs it already holds skipped; return the manifest
    digest the registry reports, checked against the layout's."""
    base = f"{registry.rstrip('/')}/v2/{repository}"
    blobs = image.layout / "blobs" / "sha256"
    manifest_bytes = (blobs / image.manifest_digest.split(":", 1)[1]).read_bytes()
    manifest = json.loads(manifest_bytes)
    for desc in [manifest["config"], *manifest["layers"]]:
        digest = desc["digest"]
        status, _, _ = _request("HEAD", f"{base}/blobs/{digest}", timeout=60)
        if status == 200:
            continue
        status, headers, text = _request("POST", f"{base}/blobs/uploads/", data=b"", timeout=60)
        location = headers.get("Location", "")
        if status != 202 or not location:
            raise ToolFailed(f"{registry}: starting an upload answered {status}: {text[:200]!r}")
        if location.startswith("/"):
            location = registry.rstrip("/") + location
        sep = "&" if "?" in location else "?"
        status, _, text = _request(
            "PUT", f"{location}{sep}digest={digest}", data=blobs / digest.split(":", 1)[1],
            headers={"Content-Type": "application/octet-stream"})
        if status != 201:
            raise ToolFailed(f"{registry}: uploading {digest} answered {status}: {text[:200]!r}")
    status, headers, text = _request(
        "PUT", f"{base}/manifests/{tag or image.manifest_digest}", data=manifest_bytes,
        headers={"Content-Type": manifest["mediaType"]}, timeout=60)
    if status != 201:
        raise ToolFailed(f"{registry}: putting the manifest answered {status}: {text[:300]!r}")
    got = headers.get("Docker-Content-Digest", image.manifest_digest)
    if got != image.manifest_digest:
        raise ToolFailed(f"{registry} stored the manifest as {got}, not {image.manifest_digest}")
    return got


def fetch_manifest(registry: str, repository: str, digest: str) -> bytes:
    """The manifest stored under `digest`, its bytes checked against the digest."""
    status, _, body = _request(
        "GET", f"{registry.rstrip('/')}/v2/{repository}/manifests/{digest}",
        headers={"Accept": MEDIA_MANIFEST}, timeout=60)
    if status != 200:
        raise ToolFailed(f"{registry}: {repository}@{digest} answered {status}")
    if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
        raise ToolFailed(f"{registry}: {repository}@{digest} holds other bytes")
    return body


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 2 or args[0] != "digest":
        print("usage: python -m stacklock.adapters.oci digest LAYOUT", file=sys.stderr)
        return 2
    print(read_layout(Path(args[1])).manifest_digest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
