"""Serving from a container on a real lab node (serving.runtime: container, docs/containers.md).

On the shared integrity node (conftest's `integrity_lab`: project slint, network 10.231,
environment dev), LAST in its lane (tests/conftest.py SHARED_NODE): it switches the node to
container mode and back. One image build from the node's container-mode lock (built a second
time from scratch to show one digest; its config, layers and SBOM checked against the lock),
pushed to the lab registry (scripts/lab-registry.sh) on the lab's mirror address 10.231.0.1,
recorded in the lock by `image push`. The manifest gains a second stack, the same pins with
`serving.runtime: container`, and dev names it; `stacklock rollout dev` goes from host mode to
container mode: the node's Docker pulls by digest and runs the image as stacklock-
serving.service, read-only, non-root, without capabilities, on the host network; the smoke
request answers over TLS through the endpoint; verify (the play) and verify --fast exit 0. Then
real changes on the node, each caught by both and put back: another image digest run in the
container's place (put back with the locked image removed and pulled again by its digest,
timed; a digest the registry lacks is refused), a container started by hand with other settings
(and a second one beside it), the NVIDIA runtime removed from Docker's daemon.json; `stacklock
sbom` names the image by its digest with the closure inside; the host's Java purged (as on a
node that never was in host mode) is no deviation. Last, `stacklock rollback dev` returns the
node to the host-mode revision it verified first: Java installed and held again, no container,
no unit, no stale image running, TorchServe from the venv answering through the endpoint. (The
NVIDIA runtime removed in host mode: test_integrity_runtime.)
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import ssl
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STACK = "lab-2026-11"
CSTACK = "lab-2026-11-container"  # the same pins, serving.runtime: container
EPOCH = "1767225600"
REGISTRY_ADDR, REGISTRY_PORT = "10.231.0.1", 5231  # the integrity lab's mirror address
PREDICT = "/predictions/tiny-linear/1.0"
UNIT = "/etc/systemd/system/stacklock-serving.service"


def sl(manifest: Path, *args: str, timeout: int = 1800,
       env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, NO_COLOR="1", COLUMNS="200", **(env or {}))
    start = time.monotonic()
    res = subprocess.run([str(BIN / "stacklock"), "-m", str(manifest), *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=timeout, env=full, check=False)
    print(f"stacklock {' '.join(args)}: exit {res.returncode} in {time.monotonic() - start:.0f} s")
    return res


def _ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-5000:]
    return res.stdout


@dataclass
class Node:
    manifest: Path
    host_text: str
    name: str = ""
    host: str = ""  # its inventory name
    address: str = ""
    image: dict[str, Any] = field(default_factory=dict)
    back_in_host_mode: bool = False
    build: dict[str, Any] = field(default_factory=dict)  # `image build --format json`'s record
    images: Path = Path()  # its --out folder
    base: str = ""  # the lab image the build's base layer comes from

    @property
    def out(self) -> Path:
        return self.manifest.parent / "lab"

    def on_node(self, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(["docker", "exec", self.name, "bash", "-c", script],
                             capture_output=True, text=True, timeout=600, check=False)
        if check:
            assert res.returncode == 0, f"{script}\n{res.stdout}\n{res.stderr}"
        return res

    def call(self, path: str, *, token: bool = True) -> tuple[int, bytes]:
        state = self.out / ".stacklock" / "endpoint"
        ctx = ssl.create_default_context(cafile=str(state / "ca" / "ca.pem"))
        headers = {"Content-Type": "application/json"}
        if token:
            first = (state / "dev" / "tokens").read_text().split()[-1]
            headers["Authorization"] = f"Bearer {first}"
        req = urllib.request.Request(f"https://{self.address}:8443{path}",
                                     data=b'{"inputs": [1, 2, 3]}', headers=headers)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                             urllib.request.HTTPSHandler(context=ctx))
        try:
            with opener.open(req, timeout=30) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()


def _with_container_stack(text: str) -> str:
    """The manifest with a second stack, STACK's pins served from a container, named by dev."""
    data = yaml.safe_load(text)
    data["stacks"][CSTACK] = {**data["stacks"][STACK], "serving": {"runtime": "container"}}
    data["environments"]["dev"]["stack"] = CSTACK
    return yaml.safe_dump(data, sort_keys=False)


def _restore(node: Node) -> None:
    """The manifest, lock and files as before the module; rolled out if still in container
    mode (the host-mode stack locks to the same revision as before)."""
    node.manifest.write_text(node.host_text)
    _ok(sl(node.manifest, "lock"))
    _ok(sl(node.manifest, "render"))
    if not node.back_in_host_mode:
        _ok(sl(node.manifest, "rollout", "dev", timeout=2400))


def verify(node: Node, *extra: str) -> tuple[int, dict[str, Any]]:
    res = sl(node.manifest, "verify", "dev", "--format", "json", *extra, timeout=900)
    try:
        return res.returncode, json.loads(res.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"verify printed no JSON (exit {res.returncode}):\n"
                             f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}") from None


def findings(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["component"]: c for c in report["checks"] if c["status"] == "deviation"}


def assert_caught(node: Node, caught: dict[str, str | None]) -> None:
    """The play and --fast each exit 1 naming every component of `caught` (with a part of its
    actual value where given), and name the same components."""
    seen: dict[str, set[str]] = {}
    for how, extra in (("play", ()), ("fast", ("--fast",))):
        code, rep = verify(node, *extra)
        found = findings(rep)
        assert code == 1, f"{how}: exit {code}; {rep.get('problems')}"
        for component, actual in caught.items():
            assert component in found, f"{how}: {component} not named: {sorted(found)}"
            if actual is not None:
                assert actual in str(found[component]["actual"]), (how, found[component])
        seen[how] = set(found)
    assert seen["play"] == seen["fast"], f"the play and --fast disagree: {seen}"


def wait_serving(node: Node) -> None:
    """Bounded: the model answers through the endpoint again (after a restart)."""
    for _ in range(90):
        try:
            if node.call(PREDICT)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(2)
    raise AssertionError("the model did not answer through the endpoint within 180 s")


def _build(manifest: Path, out: Path) -> dict[str, Any]:
    """`stacklock image build dev` into `out`; its JSON record."""
    start = time.monotonic()
    res = sl(manifest, "image", "build", "dev", "--out", str(out), "--format", "json",
             timeout=1800, env={"SOURCE_DATE_EPOCH": EPOCH})
    record: dict[str, Any] = json.loads(_ok(res))
    print(f"image build: {time.monotonic() - start:.0f} s, steps {record['seconds']}, "
          f"{record['size'] / 2**20:.0f} MiB compressed")
    return record


def put_back_the_unit(node: Node, *others: str, pull: bool = False,
                      images: tuple[str, ...] = ()) -> None:
    """Whatever runs as stacklock-serving (and the named containers) removed, the unit
    started again; the model answers and verify --fast is clean. `images`: removed once no
    container uses them. `pull`: the locked image removed too (none of its layers left) and
    pulled again by its digest, timed (the node's pull time by itself)."""
    node.on_node("systemctl stop stacklock-serving.service; "
                 f"docker rm -f stacklock-serving {' '.join(others)} >/dev/null 2>&1 || true; "
                 "systemctl reset-failed stacklock-serving.service || true")
    if images:
        node.on_node(f"docker rmi -f {' '.join(images)} >/dev/null 2>&1 || true")
    if pull:
        ref = node.image["reference"]
        node.on_node(f"docker rmi {ref} >/dev/null")
        gone = node.on_node(f"docker image inspect {node.image['config_digest']}", check=False)
        assert gone.returncode != 0, "the image is still in the node's store: the pull is no pull"
        start = time.monotonic()
        node.on_node(f"docker pull --quiet {ref}")
        print(f"docker pull by digest on the node: {time.monotonic() - start:.1f} s")
        repo, _, digest = ref.partition("@")
        missing = node.on_node(f"docker pull --quiet {repo}@sha256:{'0' * 64}", check=False)
        assert missing.returncode != 0 and digest.startswith("sha256:"), missing.stdout
    node.on_node("systemctl start stacklock-serving.service")
    wait_serving(node)
    code, rep = verify(node, "--fast")
    assert code == 0, f"not clean after putting it back: {sorted(findings(rep))}"


@pytest.fixture(scope="module")
def node(integrity_lab: Path, lab_docker: str,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """The integrity node verified in host mode (evidence for the rollback), then its manifest
    with the container-mode stack, its image built once and pushed to the lab registry
    (recorded in the lock), rendered; the manifest put back (and the node too) at the end."""
    manifest = integrity_lab
    lab = Node(manifest, manifest.read_text())
    hosts = yaml.safe_load((lab.out / "inventories/dev/hosts.yml").read_text())
    (lab.host, entry), = hosts["all"]["children"]["dev"]["hosts"].items()
    lab.name = str(entry.get("stacklock_container", "slint-dev-1"))
    lab.address = str(entry["ansible_host"])
    _ok(sl(manifest, "verify", "dev", timeout=900))  # host mode: the revision to roll back to
    registry = tmp_path_factory.mktemp("slint-registry")
    script = str(ROOT / "scripts/lab-registry.sh")
    url = _ok(subprocess.run([script, "start", REGISTRY_ADDR, str(REGISTRY_PORT), str(registry)],
                             capture_output=True, text=True, timeout=300, check=False)).strip()
    listening = subprocess.run(["ss", "-Hltn", f"sport = :{REGISTRY_PORT}"], capture_output=True,
                               text=True, check=True).stdout
    assert [line.split()[3] for line in listening.splitlines()] == [
        f"{REGISTRY_ADDR}:{REGISTRY_PORT}"]  # the lab's mirror address only
    images = tmp_path_factory.mktemp("slint-images")
    try:
        manifest.write_text(_with_container_stack(lab.host_text))
        _ok(sl(manifest, "lock"))
        render = sl(manifest, "render")
        assert render.returncode == 2, render.stdout + render.stderr
        assert "image push dev" in render.stdout + render.stderr
        lab.build, lab.images, lab.base = _build(manifest, images), images, lab_docker
        _ok(sl(manifest, "image", "push", "dev", "--registry", url, "--out", str(images)))
        lock = json.loads(manifest.with_suffix(".lock").read_text())
        lab.image = lock["stacks"][CSTACK]["image"]
        assert "image" not in lock["stacks"][STACK]  # host mode: no image
        _ok(sl(manifest, "lock", "--check"))
        _ok(sl(manifest, "render"))
        yield lab
    finally:
        try:
            _restore(lab)
        finally:
            lab.on_node(f"docker rmi -f {lab.image.get('reference', 'none')} || true", check=False)
            subprocess.run([script, "stop", str(registry)], capture_output=True, timeout=120,
                           check=False)


def test_the_lock_holds_the_image_and_render_writes_the_contract(node: Node) -> None:
    image = node.image
    assert image["reference"] == f"{REGISTRY_ADDR}:{REGISTRY_PORT}/slint/serving@{image['digest']}"
    gv = yaml.safe_load((node.out / "inventories/dev/group_vars/dev/stacklock.yml").read_text())
    assert gv["serving_runtime"] == "container"
    c = gv["serving_container"]
    assert (c["image"], c["digest"], c["config_digest"]) == (
        image["reference"], image["digest"], image["config_digest"])
    assert (c["user"], c["read_only"], c["cap_add"], c["runtime"], c["network"]) == (
        "10001:10001", True, [], "runc", "host")
    assert gv["stacklock_fingerprint"] == image["fingerprint"]


def _blob(node: Node, digest: str) -> Path:
    return node.images / CSTACK / "oci/blobs/sha256" / digest.split(":", 1)[1]


def test_two_builds_from_one_lock_give_one_digest(node: Node, tmp_path: Path) -> None:
    """A second build from the same lock, from scratch in another folder: the same manifest
    and config digests, the same layers and blobs, the same SBOM byte for byte."""
    first, second = node.build, _build(node.manifest, tmp_path / "again")
    assert first["manifest_digest"] == second["manifest_digest"] == node.image["digest"]
    assert first["config_digest"] == second["config_digest"]
    assert [la["digest"] for la in first["layers"]] == [la["digest"] for la in second["layers"]]
    blobs = [sorted(p.name for p in (out / CSTACK / "oci/blobs/sha256").iterdir())
             for out in (node.images, tmp_path / "again")]
    assert blobs[0] == blobs[1]
    sboms = [(out / f"{CSTACK}.cdx.json").read_bytes() for out in (node.images, tmp_path / "again")]
    assert sboms[0] == sboms[1]
    print(f"manifest {first['manifest_digest']}, {first['size'] / 2**20:.0f} MiB compressed")


def test_the_image_says_what_the_lock_says(node: Node) -> None:
    from stacklock.core import sbom as sbommod

    record = node.build
    lock = json.loads(node.manifest.with_suffix(".lock").read_text())["stacks"][CSTACK]
    raw = _blob(node, record["config_digest"]).read_bytes()
    assert hashlib.sha256(raw).hexdigest() == record["config_digest"].split(":", 1)[1]
    config = json.loads(raw)
    run = config["config"]
    assert run["User"] == "10001:10001"
    assert run["Entrypoint"][:2] == ["/opt/torchserve/venv/bin/torchserve", "--start"]
    assert "--ts-config" in run["Entrypoint"]
    assert run["Labels"]["stacklock.fingerprint"] == lock["fingerprint"]
    assert config["created"] == "2026-01-01T00:00:00Z"
    # the base is the lab image's own layer, byte for byte (its diff_id as Docker has it)
    docker_layers = json.loads(subprocess.run(
        ["docker", "image", "inspect", "-f", "{{json .RootFS.Layers}}", node.base],
        capture_output=True, text=True, check=True).stdout)
    assert config["rootfs"]["diff_ids"][0] == docker_layers[0] == record["base_diff_id"]

    bom_text = (node.images / f"{CSTACK}.cdx.json").read_text()
    assert sbommod.validate(bom_text) == []
    doc = json.loads(bom_text)
    root = doc["metadata"]["component"]  # the image itself, by its manifest digest
    assert (root["type"], root["version"]) == ("container", record["manifest_digest"])
    assert root["hashes"] == [{"alg": "SHA-256", "content": record["manifest_digest"][7:]}]
    assert root["purl"].startswith("pkg:oci/") and record["manifest_digest"][7:] in root["purl"]
    comps = {c["name"]: c for c in doc["components"]}
    for pin in lock["pip"]:
        comp = comps[sbommod.normalize_pypi(pin["name"])]
        assert comp["version"] == pin["version"], pin["name"]
        assert {"name": "stacklock:lock", "value": "locked"} in comp["properties"], pin["name"]
    java = lock["apt"]["java"][0]
    assert comps[java["name"]]["version"] == java["version"]
    model = lock["models"][0]
    assert comps[model["name"]]["hashes"] == [{"alg": "SHA-256", "content": model["sha256"]}]
    cfg = comps["/etc/torchserve/config.properties"]
    assert cfg["hashes"][0]["content"] == lock["torchserve"]["config_sha256"]


def test_layers_are_timeless_and_pyc_are_hash_based(node: Node) -> None:
    epoch = int(EPOCH)
    kinds: dict[int, int] = {}
    for layer in node.build["layers"][1:]:  # the base is the lab image's, as it is
        with gzip.open(_blob(node, layer["digest"])) as gz, \
                tarfile.open(fileobj=gz, mode="r|") as tar:
            names = []
            for member in tar:
                assert member.mtime == epoch, member.name
                assert (member.uname, member.gname) == ("", ""), member.name
                names.append(member.name)
                if member.name.endswith(".pyc"):
                    fh = tar.extractfile(member)
                    assert fh is not None
                    flags = int.from_bytes(fh.read(8)[4:8], "little")
                    kinds[flags] = kinds.get(flags, 0) + 1
            assert names == sorted(names, key=lambda n: [os.fsencode(p) for p in n.split("/")])
    assert kinds and set(kinds) == {3}, f"pyc flags seen: {kinds} (3 = checked hash)"


def test_rollout_from_host_mode_to_container_mode(node: Node) -> None:
    assert node.on_node("systemctl is-active torchserve.service").stdout.strip() == "active"
    start = time.monotonic()
    _ok(sl(node.manifest, "rollout", "dev", timeout=2400))
    print(f"rollout to container mode: {time.monotonic() - start:.0f} s")
    assert node.on_node("systemctl is-active stacklock-serving.service").stdout.strip() == "active"
    assert node.on_node("test -e /etc/systemd/system/torchserve.service", check=False).returncode == 1
    assert node.on_node("systemctl is-active torchserve.service", check=False).stdout.strip() != "active"
    inspect = json.loads(node.on_node("docker inspect stacklock-serving").stdout)[0]
    host = inspect["HostConfig"]
    assert inspect["Image"] == node.image["config_digest"]
    assert inspect["Config"]["User"] == "10001:10001"
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["NetworkMode"] == "host" and host["Runtime"] == "runc"
    assert host["AutoRemove"] is True
    repo = json.loads(node.on_node(
        f"docker image inspect --format '{{{{json .RepoDigests}}}}' {node.image['reference']}").stdout)
    assert node.image["reference"] in repo
    # the host-mode TorchServe is gone: only the container's java runs TorchServe
    procs = node.on_node("ps -eo user:12,args | grep '[o]rg.pytorch.serve' || true").stdout
    assert procs.strip() and all(line.split()[0] == "10001" for line in procs.splitlines()), procs


def test_the_smoke_request_answers_over_tls_through_the_endpoint(node: Node) -> None:
    status, body = node.call(PREDICT)
    assert status == 200, body
    assert [round(x, 4) for x in json.loads(body)] == [3.0, 5.0, 7.0]
    assert node.call(PREDICT, token=False)[0] == 401


def test_verify_passes_in_container_mode(node: Node) -> None:
    play = sl(node.manifest, "verify", "dev", timeout=900)
    if play.returncode != 0:  # what the collector's exec sees, for the failure message
        diag = node.on_node("docker exec stacklock-serving /opt/torchserve/venv/bin/python -I "
                            "-c 'import importlib.metadata as m, torch; "
                            "print(len(list(m.distributions())), torch.version.cuda)'",
                            check=False)
        print(f"closure probe: rc {diag.returncode} {diag.stdout[-500:]} {diag.stderr[-1500:]}")
    assert play.returncode == 0, play.stdout[-5000:] + play.stderr[-3000:]


def test_verify_fast_passes_in_container_mode(node: Node) -> None:
    fast = sl(node.manifest, "verify", "dev", "--fast", timeout=900)
    assert fast.returncode == 0, fast.stdout[-5000:] + fast.stderr[-3000:]


def test_sbom_names_the_running_image_by_its_digest_with_the_closure_inside(
        node: Node, tmp_path: Path) -> None:
    _ok(sl(node.manifest, "sbom", "dev", "--out", str(tmp_path), timeout=900))
    doc = json.loads((tmp_path / "dev" / f"{node.host}.cdx.json").read_text())
    images = [c for c in doc["components"] if c["type"] == "container"]
    assert len(images) == 1, [c["name"] for c in images]  # nothing else runs
    image, = images
    props = {p["name"]: p["value"] for p in image.get("properties", [])}
    assert image["version"] == node.image["digest"]
    assert image["hashes"] == [{"alg": "SHA-256", "content": node.image["digest"][7:]}]
    assert image["purl"].startswith("pkg:oci/") and node.image["digest"][7:] in image["purl"]
    assert props["stacklock:lock"] == "matches" and props["stacklock:image:id:lock"] == "matches"
    assert props["stacklock:image:id"] == node.image["config_digest"]
    inside = {c["name"]: c for c in image.get("components", [])}
    assert {"torch", "torchserve", "torch-model-archiver", "python"} <= set(inside), inside
    lock = json.loads(node.manifest.with_suffix(".lock").read_text())
    assert inside["torch"]["version"] in json.dumps(lock["stacks"][CSTACK])
    # container mode: no host venv in the document
    assert not any(c["name"] == "torch" for c in doc["components"]), "torch on the host"


def test_another_image_digest_on_the_node_is_caught(node: Node) -> None:
    """The serving container run with every setting of the unit but another image: one made
    on the node from the running container (one label more), pushed to the same registry and
    pulled by its own digest."""
    other = f"{REGISTRY_ADDR}:{REGISTRY_PORT}/slint/serving"
    node.on_node(f"docker commit --change 'LABEL tampered=1' stacklock-serving {other}:other "
                 f">/dev/null && docker push --quiet {other}:other >/dev/null")
    digest = node.on_node(f"docker image inspect --format '{{{{index .RepoDigests 0}}}}' "
                          f"{other}:other").stdout.strip().split("@")[-1]
    assert digest.startswith("sha256:") and digest != node.image["digest"], digest
    start = node.on_node(f"sed -n 's/^ExecStart=//p' {UNIT}").stdout.strip()
    assert node.image["reference"] in start, start
    by_hand = start.replace(" run --rm ", " run -d --rm ", 1).replace(
        node.image["reference"], f"{other}@{digest}")
    try:
        node.on_node(f"systemctl stop stacklock-serving.service && {by_hand} >/dev/null")
        wait_serving(node)  # the play and --fast then see the same (serving) container
        assert_caught(node, {"container.image.digest": digest,
                             "container.image.id": None})
    finally:
        # put back with the locked image pulled again by its digest: the node's pull time
        # (the committed image goes first: it holds the locked image's layers)
        put_back_the_unit(node, pull=True, images=(f"{other}:other", f"{other}@{digest}"))


def test_a_container_started_by_hand_with_other_settings_is_caught(node: Node) -> None:
    """The locked image by its digest, but started by hand as root, writable, with a
    capability and an environment variable more; and a second container beside it."""
    ref = node.image["reference"]
    try:
        node.on_node(
            "systemctl stop stacklock-serving.service && "
            f"docker run -d --name stacklock-serving --network host --user 0:0 "
            f"--cap-add NET_ADMIN --env DEBUG_BY_HAND=1 --entrypoint /bin/sleep {ref} infinity"
            f" >/dev/null && docker run -d --name by-hand --network none "
            f"--entrypoint /bin/sleep {ref} infinity >/dev/null")
        assert_caught(node, {"container.user": "0:0", "container.read_only": "false",
                             "container.capabilities": "NET_ADMIN",
                             "container.security_opt": "none",
                             "container.env.DEBUG_BY_HAND": None,
                             "container.extra.by-hand": None})
    finally:
        put_back_the_unit(node, "by-hand")


def test_the_nvidia_runtime_removed_from_docker_is_caught_in_container_mode(node: Node) -> None:
    node.on_node("cp -p /etc/docker/daemon.json /root/daemon.json.saved && python3 - <<'EOF'\n"
                 "import json\n"
                 "p = '/etc/docker/daemon.json'\n"
                 "d = json.load(open(p))\n"
                 "assert 'nvidia' in d.get('runtimes', {}), d\n"
                 "del d['runtimes']['nvidia']\n"
                 "json.dump(d, open(p, 'w'))\n"
                 "EOF\n"
                 "systemctl restart docker.service")
    try:
        wait_serving(node)  # the unit starts the container again (with runc) after dockerd
        assert_caught(node, {"docker.runtime.nvidia": None})
    finally:
        # put back: dockerd restarted with the runtime again, and the unit starts the
        # container again by itself (as above); clean once the model answers
        node.on_node("cp -p /root/daemon.json.saved /etc/docker/daemon.json && "
                     "systemctl restart docker.service")
    wait_serving(node)
    assert node.on_node("systemctl is-active stacklock-serving.service").stdout.strip() == "active"
    code, rep = verify(node, "--fast")
    assert code == 0, f"not clean after putting the runtime back: {sorted(findings(rep))}"


def test_no_java_on_the_host_in_container_mode(node: Node) -> None:
    """As on a node provisioned in container mode from the start: Java is in the image, the
    host needs none (the rollback below installs and holds it again)."""
    gv = yaml.safe_load((node.out / "inventories/dev/group_vars/dev/stacklock.yml").read_text())
    java = " ".join(p["name"] for p in gv["torchserve_java_packages"])
    node.on_node("DEBIAN_FRONTEND=noninteractive apt-get purge -y -q "
                 f"--allow-change-held-packages {java} >/dev/null")
    assert node.on_node("command -v java", check=False).returncode != 0
    for extra in ((), ("--fast",)):
        code, rep = verify(node, *extra)
        assert code == 0, f"{extra}: {sorted(findings(rep))}"


def test_rollback_to_the_host_mode_revision_leaves_no_stale_container(node: Node) -> None:
    start = time.monotonic()
    res = sl(node.manifest, "rollback", "dev", timeout=2400)
    print(f"rollback to host mode: {time.monotonic() - start:.0f} s")
    _ok(res)
    node.back_in_host_mode = True
    data = yaml.safe_load(node.manifest.read_text())
    assert data["environments"]["dev"]["stack"] == STACK
    gv = (node.out / "inventories/dev/group_vars/dev/stacklock.yml").read_text()
    assert "serving_runtime" not in gv and "serving_container" not in gv
    assert node.on_node("docker ps -aq").stdout.strip() == ""  # nothing runs, none stopped
    assert node.on_node(f"test -e {UNIT}", check=False).returncode == 1
    assert node.on_node("systemctl is-active torchserve.service").stdout.strip() == "active"
    assert node.on_node("java -version 2>&1").stdout.strip()  # installed again, held
    assert "openjdk" in node.on_node("apt-mark showhold").stdout
    status, body = node.call(PREDICT)
    assert status == 200, body
    for extra in ((), ("--fast",)):
        code, rep = verify(node, *extra)
        assert code == 0, f"{extra}: {sorted(findings(rep))}"
