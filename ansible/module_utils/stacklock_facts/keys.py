# Copyright: stacklock contributors. Apache-2.0.
"""TorchServe's keys (token authorization): the management, inference and API keys of its
key_file.json, and the renewal of an expired key through TorchServe's own token API."""

from __future__ import annotations

import json

from ansible.module_utils.stacklock_facts.common import CannotLook, ProbeError
from ansible.module_utils.stacklock_facts.node import System

DEFAULT_KEY_FILES = (
    "/var/lib/torchserve/key_file.json",
    "/opt/torchserve/key_file.json",
    "/etc/torchserve/key_file.json",
)

#: HTTP statuses TorchServe answers a missing, wrong or expired token with
AUTH_REFUSED = (400, 401, 403)


def read_keys(sy: System, key_file: str | None, kind: str = "management"
              ) -> tuple[str | None, str | None, str | None]:
    """(path, key of `kind`, API key) from TorchServe's key_file.json; (None, None, None)
    when there is none (token authorization off). Unreadable or without that key: CannotLook."""
    candidates = [key_file] if key_file else list(DEFAULT_KEY_FILES)
    for path in candidates:
        text = sy.read_text(path)
        if text is None:
            continue
        try:
            data = json.loads(text)
            return path, data[kind]["key"], (data.get("API") or {}).get("key")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise CannotLook(f"{path}: no {kind} key in it") from None
    return None, None, None


def key_of(sy: System, key_file: str | None, kind: str) -> tuple[str | None, str | None]:
    """(key of `kind`, API key) from TorchServe's key_file.json: see read_keys."""
    return read_keys(sy, key_file, kind)[1:]


def refresh_key(sy: System, base: str, api_key: str | None, kind: str) -> bool:
    """Ask TorchServe for a fresh `kind` key (its own token API, authorized by the API key,
    which never expires); TorchServe rewrites key_file.json. True when it said yes.

    Used only after the current key was refused: a key TorchServe refuses is expired (the
    inference and management keys live `token_expiration_min`, 60 minutes by default), so
    nobody loses a working key by this."""
    if not api_key:
        return False
    try:
        status, _body = sy.http_get(f"{base}/token?type={kind}",
                                    {"Authorization": f"Bearer {api_key}"})
    except ProbeError:
        return False
    return status == 200


def key_refused(status: int, body: bytes | str) -> bool:
    """TorchServe refuses a missing, wrong or expired key with HTTP 400 and an
    InvalidKeyException (0.12): told apart from a model refusing its input (400 too)."""
    if status not in AUTH_REFUSED:
        return False
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    return status in (401, 403) or "InvalidKeyException" in text or "Token Authorization" in text
