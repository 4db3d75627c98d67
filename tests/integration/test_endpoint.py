"""The serving endpoint on a real lab node (docs/serving.md): one node provisioned with an
endpoint (the lab's own CA and token), then, from the host (outside the node): a prediction
over TLS with the token, refused without it, with a wrong one and over plain HTTP, TorchServe's
own ports out of reach; a token rotation; and verify catching a stopped proxy and a changed
proxy config.

Its own project (slep) and network (10.242), environment dev only; destroyed at the end.
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PROJECT = "slep"
NETWORK = "10.242"
PORT = 8443
BODY = b'{"inputs": [1, 2, 3]}'
SITE = "/etc/nginx/conf.d/stacklock-endpoint.conf"


def sl(manifest: Path, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, NO_COLOR="1", COLUMNS="200")
    return subprocess.run([str(BIN / "stacklock"), "-m", str(manifest), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env, check=False)


class Lab:
    def __init__(self, manifest: Path) -> None:
        self.manifest = manifest
        self.out = manifest.parent / "lab"
        hosts = yaml.safe_load((self.out / "inventories/dev/hosts.yml").read_text())
        (name, entry), = hosts["all"]["children"]["dev"]["hosts"].items()
        self.node, self.address = str(entry.get("stacklock_container", name)), entry["ansible_host"]
        self.state = self.out / ".stacklock" / "endpoint"
        self.ca = self.state / "ca" / "ca.pem"
        self.tokens = self.state / "dev" / "tokens"
        self.url = f"https://{self.address}:{PORT}"

    def token(self, index: int = -1) -> str:
        lines = [x for x in self.tokens.read_text().split() if x]
        return lines[index]

    def on_node(self, script: str) -> str:
        res = subprocess.run(["docker", "exec", self.node, "bash", "-ec", script],
                             capture_output=True, text=True, timeout=300, check=False)
        assert res.returncode == 0, f"{script}\n{res.stdout}\n{res.stderr}"
        return res.stdout


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, lab_docker: str) -> Iterator[Lab]:
    if os.geteuid() != 0 or subprocess.run(["which", "dpkg-scanpackages"],
                                           capture_output=True, check=False).returncode:
        pytest.skip("the lab needs root and scripts/bootstrap.sh's tools")
    work = tmp_path_factory.mktemp(PROJECT)
    (work / "models").mkdir()
    (work / "models/tiny-linear.mar").write_bytes((ROOT / "examples/models/tiny-linear.mar")
                                                  .read_bytes())
    text = (ROOT / "examples/lab.yaml").read_text()
    text = re.sub(r"^project: .*$", f"project: {PROJECT}", text, flags=re.M)
    text = text.replace("10.213.", f"{NETWORK}.")
    data = yaml.safe_load(text)
    dev = data["environments"]["dev"]
    dev["endpoint"] = {"port": PORT, "tls": {"lab_ca": True}, "tokens": {"lab": True}}
    data["environments"] = {"dev": dev}
    data.pop("promotion", None)
    manifest = work / "lab.yaml"
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    for step in (["lock"], ["render"]):
        res = sl(manifest, *step)
        assert res.returncode == 0, res.stdout + res.stderr
    try:
        started = time.monotonic()
        res = sl(manifest, "provision", "dev", "--yes", timeout=2400)
        assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-4000:]
        print(f"\nprovision with the endpoint: {time.monotonic() - started:.0f} s")
        yield Lab(manifest)
    finally:
        sl(manifest, "destroy", "--all", timeout=600)
        left = subprocess.run(["docker", "ps", "-aq", "--filter", f"name={PROJECT}-"],
                              capture_output=True, text=True, check=False).stdout.split()
        if left:
            subprocess.run(["docker", "rm", "-f", *left], capture_output=True, check=False)


def call(lab: Lab, path: str, token: str | None, *, body: bytes | None = BODY,
         verify: bool = True) -> tuple[int, bytes]:
    ctx = ssl.create_default_context(cafile=str(lab.ca)) if verify else ssl._create_unverified_context()
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(lab.url + path, data=body, headers=headers,
                                 method="POST" if body is not None else "GET")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPSHandler(context=ctx))
    try:
        with opener.open(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


PREDICT = "/predictions/tiny-linear/1.0"


def test_a_client_outside_the_node_gets_a_prediction_over_tls(lab: Lab) -> None:
    status, body = call(lab, PREDICT, lab.token())
    assert status == 200, body
    assert [round(x, 4) for x in json.loads(body)] == [3.0, 5.0, 7.0]
    # the certificate is the lab CA's, for the node's lab address (verified by the context)
    status, body = call(lab, "/ping", None, body=None)
    assert status == 200 and b"Healthy" in body, body
    # the figures: a TLS prediction from the host against the plain loopback one on the node
    tls_times = []
    for _ in range(20):
        t = time.perf_counter()
        assert call(lab, PREDICT, lab.token())[0] == 200
        tls_times.append(time.perf_counter() - t)
    loopback = lab.on_node(
        "python3 - <<'EOF'\n"
        "import json, statistics, time, urllib.request\n"
        "key = json.load(open('/var/lib/torchserve/key_file.json'))['inference']['key']\n"
        "times = []\n"
        "for _ in range(20):\n"
        "    req = urllib.request.Request('http://127.0.0.1:8080/predictions/tiny-linear/1.0',\n"
        "        data=b'{\"inputs\": [1, 2, 3]}', headers={'Authorization': 'Bearer ' + key,\n"
        "        'Content-Type': 'application/json'})\n"
        "    t = time.perf_counter(); urllib.request.urlopen(req, timeout=30).read()\n"
        "    times.append(time.perf_counter() - t)\n"
        "print(statistics.median(times))\n"
        "EOF")
    print(f"\nprediction latency, median of 20: TLS through the endpoint from the host "
          f"{statistics.median(tls_times) * 1000:.1f} ms (new connection each), plain loopback "
          f"on the node {float(loopback) * 1000:.1f} ms")


def test_refused_without_the_token_with_a_wrong_one_and_over_plain_http(lab: Lab) -> None:
    status, _ = call(lab, PREDICT, None)
    assert status == 401
    assert call(lab, PREDICT, "0" * 64)[0] == 401
    # management and metrics are not proxied; TorchServe's API description neither
    assert call(lab, "/models", lab.token(), body=None)[0] == 404
    assert call(lab, "/metrics", lab.token(), body=None)[0] == 404
    # plain HTTP to the TLS port: nginx answers 400, no prediction
    req = urllib.request.Request(f"http://{lab.address}:{PORT}{PREDICT}", data=BODY,
                                 headers={"Authorization": f"Bearer {lab.token()}"})
    try:
        urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=10)
        raise AssertionError("plain HTTP was answered")
    except urllib.error.HTTPError as exc:
        assert exc.code == 400
    # TorchServe itself listens on the node's loopback only
    for port in (8080, 8081, 8082):
        with socket.socket() as s:
            s.settimeout(3)
            assert s.connect_ex((lab.address, port)) != 0, port


def _apply(lab: Lab) -> None:
    """The role alone (as docs/serving.md says for a rotation)."""
    res = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(lab.out / "inventories/dev"),
         "ansible/playbooks/site.yml", "--tags", "serving_endpoint_configure,serving_endpoint_run"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
        env=dict(os.environ, ANSIBLE_NOCOLOR="1"))
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert lab.token(0) not in res.stdout + res.stderr  # no token in the play's output


def test_token_rotation(lab: Lab) -> None:
    from stacklock.adapters import tls

    old = lab.token()
    tls.add_token(lab.state, "dev")
    new = lab.token()
    assert new != old
    _apply(lab)
    assert call(lab, PREDICT, old)[0] == 200 and call(lab, PREDICT, new)[0] == 200
    tls.retire_token(lab.state, "dev", keep_newest=1)
    _apply(lab)
    assert call(lab, PREDICT, old)[0] == 401 and call(lab, PREDICT, new)[0] == 200


def _verify(lab: Lab) -> tuple[int, dict[str, Any]]:
    res = sl(lab.manifest, "verify", "dev", "--format", "json", timeout=900)
    try:
        return res.returncode, json.loads(res.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"verify printed no JSON (exit {res.returncode}):\n"
                             f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}") from None


def _deviations(report: dict[str, Any]) -> set[str]:
    return {c["component"] for c in report["deviations"]}


def test_verify_catches_a_stopped_proxy_and_a_changed_proxy_config(lab: Lab) -> None:
    lab.on_node("systemctl stop nginx")
    try:
        code, report = _verify(lab)
        assert code == 1 and {"endpoint.health", "endpoint.without_token"} <= _deviations(report)
    finally:
        lab.on_node("systemctl start nginx")
    original = lab.on_node(f"cat {SITE}")
    lab.on_node(f"sed -i 's/return 401;/return 200;/' {SITE} && systemctl reload nginx")
    try:
        code, report = _verify(lab)
        found = _deviations(report)
        assert code == 1 and f"file:{SITE}" in found, found
        # the proxy now lets a prediction through without a token: verify says so too
        assert "endpoint.without_token" in found
    finally:
        lab.on_node(f"cat > {SITE} <<'EOF'\n{original}EOF\nsystemctl reload nginx")
    code, report = _verify(lab)
    assert code == 0, sorted(_deviations(report))
