"""verify's check of the client's path (stacklock.adapters.tls.client_check, judged by
stacklock.core.endpoint), against a real TLS server on 127.0.0.1: a good certificate, an
expired one, one for another name, one from another CA, one near its expiry, one other than
the configured one; a closed port; the smoke test through the endpoint with a client token;
and what the one comparison makes of it (exit 1 for a deviation, 3 when it could not look)."""

from __future__ import annotations

import datetime as dt
import http.server
import shutil
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stacklock.adapters import tls
from stacklock.core import parity
from stacklock.errors import ExitCode

pytestmark = pytest.mark.unit

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
SMOKE = {"content_type": "application/json", "expected": [3.0, 5.0, 7.0], "tolerance": 1e-6,
         "input_base64": "eyJpbnB1dHMiOiBbMSwgMiwgM119"}
MODELS = [{"name": "tiny-linear", "version": "1.0", "smoke": SMOKE}]


class Endpoint:
    """An HTTPS server on 127.0.0.1 with a given certificate, answering the model's smoke
    test only to a client token (as the node's nginx does)."""

    def __init__(self, cert: Path, key: Path, token: str, answer: bytes = b"[3, 5, 7]") -> None:
        self.seen: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.seen.append(self.path)
                ok = self.headers.get("Authorization") == f"Bearer {token}"
                body = answer if ok else b"401"
                self.send_response(200 if ok else 401)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def lab(tmp_path: Path) -> Path:
    return tmp_path / "lab"


def _hv(lab: Path, port: int, **extra: Any) -> dict[str, Any]:
    return {"serving_endpoint_enabled": True, "serving_endpoint_port": port,
            "serving_endpoint_tls_source": "lab_ca", "serving_endpoint_tokens_source": "lab",
            "serving_endpoint_lab_dir": str(lab), "serving_endpoint_certificate_min_days": 14,
            "torchserve_models": MODELS, "ansible_host": "127.0.0.1",
            "inventory_hostname": "dev-1", "stacklock_environment": "dev", **extra}


def _serve(lab: Path, cert: tls.NodeCert | tuple[Path, Path]) -> Iterator[Endpoint]:
    token = tls.read_tokens(tls.ensure_token(lab, "dev"))[-1]
    files = (cert.cert, cert.key) if isinstance(cert, tls.NodeCert) else cert
    server = Endpoint(files[0], files[1], token)
    try:
        yield server
    finally:
        server.close()


def _checks(section: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["component"]: c for c in section["checks"]}


def _bad(section: dict[str, Any]) -> set[str]:
    return {c for c, v in _checks(section).items() if v["status"] != "match"}


def test_a_good_certificate_and_the_smoke_test_through_the_endpoint(lab: Path) -> None:
    issued = tls.node_certificate(lab, "dev", "dev-1", ["127.0.0.1"])
    for server in _serve(lab, issued):
        section = tls.client_check(_hv(lab, server.port))
        checks = _checks(section)
        assert _bad(section) == set(), section
        assert set(checks) == {"endpoint.certificate.chain", "endpoint.certificate.expiry",
                               "endpoint.certificate.name", "endpoint.certificate.sha256",
                               "endpoint.smoke.tiny-linear"}
        assert checks["endpoint.certificate.name"]["actual"] == "IP:127.0.0.1"
        assert checks["endpoint.certificate.expiry"]["actual"].endswith(("89 day(s) left)",
                                                                          "90 day(s) left)"))
        # as a client calls it: the model's name, the endpoint serves the locked version
        assert server.seen == ["/predictions/tiny-linear"]
        token = tls.read_tokens(tls.tokens_path(lab, "dev"))[-1]
        assert token not in repr(section)


def test_an_expired_certificate(lab: Path) -> None:
    issued = tls.node_certificate(lab, "dev", "dev-1", ["127.0.0.1"],
                                  now=NOW - dt.timedelta(days=30), days=10)
    for server in _serve(lab, issued):
        section = tls.client_check(_hv(lab, server.port))
        expiry = _checks(section)["endpoint.certificate.expiry"]
        assert expiry["status"] == "deviation" and expiry["actual"].startswith("expired on ")
        assert expiry["expected"] == "valid for at least 14 more day(s)"
        # a client refuses it too
        chain = _checks(section)["endpoint.certificate.chain"]
        assert chain["status"] == "deviation" and "expired" in chain["actual"]


def test_a_certificate_near_its_expiry_and_the_threshold(lab: Path) -> None:
    issued = tls.node_certificate(lab, "dev", "dev-1", ["127.0.0.1"],
                                  now=NOW - dt.timedelta(days=80), days=90)
    for server in _serve(lab, issued):
        near = tls.client_check(_hv(lab, server.port))
        assert _bad(near) == {"endpoint.certificate.expiry"}
        assert "(in 9 day(s))" in _checks(near)["endpoint.certificate.expiry"]["actual"]
        # the manifest's endpoint.certificate_min_days decides
        relaxed = tls.client_check(_hv(lab, server.port,
                                       serving_endpoint_certificate_min_days=7))
        assert _bad(relaxed) == set()


def test_a_certificate_for_another_name(lab: Path) -> None:
    issued = tls.node_certificate(lab, "dev", "dev-1", ["127.0.0.2"], ["node.example"])
    for server in _serve(lab, issued):
        section = tls.client_check(_hv(lab, server.port))
        assert _bad(section) == {"endpoint.certificate.name"}
        name = _checks(section)["endpoint.certificate.name"]
        assert (name["expected"], name["actual"]) == ("127.0.0.1", "IP:127.0.0.2, DNS:node.example")


def test_a_certificate_from_another_ca(lab: Path, tmp_path: Path) -> None:
    tls.node_certificate(lab, "dev", "dev-1", ["127.0.0.1"])  # what the controller configured
    other = tls.node_certificate(tmp_path / "other", "dev", "dev-1", ["127.0.0.1"])
    for server in _serve(lab, other):
        section = tls.client_check(_hv(lab, server.port))
        assert _bad(section) == {"endpoint.certificate.chain", "endpoint.certificate.sha256"}
        chain = _checks(section)["endpoint.certificate.chain"]
        assert "unable to get local issuer certificate" in chain["actual"]
        assert chain["expected"].startswith("trusted by the lab CA")


def test_another_certificate_than_the_configured_one(lab: Path, tmp_path: Path) -> None:
    """The same CA and name, but not the certificate the controller configured (a stale copy
    on the node): only the fingerprint says so."""
    served = tls.node_certificate(lab, "dev", "dev-1", ["127.0.0.1"])
    kept = tmp_path / "served"
    kept.mkdir()
    cert, key = shutil.copy(served.cert, kept / "c.pem"), shutil.copy(served.key, kept / "k.pem")
    served.cert.unlink()
    tls.node_certificate(lab, "dev", "dev-1", ["127.0.0.1"])  # issued again on the controller
    for server in _serve(lab, (Path(cert), Path(key))):
        section = tls.client_check(_hv(lab, server.port))
        assert _bad(section) == {"endpoint.certificate.sha256"}


def test_a_configured_ca_file_and_certificate_file(lab: Path) -> None:
    issued = tls.node_certificate(lab, "dev", "dev-1", ["127.0.0.1"])
    for server in _serve(lab, issued):
        hv = _hv(lab, server.port, serving_endpoint_tls_source="files",
                 serving_endpoint_tls_cert_src=str(issued.cert))
        # no CA named: the system's trust store does not know the lab CA
        assert _bad(tls.client_check(hv)) == {"endpoint.certificate.chain"}
        hv["serving_endpoint_tls_ca_src"] = str(issued.ca)
        assert _bad(tls.client_check(hv)) == set()


def test_a_wrong_smoke_answer_and_no_token(lab: Path) -> None:
    issued = tls.node_certificate(lab, "dev", "dev-1", ["127.0.0.1"])
    token = tls.read_tokens(tls.ensure_token(lab, "dev"))[-1]
    server = Endpoint(issued.cert, issued.key, token, answer=b"[3, 5, 8]")
    try:
        smoke = _checks(tls.client_check(_hv(lab, server.port)))["endpoint.smoke.tiny-linear"]
        assert (smoke["status"], smoke["actual"]) == ("deviation", "[3.0, 5.0, 8.0]")
        # a token the endpoint does not take: its answer (401) is the deviation
        tls.add_token(lab, "dev")
        smoke = _checks(tls.client_check(_hv(lab, server.port)))["endpoint.smoke.tiny-linear"]
        assert (smoke["status"], smoke["actual"]) == ("deviation", "HTTP 401: 401")
        # no token on the controller at all: could not look
        tls.tokens_path(lab, "dev").unlink()
        smoke = _checks(tls.client_check(_hv(lab, server.port)))["endpoint.smoke.tiny-linear"]
        assert smoke["status"] == "could-not-look"
    finally:
        server.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _report(section: dict[str, Any] | None) -> parity.ParityReport:
    expected = {"dev": {"endpoint.health": "200"}}
    facts: dict[str, Any] = {"schema": parity.FACTS_SCHEMA, "endpoint": {"health": "200"}}
    if section is not None:
        facts["endpoint_client"] = section
    return parity.compare(expected, {"dev": {"dev-1": facts}})


def test_the_comparison_names_environment_node_component_expected_and_actual(lab: Path) -> None:
    issued = tls.node_certificate(lab, "dev", "dev-1", ["127.0.0.1"],
                                  now=NOW - dt.timedelta(days=30), days=10)
    for server in _serve(lab, issued):
        report = _report(tls.client_check(_hv(lab, server.port)))
        assert report.exit_code == ExitCode.DEVIATION
        found = {(c.environment, c.node, c.component) for c in report.deviations}
        assert ("dev", "dev-1", "endpoint.certificate.expiry") in found
        expiry = next(c for c in report.deviations
                      if c.component == "endpoint.certificate.expiry")
        assert expiry.expected == "valid for at least 14 more day(s)"
        assert expiry.actual is not None and expiry.actual.startswith("expired on ")
    issued = tls.node_certificate(lab, "dev", "dev-1", ["127.0.0.1"])
    for server in _serve(lab, issued):
        assert _report(tls.client_check(_hv(lab, server.port))).exit_code == ExitCode.OK


def test_a_closed_port_is_a_deviation_a_timeout_could_not_look(lab: Path) -> None:
    tls.node_certificate(lab, "dev", "dev-1", ["127.0.0.1"])
    refused = tls.client_check(_hv(lab, _closed_port()))
    assert refused["refused"].startswith("not answering")
    assert _report(refused).exit_code == ExitCode.DEVIATION
    # a listener that never answers the handshake: a timeout, could not look (exit 3)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        section = tls.client_check(_hv(lab, silent.getsockname()[1]), timeout=1)
    assert "error" in section
    report = _report(section)
    assert report.exit_code == ExitCode.FAILED
    assert {c.component for c in report.unverified} >= {"endpoint.certificate.chain",
                                                        "endpoint.smoke.tiny-linear"}
    # said as every value that could not be read says it (the lab e2e's timeout test reads it)
    assert all(c.detail.startswith("could not look: ") and "timed out" in c.detail
               for c in report.unverified), [c.detail for c in report.unverified]


def test_no_client_check_for_an_environment_with_an_endpoint_could_not_look() -> None:
    report = _report(None)
    assert report.exit_code == ExitCode.FAILED
    assert "stacklock_endpoint_client" in report.unverified[0].detail
    # and nothing is asked of an environment without an endpoint
    assert parity.compare({"dev": {}}, {"dev": {"dev-1": {
        "schema": parity.FACTS_SCHEMA}}}).exit_code == ExitCode.OK


@pytest.mark.slow
def test_the_verify_plays_task_runs_it_as_ansible_does(lab: Path, tmp_path: Path) -> None:
    """The verify play's `stacklock_endpoint_client` action, run by Ansible on the controller
    with the host's variables as render writes them (`{{ inventory_dir }}` paths): it sets the
    `stacklock_endpoint_client` fact, and no token reaches its output."""
    import json
    import os
    import subprocess
    import sys

    import yaml

    root = Path(__file__).resolve().parents[3]
    inventory = tmp_path / "inventories" / "dev"
    inventory.mkdir(parents=True)
    state = tmp_path / ".stacklock" / "endpoint"
    issued = tls.node_certificate(state, "dev", "localhost", ["127.0.0.1"])
    token = tls.read_tokens(tls.ensure_token(state, "dev"))[-1]
    server = Endpoint(issued.cert, issued.key, token)
    try:
        hv = _hv(state, server.port, serving_endpoint_lab_dir=(
            "{{ inventory_dir }}/../../.stacklock/endpoint"))
        for key in ("ansible_host", "inventory_hostname"):
            hv.pop(key)
        group_vars = inventory / "vars.yml"
        group_vars.write_text(yaml.safe_dump(hv))
        cmd = [str(Path(sys.executable).parent / "ansible"), "localhost", "-c", "local",
               "-m", "stacklock_endpoint_client", "-e", f"@{group_vars}",
               "-e", f"inventory_dir={inventory}", "-e", "ansible_host=127.0.0.1"]
        env = {**os.environ, "ANSIBLE_CONFIG": str(root / "ansible.cfg"),
               "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCAL_TEMP": str(tmp_path / "local"),
               "ANSIBLE_LOCALHOST_WARNING": "false"}
        done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True,
                              timeout=300, check=False)
    finally:
        server.close()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout[done.stdout.index("{"):])
    section = result["ansible_facts"]["stacklock_endpoint_client"]
    assert _bad(section) == set(), section
    assert section["url"] == f"https://127.0.0.1:{server.port}"
    assert token not in done.stdout + done.stderr
