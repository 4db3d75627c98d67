"""smoke: each model's smoke test against a fake TorchServe on a real port (the module's own
POST code runs), its key renewal and refusals (moved from tests/unit/collectors/test_stack_facts.py)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from ansible.module_utils.stacklock_facts import smoke
from fakenode import FakeSystem, gather, lab_node

pytestmark = pytest.mark.unit

#
# A fake TorchServe on 127.0.0.1 (a real HTTP server: the module's own POST code runs) serving
# the tiny-linear model (y = 2x + 1, answering as TorchServe 0.12 does), its token API and the
# key refusal TorchServe gives an expired key (HTTP 400, InvalidKeyException).

SMOKE_INPUT = b'{"inputs": [1, 2, 3]}'
#: TorchServe's answer to SMOKE_INPUT, byte for byte (recorded on a lab node)
SMOKE_ANSWER = b"[\n  3.0,\n  5.0,\n  7.0\n]"
KEY_PATH = "/var/lib/torchserve/key_file.json"


class FakeTorchServe:
    """The inference API (`/predictions/NAME/VERSION`) on a real port; the token API
    (`/token?type=...`) answers on the fake node's management address."""

    def __init__(self, node: FakeSystem, *, delay: float = 0.0) -> None:
        import http.server
        import threading

        self.node = node
        self.delay = delay
        self.posts: list[tuple[str, dict[str, str], bytes]] = []
        self.tokens: list[tuple[str, str]] = []
        self.expired: set[str] = set()
        self.renew = True
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                import time as _time

                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.posts.append((self.path, dict(self.headers.items()), body))
                _time.sleep(outer.delay)
                keys = json.loads(outer.node.files[KEY_PATH])
                auth = self.headers.get("Authorization", "")
                if auth != f"Bearer {keys['inference']['key']}" or auth in outer.expired:
                    self._send(400, b'{\n  "code": 400,\n  "type": "InvalidKeyException",\n  '
                                    b'"message": "Token Authorization failed. Token either '
                                    b'incorrect, expired, or not provided correctly"\n}\n')
                    return
                if self.path == "/predictions/tiny-linear/1.0":
                    try:
                        xs = json.loads(body)["inputs"]
                    except (ValueError, KeyError, TypeError):
                        self._send(503, b'{\n  "code": 503,\n  "type": "InternalServerException",'
                                        b'\n  "message": "Prediction failed"\n}\n')
                        return
                    answer = "[\n" + ",\n".join(f"  {2.0 * x + 1.0}" for x in xs) + "\n]"
                    self._send(200, answer.encode())
                elif self.path == "/predictions/picky/1.0":  # a model refusing its input: 400
                    self._send(400, b'{"code": 400, "type": "BadRequestException"}')
                else:
                    self._send(404, b'{"code": 404, "type": "ModelNotFoundException"}')

        def renew(url: str, headers: dict[str, str]) -> tuple[int, str]:
            # TorchServe's token API, on the management address (the fake node's HTTP)
            self.tokens.append((url.split("8081", 1)[1], headers.get("Authorization", "")))
            keys = json.loads(node.files[KEY_PATH])
            if not self.renew or headers.get("Authorization") != f"Bearer {keys['API']['key']}":
                return 400, '{"code": 400, "type": "InvalidKeyException"}'
            kind = url.split("type=", 1)[1]
            keys[kind]["key"] = f"{kind}-FRESH-000"
            node.files[KEY_PATH] = json.dumps(keys)
            return 200, "{}"

        for kind in ("inference", "management"):
            node.handlers[f"http://127.0.0.1:8081/token?type={kind}"] = renew
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def torchserve() -> Any:
    node = lab_node()
    ts = FakeTorchServe(node)
    yield ts
    ts.close()


def smoke_test(name: str = "tiny-linear", body: bytes = SMOKE_INPUT, **spec: Any) -> dict[str, Any]:
    import base64

    smoke = {"content_type": "application/json",
             "input_base64": base64.b64encode(body).decode(),
             "input_sha256": hashlib.sha256(body).hexdigest(),
             "expected": [3.0, 5.0, 7.0], "tolerance": 1e-6}
    smoke.update(spec)
    return {"name": name, "version": "1.0", "file": f"{name}.mar", "smoke": smoke}


def smoke_facts(ts: FakeTorchServe, *tests: dict[str, Any], **opts: Any) -> dict[str, Any]:
    options: dict[str, Any] = {"torchserve_inference_url": ts.url,
                               "torchserve_key_file": KEY_PATH,
                               "smoke": list(tests or [smoke_test()])}
    return gather(ts.node, **dict(options, **opts))


def test_smoke_posts_the_locked_input_with_the_inference_key_and_reports_the_answer(
        torchserve: FakeTorchServe) -> None:
    facts = smoke_facts(torchserve)
    entry = facts["torchserve"]["smoke"]["tiny-linear"]
    assert entry["status"] == 200
    assert entry["sha256"] == hashlib.sha256(SMOKE_ANSWER).hexdigest()
    assert entry["numbers"] == [3.0, 5.0, 7.0]
    assert entry["check"] == "numbers" and entry["size"] == len(SMOKE_ANSWER)
    assert entry["url"] == f"{torchserve.url}/predictions/tiny-linear/1.0"
    [(path, headers, body)] = torchserve.posts
    assert path == "/predictions/tiny-linear/1.0" and body == SMOKE_INPUT
    assert headers["Authorization"] == "Bearer inf-SECRET-456"  # the inference key, not another
    assert headers["Content-Type"] == "application/json"
    assert torchserve.tokens == []  # a working key is never renewed
    assert facts["errors"] == {} and facts["blocked"] == {}
    assert "SECRET" not in json.dumps(facts)


def test_smoke_with_a_sha256_check_and_a_wrong_answer_is_reported_as_read(
        torchserve: FakeTorchServe) -> None:
    facts = smoke_facts(torchserve, smoke_test(body=b'{"inputs": [10]}', expected=None,
                                               tolerance=None, sha256="0" * 64))
    entry = facts["torchserve"]["smoke"]["tiny-linear"]
    assert entry["check"] == "sha256"
    assert entry["numbers"] == [21.0]  # read, whatever the expectation: parity judges
    assert entry["sha256"] == hashlib.sha256(b"[\n  21.0\n]").hexdigest()


def test_smoke_renews_an_expired_inference_key_once(torchserve: FakeTorchServe) -> None:
    torchserve.expired.add("Bearer inf-SECRET-456")
    facts = smoke_facts(torchserve)
    entry = facts["torchserve"]["smoke"]["tiny-linear"]
    assert entry["status"] == 200 and entry["numbers"] == [3.0, 5.0, 7.0]
    assert entry["token_refreshed"] is True
    # asked the management address's token API for an inference key, with the API key
    assert torchserve.tokens == [("/token?type=inference", "Bearer api-SECRET-789")]
    assert [h["Authorization"] for _, h, _ in torchserve.posts] == [
        "Bearer inf-SECRET-456", "Bearer inference-FRESH-000"]
    # the management key was not touched
    assert json.loads(torchserve.node.files[KEY_PATH])["management"]["key"] == "mgmt-SECRET-123"
    assert "SECRET" not in json.dumps(facts) and "FRESH" not in json.dumps(facts)


def test_smoke_key_refused_even_after_renewal_is_could_not_look(
        torchserve: FakeTorchServe) -> None:
    torchserve.expired.add("Bearer inf-SECRET-456")
    torchserve.renew = False
    facts = smoke_facts(torchserve)
    error = facts["blocked"]["torchserve.smoke.tiny-linear"]
    assert error.startswith("could not look: POST ") and "inference key was refused" in error
    assert "status" not in facts["torchserve"]["smoke"]["tiny-linear"]
    assert "SECRET" not in json.dumps(facts)


def test_a_model_refusing_its_input_is_an_answer_and_renews_no_key(
        torchserve: FakeTorchServe) -> None:
    """TorchServe answers a bad input with 400 too: only InvalidKeyException renews the key
    (renewing would take a working key away from every client)."""
    facts = smoke_facts(torchserve, smoke_test("picky"))
    entry = facts["torchserve"]["smoke"]["picky"]
    assert entry["status"] == 400 and "BadRequestException" in entry["excerpt"]
    assert torchserve.tokens == []
    assert facts["blocked"] == {}


def test_smoke_timeout_is_could_not_look_and_refused_connection_an_error() -> None:
    node = lab_node()
    node.timeout = 0.5  # probe_timeout
    slow = FakeTorchServe(node, delay=2.0)
    try:
        facts = smoke_facts(slow)
    finally:
        slow.close()
    assert "no answer within" in facts["blocked"]["torchserve.smoke.tiny-linear"]
    # nothing listens: an error (TorchServe is down, a deviation), not could-not-look
    gone = FakeTorchServe(lab_node())
    gone.close()
    facts = smoke_facts(gone)
    assert "torchserve.smoke.tiny-linear" in facts["errors"]
    assert "torchserve.smoke.tiny-linear" not in facts["blocked"]


def test_smoke_input_altered_on_the_way_is_could_not_look(torchserve: FakeTorchServe) -> None:
    facts = smoke_facts(torchserve, smoke_test(input_sha256="0" * 64))
    assert "arrived altered" in facts["blocked"]["torchserve.smoke.tiny-linear"]
    assert torchserve.posts == []


def test_smoke_reaches_a_wildcard_inference_address_on_the_loopback(
        torchserve: FakeTorchServe) -> None:
    port = torchserve.url.rsplit(":", 1)[1]
    facts = smoke_facts(torchserve, torchserve_inference_url=f"http://0.0.0.0:{port}")
    entry = facts["torchserve"]["smoke"]["tiny-linear"]
    assert entry["url"] == f"http://127.0.0.1:{port}/predictions/tiny-linear/1.0"
    assert entry["status"] == 200


def test_no_smoke_test_no_request_and_no_smoke_facts(torchserve: FakeTorchServe) -> None:
    facts = gather(torchserve.node, torchserve_inference_url=torchserve.url)
    assert "smoke" not in facts["torchserve"]
    assert torchserve.posts == []


def test_smoke_numbers_are_flattened_and_anything_else_is_not_numbers() -> None:
    out: list[float] = []
    assert smoke.numbers([[1, 2.5], [3]], out) and out == [1.0, 2.5, 3.0]
    assert not smoke.numbers([1, "two"], [])
    assert not smoke.numbers({"y": [1]}, [])
    assert not smoke.numbers([True], [])
