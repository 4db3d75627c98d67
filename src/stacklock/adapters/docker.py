"""The lab's Docker engine: start or reuse a daemon, build the Debian 12 systemd lab image.

No systemd runs on the machines this is made for, so the daemon is started by hand
(recipe in the lab notes): no bridge, no iptables, no NAT, logging to a file, in the
background. A daemon that already answers `docker info` is reused and never stopped by us.
No image registry is reachable either: the lab image is built with debootstrap and
`docker import`, and skipped when it already exists.

    python -m stacklock.adapters.docker ensure-daemon | build-image | stop-daemon
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from stacklock.adapters import lease
from stacklock.adapters.proc import run_command
from stacklock.core.share import cache_root
from stacklock.errors import StacklockError, ToolFailed

log = logging.getLogger("stacklock.docker")

#: the lab image every lab node and molecule platform runs
LAB_IMAGE = "stacklock-lab:bookworm"
#: packages added to the debootstrap minbase system
LAB_IMAGE_PACKAGES = (
    "python3",
    "python3-apt",
    "systemd",
    "systemd-sysv",
    "sudo",
    "dbus",
    "iproute2",
    "openssh-server",
    "ca-certificates",
)
DEFAULT_DEBIAN_MIRROR = "http://deb.debian.org/debian"


def cache_dir() -> Path:
    """Where stacklock keeps downloads, logs and pid files: $STACKLOCK_CACHE, else the
    checkout's .cache (gitignored), else the user's cache folder (core.share.cache_root)."""
    env = os.environ.get("STACKLOCK_CACHE")
    return Path(env) if env else cache_root()


@dataclass(frozen=True)
class DaemonHandle:
    """A Docker daemon that answers; `started` says whether we started it (and must stop it)."""

    started: bool
    pid: int | None
    pid_file: Path
    log_file: Path


def _docker_bin() -> str:
    found = shutil.which("docker")
    if not found:
        raise ToolFailed("docker: CLI not found (install docker.io)")
    return found


def daemon_answers(timeout: float = 20.0) -> bool:
    """True when `docker info` answers."""
    if not shutil.which("docker"):
        return False
    try:
        res = run_command(
            [_docker_bin(), "info", "--format", "{{.ServerVersion}}"],
            check=False,
            timeout=timeout,
        )
    except ToolFailed:
        return False
    return res.returncode == 0 and bool(res.stdout.strip())


@contextmanager
def _lock(name: str) -> Iterator[None]:
    path = cache_dir() / "run" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def apt_install(*packages: str) -> None:
    log.info("installing %s", " ".join(packages))
    run_command(
        ["apt-get", "install", "-y", "--no-install-recommends", *packages],
        env={"DEBIAN_FRONTEND": "noninteractive"},
        timeout=900,
    )


def read_pid(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except OSError:
        return None
    return pid


def start_background(
    argv: list[str], *, pid_file: Path, log_file: Path, env: dict[str, str] | None = None
) -> int:
    """Start `argv` detached (start-stop-daemon), stdout+stderr to `log_file`; return its pid."""
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    exe = shutil.which(argv[0]) or argv[0]
    run_command(
        [
            "start-stop-daemon",
            "--start",
            "--background",
            "--make-pidfile",
            "--pidfile",
            str(pid_file),
            "--output",
            str(log_file),
            "--exec",
            exe,
            "--",
            *argv[1:],
        ],
        env=env,
        timeout=30,
    )
    for _ in range(50):
        pid = read_pid(pid_file)
        if pid is not None:
            return pid
        time.sleep(0.1)
    raise ToolFailed(f"{argv[0]} did not start (see {log_file})")


def stop_background(pid_file: Path, *, timeout: int = 30) -> bool:
    """Stop the process recorded in `pid_file` (TERM, then KILL); True when one was stopped."""
    pid = read_pid(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    run_command(
        [
            "start-stop-daemon",
            "--stop",
            "--pidfile",
            str(pid_file),
            "--retry",
            f"TERM/{timeout}/KILL/5",
        ],
        check=False,
        timeout=timeout + 15,
    )
    pid_file.unlink(missing_ok=True)
    return True


def ensure_daemon(
    *,
    data_root: Path | None = None,
    log_file: Path | None = None,
    timeout: float = 60.0,
) -> DaemonHandle:
    """Reuse a Docker daemon that answers, or install docker.io if needed and start one."""
    run_dir = cache_dir() / "run"
    pid_file = run_dir / "dockerd.pid"
    log_file = log_file or cache_dir() / "logs" / "dockerd.log"
    with _lock("dockerd"):
        if daemon_answers():
            pid = read_pid(pid_file)
            return DaemonHandle(False, pid, pid_file, log_file)
        if not shutil.which("dockerd"):
            apt_install("docker.io")
        data_root = data_root or Path("/var/lib/stacklock/docker")
        data_root.mkdir(parents=True, exist_ok=True)
        pid = start_background(
            [
                "dockerd",
                "--data-root",
                str(data_root),
                "--exec-root",
                "/run/stacklock-docker",
                "--pidfile",
                "/run/stacklock-docker.pid",
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-forward=false",
                "--ip-masq=false",
            ],
            pid_file=pid_file,
            log_file=log_file,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if daemon_answers(timeout=5):
                log.info("dockerd started (pid %s, log %s)", pid, log_file)
                return DaemonHandle(True, pid, pid_file, log_file)
            if read_pid(pid_file) is None:
                break
            time.sleep(0.5)
        stop_background(pid_file)
        raise ToolFailed(f"dockerd did not answer `docker info` within {timeout:.0f} s; see {log_file}")


def stop_daemon(handle: DaemonHandle | None = None) -> bool:
    """Stop the daemon we started (by its pid file); a reused daemon is left alone. While runs
    hold leases on it (`acquire_daemon`), it is not stopped: the last lease holder stops it."""
    if handle is not None and not handle.started:
        return False
    pid_file = handle.pid_file if handle else cache_dir() / "run" / "dockerd.pid"

    def stop() -> bool:
        with _lock("dockerd"):
            return stop_background(pid_file)

    return lease.stop_unless_leased(cache_dir() / "run", "dockerd", stop)


#: a run's claim on the Docker daemon: it answers while the lease is held
DaemonLease = lease.Lease[DaemonHandle]


def acquire_daemon() -> DaemonLease:
    """Reuse the daemon or start it (`ensure_daemon`), and hold a lease on it until
    `release_daemon`: runs at the same time (test lanes, a demo beside the suite) share one
    daemon, and the one started for them is stopped by the last, never under another run."""

    def start() -> tuple[DaemonHandle, bool]:
        handle = ensure_daemon()
        return handle, handle.started

    return lease.acquire(cache_dir() / "run", "dockerd", start)


def release_daemon(held: DaemonLease) -> bool:
    """Give the lease back; the last holder stops a daemon started for runs. True when
    stopped."""

    def stop(handle: DaemonHandle) -> bool:
        with _lock("dockerd"):
            return stop_background(handle.pid_file)

    return lease.release(held, stop)


def image_exists(name: str = LAB_IMAGE) -> bool:
    res = run_command([_docker_bin(), "image", "inspect", name], check=False, timeout=30)
    return res.returncode == 0


def debian_mirror() -> str:
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for line in path.read_text().splitlines():
            if line.startswith("URIs:") and "/debian" in line and "security" not in line:
                return line.split(":", 1)[1].strip().split()[0]
    return DEFAULT_DEBIAN_MIRROR


def build_image(name: str = LAB_IMAGE, *, force: bool = False, mirror: str | None = None) -> bool:
    """Build the Debian 12 systemd image with debootstrap + docker import; False when cached."""
    with _lock("lab-image"):
        if not force and image_exists(name):
            return False
        if not shutil.which("debootstrap"):
            apt_install("debootstrap")
        mirror = mirror or debian_mirror()
        log_file = cache_dir() / "logs" / "lab-image.log"
        work = Path(tempfile.mkdtemp(prefix="stacklock-rootfs-", dir="/var/tmp"))
        rootfs = work / "rootfs"
        try:
            run_command(
                ["debootstrap", "--variant=minbase", "bookworm", str(rootfs), mirror],
                capture=False,
                log_file=log_file,
                timeout=1200,
            )
            policy = rootfs / "usr/sbin/policy-rc.d"
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
            chroot_env = {"DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}
            run_command(
                ["chroot", str(rootfs), "apt-get", "update"],
                env=chroot_env,
                capture=False,
                log_file=log_file,
                timeout=600,
            )
            run_command(
                [
                    "chroot",
                    str(rootfs),
                    "apt-get",
                    "install",
                    "-y",
                    "--no-install-recommends",
                    *LAB_IMAGE_PACKAGES,
                ],
                env=chroot_env,
                capture=False,
                log_file=log_file,
                timeout=1200,
            )
            run_command(["chroot", str(rootfs), "apt-get", "clean"], check=False)
            policy.unlink()
            # air-gapped nodes: no package source until a role configures the mirror
            (rootfs / "etc/apt/sources.list").write_text("")
            for lists in (rootfs / "var/lib/apt/lists").glob("*_*"):
                lists.unlink()
            (rootfs / "etc/machine-id").write_text("")
            # sshd host keys are generated per node at first boot, not baked in
            for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
                key.unlink()
            unit = rootfs / "etc/systemd/system/stacklock-sshkeys.service"
            unit.write_text(
                "[Unit]\nDescription=stacklock: generate ssh host keys\n"
                "Before=ssh.service\nConditionPathExists=!/etc/ssh/ssh_host_ed25519_key\n\n"
                "[Service]\nType=oneshot\nExecStart=/usr/bin/ssh-keygen -A\n\n"
                "[Install]\nWantedBy=multi-user.target\n"
            )
            wants = rootfs / "etc/systemd/system/multi-user.target.wants"
            wants.mkdir(parents=True, exist_ok=True)
            link = wants / "stacklock-sshkeys.service"
            if not link.exists():
                link.symlink_to("/etc/systemd/system/stacklock-sshkeys.service")
            tar = work / "rootfs.tar"
            run_command(["tar", "-C", str(rootfs), "-cf", str(tar), "."], timeout=600)
            run_command(
                [
                    _docker_bin(),
                    "import",
                    "-c",
                    'CMD ["/lib/systemd/systemd"]',
                    str(tar),
                    name,
                ],
                timeout=600,
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
        log.info("built %s", name)
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stacklock.adapters.docker")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("ensure-daemon", help="reuse or start a Docker daemon")
    b = sub.add_parser("build-image", help=f"build {LAB_IMAGE} (skipped when present)")
    b.add_argument("--force", action="store_true")
    b.add_argument("--name", default=LAB_IMAGE)
    sub.add_parser("stop-daemon", help="stop the daemon this tool started")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "ensure-daemon":
            h = ensure_daemon()
            print(f"dockerd {'started' if h.started else 'reused'} (pid {h.pid}, log {h.log_file})")
        elif args.command == "build-image":
            ensure_daemon()
            built = build_image(args.name, force=args.force)
            print(f"{args.name}: {'built' if built else 'present (cached)'}")
        else:
            stopped = stop_daemon()
            print("dockerd stopped" if stopped else "no dockerd started by stacklock is running")
    except StacklockError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return int(exc.exit_code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
