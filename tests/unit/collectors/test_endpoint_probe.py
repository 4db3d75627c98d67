"""The serving endpoint on the node: the facts collector (`endpoint`) against a real TLS server
with a token check, and the role's key service (stacklock-endpoint-key) against a fake
TorchServe token API; then parity's verdict on what the collector reads."""

from __future__ import annotations

import datetime as dt
import http.server
import importlib.machinery
import importlib.util
import json
import ssl
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from ansible.module_utils.stacklock_facts import endpoint
from ansible.module_utils.stacklock_facts.run import Run

from stacklock.adapters import tls
from stacklock.core import parity

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
KEYTOOL = ROOT / "ansible" / "roles" / "serving_endpoint" / "files" / "stacklock-endpoint-key"
TOKEN = "a" * 64


class _Endpoint(http.server.BaseHTTPRequestHandler):
    """What the role's nginx site does: /ping without a token, /predictions/ with one."""

    def do_GET(self) -> None:
        if self.path == "/ping":
            self._send(200, b'{"status": "Healthy"}')
        elif self.path.startswith("/predictions/"):
            ok = self.headers.get("Authorization") == f"Bearer {TOKEN}"
            self._send(404 if ok else 401, b"")
        else:
            self._send(404, b"")

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def tls_endpoint(tmp_path: Path) -> Iterator[str]:
    issued = tls.node_certificate(tmp_path / "lab", "dev", "node-1", ["127.0.0.1"])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(issued.cert, issued.key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def gather(url: str) -> dict[str, Any]:
    run = Run({"endpoint_url": url, "probe_timeout": 5}, sy=None)  # type: ignore[arg-type]
    endpoint.collect(run)
    return {"endpoint": run.facts.get("endpoint"), "errors": run.errors}


def test_a_serving_endpoint_answers_and_checks_tokens(tls_endpoint: str) -> None:
    facts = gather(tls_endpoint)
    assert facts["endpoint"] == {"url": tls_endpoint, "health": "200", "without_token": "401"}
    assert facts["errors"] == {}


def test_a_stopped_proxy_is_a_value_read_not_a_blind_spot() -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    facts = gather(f"https://127.0.0.1:{port}")
    assert facts["endpoint"]["health"].startswith("not answering:")
    assert facts["endpoint"]["without_token"].startswith("not answering:")


def test_no_endpoint_option_no_section() -> None:
    run = Run({}, sy=None)  # type: ignore[arg-type]
    endpoint.collect(run)
    assert "endpoint" not in run.facts


# --------------------------------------------------------------------------- parity's verdict

GV = {"serving_endpoint_enabled": True,
      "serving_endpoint_packages": [{"name": "nginx", "version": "1.22.1-9+deb12u12"}]}


def verdict(section: dict[str, Any]) -> dict[str, str]:
    exp = parity.expected_from_vars(GV)
    # the client's path (from the controller) checked nothing here: its own tests are in
    # tests/unit/adapters/test_endpoint_client.py
    facts: dict[str, Any] = {"schema": parity.FACTS_SCHEMA, "endpoint": section,
                             "endpoint_client": {"checks": []}}
    if section.get("error"):  # as gather() records a probe that could not look
        facts["errors"] = facts["blocked"] = {"endpoint": section["error"]}
    report = parity.compare({"dev": exp}, {"dev": {"node-1": facts}})
    return {c.component: c.status.value for c in report.checks
            if c.component.startswith("endpoint.")}


def test_parity_expects_an_answering_endpoint_that_refuses_no_token() -> None:
    exp = parity.expected_from_vars(GV)
    assert exp["endpoint.health"] == "200" and exp["endpoint.without_token"] == "401"
    assert exp["package.nginx"] == "1.22.1-9+deb12u12" and exp["hold.nginx"] == "held"
    assert "endpoint.health" not in parity.expected_from_vars({})
    assert verdict({"health": "200", "without_token": "401"}) == {
        "endpoint.health": "match", "endpoint.without_token": "match"}
    assert verdict({"health": "not answering: [Errno 111] Connection refused",
                    "without_token": "not answering: [Errno 111] Connection refused"}) == {
        "endpoint.health": "deviation", "endpoint.without_token": "deviation"}
    # a proxy that lets a prediction through without a token
    assert verdict({"health": "200", "without_token": "404"})["endpoint.without_token"] == (
        "deviation")
    # a timeout: could not look (exit 3), never a match
    assert set(verdict({"error": "could not look: GET /ping: no answer within 5 s"}).values()) \
        == {"could-not-look"}


# --------------------------------------------------------------------------- the key service


def keytool() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("stacklock_endpoint_key", str(KEYTOOL))
    spec = importlib.util.spec_from_loader("stacklock_endpoint_key", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def key_file(path: Path, key: str, minutes: float) -> None:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=minutes)
    path.write_text(json.dumps({
        "management": {"key": "mgmt-1", "expiration time": when.strftime("%Y-%m-%dT%H:%M:%SZ")},
        "inference": {"key": key,
                      "expiration time": when.strftime("%Y-%m-%dT%H:%M:%S.123456Z")},
        "API": {"key": "api-key"}}))


@pytest.fixture()
def token_api(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """TorchServe's token API: a fresh inference key, written to the key file, for the API key."""
    calls: list[str] = []
    keys = tmp_path / "key_file.json"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            calls.append(self.path)
            if self.headers.get("Authorization") == "Bearer api-key" and \
                    self.path == "/token?type=inference":
                key_file(keys, "inf-renewed", 60)
                self.send_response(200)
            else:
                self.send_response(400)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", calls
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def no_systemctl(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    ran: list[list[str]] = []

    class Done:
        returncode = 0

    def fake(argv: list[str], **_: Any) -> Done:
        ran.append(argv)
        return Done()

    import subprocess
    monkeypatch.setattr(subprocess, "run", fake)
    return ran


def test_the_key_service_writes_the_current_key_for_nginx(
        tmp_path: Path, token_api: tuple[str, list[str]], no_systemctl: list[list[str]],
        capsys: pytest.CaptureFixture[str]) -> None:
    url, calls = token_api
    keys, out = tmp_path / "key_file.json", tmp_path / "run" / "upstream.conf"
    key_file(keys, "inf-current", 50)
    tool = keytool()
    assert tool.main(str(keys), url, str(out)) == 0
    assert out.read_text() == 'set $stacklock_upstream_auth "Bearer inf-current";\n'
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and calls == []
    assert ["systemctl", "reload", "nginx.service"] in no_systemctl
    # unchanged: no second reload
    no_systemctl.clear()
    assert tool.main(str(keys), url, str(out)) == 0
    assert ["systemctl", "reload", "nginx.service"] not in no_systemctl
    assert "inf-current" not in capsys.readouterr().err


@pytest.mark.parametrize("minutes", [2.0, -5.0])
def test_a_key_near_or_past_its_expiry_is_renewed_first(
        tmp_path: Path, token_api: tuple[str, list[str]], no_systemctl: list[list[str]],
        minutes: float, capsys: pytest.CaptureFixture[str]) -> None:
    url, calls = token_api
    keys, out = tmp_path / "key_file.json", tmp_path / "upstream.conf"
    key_file(keys, "inf-old", minutes)
    assert keytool().main(str(keys), url, str(out)) == 0
    assert calls == ["/token?type=inference"]
    assert out.read_text() == 'set $stacklock_upstream_auth "Bearer inf-renewed";\n'
    err = capsys.readouterr().err
    assert "inf-old" not in err and "inf-renewed" not in err and "api-key" not in err


def test_no_key_file_yet_is_not_an_error(tmp_path: Path) -> None:
    out = tmp_path / "upstream.conf"
    assert keytool().main(str(tmp_path / "missing.json"), "http://127.0.0.1:9", str(out)) == 0
    assert not out.exists()
