"""The local lab: what must exist on this machine before lab nodes are created and configured.

An SSH key pair per project (kept out of git), a Docker daemon, the Debian 12 systemd image,
the local apt/pip mirror and its HTTP server on the lab's mirror address (a dummy interface
on the host; every node routes to it through its own veth pair). Nothing else is reachable
from a node: the lab is air-gapped by construction.
"""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import os
import time
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from stacklock.adapters.proc import run_command
from stacklock.console import info, step
from stacklock.core.hostkeys import HostKeyError, PublicKey, parse_public_key
from stacklock.core.manifest import LoadedManifest
from stacklock.core.render import LAB_SSH_KEY, repo_root
from stacklock.errors import ToolFailed

log = logging.getLogger("stacklock.lab")

def mirror_address(loaded: LoadedManifest) -> str:
    net = ipaddress.ip_network(loaded.manifest.lab.network)
    return str(net.network_address + 1)  # 10.213.0.1: the host side, never a node


def ssh_key(loaded: LoadedManifest) -> Path:
    """The project's lab key pair, generated once. Two first runs at once do not race: the
    pair is generated under an exclusive lock, into temporary names, and renamed into place
    (public key first), so a run sees no key or a whole pair."""
    key = loaded.output_root / LAB_SSH_KEY
    if key.is_file() and key.with_name(key.name + ".pub").is_file():
        return key
    key.parent.mkdir(parents=True, exist_ok=True)
    key.parent.chmod(0o700)
    fd = os.open(key.parent / f".{key.name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if key.is_file() and key.with_name(key.name + ".pub").is_file():
            return key  # another run generated it while this one waited
        tmp = key.with_name(f".{key.name}.{os.getpid()}.tmp")
        for stale in (tmp, tmp.with_name(tmp.name + ".pub")):
            stale.unlink(missing_ok=True)
        run_command(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                     f"stacklock-lab-{loaded.manifest.project}", "-f", str(tmp)])
        os.replace(tmp.with_name(tmp.name + ".pub"), key.with_name(key.name + ".pub"))
        os.replace(tmp, key)
        info(f"  generated the lab's SSH key {key} (kept out of git)")
    finally:
        os.close(fd)
    return key


def node_host_key(container: str, *, wait: float = 90.0) -> PublicKey:
    """The ed25519 host key a lab node generated at first boot, read through Docker (a channel
    to the node that does not cross the network), waiting until the node has written it."""
    deadline = time.monotonic() + wait
    path = "/etc/ssh/ssh_host_ed25519_key.pub"
    while True:
        result = run_command(["docker", "exec", container, "cat", path], check=False,
                             timeout=30)
        if result.returncode == 0 and result.stdout.strip():
            try:
                return parse_public_key(result.stdout.strip())
            except HostKeyError as exc:
                raise ToolFailed(f"lab node {container}: {path}: {exc}") from None
        if time.monotonic() > deadline:
            why = (result.stderr or result.stdout).strip()[-200:] or "no key file"
            raise ToolFailed(f"lab node {container}: no SSH host key after {wait:.0f} s ({why})")
        time.sleep(0.5)


def ensure_mirror_address(address: str) -> None:
    """The mirror address on the host (idempotent): a dummy interface where the kernel has
    the driver, else a /32 on `lo`. Every node routes to it through its own veth pair."""
    script = repo_root() / "scripts" / "lab-node.sh"
    run_command([str(script), "mirror", address], timeout=30)


#: every node runs systemd, which takes several inotify instances; the kernel's default of
#: 128 per user stops a lab at about 20 nodes (systemd then exits at once)
INOTIFY_INSTANCES = 8192
INOTIFY_SETTING = Path("/proc/sys/fs/inotify/max_user_instances")


def ensure_inotify_instances() -> None:
    try:
        current = int(INOTIFY_SETTING.read_text().strip())
        if current < INOTIFY_INSTANCES:
            INOTIFY_SETTING.write_text(f"{INOTIFY_INSTANCES}\n")
            info(f"  raised fs.inotify.max_user_instances {current} -> {INOTIFY_INSTANCES} "
                 "(systemd in every node)")
    except OSError as exc:
        log.warning("could not raise fs.inotify.max_user_instances: %s", exc)


def prepare(loaded: LoadedManifest, *, stack: ExitStack, need_mirror: bool = True) -> None:
    """Make the lab ready; servers started here are stopped when `stack` closes."""
    from stacklock.adapters import docker, mirror

    step("lab: SSH key, Docker daemon, node image" + (", local mirror" if need_mirror else ""))
    ensure_inotify_instances()
    ssh_key(loaded)
    handle = docker.ensure_daemon()
    if handle.started:
        info(f"  started dockerd (log {handle.log_file}); it keeps the lab's nodes running")
    if docker.build_image(loaded.manifest.lab.image):
        info(f"  built the lab image {loaded.manifest.lab.image}")
    if not need_mirror:
        return
    fresh = not (mirror.mirror_dir() / mirror.MARKER).exists()
    if fresh:
        info(f"  building the local mirror in {mirror.mirror_dir()} (apt and pip downloads, once)")
    started = time.monotonic()
    root = mirror.build_mirror()
    if fresh:
        info(f"  built the local mirror in {time.monotonic() - started:.0f} s")
    address = mirror_address(loaded)
    ensure_mirror_address(address)
    lease = mirror.acquire_server(address, loaded.manifest.lab.mirror_port, root)
    # released when this run ends: the last run holding a lease stops the server
    stack.callback(mirror.release_server, lease)
    if lease.handle.started:
        info(f"  serving the local mirror on {lease.handle.url} (log {lease.handle.log_file})")


LAB_NODE_ADDRESS = 'module.nodes.terraform_data.node["{name}"]'


def gone_lab_nodes(outputs: Mapping[str, Any]) -> dict[str, str]:
    """Lab nodes in Terraform's state whose container is gone or stopped.

    `terraform_data` cannot refresh, so Terraform cannot see a removed container by itself;
    plan, apply and the audit ask Docker and then plan those nodes' replacement (`-replace`)."""
    gone: dict[str, str] = {}
    for name, host in sorted((outputs.get("hosts") or {}).items()):
        container = host.get("container", name)
        res = run_command(["docker", "inspect", "-f", "{{.State.Running}}", container],
                          check=False, timeout=30)
        if res.returncode != 0:
            gone[LAB_NODE_ADDRESS.format(name=name)] = f"container {container} is gone"
        elif res.stdout.strip() != "true":
            gone[LAB_NODE_ADDRESS.format(name=name)] = f"container {container} is stopped"
    return gone
