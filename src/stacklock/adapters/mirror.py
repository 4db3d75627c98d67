"""The local air-gapped mirror: a flat apt repository and a PEP 503 pip index, over HTTP.

What is in it (cached in `/var/cache/stacklock/mirror` for root, else `.cache/mirror`, so a
second build takes seconds):

* `apt/`: the real Debian 12 packages the lab image lacks for the pinned stack — `docker.io`,
  the non-free `nvidia-driver` 535 packages, the CUDA 11.8 runtime (`libcudart11.0`),
  `openjdk-17-jre-headless`, `python3-venv`, the serving endpoint's `nginx` and
  `nginx-common` — and their dependencies, resolved against the
  lab image's own dpkg status; plus TEST packages for nvidia-container-toolkit (two versions),
  which is in no reachable repository. They are built here with dpkg-deb, described as
  "stacklock test package — not NVIDIA's", and ship a small `nvidia-ctk` that implements
  `--version` and `runtime configure --runtime=docker` so the roles' mechanics really run.
* `wheels/` + `simple/`: exactly the Python closure locked in examples/lab.lock (torch's CPU
  build, TorchServe, the archiver, their companions, pip and every dependency, for CPython 3.11
  on Debian 12), each file downloaded from the URL the lock names and checked against its
  sha256; nothing else.
* A tiny threaded static HTTP server serving the directory, started in the background with a
  pid file and a log file. Runs share it: each run holds a lease (`acquire_server`: a shared
  flock on `run/mirror-HOST-PORT.users` while it needs the server), and a server started for
  runs is stopped by the last lease holder (`release_server`), never under another run.
  Building the mirror takes an exclusive lock, so two first runs do not build it at once.

    python -m stacklock.adapters.mirror build | serve-bg --host H --port P | stop --host H --port P
    python -m stacklock.adapters.mirror collections   # community.docker for molecule
"""

from __future__ import annotations

import argparse
import email.utils
import fcntl
import gzip
import hashlib
import html
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from stacklock.adapters import docker as lab_docker
from stacklock.adapters import lease
from stacklock.adapters.proc import run_command
from stacklock.core.files import atomic_write
from stacklock.errors import StacklockError, ToolFailed

log = logging.getLogger("stacklock.mirror")

MARKER = "stacklock-mirror.txt"
DEBIAN_SUITES = ("bookworm", "bookworm-updates")
DEBIAN_SECURITY_URI = "http://deb.debian.org/debian-security"
DEBIAN_COMPONENTS = "main contrib non-free non-free-firmware"
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

#: real Debian packages served by the mirror (with the dependencies the lab image lacks)
APT_PACKAGES: tuple[str, ...] = (
    "docker.io",
    "nvidia-driver=535.309.01-0+deb12u1",
    "nvidia-smi=535.309.01-0+deb12u1",
    "nvidia-persistenced",
    "libcudart11.0",
    "openjdk-17-jre-headless",
    "python3-venv",
    "unattended-upgrades",
    # the serving endpoint's reverse proxy (role serving_endpoint), at packages.yaml's pin
    "nginx=1.22.1-9+deb12u12",
    "nginx-common=1.22.1-9+deb12u12",
)

#: the test packages standing in for NVIDIA's container toolkit, at these versions
TOOLKIT_TEST_VERSIONS: tuple[str, ...] = ("1.17.8-1", "1.18.0-1")

#: the lab's committed lock: the mirror's wheelhouse is exactly the closure it locks
LAB_LOCK = "examples/lab.lock"


def mirror_dir() -> Path:
    """Where the mirror lives: $STACKLOCK_MIRROR_DIR, else a machine-wide cache for root (so
    fresh clones, CI runs and the demo share one download), else the checkout's .cache."""
    env = os.environ.get("STACKLOCK_MIRROR_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/cache/stacklock/mirror")
    return lab_docker.cache_dir() / "mirror"


# --------------------------------------------------------------------------- apt part


def apt_options(state: Path, status_file: Path) -> list[str]:
    """apt-get options for an offline resolution against a private state folder `state`
    (sources.list and preferences in it) and the dpkg status `status_file`."""
    return [
        "-o", f"Dir::Etc::SourceList={state / 'sources.list'}",
        "-o", "Dir::Etc::SourceParts=/nonexistent",
        "-o", f"Dir::Etc::Preferences={state / 'preferences'}",
        "-o", "Dir::Etc::PreferencesParts=/nonexistent",
        "-o", f"Dir::State={state / 'state'}",
        "-o", f"Dir::State::Lists={state / 'lists'}",
        "-o", f"Dir::State::status={status_file}",
        "-o", f"Dir::Cache={state / 'cache'}",
        "-o", f"Dir::Cache::archives={state / 'archives'}",
        "-o", "Debug::NoLocking=1",
        "-o", "APT::Install-Recommends=false",
        "-o", "APT::Architecture=amd64",
    ]  # fmt: skip


def _image_status(state: Path) -> Path:
    """The lab image's dpkg status: dependencies are resolved against what the nodes have."""
    lab_docker.ensure_daemon()
    lab_docker.build_image()
    image_id = run_command(
        ["docker", "image", "inspect", "-f", "{{.Id}}", lab_docker.LAB_IMAGE], timeout=60
    ).stdout.strip()
    status = state / f"image-dpkg-status-{image_id.replace('sha256:', '')[:16]}"
    if not status.exists():
        res = run_command(
            ["docker", "run", "--rm", "--network", "none", lab_docker.LAB_IMAGE,
             "cat", "/var/lib/dpkg/status"],
            timeout=120,
        )  # fmt: skip
        status.write_text(res.stdout)
    return status


def download_debs(dest: Path, packages: Sequence[str] = APT_PACKAGES) -> list[Path]:
    """Download `packages` and the dependencies the lab image lacks into `dest`."""
    state = mirror_dir() / "apt-state"
    for sub in ("lists/partial", "archives/partial", "cache", "state"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    mirror = lab_docker.debian_mirror()
    lines = [
        f"deb [signed-by={DEBIAN_KEYRING}] {mirror} {suite} {DEBIAN_COMPONENTS}" for suite in DEBIAN_SUITES
    ]
    lines.append(
        f"deb [signed-by={DEBIAN_KEYRING}] {DEBIAN_SECURITY_URI} bookworm-security {DEBIAN_COMPONENTS}"
    )
    (state / "sources.list").write_text("\n".join(lines) + "\n")
    (state / "preferences").write_text("")
    status = _image_status(state)
    opts = apt_options(state, status)
    logf = lab_docker.cache_dir() / "logs" / "mirror-apt.log"
    stamp = state / "lists" / ".updated"
    if not stamp.exists() or time.time() - stamp.stat().st_mtime > 86400:
        run_command(["apt-get", *opts, "update"], capture=False, log_file=logf, timeout=900)
        stamp.touch()
    run_command(
        ["apt-get", *opts, "install", "-y", "--download-only", *packages],
        env={"DEBIAN_FRONTEND": "noninteractive"},
        capture=False,
        log_file=logf,
        timeout=1800,
    )
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for deb in sorted((state / "archives").glob("*.deb")):
        target = dest / deb.name
        if not target.exists():
            try:
                os.link(deb, target)  # same file system: no second copy of ~350 MB
            except OSError:
                shutil.copy2(deb, target)
        copied.append(target)
    return copied


_CTK_SCRIPT = r'''#!/usr/bin/python3
"""nvidia-ctk — stacklock test package, not NVIDIA's.

Implements just enough of NVIDIA's CLI for the stacklock roles to be exercised without
NVIDIA's repositories: `--version`, `runtime configure --runtime=docker [--config=FILE]`.
"""
import json
import os
import sys

VERSION = "@VERSION@"


def configure(args):
    runtime = "docker"
    config = "/etc/docker/daemon.json"
    set_default = False
    for arg in args:
        if arg.startswith("--runtime="):
            runtime = arg.split("=", 1)[1]
        elif arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        elif arg == "--set-as-default":
            set_default = True
    if runtime != "docker":
        print(f"unsupported runtime {runtime!r} (stacklock test package)", file=sys.stderr)
        return 1
    data = {}
    if os.path.exists(config):
        with open(config, encoding="utf-8") as fh:
            text = fh.read().strip()
        data = json.loads(text) if text else {}
    data.setdefault("runtimes", {})["nvidia"] = {"args": [], "path": "nvidia-container-runtime"}
    if set_default:
        data["default-runtime"] = "nvidia"
    os.makedirs(os.path.dirname(config), exist_ok=True)
    with open(config, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(data, indent=4, sort_keys=True) + "\n")
    print(f"Wrote updated config to {config}")
    return 0


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: nvidia-ctk [--version] runtime configure --runtime=docker")
        return 0
    if argv[0] in ("--version", "-v", "version"):
        print(f"NVIDIA Container Toolkit CLI version {VERSION}")
        print("stacklock test package - not NVIDIA's")
        return 0
    if argv[:2] == ["runtime", "configure"]:
        return configure(argv[2:])
    if argv[:2] == ["cdi", "generate"]:
        print("ERROR: no NVIDIA GPU found (stacklock test package)", file=sys.stderr)
        return 1
    print(f"unsupported command {' '.join(argv)!r} (stacklock test package)", file=sys.stderr)
    return 2


sys.exit(main(sys.argv[1:]))
'''

_RUNTIME_SCRIPT = """#!/bin/sh
# nvidia-container-runtime - stacklock test package, not NVIDIA's: passes through to runc.
exec runc "$@"
"""


def _build_deb(
    dest: Path,
    name: str,
    version: str,
    depends: str,
    files: dict[str, tuple[str, int]],
    description: str,
) -> Path:
    out = dest / f"{name}_{version}_amd64.deb"
    if out.exists():
        return out
    with tempfile.TemporaryDirectory(prefix="stacklock-deb-") as tmp:
        root = Path(tmp) / "pkg"
        (root / "DEBIAN").mkdir(parents=True)
        for rel, (content, mode) in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
            path.chmod(mode)
        control = [
            f"Package: {name}",
            f"Version: {version}",
            "Architecture: amd64",
            "Maintainer: stacklock tests <stacklock@localhost>",
            "Section: utils",
            "Priority: optional",
        ]
        if depends:
            control.append(f"Depends: {depends}")
        control.append(f"Description: stacklock test package — not NVIDIA's: {description}")
        control.append(
            " Built by the stacklock test setup to exercise pinning, holding and\n"
            " configuration. It contains no NVIDIA software."
        )
        (root / "DEBIAN" / "control").write_text("\n".join(control) + "\n")
        run_command(["dpkg-deb", "--root-owner-group", "--build", str(root), str(out)])
    return out


def build_toolkit_test_packages(dest: Path, versions: Sequence[str] = TOOLKIT_TEST_VERSIONS) -> list[Path]:
    """The nvidia-container-toolkit TEST packages (four per version, NVIDIA's package names)."""
    dest.mkdir(parents=True, exist_ok=True)
    built = []
    for version in versions:
        upstream = version.split("-", 1)[0]
        doc = "usr/share/doc/{}/README.stacklock"
        note = "stacklock test package - not NVIDIA's. Contains no NVIDIA software.\n"
        built.append(
            _build_deb(
                dest, "libnvidia-container1", version, "",
                {doc.format("libnvidia-container1"): (note, 0o644)},
                "NVIDIA container runtime library (stand-in)",
            )
        )  # fmt: skip
        built.append(
            _build_deb(
                dest, "libnvidia-container-tools", version,
                f"libnvidia-container1 (= {version})",
                {doc.format("libnvidia-container-tools"): (note, 0o644)},
                "NVIDIA container runtime library tools (stand-in)",
            )
        )  # fmt: skip
        built.append(
            _build_deb(
                dest, "nvidia-container-toolkit-base", version, "python3",
                {
                    "usr/bin/nvidia-ctk": (_CTK_SCRIPT.replace("@VERSION@", upstream), 0o755),
                    "usr/bin/nvidia-container-runtime": (_RUNTIME_SCRIPT, 0o755),
                    doc.format("nvidia-container-toolkit-base"): (note, 0o644),
                },
                "NVIDIA Container Toolkit base (stand-in nvidia-ctk)",
            )
        )  # fmt: skip
        built.append(
            _build_deb(
                dest, "nvidia-container-toolkit", version,
                f"nvidia-container-toolkit-base (= {version}), "
                f"libnvidia-container-tools (= {version})",
                {doc.format("nvidia-container-toolkit"): (note, 0o644)},
                "NVIDIA Container Toolkit (stand-in)",
            )
        )  # fmt: skip
    return built


def index_apt(repo: Path) -> None:
    """Flat repository: Packages, Packages.gz and a Release file with their hashes."""
    if not shutil.which("dpkg-scanpackages"):
        lab_docker.apt_install("dpkg-dev")
    res = run_command(["dpkg-scanpackages", "--multiversion", "."], cwd=repo, timeout=600)
    packages = res.stdout.encode()
    atomic_write(repo / "Packages", packages)
    atomic_write(repo / "Packages.gz", gzip.compress(packages, mtime=0))
    lines = [
        "Origin: stacklock",
        "Label: stacklock local mirror",
        "Suite: stacklock",
        "Codename: stacklock",
        "Architectures: amd64 all",
        "Description: stacklock air-gapped lab mirror (Debian packages + test packages)",
        f"Date: {email.utils.formatdate(usegmt=True)}",
    ]
    for field, algo in (("MD5Sum", "md5"), ("SHA256", "sha256")):
        lines.append(f"{field}:")
        for fname in ("Packages", "Packages.gz"):
            data = (repo / fname).read_bytes()
            digest = hashlib.new(algo, data).hexdigest()
            lines.append(f" {digest} {len(data)} {fname}")
    atomic_write(repo / "Release", ("\n".join(lines) + "\n").encode())


def apt_versions(repo: Path | None = None) -> dict[str, list[str]]:
    """Package name -> versions the mirror's apt repository serves."""
    repo = repo or mirror_dir() / "apt"
    found: dict[str, list[str]] = {}
    name = ""
    for line in (repo / "Packages").read_text().splitlines():
        if line.startswith("Package: "):
            name = line.split(": ", 1)[1]
        elif line.startswith("Version: "):
            found.setdefault(name, []).append(line.split(": ", 1)[1])
    return found


# --------------------------------------------------------------------------- pip part


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure_files(lock_path: Path | None = None) -> list[dict[str, str]]:
    """Every file of every locked Python closure in the lab's lock: {file, url, sha256}."""
    from stacklock.core.render import repo_root

    path = lock_path or repo_root() / LAB_LOCK  # the lab's committed lock
    try:
        lock = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise ToolFailed(f"the mirror serves the closure of {path}, which cannot be read: {exc}")\
            from None
    files: dict[str, dict[str, str]] = {}
    for stack in (lock.get("stacks") or {}).values():
        for pin in stack.get("pip") or []:
            for f in pin.get("files") or []:
                files[f["file"]] = {"file": f["file"], "url": f["url"], "sha256": f["sha256"]}
    if not files:
        raise ToolFailed(f"{path} locks no Python closure with files: run `stacklock lock` on it")
    return [files[k] for k in sorted(files)]


def download_wheels(dest: Path, files: Sequence[dict[str, str]]) -> None:
    from stacklock.core.lock import sha256_file

    """Exactly the locked files, each checked against its sha256 (from PyPI, or a local wheel
    folder for file:// URLs); anything else in `dest` is removed: the mirror serves the lock."""
    dest.mkdir(parents=True, exist_ok=True)
    wanted = {f["file"] for f in files}
    for f in files:
        target = dest / f["file"]
        if target.is_file() and sha256_file(target) == f["sha256"]:
            continue
        tmp = dest / f".{f['file']}.part"
        url = f["url"]
        try:
            if url.startswith("file://"):
                shutil.copyfile(urllib.parse.unquote(urllib.parse.urlparse(url).path), tmp)
            else:
                with urllib.request.urlopen(url, timeout=300) as resp, tmp.open("wb") as out:
                    shutil.copyfileobj(resp, out, 1 << 20)
        except (OSError, urllib.error.URLError) as exc:
            tmp.unlink(missing_ok=True)
            raise ToolFailed(f"could not download {url} for the mirror: {exc}") from None
        got = sha256_file(tmp)
        if got != f["sha256"]:
            tmp.unlink(missing_ok=True)
            raise ToolFailed(f"{url} has sha256 {got}, the lock says {f['sha256']}: refusing it")
        tmp.replace(target)
    for old in dest.iterdir():
        if old.is_file() and old.name not in wanted:
            old.unlink()


def index_pip(root: Path) -> None:
    """PEP 503 simple index under root/simple pointing at root/wheels, with sha256 fragments."""
    wheels = root / "wheels"
    simple = root / "simple"
    projects: dict[str, list[Path]] = {}
    for whl in sorted(wheels.glob("*.whl")) + sorted(wheels.glob("*.tar.gz")):
        projects.setdefault(_normalize(whl.name.split("-", 1)[0]), []).append(whl)
    final = simple
    simple = root / "simple.new"
    if simple.exists():
        shutil.rmtree(simple)
    simple.mkdir(parents=True)
    body = "".join(f'<a href="{p}/">{p}</a>\n' for p in sorted(projects))
    (simple / "index.html").write_text(f"<!DOCTYPE html>\n<html><body>\n{body}</body></html>\n")
    for proj, files in sorted(projects.items()):
        (simple / proj).mkdir()
        links = []
        for f in files:
            digest = hashlib.sha256(f.read_bytes()).hexdigest()
            href = f"../../wheels/{urllib.parse.quote(f.name)}#sha256={digest}"
            links.append(f'<a href="{html.escape(href)}">{html.escape(f.name)}</a>\n')
        (simple / proj / "index.html").write_text(
            f"<!DOCTYPE html>\n<html><body>\n{''.join(links)}</body></html>\n"
        )
    # swap the new index in (a server may be reading the old one)
    old = root / "simple.old"
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    simple.rename(final)
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- build


#: a mirror built from the same inputs within this many seconds is reused as it is
MIRROR_FRESH_SECONDS = 86400


def _inputs_fingerprint(skip_pip: bool) -> str:
    """What the mirror is built from: package lists, test packages, wheel requirements."""
    inputs = {
        "apt": APT_PACKAGES,
        "debian": lab_docker.debian_mirror(),
        "toolkit": TOOLKIT_TEST_VERSIONS,
        "ctk": hashlib.sha256(_CTK_SCRIPT.encode()).hexdigest(),
        "pip": None if skip_pip else [f["sha256"] for f in closure_files()],
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def _is_fresh(root: Path, fingerprint: str, skip_pip: bool) -> bool:
    marker = root / MARKER
    try:
        text, age = marker.read_text(), time.time() - marker.stat().st_mtime
    except OSError:
        return False
    indexes = [root / "apt" / "Packages"] + ([] if skip_pip else [root / "simple" / "index.html"])
    return fingerprint in text and age < MIRROR_FRESH_SECONDS and all(p.is_file() for p in indexes)


def build_mirror(*, skip_pip: bool = False, force: bool = False) -> Path:
    """Build (or refresh from cache) the whole mirror; return its root directory.

    A mirror built from the same inputs less than a day ago is returned as it is (no apt or
    pip resolution, no re-indexing); `force` refreshes it anyway.
    """
    root = mirror_dir()
    fingerprint = _inputs_fingerprint(skip_pip)
    if not force and _is_fresh(root, fingerprint, skip_pip):
        return root
    root.mkdir(parents=True, exist_ok=True)
    with lease.flock(root / ".build.lock", fcntl.LOCK_EX):
        # another run may have built it while this one waited
        if not force and _is_fresh(root, fingerprint, skip_pip):
            return root
        _build(root, fingerprint, skip_pip)
    return root


def _build(root: Path, fingerprint: str, skip_pip: bool) -> None:
    repo = root / "apt"
    download_debs(repo)
    build_toolkit_test_packages(repo)
    index_apt(repo)
    if not skip_pip:
        download_wheels(root / "wheels", closure_files())
        index_pip(root)
    atomic_write(root / MARKER, f"stacklock local mirror\ninputs {fingerprint}\n")


# --------------------------------------------------------------------------- HTTP server


class _Handler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"{self.address_string()} - {format % args}\n")
        sys.stderr.flush()


def serve(root: Path, host: str, port: int) -> None:
    """Serve `root` in the foreground (threaded) until killed."""
    handler = partial(_Handler, directory=str(root))
    ThreadingHTTPServer.daemon_threads = True
    with ThreadingHTTPServer((host, port), handler) as httpd:
        print(f"serving {root} on http://{host}:{port}/", file=sys.stderr, flush=True)
        httpd.serve_forever()


@dataclass(frozen=True)
class ServerHandle:
    url: str
    started: bool
    pid: int | None
    pid_file: Path
    log_file: Path


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/{MARKER}", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_server(host: str = "127.0.0.1", port: int = 8700, root: Path | None = None) -> ServerHandle:
    """Reuse a mirror already answering on host:port, or start one in the background."""
    root = root or mirror_dir()
    url = f"http://{host}:{port}"
    tag = _tag(host, port)
    pid_file = _run_dir() / f"{tag}.pid"
    log_file = lab_docker.cache_dir() / "logs" / f"{tag}.log"
    if _answers(url):
        return ServerHandle(url, False, lab_docker.read_pid(pid_file), pid_file, log_file)
    if not (root / MARKER).exists():
        raise ToolFailed(f"{root}: no mirror built there (run: python -m stacklock.adapters.mirror build)")
    src = str(Path(__file__).resolve().parents[2])
    env = {"PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    pid = lab_docker.start_background(
        [sys.executable, "-m", "stacklock.adapters.mirror", "serve",
         "--root", str(root), "--host", host, "--port", str(port)],
        pid_file=pid_file, log_file=log_file, env=env,
    )  # fmt: skip
    for _ in range(100):
        if _answers(url):
            return ServerHandle(url, True, pid, pid_file, log_file)
        time.sleep(0.1)
    lab_docker.stop_background(pid_file)
    raise ToolFailed(f"the mirror server did not answer on {url} (see {log_file})")


def stop_server(handle: ServerHandle | None = None, *, host: str = "127.0.0.1", port: int = 8700) -> bool:
    """Stop a server this module started (a reused one is left alone). While runs hold
    leases on it, it is not stopped: the last lease holder stops it instead."""
    if handle is not None and not handle.started:
        return False
    tag = _tag(host, port) if handle is None else handle.pid_file.stem
    pid_file = handle.pid_file if handle is not None else _run_dir() / f"{tag}.pid"
    return lease.stop_unless_leased(_run_dir(), tag,
                                    lambda: lab_docker.stop_background(pid_file))


def _tag(host: str, port: int) -> str:
    return f"mirror-{host}-{port}"


def _run_dir() -> Path:
    return lab_docker.cache_dir() / "run"


#: a run's claim on the mirror server: the server answers while the lease is held
ServerLease = lease.Lease[ServerHandle]


def acquire_server(host: str = "127.0.0.1", port: int = 8700, root: Path | None = None) -> ServerLease:
    """Reuse the server on host:port or start it, and hold a lease on it until
    `release_server`. Starting and stopping are serialized, so a run never starts a second
    server beside another's, nor stops one that another run still holds a lease on."""

    def start() -> tuple[ServerHandle, bool]:
        server = start_server(host, port, root)
        return server, server.started

    return lease.acquire(_run_dir(), _tag(host, port), start)


def release_server(held: ServerLease) -> bool:
    """Give the lease back; the last holder stops a server that was started for runs
    (a server started by hand with `serve-bg` is left running). True when stopped."""
    return lease.release(held, lambda server: lab_docker.stop_background(server.pid_file))


# --------------------------------------------------------------------------- collections


def ensure_collections(dest: Path | None = None) -> Path:
    """community.docker (+ its dependency, + ansible.posix) from the `ansible` wheel on PyPI, for molecule.

    Galaxy is unreachable; PyPI is not. Idempotent: nothing is done when present.
    Returns the collections path (the directory holding `ansible_collections/`).
    """
    dest = dest or lab_docker.cache_dir() / "collections"
    wanted = (
        "community/docker",
        "community/library_inventory_filtering_v1",
        "ansible/posix",
    )
    if all((dest / "ansible_collections" / w / "MANIFEST.json").exists() for w in wanted):
        return dest
    dl = lab_docker.cache_dir() / "dl"
    wheels = sorted(dl.glob("ansible-1*.whl"))
    if not wheels:
        run_command(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(dl),
             "ansible>=12,<13", "--disable-pip-version-check"],
            timeout=900,
        )  # fmt: skip
        wheels = sorted(dl.glob("ansible-1*.whl"))
    if not wheels:
        raise ToolFailed("could not download the ansible wheel from PyPI")
    prefixes = tuple(f"ansible_collections/{w}/" for w in wanted)
    with zipfile.ZipFile(wheels[-1]) as zf:
        for member in zf.namelist():
            if member.startswith(prefixes):
                zf.extract(member, dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stacklock.adapters.mirror")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="download / build / index everything (cached)")
    b.add_argument("--skip-pip", action="store_true")
    for name in ("serve", "serve-bg", "stop"):
        p = sub.add_parser(name)
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=8700)
        p.add_argument("--root", type=Path, default=None)
    sub.add_parser("collections", help="install community.docker into .cache/collections")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "build":
            print(build_mirror(skip_pip=args.skip_pip, force=True))
        elif args.command == "serve":
            serve(args.root or mirror_dir(), args.host, args.port)
        elif args.command == "serve-bg":
            h = start_server(args.host, args.port, args.root)
            print(f"{h.url} {'started' if h.started else 'reused'} (pid {h.pid}, log {h.log_file})")
        elif args.command == "stop":
            print("stopped" if stop_server(host=args.host, port=args.port) else "not running")
        else:
            print(ensure_collections())
    except StacklockError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return int(exc.exit_code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
