"""The `container` collector on recorded Docker output (tests/fixtures/container/README.md):
the serving container as Docker runs it, the other running containers, the closure inside it,
and the GPU validation container (its parsing on written output: no GPU here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fakenode import FakeSystem  # loads the facts module and its module_utils

from ansible.module_utils.stacklock_facts import container as containermod  # isort: skip
from ansible.module_utils.stacklock_facts.run import Run  # isort: skip

REC = Path(__file__).resolve().parents[2] / "fixtures" / "container"
IMAGE = ("127.0.0.1:5299/stacklock-lab/serving@sha256:"
         "9f43bd388a8a7b4adc9cea5f71dd1f4254bda2519c4dda84ff2af2afeab16e1c")
WANT = {"name": "stacklock-serving", "image": IMAGE, "user": "10001:10001",
        "python": "/usr/bin/python3"}


def text(name: str) -> str:
    return (REC / name).read_text("utf-8")


def inspected(stopped: bool = False) -> list[dict[str, Any]]:
    """The recorded `docker inspect` of the serving container (running or stopped) and of the
    container started by hand."""
    both = json.loads(text("docker-inspect.json"))
    if stopped:
        both[0] = json.loads(text("docker-inspect-stopped.json"))[0]
    return both


def node(containers: list[dict[str, Any]] | None = None, *, gpu: bool = False,
         exec_answer: tuple[int, str, str] | None = None,
         run_answer: tuple[int, str, str] | None = None) -> FakeSystem:
    containers = inspected()[:1] if containers is None else containers
    ids = "\n".join(c["Id"] for c in containers) + "\n"
    files: dict[str, str | bytes] = {}
    if gpu:
        files["/proc/driver/nvidia/gpus/0000:00:1e.0/information"] = "Model: NVIDIA H100\n"
    return FakeSystem(
        commands={
            "docker ps": (0, ids, ""),
            "docker inspect": (0, json.dumps(containers), ""),
            "docker image": (0, text("docker-image-inspect.json"), ""),
            "docker exec": exec_answer or (0, text("docker-exec-venv.json"), ""),
            "docker run": run_answer or (0, text("gpu-validation-h100.json"), ""),
        },
        files=files, executables={"docker": "/usr/bin/docker"},
        uname={"kernel": "6.1", "architecture": "x86_64", "hostname": "n"},
        python={"version": "3.11.2", "executable": "/usr/bin/python3"})


def probe(sy: FakeSystem, gpu: bool = False) -> dict[str, Any]:
    return containermod.probe_container(sy, dict(WANT), gpu, "123")


def test_the_recorded_serving_container() -> None:
    out = probe(node())
    assert out["found"] and out["running"] and out["status"] == "running"
    assert out["image_id"] == ("sha256:14deffccec04b3aeac477933060fa7bdb18421506285402c905a1c"
                               "dcb288eb22")
    assert out["repo_digests"] == [IMAGE]
    assert (out["user"], out["read_only"], out["privileged"]) == ("10001:10001", True, False)
    assert (out["cap_add"], out["cap_drop"]) == ([], ["ALL"])
    assert out["security_opt"] == ["no-new-privileges"]
    assert (out["runtime"], out["network"], out["devices"]) == ("runc", "host", [])
    assert out["restart_count"] == 0
    assert out["mounts"] == [
        {"type": "tmpfs", "source": "", "target": "/run/torchserve", "read_only": False},
        {"type": "bind", "source": "/tmp/rec23/models", "target": "/var/lib/torchserve/model-store",
         "read_only": True},
        {"type": "tmpfs", "source": "", "target": "/var/log/torchserve", "read_only": False}]
    assert out["python"]["distributions"] == {"python-apt": "2.6.0"}
    assert out["others"] == {}
    assert "gpu_validation" not in out


def test_a_secret_looking_value_never_leaves_the_node() -> None:
    out = probe(node())
    assert out["env"]["TS_CONFIG_FILE"] == "/etc/torchserve/config.properties"
    assert out["env"]["TS_API_TOKEN"] == "not-a-real-secret"  # TS_*: a name verify reads
    record = inspected()[:1]
    record[0]["Config"]["Env"].append("HF_TOKEN=hf_abcdefghijklmnopqrstuvwxyz")
    out = probe(node(record))
    assert out["env"]["HF_TOKEN"] is None
    assert "hf_abcdefghijklmnopqrstuvwxyz" not in json.dumps(out)


def test_the_image_env_is_the_images_own() -> None:
    record = inspected()[:1]
    record[0]["Config"]["Env"].append("PATH=/usr/local/bin:/usr/bin")
    image = json.loads(text("docker-image-inspect.json"))
    image[0]["Config"]["Env"] = ["PATH=/usr/local/bin:/usr/bin", "JAVA_HOME=/other"]
    sy = node(record)
    sy.commands["docker image"] = (0, json.dumps(image), "")
    out = probe(sy)
    assert "PATH" not in out["env"]  # the image's own, unchanged
    assert out["env"]["JAVA_HOME"] == "/usr/lib/jvm/java-17-openjdk-amd64"  # given another value


def test_a_container_started_by_hand_is_named_with_its_settings() -> None:
    out = probe(node(inspected()))
    other = out["others"]["by-hand"]
    assert other["cap_add"] == ["NET_ADMIN", "SYS_PTRACE"]
    assert (other["user"], other["read_only"]) == ("0:0", False)
    assert other["security_opt"] == ["seccomp=unconfined"]
    assert other["mounts"] == [{"type": "bind", "source": "/tmp/rec23/models",
                                "target": "/srv/extra", "read_only": False}]


def test_a_stopped_container() -> None:
    sy = node(inspected(stopped=True)[:1],
              exec_answer=(1, "", text("docker-exec-stopped.txt")))
    out = probe(sy)
    assert out["found"] and not out["running"]
    assert out["status"] == "exited" and out["exit_code"] == 137
    assert "not running" in out["python"]["error"]
    assert not any(a[:2] == ["/usr/bin/docker", "exec"] for a in sy.ran)


def test_no_container_of_that_name() -> None:
    out = probe(node(inspected()[1:]))
    assert not out["found"] and "by-hand" in out["others"]


def test_no_gpu_no_validation_container() -> None:
    sy = node()
    run = Run({"container": dict(WANT), "run_id": "1"}, sy)
    containermod.collect(run)
    assert "gpu_validation" not in run.facts["container"]
    assert not any(a[:2] == ["/usr/bin/docker", "run"] for a in sy.ran)


def test_host_mode_reads_no_container() -> None:
    sy = node()
    run = Run({}, sy)
    containermod.collect(run)
    assert "container" not in run.facts and sy.ran == []


def test_the_gpu_validation_container_on_a_gpu_node() -> None:
    sy = node(gpu=True)
    run = Run({"container": dict(WANT), "run_id": "42"}, sy)
    containermod.collect(run)
    got = run.facts["container"]["gpu_validation"]
    assert got == {"torch": "2.11.0+cu130", "cuda": "13.0", "available": True,
                   "device_count": 1, "device": "NVIDIA H100 80GB HBM3", "op": 30.0}
    argv = next(a for a in sy.ran if a[:2] == ["/usr/bin/docker", "run"])
    joined = " ".join(argv)
    for part in ("--rm", "--runtime nvidia", "--gpus all", "--network none", "--read-only",
                 "--cap-drop ALL", "--user 10001:10001", "--name stacklock-validate-42",
                 f"--entrypoint /usr/bin/python3 {IMAGE} -I -c"):
        assert part in joined, part


def test_the_inventory_play_asks_for_no_validation_container_on_a_gpu_node() -> None:
    sy = node(gpu=True)
    run = Run({"container": {**WANT, "validate_gpu": False}, "run_id": "43"}, sy)
    containermod.collect(run)
    assert run.facts["container"]["found"] and "gpu_validation" not in run.facts["container"]
    assert not any(a[:2] == ["/usr/bin/docker", "run"] for a in sy.ran)


def test_the_gpu_section_alone_says_gpu() -> None:
    sy = node()
    assert not containermod.has_gpu(sy, {})
    assert containermod.has_gpu(sy, {"gpu": {"present": True}})
    assert containermod.has_gpu(node(gpu=True), {})


def test_the_gpu_validation_without_the_nvidia_runtime() -> None:
    sy = node(gpu=True, run_answer=(125, "", text("docker-run-no-nvidia-runtime.txt")))
    out = probe(sy, gpu=True)
    assert "Unknown runtime specified nvidia" in out["gpu_validation"]["error"]


def test_the_gpu_validation_parses_only_its_json_line() -> None:
    noise = "==CUDA==\nCUDA Version 13.0\n" + text("gpu-validation-cpu-torch.json")
    assert containermod.parse_gpu(noise) == {"torch": "2.11.0+cpu", "cuda": None,
                                             "available": False}
    assert "no JSON" in containermod.parse_gpu("Traceback ...\nImportError: torch\n")["error"]


def test_tmpfs_given_with_dash_dash_tmpfs() -> None:
    """The serving role's unit gives tmpfs as `--tmpfs TARGET:OPTIONS` (HostConfig.Tmpfs, which
    `Mounts` does not list): the same mounts as `--mount type=tmpfs`."""
    record = inspected()[:1]
    before = probe(node(record))["mounts"]
    record[0]["Mounts"] = [m for m in record[0]["Mounts"] if m["Type"] != "tmpfs"]
    record[0]["HostConfig"]["Tmpfs"] = {"/run/torchserve": "",
                                        "/var/log/torchserve": "uid=10001,gid=10001,mode=0750"}
    assert probe(node(record))["mounts"] == before
    record[0]["HostConfig"]["Tmpfs"]["/run/torchserve"] = "ro,size=1m"
    assert probe(node(record))["mounts"][0]["read_only"] is True
