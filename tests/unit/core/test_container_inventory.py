"""`stacklock sbom` and `stacklock diff` in container mode (issue #23, item 5): the serving image
by digest and the Python closure read inside the running container, on facts the real
`container` collector made from recorded Docker output (tests/fixtures/container/README.md)
on top of a recorded lab node's host facts (its venv, config and model store gone, as on a
container-mode node). Also: render gives each container stack its own digest, so a rollback
(which makes ENV name another stack and renders) switches the digest."""

from __future__ import annotations

import copy
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from packageurl import PackageURL

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tests" / "unit" / "collectors"))
sys.path.insert(0, str(ROOT / "tests" / "unit" / "core"))
from fakenode import FakeSystem  # noqa: E402
from test_sbom import LOCK, components, props, with_inventory  # noqa: E402

from ansible.module_utils.stacklock_facts import container as collector  # noqa: E402  # isort: skip
from stacklock.core import diff as diffmod  # noqa: E402
from stacklock.core import render as rendermod  # noqa: E402
from stacklock.core import sbom  # noqa: E402
from stacklock.core.manifest import load_manifest  # noqa: E402
from stacklock.flows import sbom as sbomflow  # noqa: E402

pytestmark = pytest.mark.unit

REC = ROOT / "tests" / "fixtures" / "container"
DIGEST = "sha256:9f43bd388a8a7b4adc9cea5f71dd1f4254bda2519c4dda84ff2af2afeab16e1c"
IMAGE_ID = "sha256:14deffccec04b3aeac477933060fa7bdb18421506285402c905a1cdcb288eb22"
IMAGE = f"127.0.0.1:5299/stacklock-lab/serving@{DIGEST}"
OTHER = "sha256:" + "1" * 64
OTHER_ID = "sha256:" + "2" * 64

#: the lab lock's stack in container mode, with the image `image push` recorded
LOCKED: dict[str, Any] = {
    **copy.deepcopy(LOCK), "serving": {"runtime": "container"},
    "image": {"config_digest": IMAGE_ID, "digest": DIGEST, "reference": IMAGE,
              "registry": "127.0.0.1:5299", "registry_url": "http://127.0.0.1:5299",
              "repository": "stacklock-lab/serving", "user": "10001:10001"}}


def closure_json(**changes: str | None) -> str:
    """What the image's Python prints (VENV_SCRIPT): the lock's closure, with `changes`."""
    dists: dict[str, str | None] = {p["name"]: p["version"] for p in LOCK["pip"]}
    dists.update(changes)
    return json.dumps({"python": "3.11.2", "executable": "/opt/torchserve/venv/bin/python",
                       "packages": {}, "torch": {"version": dists.get("torch"), "cuda": None},
                       "distributions": {k: v for k, v in dists.items() if v is not None}})


def probe(inspect: str = "docker-inspect.json", *, serving: bool = True, others: bool = False,
          venv: str | None = None, repo_digests: list[str] | None = None) -> dict[str, Any]:
    """The `container` section, from the collector run on recorded `docker` output."""
    recorded = json.loads((REC / inspect).read_text())
    found = ([recorded[0]] if serving else []) + (recorded[1:2] if others else [])
    image = json.loads((REC / "docker-image-inspect.json").read_text())
    if repo_digests is not None:
        image[0]["RepoDigests"] = repo_digests
    sy = FakeSystem(
        commands={"docker ps": (0, "\n".join(c["Id"] for c in found), ""),
                  "docker inspect": (0, json.dumps(found), ""),
                  "docker image": (0, json.dumps(image), ""),
                  "docker exec": (0, venv or closure_json(), "")},
        files={}, executables={"docker": "/usr/bin/docker"}, uname={}, python={})
    want = {"name": "stacklock-serving", "image": IMAGE, "user": "10001:10001",
            "python": "/opt/torchserve/venv/bin/python"}
    section: dict[str, Any] = collector.probe_container(sy, want, False, "7")
    return section


def node(container: dict[str, Any] | None = None) -> dict[str, Any]:
    """A container-mode node: the lab node's host facts without a serving venv, config or
    model store on the host, and the serving container."""
    facts = with_inventory("lab-node.json")
    ts = facts["torchserve"]
    ts["venv"] = {"path": "/opt/torchserve/venv", "python": None, "packages": {}, "torch": None,
                  "error": "/opt/torchserve/venv/bin/python not found"}
    ts["config"] = {"path": "/etc/torchserve/config.properties",
                    "error": "/etc/torchserve/config.properties not found"}
    ts["model_store"] = {"path": "/var/lib/torchserve/model-store",
                         "error": "/var/lib/torchserve/model-store not found"}
    facts["container"] = probe() if container is None else container
    return facts


def doc(facts: dict[str, Any], locked: dict[str, Any] | None = None) -> str:
    return sbom.to_json(sbom.node_bom(facts, locked or LOCKED, project="lab", environment="dev",
                                      node="dev-1", stack="lab-2026-11", runtime="container"))


def by_kind(text: str, kind: str) -> list[dict[str, Any]]:
    return [c for c in components(text) if props(c).get("stacklock:kind") == kind]


# --------------------------------------------------------------------------- sbom


def test_the_serving_image_by_digest_with_its_closure_inside() -> None:
    text = doc(node())
    assert sbom.validate(text) == []
    assert text == doc(node())  # reproducible
    data = json.loads(text)
    (image,) = [c for c in data["components"] if c["type"] == "container"]
    assert (image["name"], image["version"]) == ("stacklock-lab/serving", DIGEST)
    assert image["hashes"] == [{"alg": "SHA-256", "content": DIGEST.split(":")[1]}]
    purl = PackageURL.from_string(image["purl"])
    assert (purl.type, purl.name, purl.version) == ("oci", "serving", DIGEST)
    assert purl.qualifiers == {"repository_url": "127.0.0.1:5299/stacklock-lab/serving"}
    p = props(image)
    assert p["stacklock:kind"] == "serving-image"
    assert p["stacklock:container:running"] == "true"
    assert p["stacklock:image:id"] == IMAGE_ID
    assert p["stacklock:image:reference"] == IMAGE
    assert p["stacklock:lock"] == "matches" and p["stacklock:image:id:lock"] == "matches"
    assert p["stacklock:closure"] == "read in the running container"
    # the closure: nested in the image, each with the lock state a venv's distribution has
    inside = {c["name"]: c for c in image["components"]}
    assert set(inside) == {sbom.normalize_pypi(x["name"]) for x in LOCK["pip"]} | {"python"}
    torch = inside["torch"]
    assert props(torch)["stacklock:lock"] == "locked"
    assert props(torch)["stacklock:container"] == "stacklock-serving"
    assert torch["bom-ref"].startswith("node:dev-1/image/pkg:pypi/torch@")
    assert inside["python"]["version"] == "3.11.2" and inside["python"]["type"] == "platform"
    deps = {d["ref"]: set(d.get("dependsOn") or []) for d in data["dependencies"]}
    assert deps["node:dev-1/image"] == {c["bom-ref"] for c in image["components"]}
    assert "node:dev-1/image" in deps["node:dev-1"]
    # nothing of host-mode serving: no host venv, python, config or model archive
    assert not [c for c in data["components"] if c["type"] in ("file", "machine-learning-model")
                or c["name"] == "python" or "/pkg:pypi/" in c["bom-ref"]]
    assert props(data["metadata"]["component"])["stacklock:serving"] == "container"
    # the host's own stack is still there (Java only where the host still has one)
    names = {c["name"] for c in data["components"]}
    assert {"docker", "nvidia-container-toolkit", "java", "nvidia-driver", "cuda"} <= names
    no_java = node()
    no_java["java"] = {"version": None, "error": "java: command not found"}
    assert "java" not in {c["name"] for c in json.loads(doc(no_java))["components"]}


def test_a_closure_that_is_not_the_locked_one_is_said_per_distribution() -> None:
    text = doc(node(probe(venv=closure_json(torch="2.0.0", rogue="1.0"))))
    inside = {c["name"]: props(c) for c in components(text) if "/image/" in c["bom-ref"]}
    locked_torch = next(x["version"] for x in LOCK["pip"] if x["name"] == "torch")
    assert inside["torch"]["stacklock:lock"] == f"other version (locked {locked_torch})"
    assert inside["rogue"]["stacklock:lock"] == "not locked"


def test_a_stopped_container_is_said_and_no_closure_is_invented() -> None:
    text = doc(node(probe("docker-inspect-stopped.json")))
    assert sbom.validate(text) == []
    (image,) = by_kind(text, "serving-image")
    p = props(image)
    assert p["stacklock:container:running"].startswith("false (exited, exit code")
    assert p["stacklock:closure"].startswith("not read: the container stacklock-serving is not "
                                             "running")
    assert image["version"] == DIGEST and p["stacklock:lock"] == "matches"  # what it ran
    assert not image.get("components")
    assert not [c for c in components(text) if c.get("purl", "").startswith("pkg:pypi/")]


def test_a_missing_container_is_a_component_without_a_version() -> None:
    text = doc(node(probe(serving=False, others=True)))
    assert sbom.validate(text) == []
    (image,) = by_kind(text, "serving-image")
    assert image["name"] == "stacklock-serving" and "version" not in image
    assert "purl" not in image and "hashes" not in image  # not the lock's digest
    p = props(image)
    assert p["stacklock:container:running"] == "not found (no container named stacklock-serving)"
    assert p["stacklock:lock"] == f"not running (locked {DIGEST})"
    (other,) = by_kind(text, "other-container")
    assert props(other)["stacklock:container:name"] == "by-hand"
    assert other["type"] == "container" and props(other)["stacklock:image:id"] == IMAGE_ID


def test_another_digest_running_is_reported_as_it_runs() -> None:
    locked = copy.deepcopy(LOCKED)
    locked["image"].update(digest=OTHER, config_digest=OTHER_ID)
    (image,) = by_kind(doc(node(), locked), "serving-image")
    assert image["version"] == DIGEST  # what runs, not what the lock says
    p = props(image)
    assert p["stacklock:lock"] == f"differs (locked {OTHER})"
    assert p["stacklock:image:id:lock"] == f"differs (locked {OTHER_ID})"
    # pulled by two digests (two repositories): the one it was started by names it
    mirror = f"10.213.0.1:5000/mirror/serving@{OTHER}"
    (image,) = by_kind(doc(node(probe(repo_digests=[mirror, IMAGE])), locked), "serving-image")
    assert image["version"] == DIGEST and props(image)["stacklock:lock"] == "matches"
    assert props(image)["stacklock:image:repo_digests"] == f"{mirror},{IMAGE}"
    # an image that was not pulled by digest: no version, no purl
    (image,) = by_kind(doc(node(probe(repo_digests=[]))), "serving-image")
    assert "version" not in image and "purl" not in image
    assert props(image)["stacklock:image:repo_digests"] == ("none (the image was not pulled by "
                                                            "digest)")
    assert props(image)["stacklock:lock"] == f"differs (locked {DIGEST})"


def test_container_mode_needs_the_container_section() -> None:
    host_facts = with_inventory("lab-node.json")
    with pytest.raises(sbom.IncompleteFacts, match="no `container` section"):
        doc(host_facts)
    broken = node({"name": "stacklock-serving", "error": "docker: command not found"})
    with pytest.raises(sbom.IncompleteFacts, match="docker: command not found"):
        doc(broken)
    # without a runtime given, the facts decide: host facts give the host-mode document
    assert sbom.to_json(sbom.node_bom(host_facts, LOCKED, project="lab", environment="dev",
                                      node="dev-1", stack="lab-2026-11")) == sbom.to_json(
        sbom.node_bom(host_facts, LOCK, project="lab", environment="dev", node="dev-1",
                      stack="lab-2026-11"))


def test_environment_document_and_the_flow(tmp_path: Path) -> None:
    lock = {"stacks": {"lab-2026-11": LOCKED}}
    written, problems = sbomflow.write_sboms(
        {"dev": {"dev-1": node(), "dev-2": node(probe("docker-inspect-stopped.json"))}},
        lock, {"dev": "lab-2026-11"}, "lab", tmp_path, sbom.EPOCH)
    assert problems == []
    assert [p.relative_to(tmp_path).as_posix() for p, _ in written] == [
        "dev/dev-1.cdx.json", "dev/dev-2.cdx.json", "dev.cdx.json"]
    env_text = (tmp_path / "dev.cdx.json").read_text()
    assert sbom.validate(env_text) == []
    assert sbom.component_counts(env_text)["container"] == 2
    deps = {d["ref"]: set(d.get("dependsOn") or []) for d in json.loads(env_text)["dependencies"]}
    assert "node:dev-1/image" in deps["node:dev-1"] and deps["node:dev-1/image"]
    # facts gathered without the container option: could not look (exit 3), no document
    written, problems = sbomflow.write_sboms(
        {"dev": {"dev-1": with_inventory("lab-node.json")}}, lock, {"dev": "lab-2026-11"},
        "lab", tmp_path / "again", sbom.EPOCH)
    assert written == [] and problems[0].startswith("dev/dev-1: could not look: this stack "
                                                    "serves from a container")


def test_the_image_document_names_the_image_as_nodes_do() -> None:
    image_facts = with_inventory("lab-node.json")  # the facts image build reads from its files
    text = sbom.to_json(sbom.image_bom(
        image_facts, LOCKED, project="lab", environment="dev", stack="lab-2026-11",
        tag="lab-serving:lab-2026-11-abcdef012345", digest=DIGEST, config_digest=IMAGE_ID,
        repository_url="127.0.0.1:5299/stacklock-lab/serving"))
    assert sbom.validate(text) == []
    root = json.loads(text)["metadata"]["component"]
    assert (root["type"], root["version"]) == ("container", DIGEST)
    assert root["hashes"] == [{"alg": "SHA-256", "content": DIGEST.split(":")[1]}]
    purl = PackageURL.from_string(root["purl"])
    (running,) = by_kind(doc(node()), "serving-image")
    node_purl = PackageURL.from_string(running["purl"])
    assert (purl.name, purl.version, purl.qualifiers["repository_url"]) == (
        node_purl.name, node_purl.version, node_purl.qualifiers["repository_url"])
    assert purl.qualifiers["tag"] == "lab-2026-11-abcdef012345"
    kinds = {props(c).get("stacklock:kind") for c in components(text)}
    assert {"python-distribution", "os-package", "torchserve-config"} <= kinds
    # before the push: named by the tag's repository, still by digest
    text = sbom.to_json(sbom.image_bom(image_facts, LOCKED, project="lab", environment="dev",
                                       stack="lab-2026-11", tag="lab-serving:x", digest=DIGEST))
    root = json.loads(text)["metadata"]["component"]
    assert root["purl"] == f"pkg:oci/lab-serving@{DIGEST}?tag=x"


@pytest.mark.parametrize(("reference", "expected"), [
    (IMAGE, ("127.0.0.1:5299", "stacklock-lab/serving")),
    ("registry.example/team/serving:v1", ("registry.example", "team/serving")),
    ("localhost/serving", ("localhost", "serving")),
    ("debian:12", ("docker.io", "library/debian")),
    ("team/serving", ("docker.io", "team/serving")),
])
def test_split_reference(reference: str, expected: tuple[str, str]) -> None:
    assert sbom.split_reference(reference) == expected


# --------------------------------------------------------------------------- diff


def envs(**changed: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {env: {f"{env}-1": node()} for env in ("dev", "staging", "prod")}
    for env, facts in changed.items():
        out[env] = {f"{env}-1": facts}
    return out


def test_diff_reads_the_closure_inside_the_container() -> None:
    inv = diffmod.inventory(node())
    assert inv["python"] == {sbom.normalize_pypi(p["name"]): p["version"] for p in LOCK["pip"]}
    assert inv["stack"]["container.image.digest"] == DIGEST
    assert inv["stack"]["container.image.id"] == IMAGE_ID
    assert inv["stack"]["container.running"] == "true"
    assert not [k for k in inv["stack"] if k.startswith("container.python.")]
    report = diffmod.compare(envs())
    assert report.identical and report.exit_code(fail_on_drift=True) == 0


def test_diff_shows_two_digests() -> None:
    container = probe(repo_digests=[f"127.0.0.1:5299/stacklock-lab/serving@{OTHER}"])
    container["image_id"] = OTHER_ID
    report = diffmod.compare(envs(prod=node(container)))
    stack = {d.name: d for d in report.of_group("stack")}
    assert set(stack) == {"container.image.digest", "container.image.id"}
    digest = stack["container.image.digest"]
    assert digest.scope == "environments" and digest.differing() == ["prod"]
    assert digest.values == {"dev": DIGEST, "staging": DIGEST, "prod": OTHER}
    assert report.exit_code(fail_on_drift=True) == 1
    # a closure that differs is in the Python group, not repeated in the stack
    report = diffmod.compare(envs(staging=node(probe(venv=closure_json(torch="2.0.0")))))
    assert [(d.group, d.name, d.differing()) for d in report.differences] == [
        ("python", "torch", ["staging"])]


def test_diff_host_mode_against_container_mode() -> None:
    host = with_inventory("lab-node.json")
    report = diffmod.compare({"dev": {"dev-1": host}, "prod": {"prod-1": node()}})
    stack = {d.name: d.values for d in report.of_group("stack")}
    assert stack["container.image.digest"] == {"dev": diffmod.ABSENT, "prod": DIGEST}
    assert stack["python.version"] == {"dev": "3.11", "prod": diffmod.ABSENT}
    assert report.compared["python"] > 0 and not report.incomplete


@pytest.mark.parametrize(("container", "reason"), [
    ("stopped", "the serving container stacklock-serving is not running (exited, exit code"),
    ("missing", "no serving container stacklock-serving on the node"),
    ("error", "the serving container could not be read: docker: command not found"),
    ("exec", "the Python closure in the serving container could not be read: docker exec"),
])
def test_diff_a_container_whose_closure_was_not_read_is_incomplete(container: str,
                                                                   reason: str) -> None:
    if container == "error":
        section = {"name": "stacklock-serving", "error": "docker: command not found"}
    else:
        section = {"stopped": probe("docker-inspect-stopped.json"),
                   "missing": probe(serving=False),
                   "exec": probe(venv="not json")}[container]
    report = diffmod.compare(envs(staging=node(section)))
    (inc,) = report.incomplete
    assert (inc.environment, inc.node) == ("staging", "staging-1")
    assert inc.reason.startswith(reason), inc.reason
    assert report.exit_code() == 3


# --------------------------------------------------------------------------- rollback


def test_each_container_stack_renders_its_own_digest(tmp_path: Path) -> None:
    """A rollback makes ENV name the stack of the revision it returns to and renders: with two
    container stacks in the lock, the rendered digest follows the stack."""
    data = yaml.safe_load((ROOT / "examples/lab.yaml").read_text())
    old = data["stacks"]["lab-2026-11"]
    old["serving"] = {"runtime": "container"}
    data["stacks"]["lab-2026-12"] = copy.deepcopy(old)
    data["environments"]["prod"]["stack"] = "lab-2026-12"
    (tmp_path / "lab.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    shutil.copy(ROOT / "examples/lab.lock", tmp_path / "lab.lock")
    shutil.copytree(ROOT / "examples/models", tmp_path / "models")
    lock = json.loads((ROOT / "examples/lab.lock").read_text())
    for name, digest, config in (("lab-2026-11", DIGEST, IMAGE_ID),
                                 ("lab-2026-12", OTHER, OTHER_ID)):
        lock["stacks"][name] = {**copy.deepcopy(LOCK), "serving": {"runtime": "container"},
                                "image": {**LOCKED["image"], "digest": digest,
                                          "config_digest": config,
                                          "reference": f"127.0.0.1:5299/stacklock-lab/serving"
                                                       f"@{digest}"}}

    def rendered(path: Path) -> dict[str, Any]:
        tree = rendermod.render_tree(load_manifest(path), lock)
        return {env: yaml.safe_load(tree[f"inventories/{env}/group_vars/{env}/stacklock.yml"])
                ["serving_container"] for env in ("dev", "prod")}

    before = rendered(tmp_path / "lab.yaml")
    assert (before["dev"]["digest"], before["prod"]["digest"]) == (DIGEST, OTHER)
    assert before["prod"]["image"] == f"127.0.0.1:5299/stacklock-lab/serving@{OTHER}"
    assert before["prod"]["config_digest"] == OTHER_ID
    # the rollback's manifest edit: prod names the older stack again
    data["environments"]["prod"]["stack"] = "lab-2026-11"
    (tmp_path / "lab.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    after = rendered(tmp_path / "lab.yaml")
    assert after["prod"] == before["dev"]
    assert after["prod"]["image"] == IMAGE and after["prod"]["config_digest"] == IMAGE_ID
