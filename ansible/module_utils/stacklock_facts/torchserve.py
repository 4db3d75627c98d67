# Copyright: stacklock contributors. Apache-2.0.
"""``torchserve``: the digest of its config, the model store's archives (``archives``), the
models it serves (the management API, with a refused key renewed once: ``keys``), its venv
(``python.probe_venv``) and the models' smoke tests (``smoke``)."""

from __future__ import annotations

import json
from typing import Any

from ansible.module_utils.stacklock_facts.archives import hash_archives
from ansible.module_utils.stacklock_facts.common import (
    ApiError,
    CannotLook,
    ProbeError,
    first_line,
)
from ansible.module_utils.stacklock_facts.keys import AUTH_REFUSED, read_keys, refresh_key
from ansible.module_utils.stacklock_facts.node import System
from ansible.module_utils.stacklock_facts.python import probe_venv
from ansible.module_utils.stacklock_facts.run import Run
from ansible.module_utils.stacklock_facts.smoke import probe_smoke


def probe_torchserve_api(sy: System, base_url: str, key_file: str | None
                         ) -> tuple[bool, dict[str, Any], str | None, str | None, bool]:
    """(running, models, error, key_path, refreshed). models: {name: {version, workers,
    workers_ready}}. A refused key is renewed once through TorchServe's token API."""
    base = base_url.rstrip("/")
    key_path, key, api_key = read_keys(sy, key_file)
    refreshed = False

    def get(url: str) -> tuple[int, str]:
        nonlocal key_path, key, api_key, refreshed
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        status, body = sy.http_get(url, headers)
        if status in AUTH_REFUSED and key and not refreshed:
            refreshed = refresh_key(sy, base, api_key, "management")
            if refreshed:
                key_path, key, api_key = read_keys(sy, key_file)
                status, body = sy.http_get(url, {"Authorization": f"Bearer {key}"})
        if status in AUTH_REFUSED:
            where = url.split("?")[0]
            how = ("even with a fresh key from TorchServe's token API" if refreshed else
                   "and no fresh key could be had (API key missing or refused)" if key else
                   "and no key file was found")
            raise CannotLook(f"GET {where}: HTTP {status}: the management key was refused {how}")
        return status, body

    models: dict[str, Any] = {}
    url = base + "/models?limit=1000"
    names: list[str] = []
    for _ in range(100):
        status, body = get(url)
        if status != 200:
            where = url.split("?")[0]
            raise ApiError(f"GET {where}: HTTP {status} {first_line(body)[:200]}")
        try:
            data = json.loads(body)
        except ValueError:
            raise ApiError(f"GET {url.split('?')[0]}: not JSON") from None
        names += [m.get("modelName") for m in data.get("models", []) if m.get("modelName")]
        token = data.get("nextPageToken")
        if not token:
            break
        url = base + f"/models?limit=1000&next_page_token={token}"
    for name in sorted(set(names)):
        status, body = get(base + "/models/" + name)
        entry: dict[str, Any] = {"version": None, "workers": 0, "workers_ready": 0}
        if status == 200:
            try:
                desc = json.loads(body)
                desc = desc[0] if isinstance(desc, list) and desc else desc
                entry["version"] = str(desc.get("modelVersion")) if desc.get(
                    "modelVersion") is not None else None
                workers = desc.get("workers") or []
                entry["workers"] = len(workers)
                entry["workers_ready"] = sum(1 for w in workers if w.get("status") == "READY")
            except (ValueError, AttributeError):
                entry["error"] = "describe: not JSON"
        else:
            entry["error"] = f"GET /models/{name}: HTTP {status}"
        models[name] = entry
    return True, models, None, key_path, refreshed


def probe_torchserve(sy: System, opts: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"config": {"path": opts["torchserve_config"], "sha256": None},
                           "model_store": {"path": opts["torchserve_model_store"],
                                           "archives": {}},
                           "management_url": opts["torchserve_management_url"],
                           "running": False, "models": {}}
    try:
        out["config"]["sha256"] = sy.sha256(opts["torchserve_config"])
        if out["config"]["sha256"] is None:
            out["config"]["error"] = "{} not found".format(opts["torchserve_config"])
    except ProbeError as exc:
        out["config"]["error"] = str(exc)
    store = opts["torchserve_model_store"]
    try:
        entries = sy.listdir(store)
        if entries is None:
            out["model_store"]["error"] = f"{store} not found"
        out["model_store"].update(hash_archives(
            sy, store, [e for e in entries or [] if e.endswith(".mar")], opts))
    except ProbeError as exc:
        out["model_store"]["error"] = str(exc)
    try:
        running, models, err, key_path, refreshed = probe_torchserve_api(
            sy, opts["torchserve_management_url"], opts.get("torchserve_key_file"))
        out["running"], out["models"] = running, models
        out["token_auth"] = key_path is not None
        out["token_refreshed"] = refreshed
        if err:
            out["error"] = err
    except ApiError as exc:  # it runs, but its models could not be listed
        out["running"] = True
        out["error"] = str(exc)
    except CannotLook as exc:  # the key could not be read or was refused: unknown
        out["running"] = None
        out["error"] = str(exc)
    except ProbeError as exc:  # nothing answers: not running
        out["running"] = False
        out["error"] = str(exc)
    return out


def collect(run: Run) -> None:
    """`torchserve`, with its `venv` and (when the lock has smoke tests) `smoke` inside."""
    sy, opts, errors = run.sy, run.opts, run.errors
    ts = run.section("torchserve", probe_torchserve, sy, opts)
    ts["venv"] = run.section("torchserve_venv", probe_venv, sy, opts["torchserve_venv"],
                             list(opts.get("pip_packages") or []))
    if opts.get("smoke"):
        smoke = run.section("torchserve.smoke", probe_smoke, sy, opts)
        if isinstance(smoke, dict) and "error" not in smoke:
            for name, entry in smoke.items():
                if entry.get("error"):
                    errors[f"torchserve.smoke.{name}"] = entry["error"]
        if isinstance(ts, dict):
            ts["smoke"] = smoke
    run.facts["torchserve"] = ts
    for key in ("config", "model_store"):
        if isinstance(ts.get(key), dict) and ts[key].get("error"):
            errors[f"torchserve.{key}"] = ts[key]["error"]
