"""The serving endpoint on a real lab node (docs/serving.md, docs/observability.md), on the
shared integrity node (conftest's `integrity_lab`, project slint, network 10.231, environment
dev; its manifest derives from examples/lab.yaml, whose environments all have an endpoint).
From the host, outside the node: a prediction over TLS with the lab's client token, refused
without it, with a wrong one and over plain HTTP, TorchServe's own ports out of reach; the
locked model version in TorchServe's access log; a token rotation; verify catching a stopped
proxy, a changed proxy config and an expired certificate (configure puts it back); a real
Prometheus scraping the node's metrics over the lab network with the scrape token.

Each test leaves the node as it found it (the integrity tests share it).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PORT = 8443  # examples/lab.yaml's endpoint
BODY = b'{"inputs": [1, 2, 3]}'
SITE = "/etc/nginx/conf.d/stacklock-endpoint.conf"
CERT = "/etc/stacklock-endpoint/tls/cert.pem"
KEY = "/etc/stacklock-endpoint/tls/key.pem"


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
        self.name = str(name)
        self.node = str(entry.get("stacklock_container", "slint-dev-1"))
        self.address = str(entry["ansible_host"])
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
def lab(integrity_lab: Path) -> Lab:
    """The integrity node (tests/integration/conftest.py), provisioned with its endpoint."""
    return Lab(integrity_lab)


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


def test_torchserves_access_log_names_the_locked_version(lab: Lab) -> None:
    """A client asks for the model by name; nginx passes it on as /predictions/NAME/VERSION
    (the lock's), so TorchServe's access log line for that request names the version."""
    log = "/var/log/torchserve/access_log.log"
    before = int(lab.on_node(f"wc -l < {log}").strip() or 0)
    status, body = call(lab, "/predictions/tiny-linear", lab.token())
    assert status == 200 and [round(x, 4) for x in json.loads(body)] == [3.0, 5.0, 7.0]
    for _ in range(20):  # TorchServe's log4j writes asynchronously
        new = lab.on_node(f"tail -n +{before + 1} {log}")
        if "/predictions/" in new:
            break
        time.sleep(0.5)
    lines = [x for x in new.splitlines() if "/predictions/" in x]
    assert lines, new
    assert all("/predictions/tiny-linear/1.0 " in x for x in lines), lines
    print(f"\nTorchServe's access log line for the client's request: {lines[-1]}")


def test_refused_without_the_token_with_a_wrong_one_and_over_plain_http(lab: Lab) -> None:
    status, _ = call(lab, PREDICT, None)
    assert status == 401
    assert call(lab, PREDICT, "0" * 64)[0] == 401
    # management is not proxied, nor TorchServe's API description; the metrics route takes a
    # scrape token only, never a client's
    assert call(lab, "/models", lab.token(), body=None)[0] == 404
    assert call(lab, "/metrics", lab.token(), body=None)[0] == 401
    assert call(lab, "/metrics", None, body=None)[0] == 401
    # another version of the model: not served, whoever asks
    assert call(lab, "/predictions/tiny-linear/2.0", lab.token())[0] == 404
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


def test_verify_catches_an_expired_certificate_and_configure_puts_it_back(lab: Lab,
                                                                         tmp_path: Path) -> None:
    """A certificate of the lab CA, for the node's address, but expired, put on the node in
    place of the configured one: verify (the play and --fast) names the certificate's expiry,
    the chain a client refuses and the fingerprint (exit 1); configure (the role) puts the
    configured one back, and verify passes."""
    from stacklock.adapters import tls

    other = tmp_path / "state"
    shutil.copytree(lab.state / "ca", other / "ca")  # the same CA, another node certificate
    expired = tls.node_certificate(other, "dev", lab.name, [lab.address],
                                   now=dt.datetime.now(dt.UTC) - dt.timedelta(days=40), days=30)
    original = lab.on_node(f"sha256sum {CERT} {KEY}")
    subprocess.run(["docker", "cp", str(expired.cert), f"{lab.node}:{CERT}"], check=True)
    subprocess.run(["docker", "cp", str(expired.key), f"{lab.node}:{KEY}"], check=True)
    lab.on_node(f"chown root:root {CERT} {KEY} && chmod 0644 {CERT} && chmod 0600 {KEY} "
                "&& systemctl reload nginx")
    try:
        for extra in ((), ("--fast",)):
            res = sl(lab.manifest, "verify", "dev", "--format", "json", *extra, timeout=900)
            report = json.loads(res.stdout)
            found = {c["component"]: c for c in report["deviations"]}
            assert res.returncode == 1, (extra, sorted(found))
            assert {"endpoint.certificate.expiry", "endpoint.certificate.chain",
                    "endpoint.certificate.sha256"} <= set(found), (extra, sorted(found))
            expiry = found["endpoint.certificate.expiry"]
            assert expiry["environment"] == "dev" and expiry["node"] == lab.name
            assert expiry["actual"].startswith("expired on "), expiry
            assert "expired" in found["endpoint.certificate.chain"]["actual"]
            assert "endpoint.certificate.name" not in found  # the right address
    finally:
        _apply(lab)  # configure: the role puts the configured certificate and key back
    assert lab.on_node(f"sha256sum {CERT} {KEY}") == original
    code, report = _verify(lab)
    assert code == 0, sorted(_deviations(report))
    checks = {c["component"]: c for c in report["checks"]}
    assert checks["endpoint.certificate.name"]["actual"] == f"IP:{lab.address}"
    assert checks["endpoint.smoke.tiny-linear"]["status"] == "match"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get_json(url: str) -> Any:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as resp:
        return json.load(resp)


def test_prometheus_scrapes_every_node_over_the_lab_network(lab: Lab, tmp_path: Path) -> None:
    """Debian's prometheus (scripts/lab-prometheus.sh, on 127.0.0.1 only) scrapes every lab
    node's /metrics over the lab network, over TLS against the lab CA, with the lab's scrape
    token: every target up, and TorchServe's request counter carries the model's name and its
    locked version."""
    if shutil.which("prometheus") is None and os.geteuid() != 0:
        pytest.skip("prometheus is not installed and cannot be installed here")
    for _ in range(3):
        assert call(lab, "/predictions/tiny-linear", lab.token())[0] == 200
    scrape = lab.state / "_metrics" / "tokens"
    assert scrape.is_file() and oct(scrape.stat().st_mode & 0o777) == "0o600"
    textfile = tmp_path / "stacklock.prom"
    textfile.write_text("stacklock_parity_exit_code 0\n")
    port = _free_port()
    proc = subprocess.Popen(
        ["scripts/lab-prometheus.sh", "--port", str(port), "--inventories",
         str(lab.out / "inventories"), "--textfile", str(textfile), "--duration", "120", "--",
         "--node-port", str(PORT), "--ca-file", str(lab.ca), "--bearer-token-file",
         str(scrape), "--scrape-interval", "2s"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True, env=dict(os.environ, PY=sys.executable))
    base = f"http://127.0.0.1:{port}/api/v1"
    try:
        deadline = time.monotonic() + 90
        targets: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            try:
                targets = _get_json(f"{base}/targets?state=active")["data"]["activeTargets"]
            except OSError:
                targets = []
            nodes = [t for t in targets if t["labels"].get("job") == "torchserve"]
            if nodes and all(t["health"] == "up" for t in targets):
                break
            time.sleep(1)
        nodes = [t for t in targets if t["labels"].get("job") == "torchserve"]
        assert [(t["labels"]["environment"], t["labels"]["node"], t["health"]) for t in nodes] \
            == [("dev", lab.name, "up")], targets
        assert nodes[0]["scrapeUrl"] == f"https://{lab.address}:{PORT}/metrics"
        query = urllib.parse.quote(
            'ts_inference_requests_total{model_name="tiny-linear",model_version="1.0"}')
        result: list[Any] = []
        while time.monotonic() < deadline + 30 and not result:
            result = _get_json(f"{base}/query?query={query}")["data"]["result"]
            time.sleep(1)
        assert result, "no TorchServe request counter with the locked model version"
        assert result[0]["metric"]["node"] == lab.name
        assert float(result[0]["value"][1]) >= 3
        print(f"\nscraped over the lab network: {result[0]['metric']}")
    finally:
        os.killpg(proc.pid, 15)
        out, _ = proc.communicate(timeout=60)
        print(out[-2000:])
    # Prometheus listened on loopback only: nothing of it reached the lab network
    assert "127.0.0.1" in out
