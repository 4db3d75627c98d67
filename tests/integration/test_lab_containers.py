"""Lab nodes run containers of their own (scripts/lab-node.sh, docs/containers.md).

One node (project slimg, network 10.245.9.0/30) started by the lab's own script; Docker
from the lab mirror's .debs inside it, configured as the docker role configures a container
host (no bridge, no iptables, no NAT); then a tiny image made from the node's own files
(dash, sleep and the C library, `docker import`ed: no registry) runs with `--network none`
and with `--network host`. Its cgroup must lie under the node's, and the node must have no
bridge. Then the lab registry (scripts/lab-registry.sh) on the lab's mirror address: an image
written by stacklock.adapters.oci is pushed from the controller and pulled by digest inside
the node, over the lab network. About 40 s.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
NODE = "slimg-nest-1"
NODE_ADDR, HOST_ADDR, MIRROR_ADDR = "10.245.9.2", "10.245.9.1", "10.245.0.1"
#: daemon.json of the docker role on a container host (roles/docker/vars/main.yml)
REGISTRY_PORT = 5245
DAEMON_JSON = {"bridge": "none", "iptables": False, "ip6tables": False, "ip-forward": False,
               "ip-masq": False, "insecure-registries": [f"{MIRROR_ADDR}:{REGISTRY_PORT}"]}
TINY = (
    "set -e; rm -rf /var/tmp/tiny; mkdir -p /var/tmp/tiny/bin /var/tmp/tiny/lib/x86_64-linux-gnu "
    "/var/tmp/tiny/lib64 /var/tmp/tiny/proc /var/tmp/tiny/dev /var/tmp/tiny/sys /var/tmp/tiny/etc; "
    "cp /usr/bin/dash /var/tmp/tiny/bin/sh; cp /usr/bin/sleep /var/tmp/tiny/bin/sleep; "
    "cp /lib/x86_64-linux-gnu/libc.so.6 /var/tmp/tiny/lib/x86_64-linux-gnu/; "
    "cp /lib64/ld-linux-x86-64.so.2 /var/tmp/tiny/lib64/; "
    "tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C /var/tmp/tiny -c . "
    "| docker import - slimg-tiny:1"
)


def _run(*argv: str, timeout: int = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check:
        assert res.returncode == 0, f"{argv}: {res.stdout[-2000:]}{res.stderr[-2000:]}"
    return res


def _in_node(script: str, timeout: int = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run("docker", "exec", NODE, "sh", "-c", script, timeout=timeout, check=check)


@pytest.fixture(scope="module")
def node(lab_docker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from stacklock.adapters import mirror, oci

    repo = mirror.mirror_dir() / "apt"
    if not (repo / "Packages").is_file():
        mirror.build_mirror(skip_pip=True)
    work = tmp_path_factory.mktemp("slimg-nest")
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / "key"))
    status = work / "status"
    status.write_text(_run("docker", "run", "--rm", "--network", "none", lab_docker, "cat",
                           "/var/lib/dpkg/status").stdout)
    debs = oci.resolve_debs(repo, status, ["docker.io"], work)
    script = REPO / "scripts/lab-node.sh"
    start = time.monotonic()
    _run(str(script), "create", NODE, lab_docker, NODE_ADDR, HOST_ADDR, MIRROR_ADDR,
         str(work / "key.pub"), "stacklock.project=slimg")
    try:
        created = time.monotonic() - start
        _in_node("mkdir -p /var/tmp/debs /etc/docker")
        for deb in debs:
            _run("docker", "cp", str(deb), f"{NODE}:/var/tmp/debs/")
        _in_node(f"printf '%s\\n' '{json.dumps(DAEMON_JSON)}' > /etc/docker/daemon.json")
        _in_node("DEBIAN_FRONTEND=noninteractive dpkg -i /var/tmp/debs/*.deb >/var/tmp/dpkg.log 2>&1 "
                 "|| (tail -20 /var/tmp/dpkg.log; exit 1)", timeout=600)
        _in_node("systemctl restart docker && docker info --format '{{.Driver}}'")
        docker_s = time.monotonic() - start - created
        print(f"node {created:.1f} s, Docker installed and started {docker_s:.1f} s")
        yield NODE
    finally:
        _run(str(script), "destroy", NODE, NODE_ADDR, check=False)


def test_nested_containers_run_in_the_nodes_own_cgroup_without_a_bridge(node: str) -> None:
    assert _in_node("docker info --format '{{.Driver}}'").stdout.strip() == "overlay2"
    _in_node(TINY)
    start = time.monotonic()
    res = _in_node("docker run --rm --network none slimg-tiny:1 /bin/sh -c "
                   "'echo nested; read l </proc/self/cgroup; echo $l'")
    took = time.monotonic() - start
    assert res.stdout.splitlines()[0] == "nested"
    print(f"nested docker run --network none: {took:.2f} s")
    res = _in_node("docker run --rm --network host slimg-tiny:1 /bin/sh -c "
                   "'while read l; do echo $l; done </proc/net/dev'")
    ifaces = sorted(line.split(":", 1)[0] for line in res.stdout.splitlines() if ":" in line)
    assert ifaces == ["eth0", "lo"], res.stdout  # the node's own namespace, nothing else
    assert _in_node("ip link show docker0", check=False).returncode != 0
    # a running nested container's cgroup is under the node's cgroup on the host
    inner = _in_node("docker run -d --network none slimg-tiny:1 /bin/sleep 60").stdout.strip()
    try:
        node_id = _run("docker", "inspect", "-f", "{{.Id}}", node).stdout.strip()
        assert Path(f"/sys/fs/cgroup/memory/docker/{node_id}/docker/{inner}").is_dir()
        assert not Path(f"/sys/fs/cgroup/memory/docker/{inner}").exists()
    finally:
        _in_node(f"docker rm -f {inner}", check=False)


def test_the_nodes_image_store_goes_with_the_node(node: str) -> None:
    assert _run("docker", "volume", "inspect", f"{node}-docker").returncode == 0
    labels = json.loads(_run("docker", "volume", "inspect", "-f", "{{json .Labels}}",
                             f"{node}-docker").stdout)
    assert labels == {"stacklock.lab-node": node}


def test_a_node_pulls_by_digest_from_the_lab_registry(
        node: str, tmp_path: Path) -> None:
    from stacklock.adapters import oci

    root = tmp_path / "rootfs"
    for rel in ("usr/bin/dash", "lib/x86_64-linux-gnu/libc.so.6", "lib64/ld-linux-x86-64.so.2"):
        target = root / ("bin/sh" if rel.endswith("dash") else rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(Path("/", rel).read_bytes())
        target.chmod(0o755)
    layer = oci.write_layer(root, tmp_path / "blobs", epoch=0, comment="dash and libc")
    config = oci.image_config([layer], created="1970-01-01T00:00:00Z",
                              config={"Cmd": ["/bin/sh", "-c", "echo pulled by digest"]})
    image = oci.write_layout(tmp_path / "layout", [layer], config, ref="tiny")
    script = REPO / "scripts/lab-registry.sh"
    reg = tmp_path / "registry"
    url = _run(str(script), "start", MIRROR_ADDR, str(REGISTRY_PORT), str(reg)).stdout.strip()
    try:
        assert url == f"http://{MIRROR_ADDR}:{REGISTRY_PORT}"
        digest = oci.push(image, url, "slimg/tiny")
        assert digest == image.manifest_digest
        ref = f"{MIRROR_ADDR}:{REGISTRY_PORT}/slimg/tiny@{digest}"
        start = time.monotonic()
        _in_node(f"docker pull {ref}")
        print(f"pull by digest in the node: {time.monotonic() - start:.2f} s")
        assert _in_node(f"docker run --rm --network none {ref}").stdout.strip() == "pulled by digest"
        assert _in_node(f"docker image inspect -f '{{{{.Id}}}}' {ref}").stdout.strip() == \
            image.config_digest
        wrong = f"{MIRROR_ADDR}:{REGISTRY_PORT}/slimg/tiny@sha256:{'1' * 64}"
        assert _in_node(f"docker pull {wrong}", check=False).returncode != 0
    finally:
        _run(str(script), "stop", str(reg), check=False)
