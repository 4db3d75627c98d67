"""torchserve: the config digest, the model store, and the models from the management API
(pages, describe answers, a service that answers wrongly or not at all)."""

from __future__ import annotations

import hashlib
import json

import pytest
from ansible.module_utils.stacklock_facts import torchserve
from ansible.module_utils.stacklock_facts.run import Run
from fakenode import DEFAULT_OPTS, LAB_CONFIG, LAB_MAR, lab_node, torchserve_api

pytestmark = pytest.mark.unit

BASE = "http://127.0.0.1:8081"


def test_models_over_two_pages_each_described() -> None:
    node = lab_node(http={
        **torchserve_api({"a": "1.0", "b": "2"}),
        f"{BASE}/models?limit=1000": (200, json.dumps({"models": [{"modelName": "b"}],
                                                       "nextPageToken": "p2"})),
        f"{BASE}/models?limit=1000&next_page_token=p2": (200, json.dumps({"models": [
            {"modelName": "a"}]})),
    })
    node.http[f"{BASE}/models/b"] = (200, json.dumps([{"modelVersion": 2, "workers": [
        {"status": "READY"}, {"status": "UNLOADING"}]}]))
    running, models, err, key_path, refreshed = torchserve.probe_torchserve_api(node, BASE, None)
    assert running and err is None and not refreshed
    assert key_path == "/var/lib/torchserve/key_file.json"
    assert models == {"a": {"version": "1.0", "workers": 1, "workers_ready": 1},
                      "b": {"version": "2", "workers": 2, "workers_ready": 1}}
    assert all(h == {"Authorization": "Bearer mgmt-SECRET-123"} for _, h in node.requests)


def test_the_section_config_store_and_a_service_answering_wrongly() -> None:
    node = lab_node()
    node.http[f"{BASE}/models?limit=1000"] = (500, "Internal error\n")
    run = Run(dict(DEFAULT_OPTS, archive_cache=""), node)
    torchserve.collect(run)
    ts = run.facts["torchserve"]
    assert ts["config"]["sha256"] == hashlib.sha256(LAB_CONFIG.encode()).hexdigest()
    assert ts["model_store"]["archives"] == {"tiny-linear.mar": hashlib.sha256(LAB_MAR)
                                             .hexdigest()}
    assert ts["running"] is True and ts["error"] == "GET http://127.0.0.1:8081/models: HTTP 500 "\
        "Internal error"
    assert ts["venv"]["python"] == "3.11.2" and "smoke" not in ts
    assert set(run.errors) == {"torchserve"}


def test_nothing_configured_nothing_answering() -> None:
    node = lab_node(http={})
    for path in ("/etc/torchserve/config.properties",
                 "/var/lib/torchserve/model-store/tiny-linear.mar"):
        del node.files[path]
    out = torchserve.probe_torchserve(node, dict(DEFAULT_OPTS, archive_cache=""))
    assert out["config"] == {"path": "/etc/torchserve/config.properties", "sha256": None,
                             "error": "/etc/torchserve/config.properties not found"}
    assert out["model_store"]["error"] == "/var/lib/torchserve/model-store not found"
    assert out["running"] is False and "Connection refused" in out["error"]
