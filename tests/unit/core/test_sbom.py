"""core/sbom.py: CycloneDX 1.6 documents from recorded facts, valid against the schema (the
library's strict JSON validator), byte-identical twice, with the required component types
and correct purls."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from stacklock.core import sbom

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
FACTS = ROOT / "tests" / "fixtures" / "facts"
LOCK = json.loads((ROOT / "examples" / "lab.lock").read_text())["stacks"]["lab-2026-11"]


def with_inventory(name: str) -> dict[str, Any]:
    facts: dict[str, Any] = json.loads((FACTS / name).read_text())
    facts["os_packages"] = [
        {"name": "docker.io", "version": "20.10.24+dfsg1-1+deb12u1+b6", "architecture": "amd64",
         "status": "installed"},
        {"name": "libc6", "version": "2.36-9+deb12u13", "architecture": "amd64",
         "status": "installed"},
        {"name": "libc6", "version": "2.36-9+deb12u13", "architecture": "i386",
         "status": "installed"},
        {"name": "tzdata", "version": "2025b-0+deb12u2", "architecture": "all",
         "status": "installed"},
    ]
    venv = facts["torchserve"]["venv"]
    venv["distributions"] = {**venv["packages"], "filelock": "4.3.1", "jinja2": "0.0.1"}
    return facts


def lab_doc(**kw: Any) -> str:
    return sbom.to_json(sbom.node_bom(with_inventory("lab-node.json"), LOCK, project="lab",
                                      environment="dev", node="dev-1", stack="lab-2026-11",
                                      **kw))


def components(text: str) -> list[dict[str, Any]]:
    out, todo = [], list(json.loads(text)["components"])
    while todo:
        c = todo.pop()
        out.append(c)
        todo.extend(c.get("components") or [])
    return out


def props(comp: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["value"] for p in comp.get("properties") or []}


def test_node_document_is_valid_cyclonedx_1_6() -> None:
    text = lab_doc()
    assert sbom.validate(text) == []
    doc = json.loads(text)
    assert doc["specVersion"] == "1.6" and doc["bomFormat"] == "CycloneDX"
    assert doc["metadata"]["component"]["name"] == "dev-1"


def test_an_invalid_document_is_refused_by_the_validator() -> None:
    doc = json.loads(lab_doc())
    doc["components"][0]["type"] = "not-a-type"
    assert sbom.validate(json.dumps(doc))


def test_byte_identical_twice_and_the_serial_follows_the_content() -> None:
    first, second = lab_doc(), lab_doc()
    assert first == second
    assert json.loads(first)["metadata"]["timestamp"].startswith("1970-01-01T00:00:00")
    other = sbom.to_json(sbom.node_bom(with_inventory("lab-node.json"), LOCK, project="lab",
                                       environment="dev", node="dev-2", stack="lab-2026-11"))
    assert json.loads(other)["serialNumber"] != json.loads(first)["serialNumber"]
    assert json.loads(first)["serialNumber"].startswith("urn:uuid:")


def test_required_component_types_of_a_gpu_node() -> None:
    facts = with_inventory("h100-node.json")
    text = sbom.to_json(sbom.node_bom(facts, LOCK, project="p", environment="prod",
                                      node="h100-1", stack="s"))
    assert sbom.validate(text) == []
    counts = sbom.component_counts(text)
    for kind in ("library", "device-driver", "device", "machine-learning-model", "file",
                 "framework", "application", "operating-system"):
        assert counts.get(kind), (kind, counts)
    comps = components(text)
    driver = next(c for c in comps if c["type"] == "device-driver")
    assert driver["version"] == "580.159.04"
    assert props(driver)["stacklock:driver:kernel_module"] == "open"
    gpu = next(c for c in comps if c["type"] == "device")
    assert gpu["name"] == "NVIDIA H100 80GB HBM3" and props(gpu)["stacklock:gpu:index"] == "0"
    os_purl = next(c["purl"] for c in comps if c["name"] == "tzdata")
    assert os_purl == "pkg:deb/ubuntu/tzdata@2025b-0%2Bdeb12u2?arch=all&distro=ubuntu-24.04"


def test_no_driver_loaded_is_said_and_no_version_invented() -> None:
    driver = next(c for c in components(lab_doc()) if c["type"] == "device-driver")
    assert "version" not in driver
    assert props(driver)["stacklock:driver:loaded"] == "false"
    assert props(driver)["stacklock:driver:package_version"] == "535.309.01"


def test_os_packages_with_architecture_and_debian_purls() -> None:
    comps = components(lab_doc())
    libc = sorted(c["purl"] for c in comps if c["name"] == "libc6")
    assert libc == ["pkg:deb/debian/libc6@2.36-9%2Bdeb12u13?arch=amd64&distro=debian-12",
                    "pkg:deb/debian/libc6@2.36-9%2Bdeb12u13?arch=i386&distro=debian-12"]
    assert all(c["version"] == "2.36-9+deb12u13" for c in comps if c["name"] == "libc6")


def test_python_distributions_carry_the_locked_sha256_only_when_locked_version() -> None:
    comps = {c["name"]: c for c in components(lab_doc()) if c.get("purl", "").startswith(
        "pkg:pypi/")}
    locked = {p["name"]: p for p in LOCK["pip"]}
    filelock = comps["filelock"]
    assert filelock["purl"] == "pkg:pypi/filelock@4.3.1"
    assert filelock["hashes"] == [{"alg": "SHA-256",
                                   "content": locked["filelock"]["files"][0]["sha256"]}]
    assert props(filelock)["stacklock:lock"] == "locked"
    jinja = comps["jinja2"]  # installed version differs from the lock: no hash claimed
    assert "hashes" not in jinja and props(jinja)["stacklock:lock"].startswith("other version")
    torch = comps["torch"]
    assert torch["purl"] == "pkg:pypi/torch@2.13.0%2Bcpu"


def test_config_digest_and_model_archives() -> None:
    comps = components(lab_doc())
    config = next(c for c in comps if c["type"] == "file")
    assert config["name"] == "/etc/torchserve/config.properties"
    assert config["hashes"][0]["alg"] == "SHA-256"
    model = next(c for c in comps if c["type"] == "machine-learning-model")
    assert model["name"] == "tiny-linear" and model["version"] == "1.0"
    facts = with_inventory("lab-node.json")
    digest = facts["torchserve"]["model_store"]["archives"]["tiny-linear.mar"]
    assert model["hashes"][0]["content"] == digest
    # the recorded archive is not the example's: said, with the locked digest
    assert props(model)["stacklock:lock"] == f"differs (locked {LOCK['models'][0]['sha256']})"


def test_environment_document_nests_its_nodes() -> None:
    a, b = with_inventory("lab-node.json"), with_inventory("lab-node.json")
    b = copy.deepcopy(b)
    b["os_packages"].append({"name": "curl", "version": "7.88.1-10+deb12u14",
                             "architecture": "amd64", "status": "installed"})
    text = sbom.to_json(sbom.environment_bom({"n2": b, "n1": a}, LOCK, project="p",
                                             environment="dev", stack="s"))
    assert sbom.validate(text) == []
    doc = json.loads(text)
    assert [c["name"] for c in doc["components"]] == ["n1", "n2"]
    assert any(c["name"] == "curl" for c in doc["components"][1]["components"])
    assert not any(c["name"] == "curl" for c in doc["components"][0]["components"])


def test_facts_without_the_inventory_are_refused() -> None:
    facts = json.loads((FACTS / "lab-node.json").read_text())
    with pytest.raises(sbom.IncompleteFacts):
        sbom.node_bom(facts, LOCK, project="p", environment="dev", node="n", stack="s")
