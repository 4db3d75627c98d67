# Copyright: stacklock contributors. Apache-2.0.
"""``torchserve.smoke``: each model's smoke test, the locked input POSTed to TorchServe's
inference API with the inference key; the answer is reported (status, sha256, numbers), never
judged here (stacklock.parity compares it with the lock)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any
from urllib.parse import quote

from ansible.module_utils.stacklock_facts.common import CANNOT_LOOK, CannotLook, ProbeError
from ansible.module_utils.stacklock_facts.keys import key_of, key_refused, refresh_key
from ansible.module_utils.stacklock_facts.node import System

#: the most bytes of a smoke response that are read (and hashed)
SMOKE_RESPONSE_LIMIT = 1 << 20
#: the most numbers reported from a smoke response
SMOKE_MAX_NUMBERS = 4096

CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def numbers(data: Any, out: list[float]) -> bool:
    """Append the numbers of a JSON value (a number, or lists of numbers) to `out`; False when
    it holds anything else."""
    if isinstance(data, bool):
        return False
    if isinstance(data, int | float):
        out.append(float(data))
        return len(out) <= SMOKE_MAX_NUMBERS
    if isinstance(data, list):
        return all(numbers(item, out) for item in data)
    return False


def excerpt(body: bytes) -> str:
    text = body[:200].decode("utf-8", "replace")
    return re.sub(r"\s+", " ", CONTROL_CHARS.sub(" ", text)).strip()[:120]


def _post(sy: System, url: str, headers: dict[str, str], body: bytes, key: str | None
          ) -> tuple[int, bytes, bool]:
    auth = dict(headers, Authorization=f"Bearer {key}") if key else headers
    return sy.http_post(url, auth, body, limit=SMOKE_RESPONSE_LIMIT)


def probe_smoke(sy: System, opts: dict[str, Any]) -> dict[str, Any]:
    """Each model's smoke test: the locked input POSTed to TorchServe's inference API
    (`/predictions/NAME/VERSION`) with the inference key; a refused key is renewed once through
    TorchServe's token API. {name: {status, sha256, size, numbers, check, ...} or {error}}.
    The answer is reported, never judged here: stacklock.parity compares it with the lock."""
    out: dict[str, Any] = {}
    tests = [t for t in opts.get("smoke") or [] if isinstance(t, dict) and t.get("name")]
    if not tests:
        return out
    base = str(opts.get("torchserve_inference_url") or "http://127.0.0.1:8080").rstrip("/")
    # a wildcard listen address is reached on the loopback
    base = re.sub(r"^(https?://)(0\.0\.0\.0|\[::\])(?=[:/]|$)",
                  lambda m: m.group(1) + ("127.0.0.1" if "." in m.group(2) else "[::1]"), base)
    management = str(opts.get("torchserve_management_url") or "http://127.0.0.1:8081").rstrip("/")
    key_file = opts.get("torchserve_key_file")
    key = api_key = None
    key_error = None
    try:
        key, api_key = key_of(sy, key_file, "inference")
    except CannotLook as exc:
        key_error = str(exc)
    refreshed = False
    for test in sorted(tests, key=lambda t: str(t["name"])):
        name, version = str(test["name"]), str(test.get("version") or "")
        raw = test.get("smoke")
        spec: dict[str, Any] = raw if isinstance(raw, dict) else {}
        check = "sha256" if spec.get("sha256") else "numbers" if spec.get("expected") is not None \
            else None
        entry: dict[str, Any] = {"check": check}
        out[name] = entry
        if key_error:
            entry["error"] = key_error
            continue
        try:
            body = base64.b64decode(str(spec.get("input_base64") or ""), validate=True)
        except ValueError:
            entry["error"] = f"{CANNOT_LOOK}the smoke input of {name} is not base64"
            continue
        if hashlib.sha256(body).hexdigest() != spec.get("input_sha256"):
            entry["error"] = (f"{CANNOT_LOOK}the smoke input of {name} arrived altered (its "
                              "sha256 is not the locked one)")
            continue
        url = f"{base}/predictions/{quote(name, safe='')}"
        if version:
            url += "/" + quote(version, safe="")
        headers = {"Content-Type": str(spec.get("content_type") or "application/octet-stream")}
        started = sy.now()
        try:
            status, answer, truncated = _post(sy, url, headers, body, key)
            if key_refused(status, answer) and key and not refreshed:
                refreshed = refresh_key(sy, management, api_key, "inference")
                if refreshed:
                    key, api_key = key_of(sy, key_file, "inference")
                    status, answer, truncated = _post(sy, url, headers, body, key)
            if key_refused(status, answer):
                how = ("even with a fresh key from TorchServe's token API" if refreshed else
                       "and no fresh key could be had (API key missing or refused)" if key else
                       "and no key file was found")
                raise CannotLook(f"POST {url}: HTTP {status}: the inference key was refused {how}")
        except ProbeError as exc:
            entry["error"] = str(exc)
            continue
        entry["seconds"] = round(sy.now() - started, 3)
        entry["status"] = status
        entry["url"] = url
        if truncated:
            entry["error"] = (f"POST {url}: the answer is larger than {SMOKE_RESPONSE_LIMIT} "
                              "bytes; a smoke test needs a small one")
            entry["status"] = None
            continue
        entry["size"] = len(answer)
        entry["sha256"] = hashlib.sha256(answer).hexdigest()
        entry["excerpt"] = excerpt(answer)
        found: list[float] = []
        try:
            parsed = json.loads(answer.decode("utf-8"))
            entry["numbers"] = found if numbers(parsed, found) else None
        except ValueError:
            entry["numbers"] = None
    if refreshed:
        for entry in out.values():
            entry["token_refreshed"] = True
    return out
