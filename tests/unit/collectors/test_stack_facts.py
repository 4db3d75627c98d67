"""The stack facts module (ansible/library/stacklock_stack_facts.py) as a whole: every
collector of ansible/module_utils/stacklock_facts run by `gather(opts, system)` on a fake node
(tests/unit/collectors/fakenode.py: recorded outputs of a lab node and of a real H100 node), the
recorded facts fixtures, the verdicts their errors lead to, and the module for real (ansible
localhost, the verify play). Each collector's own tests are in tests/unit/collectors/.

Their facts are the recorded fixtures tests/fixtures/facts/{lab-node,h100-node}.json used by
test_parity.py; `STACKLOCK_REGEN_FACTS=1 pytest tests/unit/collectors/test_stack_facts.py` rewrites them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]


def _fakenode() -> ModuleType:
    """tests/unit/collectors/fakenode.py, shared with the collectors' tests (one copy)."""
    if "fakenode" not in sys.modules:
        path = REPO / "tests" / "unit" / "collectors" / "fakenode.py"
        spec = importlib.util.spec_from_file_location("fakenode", path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules["fakenode"] = mod
        spec.loader.exec_module(mod)
    return sys.modules["fakenode"]


_fakenode()

from ansible.module_utils.stacklock_facts import python  # noqa: E402
from ansible.module_utils.stacklock_facts.common import (  # noqa: E402
    CannotLook,
    ProbeError,
    upstream_version,
)
from ansible.module_utils.stacklock_facts.node import System  # noqa: E402
from fakenode import (  # noqa: E402
    FIXTURES,
    H100_PACKAGES,
    LAB_CONFIG,
    LAB_DPKG,
    LAB_KEY_FILE,
    LAB_MAR,
    LAB_PACKAGES,
    LAB_PIP,
    MODULE_PATH,
    SYSTEMCTL_ACTIVE,
    FakeSystem,
    gather,
    h100_node,
    lab_node,
    stable,
)

# --------------------------------------------------------------------------- the H100 node


def test_h100_driver_from_nvidia_smi_although_no_dpkg_package() -> None:
    facts = gather(h100_node(), packages=H100_PACKAGES, pip_packages=LAB_PIP)
    assert facts["schema"] == "stacklock.facts/v1"
    assert facts["gpu"]["present"] is True
    assert facts["gpu"]["count"] == 1
    assert facts["gpu"]["name"] == "NVIDIA H100 80GB HBM3"
    assert facts["gpu"]["compute_capability"] == "9.0"
    assert facts["gpu"]["memory_mib"] == 81559
    assert facts["gpu"]["source"] == "nvidia-smi"
    drv = facts["nvidia_driver"]
    assert drv["version"] == "580.159.04"
    assert drv["running_source"] == "nvidia-smi"
    assert drv["packages"] == {}  # not a dpkg package, and not invented from un-installed names
    assert drv["package_version"] is None
    assert drv["kernel_module"] == "open"


def test_h100_cuda_torch_and_os() -> None:
    facts = gather(h100_node(), packages=H100_PACKAGES, pip_packages=LAB_PIP)
    assert facts["cuda"]["version"] == "13.0"
    assert facts["cuda"]["full_version"] == "13.0.88"
    assert facts["cuda"]["source"] == "nvcc"
    assert facts["cuda"]["nvcc"]["path"] == "/usr/local/cuda-13.0/bin/nvcc"
    assert facts["cuda"]["version_json"] is None
    assert "cuda-toolkit-13-0" in facts["cuda"]["packages"]
    assert "cuda-runtime-13-0" not in facts["cuda"]["packages"]  # `un`: not installed
    venv = facts["torchserve"]["venv"]
    assert venv["torch"]["version"] == "2.11.0+cu130"
    assert venv["torch"]["cuda"] == "13.0"
    assert facts["os"]["distribution"] == "ubuntu"
    assert facts["os"]["release"] == "24.04"
    assert facts["docker"]["version"] == "28.5.1"
    assert facts["docker"]["default_runtime"] == "nvidia"
    assert facts["nvidia_container_toolkit"]["version"] == "1.18.0"
    assert facts["java"]["major"] == "17"
    assert facts["java"]["source"] == "java -version"  # no release file there
    assert facts["errors"] == {}


def test_driver_from_proc_when_nvidia_smi_fails() -> None:
    node = h100_node()
    node.commands["nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total"] = (
        9, "", "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n")
    facts = gather(node)
    assert facts["nvidia_driver"]["version"] == "580.159.04"
    assert facts["nvidia_driver"]["running_source"] == "proc"
    assert facts["gpu"]["present"] is True
    assert facts["gpu"]["source"] == "proc"
    assert facts["gpu"]["name"] == "NVIDIA H100 80GB HBM3"


def test_nvml_first_when_importable() -> None:
    gpus = [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "driver_version": "580.159.04",
             "compute_capability": "9.0", "memory_mib": 81559}]
    node = h100_node(nvml=gpus)
    facts = gather(node)
    assert facts["gpu"]["source"] == "nvml"
    assert facts["nvidia_driver"]["version"] == "580.159.04"
    assert not any("nvidia-smi" in argv[0] for argv in node.ran)


def test_cuda_from_packages_only() -> None:
    node = h100_node()
    del node.commands["nvcc --version"]
    del node.files["/usr/local/cuda-13.0/bin/nvcc"]
    facts = gather(node)
    assert facts["cuda"]["source"] == "package"
    assert facts["cuda"]["version"] == "13.0"
    assert facts["cuda"]["full_version"] == "13.0.2"


# --------------------------------------------------------------------------- the lab node


def test_lab_node_no_gpu_is_explicit() -> None:
    facts = gather(lab_node(), packages=LAB_PACKAGES, pip_packages=LAB_PIP)
    assert facts["gpu"] == {"present": False, "count": 0, "source": None, "devices": [],
                            "name": None, "compute_capability": None, "memory_mib": None}
    drv = facts["nvidia_driver"]
    assert drv["running_version"] is None
    assert drv["version"] == "535.309.01"
    assert drv["source"] == "package"
    assert drv["packages"]["nvidia-driver"] == "535.309.01-0+deb12u1"


def test_lab_node_stack() -> None:
    node = lab_node()
    facts = gather(node, packages=LAB_PACKAGES, pip_packages=LAB_PIP)
    assert facts["cuda"] == {
        "version": "11.8", "full_version": "11.8.89", "source": "package", "nvcc": None,
        "version_json": None, "packages": {"libcudart11.0": "11.8.89~11.8.0-5~deb12u1"}}
    assert facts["docker"]["version"] == "20.10.24"
    assert facts["docker"]["default_runtime"] == "runc"
    assert facts["packages"]["docker.io"] == {
        "version": "20.10.24+dfsg1-1+deb12u1+b6", "status": "installed", "held": True}
    assert "docker.io" in facts["holds"] and "containerd" not in facts["holds"]
    ts = facts["torchserve"]
    assert ts["running"] is True
    assert ts["models"] == {"tiny-linear": {"version": "1.0", "workers": 1, "workers_ready": 1}}
    assert ts["config"]["sha256"] == hashlib.sha256(LAB_CONFIG.encode()).hexdigest()
    assert ts["model_store"]["archives"] == {
        "tiny-linear.mar": hashlib.sha256(LAB_MAR).hexdigest()}
    assert ts["venv"]["packages"]["pyyaml"] == "6.0.3"
    assert ts["venv"]["torch"]["cuda"] is None
    assert facts["services"]["torchserve"]["active"] == "active"
    # Java from the JDK's release file, without starting a JVM
    assert facts["java"]["version"] == "17.0.21.1" and facts["java"]["major"] == "17"
    assert facts["java"]["source"] == "/usr/lib/jvm/java-17-openjdk-amd64/release"
    assert not any(os.path.basename(argv[0]) == "java" for argv in node.ran)
    assert facts["errors"] == {}
    # the management token is sent, and never lands in the facts
    assert node.requests[0][1] == {"Authorization": "Bearer mgmt-SECRET-123"}
    assert "SECRET" not in json.dumps(facts)


def test_torchserve_down_records_running_false_and_error() -> None:
    node = lab_node(http={})
    node.commands["systemctl show"] = (0, SYSTEMCTL_ACTIVE.replace(
        "ActiveState=active\nSubState=running\nUnitFileState=enabled\n\nId=docker",
        "ActiveState=inactive\nSubState=dead\nUnitFileState=enabled\n\nId=docker"), "")
    facts = gather(node)
    assert facts["torchserve"]["running"] is False
    assert "Connection refused" in facts["torchserve"]["error"]
    assert "Connection refused" in facts["errors"]["torchserve"]
    assert facts["services"]["torchserve"]["active"] == "inactive"
    assert facts["services"]["docker"]["active"] == "active"


def test_torchserve_refusing_the_key_is_could_not_look_not_a_deviation() -> None:
    """The key is refused and no fresh one can be had: unknown (blocked), not 'not running'."""
    node = lab_node(http={"http://127.0.0.1:8081/models?limit=1000": (
        401, '{"code": 401, "message": "Token Authorization failed"}')})
    facts = gather(node)
    assert facts["torchserve"]["running"] is None
    assert facts["torchserve"]["models"] == {}
    assert "HTTP 401" in facts["errors"]["torchserve"]
    assert facts["blocked"]["torchserve"].startswith("could not look: ")
    # it asked TorchServe's token API for a fresh management key with the API key
    token_calls = [r for r in node.requests if "/token?" in r[0]]
    assert token_calls == [("http://127.0.0.1:8081/token?type=management",
                            {"Authorization": "Bearer api-SECRET-789"})]


def test_expired_management_key_is_renewed_through_the_token_api() -> None:
    """Hours after TorchServe started: the key is refused once, renewed, and the probe works."""
    fresh = json.loads(LAB_KEY_FILE)
    fresh["management"]["key"] = "mgmt-FRESH-456"
    models_url = "http://127.0.0.1:8081/models?limit=1000"
    node = lab_node()
    listing = node.http[models_url]
    node.http[models_url] = (400, '{"code": 400, "message": "Token Authorization failed"}')

    def renew(url: str, headers: dict[str, str]) -> tuple[int, str]:
        assert headers == {"Authorization": "Bearer api-SECRET-789"}
        node.files["/var/lib/torchserve/key_file.json"] = json.dumps(fresh)
        node.http[models_url] = listing
        return 200, ""

    node.handlers["http://127.0.0.1:8081/token?type=management"] = renew
    facts = gather(node)
    assert facts["torchserve"]["running"] is True
    assert facts["torchserve"]["token_refreshed"] is True
    assert set(facts["torchserve"]["models"]) == {"tiny-linear"}
    assert facts["blocked"] == {} and facts["errors"] == {}
    assert node.requests[-1][1] == {"Authorization": "Bearer mgmt-FRESH-456"}
    assert "SECRET" not in json.dumps(facts) and "FRESH" not in json.dumps(facts)


def test_permission_denied_is_could_not_look() -> None:
    node = lab_node()
    node.denied.add("/etc/torchserve/config.properties")
    node.denied.add("/var/lib/torchserve/key_file.json")
    facts = gather(node)
    assert "Permission denied" in facts["blocked"]["torchserve.config"]
    assert "Permission denied" in facts["blocked"]["torchserve"]
    assert facts["torchserve"]["running"] is None


def test_a_crashing_probe_is_could_not_look() -> None:
    node = lab_node()
    node.commands["nvidia-ctk --version"] = RuntimeError("boom")
    facts = gather(node)
    assert "crashed" in facts["blocked"]["nvidia_container_toolkit"]
    assert facts["blocked"]["nvidia_container_toolkit"].startswith("could not look: ")


def test_failing_probes_record_errors_not_failures() -> None:
    node = lab_node()
    node.commands["dpkg-query -W"] = ProbeError("dpkg-query -W: timed out after 5 s")
    node.commands["docker info"] = ProbeError("docker info: timed out after 5 s")
    del node.executables["dockerd"]
    node.commands["python -I"] = (1, "", "Traceback ...\nImportError: broken venv\n")
    facts = gather(node, packages=["docker.io"])
    assert facts["schema"] == "stacklock.facts/v1"
    assert "timed out" in facts["errors"]["packages"]
    assert "timed out" in facts["errors"]["docker"]
    assert facts["docker"]["version"] is None
    assert "broken venv" in facts["errors"]["torchserve_venv"]
    assert facts["packages"]["docker.io"]["version"] is None
    assert facts["holds"] is None
    # the sections that did work are still there
    assert facts["java"]["major"] == "17"
    assert facts["torchserve"]["running"] is True


def test_venv_missing() -> None:
    node = lab_node()
    del node.files["/opt/torchserve/venv/bin/python"]
    facts = gather(node)
    assert facts["torchserve"]["venv"]["error"] == "/opt/torchserve/venv/bin/python not found"
    assert facts["errors"]["torchserve_venv"].endswith("not found")


@pytest.mark.parametrize(
    ("debian", "upstream"),
    [("5:27.3.1-1~debian.12~bookworm", "27.3.1"), ("20.10.24+dfsg1-1+deb12u1+b6", "20.10.24"),
     ("535.309.01-0+deb12u1", "535.309.01"), ("", None), (None, None)],
)
def test_upstream_version(debian: str | None, upstream: str | None) -> None:
    assert upstream_version(debian) == upstream


# --------------------------------------------------------------------------- the fixtures


RECORDED: dict[str, Callable[[], dict[str, Any]]] = {
    "lab-node.json": lambda: gather(lab_node(), packages=LAB_PACKAGES, pip_packages=LAB_PIP),
    "h100-node.json": lambda: gather(h100_node(), packages=H100_PACKAGES, pip_packages=LAB_PIP),
}


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_recorded_fixtures_are_what_the_module_gathers(name: str) -> None:
    facts = stable(RECORDED[name]())
    path = FIXTURES / name
    if os.environ.get("STACKLOCK_REGEN_FACTS") == "1":
        path.write_text(json.dumps(facts, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    recorded = json.loads(path.read_text(encoding="utf-8"))
    recorded.pop("seconds", None)
    assert recorded == facts


# --------------------------------------------------------------------------- for real


@pytest.mark.slow
def test_module_runs_for_real_on_this_machine(tmp_path: Path) -> None:
    """`ansible localhost -m stacklock_stack_facts`: the schema, and no GPU on this machine."""
    ansible = shutil.which("ansible", path=str(Path(sys.executable).parent)) or shutil.which(
        "ansible")
    if ansible is None:
        pytest.skip("ansible is not installed")
    # no ansible.cfg here (cwd is tmp_path): the module and its collectors named explicitly
    env = dict(os.environ, ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_STDOUT_CALLBACK="ansible.builtin.minimal",
               ANSIBLE_MODULE_UTILS=str(REPO / "ansible" / "module_utils"))
    proc = subprocess.run(
        [ansible, "localhost", "-m", "stacklock_stack_facts", "-M", str(MODULE_PATH.parent),
         "-c", "local", "-a", "packages=bash,no-such-package-xyz probe_timeout=20",
         "-e", f"ansible_python_interpreter={sys.executable}"],
        capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    head, sep, body = proc.stdout.partition(" => ")
    assert sep and head.startswith("localhost | SUCCESS"), proc.stdout
    result = json.loads(body)
    facts = result["ansible_facts"]["stacklock_stack"]
    assert facts["schema"] == "stacklock.facts/v1"
    if Path("/proc/driver/nvidia/version").exists():
        pytest.skip("this machine has an NVIDIA driver: the no-GPU assertion does not apply")
    assert facts["gpu"]["present"] is False
    assert facts["gpu"]["count"] == 0
    assert facts["packages"]["bash"]["version"]
    assert facts["packages"]["no-such-package-xyz"]["version"] is None
    assert facts["os"]["kernel"] == os.uname().release
    assert result["changed"] is False


def test_venv_script_reads_torch_without_importing_it() -> None:
    """The in-venv probe for real, on this project's own virtualenv (torch 2.13.0+cpu)."""
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed in this virtualenv")
    out = python.probe_venv(System(60.0), sys.prefix, ["pyyaml", "no-such-dist-xyz"])
    assert "error" not in out, out
    assert out["python"].startswith("{}.{}.".format(*sys.version_info[:2]))
    torch_version = out["packages"]["torch"]
    assert torch_version and out["torch"]["version"] == torch_version
    assert out["torch"]["source"] == "torch/version.py"
    if torch_version.endswith("+cpu"):
        assert out["torch"]["cuda"] is None
    else:
        assert out["torch"]["cuda"]
    assert out["packages"]["no-such-dist-xyz"] is None


# --------------------------------------------------------------------------- the verify play


def _ansible_bin(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed")
    return found


def _inventory(root: Path, env: str, hosts: dict[str, dict[str, Any]],
               group_vars: dict[str, Any]) -> Path:
    import yaml

    inv = root / env
    (inv / "group_vars" / env).mkdir(parents=True)
    (inv / "hosts.yml").write_text(yaml.safe_dump(
        {"all": {"children": {env: {"hosts": hosts}}}}), encoding="utf-8")
    (inv / "group_vars" / env / "stacklock.yml").write_text(yaml.safe_dump(group_vars),
                                                            encoding="utf-8")
    return inv


def _play(inventories: list[Path], report: Path, tmp: Path) -> tuple[int, str, dict[str, Any]]:
    argv = [_ansible_bin("ansible-playbook")]
    for inv in inventories:
        argv += ["-i", str(inv)]
    argv += [str(REPO / "ansible" / "playbooks" / "verify.yml"),
             "-e", f"stacklock_report_path={report}"]
    env = dict(os.environ, ANSIBLE_LOCAL_TEMP=str(tmp / "ansible-tmp"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_CONFIG=str(REPO / "ansible.cfg"))
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env,
                          cwd=REPO, check=False)
    out = proc.stdout + proc.stderr
    data = json.loads(report.read_text(encoding="utf-8")) if report.exists() else {}
    return proc.returncode, out, data


@pytest.mark.slow
def test_verify_playbook_on_this_machine(tmp_path: Path) -> None:
    """verify.yml for real: the module on two 'nodes' (this machine, local connection), the
    comparison in the action plugin, the JSON report, the play's verdict; -i twice."""
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    os_release = dict(
        line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines()
        if "=" in line)
    gv = {"stacklock_os_distribution": os_release["ID"].strip('"'),
          "stacklock_os_release": os_release.get("VERSION_ID", "").strip('"')}
    dev = _inventory(tmp_path / "inv", "dev", {"dev-1": local}, gv)
    prod = _inventory(tmp_path / "inv", "prod", {"prod-1": local}, gv)

    rc, out, data = _play([dev, prod], tmp_path / "clean.json", tmp_path)
    assert rc == 0, out
    assert data["schema"] == "stacklock.parity/v1"
    assert data["exit_code"] == 0, data["problems"]
    assert data["environments"] == ["dev", "prod"]
    assert {(n["environment"], n["node"]) for n in data["nodes"]} == {("dev", "dev-1"),
                                                                       ("prod", "prod-1")}
    assert "stacklock parity" in out and "os.release" in out

    # prod's lock says another release: a deviation naming env, node, component, both values
    (prod / "group_vars" / "prod" / "stacklock.yml").write_text(
        json.dumps(dict(gv, stacklock_os_release="99")), encoding="utf-8")
    rc, out, data = _play([dev, prod], tmp_path / "deviation.json", tmp_path)
    assert rc != 0
    assert data["exit_code"] == 1
    lock = [d for d in data["deviations"] if d["kind"] == "lock"]
    assert [(d["environment"], d["node"], d["component"], d["expected"], d["actual"])
            for d in lock] == [("prod", "prod-1", "os.release", "99", gv["stacklock_os_release"])]
    assert f"prod/prod-1 os.release: expected 99, actual {gv['stacklock_os_release']}" in out

    # a node that cannot be reached: exit 3, named, never matching
    down = _inventory(tmp_path / "inv", "staging", {"staging-1": {
        "ansible_host": "127.0.0.1", "ansible_port": 9, "ansible_user": "nobody",
        "ansible_ssh_common_args": "-o ConnectTimeout=5 -o BatchMode=yes"}}, gv)
    rc, out, data = _play([dev, down], tmp_path / "unreachable.json", tmp_path)
    assert rc != 0
    assert data["exit_code"] == 3
    assert [(n["environment"], n["node"]) for n in data["unreachable"]] == [
        ("staging", "staging-1")]
    assert "staging/staging-1 unreachable" in out


# --------------------------------------------------------------------------- exit-code discipline

LAB_VARS = json.loads((FIXTURES / "lab-group-vars.json").read_text(encoding="utf-8"))


def _plugin_facts_of(registered: dict[str, Any]) -> Any:
    """What the verify play's comparison makes of a host's registered facts task result."""
    spec = importlib.util.spec_from_file_location(
        "stacklock_parity_plugin", REPO / "ansible" / "action_plugins" / "stacklock_parity.py")
    assert spec is not None and spec.loader is not None
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    hostvars = {"__stacklock_verify_facts": registered, "inventory_hostname": "lab-1",
                "ansible_host": "10.213.1.2", "group_names": ["prod"]}
    return plugin.ActionModule._facts_of(hostvars, "stacklock_stack", "__stacklock_verify_facts")


def _verdict(node_facts: Any, run_id: str | None = None) -> Any:
    from stacklock.core.parity import compare, expected_from_vars

    return compare({"prod": expected_from_vars(LAB_VARS)}, {"prod": {"lab-1": node_facts}},
                   run_id=run_id)


def _timed_out_dpkg(node: FakeSystem) -> None:
    node.commands["dpkg-query -W"] = CannotLook("dpkg-query -W: timed out after 5 s")


def _denied_config(node: FakeSystem) -> None:
    node.denied.add("/etc/torchserve/config.properties")


def _token_refused(node: FakeSystem) -> None:
    node.http["http://127.0.0.1:8081/models?limit=1000"] = (
        400, '{"code": 400, "message": "Token Authorization failed"}')


def _probe_crash(node: FakeSystem) -> None:
    node.commands["nvidia-ctk --version"] = RuntimeError("boom")


@pytest.mark.parametrize("cause", [_timed_out_dpkg, _denied_config, _token_refused, _probe_crash],
                         ids=["timeout", "permission-denied", "token-refused", "probe-crash"])
def test_could_not_look_causes_are_exit_3_never_1(cause: Callable[[FakeSystem], None]) -> None:
    from stacklock.errors import ExitCode

    clean = gather(lab_node(), packages=LAB_PACKAGES, pip_packages=LAB_PIP)
    assert _verdict(clean).exit_code == ExitCode.OK  # the baseline is clean
    node = lab_node()
    cause(node)
    report = _verdict(gather(node, packages=LAB_PACKAGES, pip_packages=LAB_PIP))
    assert report.exit_code == ExitCode.FAILED, report.problems()
    assert not report.deviations, [c.describe() for c in report.deviations]
    assert report.unverified and all("could not look" in c.detail for c in report.unverified)


@pytest.mark.parametrize(("registered", "words"), [
    ({"unreachable": True, "msg": "Failed to connect to the host via ssh: deploy@10.213.1.2: "
      "Permission denied (publickey)."}, "Permission denied (publickey)"),
    ({"failed": True, "msg": "MODULE FAILURE\nSee stdout/stderr for the exact error"},
     "the facts module failed: MODULE FAILURE"),
    ({"unreachable": True, "msg": "Failed to connect to the host via ssh: Connection timed out"},
     "Connection timed out"),
], ids=["authentication-refused", "module-crash", "ssh-timeout"])
def test_host_level_causes_are_exit_3(registered: dict[str, Any], words: str) -> None:
    from stacklock.errors import ExitCode

    report = _verdict(_plugin_facts_of(registered))
    assert report.exit_code == ExitCode.FAILED
    assert not report.deviations
    assert words in report.unreachable_nodes[0].error


def test_stale_cached_facts_are_exit_3() -> None:
    from stacklock.errors import ExitCode

    facts = gather(lab_node(), packages=LAB_PACKAGES, pip_packages=LAB_PIP, run_id="111")
    assert facts["run_id"] == "111"
    assert _verdict(facts, run_id="111").exit_code == ExitCode.OK
    stale = _verdict(facts, run_id="222")
    assert stale.exit_code == ExitCode.FAILED and "stale facts" in stale.problems()[0]


def test_a_value_read_and_different_is_exit_1() -> None:
    from stacklock.errors import ExitCode

    node = lab_node()
    node.files["/etc/torchserve/config.properties"] = "job_queue_size=1\n"
    report = _verdict(gather(node, packages=LAB_PACKAGES, pip_packages=LAB_PIP))
    assert report.exit_code == ExitCode.DEVIATION
    assert [c.component for c in report.deviations] == ["torchserve.config_sha256"]


def test_the_venv_reports_every_distribution_and_what_the_lock_does_not_name() -> None:
    node = lab_node()
    data = json.loads(node.commands["python -I"][1])
    data["distributions"] = {"filelock": "4.3.1", "numpy": "2.3.5", "pyyaml": "6.0.3",
                             "requests": "2.32.5", "torch": "2.13.0+cpu", "torchserve": "0.12.0",
                             "torch-model-archiver": "0.12.0"}
    node.commands["python -I"] = (0, json.dumps(data) + "\n", "")
    facts = gather(node, pip_packages=["filelock", "numpy", "pyyaml"])
    venv = facts["torchserve"]["venv"]
    assert venv["distributions"]["requests"] == "2.32.5"
    assert venv["unlocked"] == {"requests": "2.32.5"}


# --------------------------------------------------------------------------- inventory: true


def test_inventory_lists_every_installed_package_with_its_architecture() -> None:
    rows = "".join(f"{n}\t{v}\t{s}\t{'all' if n.startswith('openjdk') else 'amd64'}\n"
                   for n, v, s in LAB_DPKG)
    rows += "libc6\t2.36-9+deb12u13\tii \ti386\nlibc6\t2.36-9+deb12u13\tii \tamd64\n"
    node = lab_node()
    node.commands["dpkg-query -W"] = (0, rows, "")
    facts = gather(node, packages=LAB_PACKAGES, inventory=True)
    inv = facts["os_packages"]
    installed = [n for n, v, s in LAB_DPKG if s[1] == "i"]
    assert sorted({e["name"] for e in inv}) == sorted({*installed, "libc6"})
    assert [e for e in inv if e["name"] == "libc6"] == [
        {"name": "libc6", "version": "2.36-9+deb12u13", "architecture": "amd64",
         "status": "installed"},
        {"name": "libc6", "version": "2.36-9+deb12u13", "architecture": "i386",
         "status": "installed"}]
    assert not any(e["name"] == "docker-ce" for e in inv)  # known to dpkg, not installed
    assert facts["packages"]["docker.io"] == {"version": "20.10.24+dfsg1-1+deb12u1+b6",
                                              "status": "installed", "held": True}


def test_no_inventory_unless_asked_and_null_when_dpkg_failed() -> None:
    assert "os_packages" not in gather(lab_node(), packages=LAB_PACKAGES)
    node = lab_node()
    node.commands["dpkg-query -W"] = CannotLook("dpkg-query -W: timed out after 5 s")
    facts = gather(node, packages=LAB_PACKAGES, inventory=True)
    assert facts["os_packages"] is None and "packages" in facts["blocked"]
