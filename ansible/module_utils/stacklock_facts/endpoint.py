# Copyright: stacklock contributors. Apache-2.0.
"""``endpoint``: does the node's inference endpoint answer (role serving_endpoint; the
``endpoint_url`` option, given only where the environment has an endpoint).

Two requests to the node's own nginx over TLS, on loopback (nginx listens on every IPv4
address of the node): the health check without a token (TorchServe's /ping behind it: 200),
and a prediction without a token (refused: 401). The certificate is not judged here (any
certificate is accepted: this asks whether nginx answers and checks tokens, not whether a
client trusts it). A connection refused is a value read ("not answering": nginx stopped); a
timeout is "could not look"."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from ansible.module_utils.stacklock_facts.common import CannotLook
from ansible.module_utils.stacklock_facts.run import Run

#: a prediction path no model answers to: nginx must refuse it before TorchServe sees it
NO_TOKEN_PATH = "/predictions/stacklock-verify-no-token"


def https_get(url: str, timeout: float) -> int:
    """The HTTP status of a GET over TLS, any certificate accepted; connection refused and TLS
    failures raise OSError, a timeout CannotLook."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPSHandler(context=context))
    where = urlsplit(url).path
    try:
        with opener.open(urllib.request.Request(url), timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError) or "timed out" in str(exc.reason):
            raise CannotLook(f"GET {where}: no answer within {timeout:.0f} s") from None
        raise OSError(str(exc.reason)) from None
    except TimeoutError:
        raise CannotLook(f"GET {where}: no answer within {timeout:.0f} s") from None


def probe(run: Run) -> dict[str, Any]:
    base = str(run.opts.get("endpoint_url") or "").rstrip("/")
    health = str(run.opts.get("endpoint_health_path") or "/ping")
    timeout = float(run.opts.get("probe_timeout") or 10)
    get = getattr(run.sy, "https_get", None) or https_get
    out: dict[str, Any] = {"url": base}
    for name, path in (("health", health), ("without_token", NO_TOKEN_PATH)):
        try:
            out[name] = str(get(base + path, timeout))
        except OSError as exc:
            out[name] = f"not answering: {exc}"
    return out


def collect(run: Run) -> None:
    """`endpoint`, only when the play asks (`endpoint_url`)."""
    if run.opts.get("endpoint_url"):
        run.facts["endpoint"] = run.section("endpoint", probe, run)
