"""The runtime class on recorded output (a lab node, Debian 12, TorchServe serving): systemctl
show, /proc texts, docker info, NVIDIA module parameters; and the comparison (core/runtime.py)
of each real change the integration tests make, on the recorded facts."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from fakenode import FakeSystem  # loads the facts module and its module_utils

from ansible.module_utils.stacklock_facts import (  # isort: skip
    commands as commandsmod,
    docker as dockermod,
    gpu as gpumod,
    process as processmod,
    systemd as systemdmod,
)
from stacklock.core import parity, runtime

REPO = Path(__file__).resolve().parents[3]
REC = REPO / "tests" / "fixtures" / "facts" / "runtime"
UNITS = ["torchserve", "docker", "containerd", "nvidia-persistenced"]
PID, CHILD = 5604, 5606


def text(name: str) -> str:
    return (REC / name).read_bytes().decode()


def node(**overrides: Any) -> FakeSystem:
    files: dict[str, str | bytes] = {
        "/proc/stat": text("proc-stat.txt"),
        f"/proc/{PID}/status": text("proc-status.txt"),
        f"/proc/{PID}/stat": text("proc-stat-pid.txt"),
        f"/proc/{PID}/environ": text("proc-environ.bin"),
        f"/proc/{PID}/cmdline": text("proc-cmdline.bin"),
        f"/proc/{PID}/task/{PID}/children": f"{CHILD} ",
        f"/proc/{CHILD}/status": text("proc-status.txt"),
        f"/proc/{CHILD}/stat": text("proc-stat-pid.txt").replace(f"{PID} (torchserve)",
                                                                  f"{CHILD} (java)"),
        f"/proc/{CHILD}/environ": text("proc-environ.bin"),
        f"/proc/{CHILD}/cmdline": "java\0-cp\0x\0org.pytorch.serve.ModelServer\0",
        "/etc/passwd": "root:x:0:0::/root:/bin/bash\ntorchserve:x:999:997::/var/lib/torchserve:"
                       "/usr/sbin/nologin\n",
        "/etc/group": "root:x:0:\ntorchserve:x:997:\n",
        "/etc/torchserve/config.properties": "x=1\n",
        "/etc/systemd/system/torchserve.service": "[Service]\n",
        "/lib/systemd/system/docker.service": "[Service]\n",
        "/lib/systemd/system/containerd.service": "[Service]\n",
        "/lib/systemd/system/nvidia-persistenced.service": "[Service]\n",
        "/etc/alternatives/java": "",
        "/usr/bin/java": "",
        "/usr/bin/docker": "",
        "/usr/bin/nvidia-ctk": "",
        "/usr/bin/nvidia-container-runtime": "",
        "/opt/torchserve/venv/bin/python": "",
    }
    root_status = text("proc-status.txt").replace("999\t999\t999\t999", "0\t0\t0\t0") \
        .replace("997\t997\t997\t997", "0\t0\t0\t0")
    for pid, exe in ((4195, "/usr/sbin/dockerd"), (4034, "/usr/bin/containerd")):
        files.update({f"/proc/{pid}/status": root_status,
                      f"/proc/{pid}/stat": text("proc-stat-pid.txt"),
                      f"/proc/{pid}/environ": "LANG=C.UTF-8\0PATH=/usr/bin:/bin\0"
                                              "NOTIFY_SOCKET=/run/systemd/notify\0",
                      f"/proc/{pid}/cmdline": exe + "\0"})
    files.update(overrides.pop("files", {}))
    commands = {
        "systemctl show": (0, overrides.pop("show", text("systemctl-show.txt")), ""),
        "systemctl show-environment": (0, overrides.pop(
            "manager", "LANG=C.UTF-8\nPATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
                       "/sbin:/bin\n"), ""),
        "docker info": (0, overrides.pop("info", text("docker-info.json")), ""),
        "update-alternatives --query": (0, "Name: java\nLink: /usr/bin/java\nStatus: auto\n"
                                           "Value: /usr/lib/jvm/java-17-openjdk-amd64/bin/java\n",
                                        ""),
    }
    links = {f"/proc/{PID}/exe": "/usr/bin/python3.11", "/proc/4195/exe": "/usr/sbin/dockerd",
             "/proc/4034/exe": "/usr/bin/containerd",
             f"/proc/{CHILD}/exe": "/usr/lib/jvm/java-17-openjdk-amd64/bin/java",
             "/usr/bin/java": "/usr/lib/jvm/java-17-openjdk-amd64/bin/java",
             "/etc/alternatives/java": "/usr/lib/jvm/java-17-openjdk-amd64/bin/java",
             "/opt/torchserve/venv/bin/python": "/usr/bin/python3.11"}
    links.update(overrides.pop("links", {}))
    sy = FakeSystem(commands=commands, files=files,
                    executables={"systemctl": "/usr/bin/systemctl", "docker": "/usr/bin/docker",
                                 "update-alternatives": "/usr/bin/update-alternatives"},
                    uname={"kernel": "6.1", "architecture": "x86_64", "hostname": "n"},
                    python={"version": "3.11.2", "executable": "/usr/bin/python3"}, links=links)
    # the unit files and the config predate the process (started at btime + 86904 ticks)
    sy.meta = {p: {"mtime": 1796585323 * 10**9} for p in files}  # type: ignore[attr-defined]
    sy.meta.update(overrides.pop("meta", {}))  # type: ignore[attr-defined]
    assert not overrides
    return sy


def facts_of(sy: FakeSystem) -> dict[str, Any]:
    units = systemdmod.probe_units(sy, UNITS)
    out: dict[str, Any] = {"os": {"architecture": "x86_64"}, **units}
    out["processes"] = processmod.probe_processes(
        sy, units["units"], ["torchserve=/etc/torchserve/config.properties",
                             "docker=/etc/docker/daemon.json"])
    out["commands"] = commandsmod.probe_commands(sy, runtime.commands_option(), units["units"])
    out["docker"] = dockermod.probe_docker(sy, None)
    return out


GV: dict[str, Any] = {
    "torchserve_version": "0.12.0", "torchserve_models": [{"name": "tiny-linear",
                                                           "file": "tiny-linear.mar"}],
    "torchserve_config": {"load_models": "tiny-linear=tiny-linear.mar"},
    "docker_version": "20.10.24", "docker_packages": [{"name": "docker.io", "version": "x"}],
    "nvidia_container_toolkit_version": "1.17.8",
}


def findings(facts: dict[str, Any], gv: dict[str, Any] | None = None,
             **kw: Any) -> dict[str, parity.Check]:
    full = {"schema": parity.FACTS_SCHEMA, **facts}
    rep = parity.compare({"dev": runtime.expected_from_vars(gv or GV)}, {"dev": {"n1": full}},
                         **kw)
    return {c.component: c for c in rep.checks
            if c.status is not parity.Status.MATCH and c.component.startswith(
                (*runtime.PREFIXES, "waiver."))}


# --------------------------------------------------------------------------- recorded output


def test_systemctl_show_of_the_four_units() -> None:
    units = systemdmod.probe_units(node(), UNITS)["units"]
    ts = units["torchserve"]
    assert ts["user"] == "torchserve" and ts["group"] == "torchserve"
    assert ts["exec_start"] == [runtime.torchserve_exec_start(GV).split(" ")]
    assert ts["environment"] == runtime.torchserve_environment(GV)
    assert ts["main_pid"] == PID and ts["drop_ins"] == [] and ts["need_daemon_reload"] is False
    assert units["docker"]["environment_files"] == ["-/etc/default/docker"]
    assert units["docker"]["user"] == "root"
    # the run-time fields of ExecStart (start_time, pid) are not part of the setting
    assert units["docker"]["exec_start"] == [["/usr/sbin/dockerd", "-H", "fd://",
                                              "--containerd=/run/containerd/containerd.sock",
                                              "$DOCKER_OPTS"]]
    assert units["nvidia-persistenced"]["main_pid"] == 0


def test_proc_texts() -> None:
    status = processmod.parse_status(text("proc-status.txt"))
    assert status == {"uid": 999, "gid": 997}
    env = processmod.parse_environ(text("proc-environ.bin"))
    assert env["LOG_LOCATION"] == "/var/log/torchserve"
    assert "INVOCATION_ID" in env and env["INVOCATION_ID"] is None  # a name, not its value
    started = processmod.start_time(text("proc-stat-pid.txt"), text("proc-stat.txt"))
    assert started == pytest.approx(1796585323 + 86904 / 100)
    # a command name with blanks and parentheses does not shift the fields
    odd = text("proc-stat-pid.txt").replace("(torchserve)", "(a) b (c)")
    assert processmod.start_time(odd, text("proc-stat.txt")) == started


def test_exe_unreadable_for_root_is_read_as_the_process_user() -> None:
    sy = node()

    def denied(path: str) -> str:
        if path.endswith("/exe"):
            raise PermissionError(13, "Permission denied", path)
        return sy.links.get(path, path)

    sy.realpath = denied  # type: ignore[method-assign]
    sy.executables["setpriv"] = "/usr/bin/setpriv"
    sy.commands["setpriv --reuid=999"] = (0, "/usr/bin/python3.11\n", "")
    assert processmod.read_exe(sy, PID, {"uid": 999, "gid": 997}) == "/usr/bin/python3.11"
    del sy.commands["setpriv --reuid=999"]
    with pytest.raises(processmod.CannotLook):
        processmod.read_exe(sy, PID, {"uid": 999, "gid": 997})


def test_docker_info_runtimes() -> None:
    out = dockermod.probe_docker(node(), None)
    assert out["runtime_paths"]["nvidia"] == "nvidia-container-runtime"
    assert out["runtime_paths"]["runc"] == "runc"
    assert out["default_runtime"] == "runc"


def test_nvidia_params_from_proc() -> None:
    params = gpumod.parse_params("ResmanDebugLevel: 4294967295\nEnableMSI: 1\n"
                                 "RegistryDwords: \"\"\n")
    assert params == {"ResmanDebugLevel": "4294967295", "EnableMSI": "1", "RegistryDwords": '""'}
    sy = node(files={"/proc/driver/nvidia/params": "EnableMSI: 1\n"})
    assert gpumod.probe_params(sy) == {"EnableMSI": "1"}
    assert gpumod.probe_params(node()) is None  # not loaded


# --------------------------------------------------------------------------- the comparison


def test_the_recorded_node_is_clean() -> None:
    assert findings(facts_of(node())) == {}


def test_a_drop_in_with_environment() -> None:
    show = text("systemctl-show.txt").replace(
        "DropInPaths=\n", "DropInPaths=/etc/systemd/system/torchserve.service.d/zz.conf\n", 1)
    show = show.replace("TEMP=/var/lib/torchserve/tmp", "TEMP=/var/lib/torchserve/tmp FOO=bar",
                        1)
    got = findings(facts_of(node(show=show, files={
        "/etc/systemd/system/torchserve.service.d/zz.conf": "[Service]\n"})))
    assert got["unit.torchserve.drop_in./etc/systemd/system/torchserve.service.d/zz.conf"] \
        .actual == "present"
    assert got["unit.torchserve.environment.FOO"].expected == "absent"
    assert "waive it" in got[
        "unit.torchserve.drop_in./etc/systemd/system/torchserve.service.d/zz.conf"].detail


def test_a_drop_in_changing_user_and_exec_start() -> None:
    show = text("systemctl-show.txt").replace("User=torchserve", "User=root", 1)
    show = show.replace("--ncs --ts-config", "--ncs --foo --ts-config", 1)
    got = findings(facts_of(node(show=show)))
    assert got["unit.torchserve.user"].actual == "root"
    assert "--foo" in str(got["unit.torchserve.exec_start"].actual)


def test_need_daemon_reload() -> None:
    show = text("systemctl-show.txt").replace("NeedDaemonReload=no", "NeedDaemonReload=yes", 2)
    got = findings(facts_of(node(show=show)))
    assert "not reloaded" in str(got["unit.torchserve.daemon_reload"].actual)
    assert "not reloaded" in str(got["unit.docker.daemon_reload"].actual)


def test_set_environment_and_ld_preload() -> None:
    environ = text("proc-environ.bin") + "LD_PRELOAD=/tmp/evil.so\0"
    got = findings(facts_of(node(manager="LANG=C.UTF-8\nLD_PRELOAD=/tmp/evil.so\n",
                                 files={f"/proc/{PID}/environ": environ})))
    assert got["systemd.environment.LD_PRELOAD"].actual == "/tmp/evil.so"
    assert got["process.torchserve.environment.LD_PRELOAD"].actual == "/tmp/evil.so"
    assert "process.torchserve.java.environment.LD_PRELOAD" not in got  # the child's is clean


def test_an_unknown_variable_is_named_without_its_value() -> None:
    environ = text("proc-environ.bin") + "API_TOKEN=secret\0"
    got = findings(facts_of(node(files={f"/proc/{PID}/environ": environ})))
    assert "secret" not in str(got["process.torchserve.environment.API_TOKEN"].actual)


def test_running_older_settings() -> None:
    later = (1796585323 + 86904 // 100 + 60) * 10**9
    got = findings(facts_of(node(meta={"/etc/torchserve/config.properties": {"mtime": later}})))
    assert "running older settings" in str(got["unit.torchserve.settings"].actual)
    assert "/etc/torchserve/config.properties" in str(got["unit.torchserve.settings"].actual)


def test_key_rotation_is_not_drift() -> None:
    """TorchServe rewrites key_file.json every 60 min: nothing of the runtime class reads it."""
    later = (1796585323 + 86904 // 100 + 3600) * 10**9
    sy = node(files={"/var/lib/torchserve/key_file.json": "{}"},
              meta={"/var/lib/torchserve/key_file.json": {"mtime": later}})
    assert findings(facts_of(sy)) == {}


def test_docker_runtimes_changed() -> None:
    info = json.loads(text("docker-info.json"))
    info["Runtimes"].pop("nvidia")
    info["Runtimes"]["evil"] = {"path": "/usr/local/bin/evil"}
    info["DefaultRuntime"] = "evil"
    got = findings(facts_of(node(info=json.dumps(info))))
    assert got["docker.runtime.nvidia"].actual is None
    assert got["docker.runtime.evil"].actual == "/usr/local/bin/evil"
    assert got["docker.runtime.default"].actual == "evil"


def test_a_command_shadowed_or_through_another_alternative() -> None:
    got = findings(facts_of(node(files={"/usr/local/bin/java": ""})))
    assert got["command.java.path"].actual == "/usr/local/bin/java"
    links = {"/usr/bin/java": "/opt/other/bin/java", "/etc/alternatives/java": "/opt/other/bin/java"}
    got = findings(facts_of(node(links=links)))
    assert got["command.java.target"].actual == "/opt/other/bin/java"


def test_node_arch_and_facts_without_the_runtime_class() -> None:
    exp = runtime.expected_from_vars(GV)
    assert exp["command.java.target"].endswith("-{arch}/bin/java")
    node_exp = runtime.node_expected(exp, {"os.architecture": "aarch64"})
    assert node_exp["command.java.target"] == "/usr/lib/jvm/java-17-openjdk-arm64/bin/java"
    assert not any(c.startswith(runtime.PREFIXES)
                   for c in runtime.node_expected(exp, {}, asked=False))


def test_role_defaults_match_the_roles() -> None:
    defaults: dict[str, Any] = {}
    for role in ("torchserve", "docker"):
        defaults.update(yaml.safe_load(
            (REPO / "ansible" / "roles" / role / "defaults" / "main.yml").read_text()))
    for key, value in runtime.ROLE_DEFAULTS.items():
        assert str(defaults[key]) == str(value), key


def test_the_play_and_fast_give_the_module_the_same_runtime_options() -> None:
    from stacklock.flows import fastverify

    play = yaml.safe_load((REPO / "ansible/playbooks/verify.yml").read_text())
    task = next(t for t in play[0]["tasks"] if "stacklock_stack_facts" in t)
    opts = task["stacklock_stack_facts"]
    assert opts["commands"] == runtime.commands_option()
    assert str(runtime.units_option()) in opts["units"]
    args = fastverify.task_args({}, "1", False)
    assert args["units"] == runtime.units_option()
    assert args["watch_files"] == runtime.watch_option({})
    assert all(w.split("=", 1)[1] in opts["watch_files"] for w in runtime.WATCH)


def test_unit_template_matches_the_expectation() -> None:
    text_ = (REPO / "ansible/roles/torchserve/templates/torchserve.service.j2").read_text()
    for name in runtime.torchserve_environment(GV):
        assert f"Environment={name}=" in text_
    assert "ExecStart={{ torchserve_venv }}/bin/torchserve --start --foreground --ncs" in text_


def test_copy_is_not_shared() -> None:
    f = facts_of(node())
    g = copy.deepcopy(f)
    assert findings(f) == findings(g) == {}


def test_the_expectation_sees_every_group_var_the_unit_template_reads() -> None:
    """The play and --fast hand the comparison only parity.GROUP_VAR_KEYS of a host's vars:
    the unit's ExecStart depends on torchserve_config (load_models), so it must be among them
    (a lab node once showed `--models` expected and absent on a clean node)."""
    from stacklock.core import parity, runtime

    gv_all = {"torchserve_models": [{"name": "tiny-linear", "file": "tiny-linear.mar"}],
              "torchserve_config": {"load_models": "tiny-linear=tiny-linear.mar"},
              "torchserve_version": "0.12.0", "unrelated": 1}
    handed = {k: v for k, v in gv_all.items() if k in parity.GROUP_VAR_KEYS}
    assert "--models" not in runtime.torchserve_exec_start(handed)
    assert runtime.torchserve_exec_start(handed) == runtime.torchserve_exec_start(gv_all)


def test_docker_role_restarts_on_the_names_verify_calls_foreign() -> None:
    """The docker role restarts a daemon whose environment holds a name systemd does not set
    (ansible/roles/docker/vars/main.yml `_docker_process_names`): the same names verify leaves
    alone (SYSTEMD_NAMES, VOLATILE), so that a repaired node verifies clean."""
    import re

    text = (REPO / "ansible/roles/docker/vars/main.yml").read_text()
    names = re.compile(str(yaml.safe_load(text)["_docker_process_names"]))
    for name in (*runtime.SYSTEMD_NAMES, "INVOCATION_ID", "MONITOR_SERVICE_RESULT",
                 "LISTEN_FDNAMES", "container"):
        assert names.match(name), name
        assert name in runtime.SYSTEMD_NAMES or runtime.VOLATILE.match(name), name
    for name in ("LD_PRELOAD", "FOO", "HTTP_PROXY", "LANGX"):
        assert not names.match(name), name
    # every alternative of the role's pattern is one verify leaves alone
    for alt in names.pattern.strip("^()$").split("|"):
        probe = alt.replace("[A-Z_]+", "X")
        assert probe in runtime.SYSTEMD_NAMES | {"LANGUAGE"} or runtime.VOLATILE.match(probe), alt
