"""keys: TorchServe's key_file.json and how a refused key is told from a refused input."""

from __future__ import annotations

import json

import pytest
from ansible.module_utils.stacklock_facts import keys
from ansible.module_utils.stacklock_facts.common import CannotLook
from fakenode import LAB_KEY_FILE, lab_node

pytestmark = pytest.mark.unit


def test_the_key_file_found_in_the_working_directories() -> None:
    node = lab_node()
    assert keys.read_keys(node, None) == ("/var/lib/torchserve/key_file.json", "mgmt-SECRET-123",
                                          "api-SECRET-789")
    assert keys.key_of(node, None, "inference") == ("inf-SECRET-456", "api-SECRET-789")
    node.files["/etc/torchserve/key_file.json"] = node.files.pop(
        "/var/lib/torchserve/key_file.json")
    assert keys.read_keys(node, None)[0] == "/etc/torchserve/key_file.json"
    assert keys.read_keys(node, "/srv/none.json") == (None, None, None)  # token auth off


def test_a_key_file_without_the_key_cannot_be_looked_at() -> None:
    node = lab_node()
    node.files["/var/lib/torchserve/key_file.json"] = json.dumps({"API": {"key": "x"}})
    with pytest.raises(CannotLook, match="no management key in it"):
        keys.read_keys(node, None)
    node.files["/var/lib/torchserve/key_file.json"] = LAB_KEY_FILE
    node.denied.add("/var/lib/torchserve/key_file.json")
    with pytest.raises(CannotLook, match="Permission denied"):
        keys.read_keys(node, None)


def test_a_refused_key_is_not_a_refused_input() -> None:
    assert keys.key_refused(400, b'{"type": "InvalidKeyException"}')
    assert keys.key_refused(401, "") and keys.key_refused(403, b"")
    assert not keys.key_refused(400, b'{"type": "BadRequestException"}')
    assert not keys.key_refused(200, b"InvalidKeyException")


def test_a_key_is_renewed_only_with_the_api_key_and_a_yes() -> None:
    node = lab_node()
    url = "http://127.0.0.1:8081/token?type=management"
    assert not keys.refresh_key(node, "http://127.0.0.1:8081", None, "management")
    assert node.requests == []  # no API key: nothing asked
    assert not keys.refresh_key(node, "http://127.0.0.1:8081", "api", "management")  # refused
    node.http[url] = (200, "{}")
    assert keys.refresh_key(node, "http://127.0.0.1:8081", "api", "management")
    assert node.requests[-1] == (url, {"Authorization": "Bearer api"})
