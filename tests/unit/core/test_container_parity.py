"""The container class of the comparison (core/container.py, through core/parity.py) on facts
the real collector made from recorded Docker output (tests/fixtures/container/README.md): a
clean container-mode node, each change verify must catch, and host mode without any of it."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "collectors"))
from fakenode import FakeSystem

from ansible.module_utils.stacklock_facts import container as collector  # isort: skip
from ansible.module_utils.stacklock_facts import docker as dockermod  # isort: skip
from stacklock.core import container, parity

REPO = Path(__file__).resolve().parents[3]
REC = REPO / "tests" / "fixtures" / "container"
DIGEST = "sha256:9f43bd388a8a7b4adc9cea5f71dd1f4254bda2519c4dda84ff2af2afeab16e1c"
IMAGE_ID = "sha256:14deffccec04b3aeac477933060fa7bdb18421506285402c905a1cdcb288eb22"
IMAGE = f"127.0.0.1:5299/stacklock-lab/serving@{DIGEST}"

#: the rendered group_vars (the contract of core/serving.py) the recorded container was run with
GV: dict[str, Any] = {
    "serving_runtime": "container",
    "serving_container": {
        "name": "stacklock-serving", "image": IMAGE, "digest": DIGEST,
        "config_digest": IMAGE_ID, "user": "10001:10001", "read_only": True, "cap_add": [],
        "runtime": "runc", "network": "host",
        "mounts": [
            {"type": "tmpfs", "source": "", "target": "/run/torchserve", "read_only": False},
            {"type": "bind", "source": "/tmp/rec23/models",
             "target": "/var/lib/torchserve/model-store", "read_only": True},
            {"type": "tmpfs", "source": "", "target": "/var/log/torchserve", "read_only": False,
             "options": "uid=10001,gid=10001,mode=0750"}],
        "env": {"TS_CONFIG_FILE": "/etc/torchserve/config.properties",
                "JAVA_HOME": "/usr/lib/jvm/java-17-openjdk-amd64",
                "TS_API_TOKEN": "not-a-real-secret"},
    },
    # the image's closure as the lock would hold it (the lab image's one distribution)
    "torchserve_pip_packages": [{"name": "python-apt", "version": "2.6.0", "sha256": "0" * 64}],
    "torchserve_version": "0.12.0",
    "torchserve_models": [],
}


def text(name: str) -> str:
    return (REC / name).read_text("utf-8")


def records() -> tuple[dict[str, Any], dict[str, Any]]:
    serving, by_hand = json.loads(text("docker-inspect.json"))
    return serving, by_hand


def facts(containers: list[dict[str, Any]] | None = None, *, gpu_out: str | None = None,
          venv: str | None = None) -> dict[str, Any]:
    """A node's facts from the collector run on recorded output."""
    containers = [records()[0]] if containers is None else containers
    sy = FakeSystem(
        commands={"docker ps": (0, "\n".join(c["Id"] for c in containers), ""),
                  "docker inspect": (0, json.dumps(containers), ""),
                  "docker image": (0, text("docker-image-inspect.json"), ""),
                  "docker exec": (0, venv or text("docker-exec-venv.json"), ""),
                  "docker run": (125, "", gpu_out) if gpu_out and not gpu_out.startswith("{")
                  else (0, gpu_out or "", "")},
        files={}, executables={"docker": "/usr/bin/docker"}, uname={}, python={})
    want = {**container.option(GV), "python": "/usr/bin/python3"}  # type: ignore[dict-item]
    return {"schema": parity.FACTS_SCHEMA,
            "container": collector.probe_container(sy, want, gpu_out is not None, "7")}


def checks(node_facts: dict[str, Any], gv: dict[str, Any] | None = None
           ) -> dict[str, parity.Check]:
    rep = parity.compare({"dev": parity.expected_from_vars(gv or GV)},
                         {"dev": {"n1": node_facts}})
    return {c.component: c for c in rep.checks if c.component.startswith("container.")}


def bad(node_facts: dict[str, Any], gv: dict[str, Any] | None = None) -> dict[str, parity.Check]:
    return {k: c for k, c in checks(node_facts, gv).items()
            if c.status is not parity.Status.MATCH}


def test_the_recorded_container_matches_its_group_vars() -> None:
    got = checks(facts())
    assert len(got) >= 15  # not an empty report
    assert {c.status for c in got.values()} == {parity.Status.MATCH}
    for comp in ("container.image.digest", "container.image.id", "container.user",
                 "container.read_only", "container.capabilities", "container.runtime",
                 "container.network", "container.mounts", "container.running",
                 "container.env.TS_CONFIG_FILE", "container.python.python-apt"):
        assert comp in got, comp


def test_container_mode_replaces_the_host_serving_checks() -> None:
    exp = parity.expected_from_vars(GV)
    assert not [c for c in exp if c.startswith(("pip.", "unit.torchserve.", "process.torchserve",
                                                "service.torchserve", "venv.", "torch."))]


def test_host_mode_has_no_container_checks() -> None:
    host = {k: v for k, v in GV.items() if k not in ("serving_runtime", "serving_container")}
    assert checks(facts(), host) == {}
    lab = yaml.safe_load((REPO / "examples/lab/inventories/dev/group_vars/dev/stacklock.yml")
                         .read_text())
    assert not [c for c in parity.expected_from_vars(lab) if c.startswith("container.")]
    assert container.option(lab) is None
    assert container.option({**lab, "serving_runtime": "host"}) is None


def test_a_different_digest_and_image() -> None:
    gv = copy.deepcopy(GV)
    gv["serving_container"]["digest"] = "sha256:" + "1" * 64
    gv["serving_container"]["config_digest"] = "sha256:" + "2" * 64
    got = bad(facts(), gv)
    assert set(got) == {"container.image.digest", "container.image.id"}
    assert got["container.image.digest"].actual == DIGEST
    assert got["container.image.id"].expected == "sha256:" + "2" * 64
    assert "stacklock configure pulls the locked digest" in got["container.image.id"].detail
    assert "dev/n1 container.image.digest: expected sha256:111" in got[
        "container.image.digest"].describe()


def test_an_image_pulled_by_several_digests() -> None:
    node = facts()
    other = "10.213.0.1:5000/other/serving@sha256:" + "3" * 64
    node["container"]["repo_digests"].append(other)
    assert bad(node) == {}
    node["container"]["repo_digests"] = [other]
    assert bad(node)["container.image.digest"].actual == "sha256:" + "3" * 64


def test_an_image_not_pulled_by_digest() -> None:
    node = facts()
    node["container"]["repo_digests"] = []
    assert "not pulled by digest" in str(bad(node)["container.image.digest"].actual)


def test_the_serving_container_started_by_hand_with_other_settings() -> None:
    by_hand = records()[1]
    by_hand["Name"] = "/stacklock-serving"
    got = bad(facts([by_hand]))
    assert got["container.user"].actual == "0:0"
    assert got["container.read_only"].actual == "false"
    assert got["container.capabilities"].actual == "add: NET_ADMIN,SYS_PTRACE; drop: none"
    assert got["container.capabilities"].expected == "add: none; drop: ALL"
    assert got["container.security_opt"].actual == "seccomp=unconfined"
    assert got["container.mounts"].actual == "bind /tmp/rec23/models -> /srv/extra (rw)"
    assert got["container.env.TS_CONFIG_FILE"].actual is None  # not given
    assert "started by hand" in got["container.user"].detail


@pytest.mark.parametrize(("field", "value", "component", "actual"), [
    ("Runtime", "nvidia", "container.runtime", "nvidia"),
    ("NetworkMode", "bridge", "container.network", "bridge"),
    ("Privileged", True, "container.privileged", "true"),
    ("PidMode", "host", "container.pid_mode", "host"),
    ("CapAdd", ["CAP_SYS_ADMIN"], "container.capabilities", "add: SYS_ADMIN; drop: ALL"),
    ("Devices", [{"PathOnHost": "/dev/mem", "PathInContainer": "/dev/mem",
                  "CgroupPermissions": "rwm"}], "container.devices", "/dev/mem:/dev/mem"),
    # --gpus all where the spec asks for none (a CPU node)
    ("DeviceRequests", [{"Driver": "", "Count": -1, "DeviceIDs": None,
                         "Capabilities": [["gpu"]], "Options": {}}],
     "container.gpus", "gpu: all"),
    # the unit's --security-opt no-new-privileges left out, or switched off
    ("SecurityOpt", [], "container.security_opt", "none"),
    ("SecurityOpt", ["no-new-privileges:false"], "container.security_opt", "none"),
    ("SecurityOpt", ["no-new-privileges", "apparmor=unconfined"], "container.security_opt",
     "no-new-privileges, apparmor=unconfined"),
])
def test_one_setting_changed(field: str, value: Any, component: str, actual: str) -> None:
    serving = records()[0]
    serving["HostConfig"][field] = value
    got = bad(facts([serving]))
    assert set(got) == {component}
    assert got[component].actual == actual


def test_a_gpu_node_expects_every_gpu_through_the_runtime() -> None:
    from stacklock.core import container

    gv = {"serving_runtime": "container",
          "serving_container": {"name": "stacklock-serving", "gpus": "all", "runtime": "nvidia"}}
    assert container.expected_from_vars(gv)["container.gpus"] == "gpu: all"
    assert container.gpus_text([]) == "none"
    assert container.gpus_text(["gpu:-1"]) == "gpu: all"
    assert container.gpus_text(["gpu:2", "compute,utility:-1"]) == \
        "compute,utility: all; gpu: 2"


@pytest.mark.parametrize("spelling", ["no-new-privileges", "no-new-privileges:true",
                                      "no-new-privileges=true"])
def test_no_new_privileges_in_any_spelling_is_clean(spelling: str) -> None:
    serving = records()[0]
    serving["HostConfig"]["SecurityOpt"] = [spelling]
    assert "container.security_opt" not in bad(facts([serving]))


def test_an_extra_mount_and_an_extra_variable() -> None:
    serving = records()[0]
    serving["Mounts"].append({"Type": "volume", "Name": "data", "Source": "/var/lib/docker/v",
                              "Destination": "/srv/data", "RW": True})
    serving["Config"]["Env"].append("LD_PRELOAD=/srv/data/x.so")
    serving["Config"]["Env"].append("AWS_SECRET_ACCESS_KEY=abc123")
    got = bad(facts([serving]))
    assert "volume data -> /srv/data (rw)" in str(got["container.mounts"].actual)
    assert got["container.env.LD_PRELOAD"].expected == "absent"
    assert got["container.env.LD_PRELOAD"].actual == "/srv/data/x.so"
    assert "abc123" not in str(got["container.env.AWS_SECRET_ACCESS_KEY"].actual)


def test_a_stopped_container_is_one_finding() -> None:
    stopped = json.loads(text("docker-inspect-stopped.json"))
    got = bad(facts(stopped))
    assert set(got) == {"container.running"}
    assert got["container.running"].actual.startswith("false (exited, exit code 137")
    assert "container.python.python-apt" not in checks(facts(stopped))


def test_no_container_is_one_finding() -> None:
    got = bad(facts([]))
    assert set(got) == {"container.running"}
    assert "not found" in str(got["container.running"].actual)


def test_an_extra_running_container() -> None:
    got = bad(facts(list(records())))
    assert set(got) == {"container.extra.by-hand"}
    c = got["container.extra.by-hand"]
    assert c.expected == "absent" and "cap_add NET_ADMIN,SYS_PTRACE" in str(c.actual)
    assert "user 0:0" in str(c.actual)


def test_a_concurrent_validation_container_is_no_extra_but_a_lookalike_is() -> None:
    serving, by_hand = records()
    validation = copy.deepcopy(serving)
    validation.update(Name="/stacklock-validate-99", Id="f" * 64)
    validation["HostConfig"].update(NetworkMode="none")
    assert bad(facts([serving, validation])) == {}
    by_hand["Name"] = "/stacklock-validate-1"
    assert set(bad(facts([serving, by_hand]))) == {"container.extra.stacklock-validate-1"}


def test_another_dist_version_in_the_image_and_an_unlocked_one() -> None:
    venv = json.loads(text("docker-exec-venv.json"))
    venv["distributions"] = {"python-apt": "2.7.0", "requests": "2.32.3"}
    got = bad(facts(venv=json.dumps(venv)))
    assert (got["container.python.python-apt"].expected,
            got["container.python.python-apt"].actual) == ("2.6.0", "2.7.0")
    assert got["container.python.requests"].expected == "absent"


def test_a_docker_error_is_not_a_match() -> None:
    node = {"schema": parity.FACTS_SCHEMA, "container": {"error": "docker: command not found"},
            "errors": {"container": "docker: command not found"}}
    got = bad(node)
    assert got["container.running"].actual is None
    assert "docker: command not found" in got["container.running"].detail
    node["container"]["error"] = node["errors"]["container"] = (
        "could not look: /usr/bin/docker ps -a exited 1: permission denied")
    node["blocked"] = dict(node["errors"])
    got = bad(node)
    assert got["container.running"].status is parity.Status.UNVERIFIED


# --------------------------------------------------------------------------- the GPU


GPU_GV = {**GV, "nvidia_driver_require_gpu": True, "cuda_version": "13.0",
          "torchserve_torch_cuda": "13.0"}


def gpu_checks(out: str, gv: dict[str, Any] | None = None) -> dict[str, parity.Check]:
    return {k: c for k, c in checks(facts(gpu_out=out), gv or GPU_GV).items()
            if k.startswith("container.gpu.")}


def test_the_gpu_validation_on_recorded_output() -> None:
    got = gpu_checks(text("gpu-validation-h100.json"))
    assert {k: c.status for k, c in got.items()} == {
        "container.gpu.available": parity.Status.MATCH, "container.gpu.cuda": parity.Status.MATCH,
        "container.gpu.op": parity.Status.MATCH}
    assert parity.compare({"dev": parity.expected_from_vars(GPU_GV)}, {"dev": {"n1": facts(
        gpu_out=text("gpu-validation-h100.json"))}}).observed["dev"]["n1"][
        "container.gpu.device"] == "NVIDIA H100 80GB HBM3"


def test_the_gpu_validation_against_another_cuda() -> None:
    got = gpu_checks(text("gpu-validation-h100.json"), {**GPU_GV, "torchserve_torch_cuda": None,
                                                        "cuda_version": "12.8"})
    assert (got["container.gpu.cuda"].expected, got["container.gpu.cuda"].actual) == (
        "12.8", "13.0")
    assert got["container.gpu.cuda"].status is parity.Status.DEVIATION


def test_the_gpu_validation_with_a_cpu_torch() -> None:
    got = gpu_checks(text("gpu-validation-cpu-torch.json"))
    assert got["container.gpu.available"].actual == "false"
    assert got["container.gpu.cuda"].actual == "none (a CPU-only torch)"
    assert got["container.gpu.op"].actual == "not run: no GPU"


def test_the_gpu_validation_without_the_nvidia_runtime() -> None:
    got = gpu_checks(text("docker-run-no-nvidia-runtime.txt"))
    assert all(c.status is parity.Status.DEVIATION for c in got.values())
    assert "Unknown runtime specified nvidia" in str(got["container.gpu.available"].actual)


def test_no_gpu_expected_without_gpus() -> None:
    assert not [c for c in parity.expected_from_vars(GV) if c.startswith("container.gpu.")]


# --------------------------------------------------------------------------- the NVIDIA runtime


@pytest.mark.parametrize("mode", ["host", "container"])
def test_the_nvidia_runtime_removed_from_docker(mode: str) -> None:
    """Recorded `docker info` of a dockerd without the NVIDIA runtime: caught in both modes by
    the runtime class (docker.runtime.nvidia, from `docker info` of the running daemon)."""
    sy = FakeSystem(commands={"docker info": (0, text("docker-info-without-nvidia.json")
                                              .replace("\n", ""), "")},
                    files={}, executables={"docker": "/usr/bin/docker"}, uname={}, python={})
    node = {"schema": parity.FACTS_SCHEMA, "units": {}, "docker": dockermod.probe_docker(sy, None)}
    gv = {"docker_version": "20.10.24", "nvidia_container_toolkit_version": "1.17.8",
          "docker_packages": [{"name": "docker.io", "version": "x"}]}
    if mode == "container":
        gv.update(serving_runtime="container", serving_container=GV["serving_container"])
    rep = parity.compare({"dev": parity.expected_from_vars(gv)}, {"dev": {"n1": node}})
    got = {c.component: c for c in rep.deviations}
    assert got["docker.runtime.nvidia"].expected == "nvidia-container-runtime"
    assert got["docker.runtime.nvidia"].actual is None
    assert "daemon.json" in got["docker.runtime.nvidia"].detail
    assert "docker.runtime.default" not in got  # runc, as configured


# --------------------------------------------------------------------------- both paths


def test_the_play_and_fast_give_the_module_the_same_container_option() -> None:
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar, trust_as_template

    from stacklock.flows import fastverify

    play = yaml.safe_load((REPO / "ansible/playbooks/verify.yml").read_text())
    task = next(t for t in play[0]["tasks"] if "stacklock_stack_facts" in t)
    expr = trust_as_template(task["stacklock_stack_facts"]["container"])
    omit = "__omit_place_holder__x"
    for gv in (GV, {k: v for k, v in GV.items() if k != "serving_runtime"}):
        played = Templar(loader=DataLoader(), variables={**gv, "omit": omit}).template(expr)
        fast = fastverify.task_args(gv, "1", False).get("container", omit)
        assert played == fast
    assert fastverify.task_args(GV, "1", False)["container"]["name"] == "stacklock-serving"
    spec = fastverify.module_spec((REPO / fastverify.MODULE).read_text())
    assert spec["container"]["type"] == "dict"
    assert {"serving_runtime", "serving_container"} <= set(parity.GROUP_VAR_KEYS)
