"""`verify --fast` without nodes: inventory vars -> connection options and facts module options
(checked against Ansible's own templating of verify.yml), the remote result -> facts or the
reason a node could not be queried (and that the comparison gives those the play's status),
and refused inventories (exit 2, naming the variable). The fast path against the real lab, side
by side with the play, is in the lab's end-to-end test."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import asyncssh
import pytest
import yaml

from stacklock.adapters import fastssh
from stacklock.adapters.fastssh import Jump, Target
from stacklock.core import parity
from stacklock.core.parity import Status, Unreachable
from stacklock.errors import ExitCode, InvalidInput, StacklockError, ToolFailed
from stacklock.flows import fastverify

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
MODULE = ROOT / "ansible" / "library" / "stacklock_stack_facts.py"
LAB_GROUP_VARS = ROOT / "examples/lab/inventories/dev/group_vars/dev/stacklock.yml"
STRICT = '-o StrictHostKeyChecking=yes -o UserKnownHostsFile="{{ inventory_dir }}/known_hosts"'


def write_inventory(root: Path, env: str = "dev", *, hosts: dict[str, Any] | None = None,
                    group: dict[str, Any] | None = None,
                    group_vars: dict[str, Any] | None = None) -> Path:
    """An inventory folder laid out as `stacklock apply` writes it."""
    inv = root / "inventories" / env
    (inv / "group_vars" / env).mkdir(parents=True)
    doc = {"all": {"children": {env: {
        "hosts": hosts if hosts is not None else {
            f"{env}-1": {"ansible_host": "10.0.0.2", "ansible_port": 22, "ansible_user": "root"}},
        "vars": {"ansible_ssh_common_args": STRICT,
                 "ansible_ssh_private_key_file": "{{ inventory_dir }}/../../.stacklock/ssh/id",
                 "ansible_python_interpreter": "/usr/bin/python3", **(group or {})}}}}}
    (inv / "hosts.yml").write_text("---\n" + yaml.safe_dump(doc))
    gv = yaml.safe_load(LAB_GROUP_VARS.read_text()) | (group_vars or {})
    (inv / "group_vars" / env / "stacklock.yml").write_text(yaml.safe_dump(gv))
    (inv / "known_hosts").write_text("")
    return inv


def target(hv: dict[str, Any], inv: Path = Path("/inv/dev")) -> Target:
    base = {"ansible_host": "10.0.0.2", "ansible_port": 22, "ansible_user": "root",
            "ansible_ssh_common_args": STRICT.replace("{{ inventory_dir }}", str(inv))}
    return fastssh.target_from_vars("dev", "dev-1", base | hv, inv)


# --------------------------------------------------------------------------- inventory -> target


def test_a_rendered_inventory_maps_to_its_connection(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path, hosts={"dev-1": {"ansible_host": "10.213.1.2",
                                                     "ansible_port": 2222,
                                                     "ansible_user": "root"}})
    [(name, hv)] = fastverify.read_inventory(inv, "dev")
    t = fastssh.target_from_vars("dev", name, hv, inv)
    assert (t.name, t.address, t.port, t.user) == ("dev-1", "10.213.1.2", 2222, "root")
    assert t.known_hosts == inv / "known_hosts"  # {{ inventory_dir }} resolved
    assert t.key_file == inv / "../../.stacklock/ssh/id"
    assert t.python == "/usr/bin/python3" and t.jump is None
    assert not t.become and not t.command(t.python).startswith("sudo")


def test_inventory_precedence_group_vars_files_then_host_vars(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path, group={"torchserve_venv": "/from/hosts-yml"},
                          group_vars={"torchserve_venv": "/from/group_vars"},
                          hosts={"dev-1": {"ansible_host": "10.0.0.2"},
                                 "dev-2": {"ansible_host": "10.0.0.3",
                                           "torchserve_venv": "/from/host"}})
    (inv / "host_vars").mkdir()
    (inv / "host_vars" / "dev-1.yml").write_text("stacklock_verify_probe_timeout: 5\n")
    hosts = fastverify.read_inventory(inv, "dev")
    assert [h for h, _ in hosts] == ["dev-1", "dev-2"]  # inventory order
    one, two = hosts[0][1], hosts[1][1]
    assert one["torchserve_venv"] == "/from/group_vars"  # group_vars/ beat hosts.yml's vars
    assert two["torchserve_venv"] == "/from/host"  # a host's own vars beat both
    assert one["stacklock_verify_probe_timeout"] == 5 and "stacklock_verify_probe_timeout" not in two


@pytest.mark.parametrize(("hv", "become"), [
    ({"ansible_user": "root"}, False),
    ({"ansible_user": "deploy"}, True),
    ({"ansible_user": "deploy", "stacklock_verify_become": False}, False),
    ({"ansible_user": "deploy", "stacklock_verify_become": "no"}, False),
    ({"ansible_user": "root", "stacklock_verify_become": "yes"}, True),
])
def test_become_follows_the_play(hv: dict[str, Any], become: bool) -> None:
    t = target(hv)
    assert t.become is become
    assert t.user == hv["ansible_user"]
    if become:  # never a password: sudo -n, as root, the module through /bin/sh
        assert t.command("/usr/bin/python3").startswith("sudo -H -n -u root /bin/sh -c ")
    else:
        assert t.command("/usr/bin/python3").startswith("/usr/bin/python3 -c ")


def test_the_play_and_the_fast_path_decide_become_alike() -> None:
    """The play's own `become:` expression, evaluated by Ansible, for the same vars."""
    from ansible.parsing.dataloader import DataLoader
    from ansible.plugins.loader import init_plugin_loader
    from ansible.template import Templar

    init_plugin_loader()  # the play's `lookup('ansible.builtin.env', 'USER')`
    play = yaml.safe_load((ROOT / "ansible/playbooks/verify.yml").read_text())
    task = next(t for t in play[0]["tasks"] if "stacklock_stack_facts" in t)
    cases: list[dict[str, Any]] = [
        {"ansible_user": "root"}, {"ansible_user": "ubuntu"}, {},
        {"ansible_user": "deploy", "stacklock_verify_become": False},
        {"ansible_user": "root", "stacklock_verify_become": True},
        {"ansible_user": "deploy", "stacklock_verify_become": "false"},
    ]
    for hv in cases:
        want = Templar(loader=DataLoader(), variables=dict(hv)).template(_trusted(task["become"]))
        base = {"ansible_host": "10.0.0.2", "ansible_ssh_common_args": ""}
        got = fastssh.target_from_vars("dev", "dev-1", base | hv, Path("/inv")).become
        assert got is fastssh.ansible_bool(want), hv


def test_a_jump_host_is_taken_from_stacklock_proxy_jump() -> None:
    from stacklock.core.hostkeys import ssh_args

    t = target({"ansible_ssh_common_args": ssh_args("/inv/dev/known_hosts", "ops@bastion:2222"),
                "stacklock_proxy_jump": "ops@bastion:2222"})
    assert t.jump == Jump("ops", "bastion", 2222)
    assert t.known_hosts == Path("/inv/dev/known_hosts")


@pytest.mark.parametrize(("hv", "field"), [
    ({"ansible_connection": "community.aws.aws_ssm"}, "ansible_connection"),
    ({"ansible_ssh_pass": "hunter2"}, "ansible_ssh_pass"),
    ({"ansible_become_password": "hunter2"}, "ansible_become_password"),
    ({"ansible_become_method": "su"}, "ansible_become_method"),
    ({"ansible_ssh_common_args": "-o StrictHostKeyChecking=no"}, "ansible_ssh_common_args"),
    ({"ansible_ssh_common_args": "-o ForwardAgent=yes"}, "ansible_ssh_common_args"),
    ({"ansible_ssh_common_args": "-o ProxyCommand='ssh -W %h:%p b'"}, "ansible_ssh_common_args"),
    ({"ansible_ssh_common_args": "-C"}, "ansible_ssh_common_args"),
    ({"stacklock_proxy_jump": "a@b;rm -rf /"}, "stacklock_proxy_jump"),
    ({"ansible_port": "ssh"}, "ansible_port"),
])
def test_what_the_fast_path_cannot_do_alike_is_refused_naming_the_variable(
    hv: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidInput) as exc:
        target(hv)
    assert exc.value.exit_code == ExitCode.INVALID
    [problem] = exc.value.problems
    assert problem.path.endswith(field) and "dev-1" in problem.path
    assert problem.hint  # what to do instead
    assert "hunter2" not in str(exc.value) + problem.render()  # a secret is never echoed


def test_a_template_the_fast_path_cannot_evaluate_is_refused_before_any_connection(
    tmp_path: Path
) -> None:
    inv = write_inventory(tmp_path, hosts={"dev-1": {
        "ansible_host": "10.0.0.2", "ansible_user": "{{ lookup('env', 'DEPLOY_USER') }}"}})
    with pytest.raises(InvalidInput) as exc:
        fastverify.collect([inv], ["dev"], report_path=tmp_path / "r.json", quiet=True)
    assert exc.value.problems[0].path.endswith("host dev-1: ansible_user")
    assert "without --fast" in exc.value.problems[0].hint
    assert not (tmp_path / "r.json").exists()


def test_an_environment_missing_from_the_inventory_is_invalid_input(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path)
    with pytest.raises(InvalidInput, match="has no group prod"):
        fastverify.read_inventory(inv, "prod")
    with pytest.raises(InvalidInput, match="not provisioned yet") as exc:
        fastverify.read_inventory(tmp_path / "nowhere", "staging")
    assert exc.value.problems[0].hint == "run: stacklock apply staging"


# --------------------------------------------------------------------------- module options


def _trusted(value: Any) -> Any:
    try:  # ansible-core 2.19: only trusted strings are templates
        from ansible.template import trust_as_template
    except ImportError:  # pragma: no cover - older ansible-core
        return value
    if isinstance(value, str):
        return trust_as_template(value)
    if isinstance(value, dict):
        return {k: _trusted(v) for k, v in value.items()}
    return value


def play_task_args(hv: dict[str, Any], run_id: str, deep: bool) -> dict[str, Any]:
    """The facts task's arguments as Ansible templates them from verify.yml."""
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar

    play = yaml.safe_load((ROOT / "ansible/playbooks/verify.yml").read_text())
    task = next(t for t in play[0]["tasks"] if "stacklock_stack_facts" in t)
    variables = dict(hv, __stacklock_verify_run=run_id, stacklock_verify_deep=deep)
    out = Templar(loader=DataLoader(), variables=variables).template(
        _trusted(task["stacklock_stack_facts"]))
    return {k: v for k, v in out.items() if "__omit_place_holder__" not in str(v)}


@pytest.mark.parametrize("change", [
    {},
    {"torchserve_venv": "/srv/venv", "torchserve_key_file": "/etc/ts/keys.json",
     "stacklock_verify_probe_timeout": 7},
    {"torchserve_config": {"management_address": "http://127.0.0.1:9081",
                           "model_store": "/srv/models"}},
    {"torchserve_state_dir": "/srv/ts"},
    {"torchserve_models": [
        {"name": "a", "file": "a.mar", "version": "1", "sha256": "0" * 64},
        {"name": "b", "version": "2", "sha256": "1" * 64, "src": "/m/b.mar",
         "smoke": {"input_base64": "WzEuMF0=", "expected": [3.0], "tolerance": 1e-6}}]},
    # the serving endpoint (role serving_endpoint): its packages and its probe
    {"serving_endpoint_enabled": True, "serving_endpoint_port": 8443,
     "serving_endpoint_health_check_path": "/healthz",
     "serving_endpoint_packages": [{"name": "nginx", "version": "1.22.1-9+deb12u12"}]},
])
def test_module_options_are_the_ones_the_play_gives(change: dict[str, Any]) -> None:
    hv = yaml.safe_load(LAB_GROUP_VARS.read_text()) | change
    if "torchserve_config" in change:
        hv.pop("torchserve_model_store")
    options = fastverify.play_options((ROOT / "ansible/playbooks/verify.yml").read_text())
    for deep in (False, True):
        want = json.loads(json.dumps(play_task_args(hv, "01234567890123456789", deep)))
        got = fastverify.play_args(fastverify.task_args(hv, "01234567890123456789", deep),
                                   options)
        assert set(got) == set(want)
        for key, value in want.items():
            assert str(got[key]) == str(value), key
        spec = fastverify.module_spec(MODULE.read_text())
        a, _ = fastverify.module_opts(got, spec)
        b, _ = fastverify.module_opts(want, spec)
        assert a == b


def test_the_play_omits_what_is_not_set_and_the_module_defaults_fill_it() -> None:
    hv = {"docker_packages": [{"name": "docker.io", "version": "1"}]}
    want = play_task_args(hv, "1", False)
    options = fastverify.play_options((ROOT / "ansible/playbooks/verify.yml").read_text())
    got = fastverify.play_args(fastverify.task_args(hv, "1", False), options)
    assert set(got) == set(want) and "torchserve_venv" not in got
    spec = fastverify.module_spec(MODULE.read_text())
    opts, paths = fastverify.module_opts(got, spec)
    assert opts["torchserve_venv"] == "/opt/torchserve/venv"  # AnsibleModule's default
    assert opts["probe_timeout"] == 20.0 and opts["use_nvml"] is True
    assert opts["archive_hash_timeout"] == 300.0 and opts["inventory"] is False
    assert opts["packages"] == ["docker.io"] and opts["_check_mode"] is False
    assert "torchserve_venv" in paths and "torchserve_management_url" not in paths


def test_an_option_the_play_passes_and_the_fast_path_does_not_compute_stops_it() -> None:
    args = fastverify.task_args({}, "1", False)
    play = {"packages": "{{ x }}", "run_id": "{{ y }}", "later": "{{ z | default(omit) }}"}
    assert fastverify.play_args(args, play) == {"packages": [], "run_id": "1"}
    with pytest.raises(ToolFailed, match="option\\(s\\) new_probe that verify --fast does not"):
        fastverify.play_args(args, {"packages": "{{ x }}", "new_probe": "{{ z }}"})


def test_module_spec_is_the_modules_own() -> None:
    spec = fastverify.module_spec(MODULE.read_text())
    assert {"packages", "probe_timeout", "run_id", "deep", "archive_cache"} <= set(spec)
    assert spec["probe_timeout"]["type"] == "float"
    with pytest.raises(ToolFailed, match="argument_spec"):
        fastverify.module_spec("def main():\n    pass\n")
    with pytest.raises(ToolFailed, match="no option"):
        fastverify.module_opts({"nonsense": 1}, spec)


def test_an_option_the_module_refuses_fails_that_node_as_in_the_play() -> None:
    spec = fastverify.module_spec(MODULE.read_text())
    with pytest.raises(fastverify.OptionError) as exc:
        fastverify.module_opts({"probe_timeout": "soon"}, spec)
    assert str(exc.value).startswith("argument 'probe_timeout' is of type str and we were "
                                     "unable to convert to float")


def test_run_ids_are_fresh_20_digits() -> None:
    ids = {fastverify.new_run_id() for _ in range(20)}
    assert len(ids) == 20 and all(len(i) == 20 and i.isdigit() for i in ids)


# --------------------------------------------------------------------------- result -> facts


T = Target("dev", "dev-1", "10.0.0.2", 22, "root", Path("/inv/dev/known_hosts"),
           python="/usr/bin/python3")
DEPLOY = Target("prod", "gpu-1", "10.0.0.9", 2222, "deploy", Path("/inv/prod/known_hosts"),
                become=True, jump=Jump("ops", "bastion", 22))


def facts(**extra: Any) -> dict[str, Any]:
    return {"schema": parity.FACTS_SCHEMA, "run_id": "7", **extra}


def test_the_module_output_becomes_the_facts() -> None:
    out = json.dumps({"stacklock_stack": facts(os={"distribution": "debian"})})
    assert fastssh.facts_from_output(T, 0, out, "") == facts(os={"distribution": "debian"})


@pytest.mark.parametrize(("target", "status", "stdout", "stderr", "reason"), [
    (T, 0, "not json", "", "the facts module failed: its output holds no facts"),
    (T, 0, json.dumps({"other": 1}), "", "the facts module failed: its output holds no facts"),
    (T, 1, "", "Traceback (most recent call last):\n  File \"x\"\nMemoryError: boom\n",
     "the facts module failed: MemoryError: boom (exit 1)"),
    (T, None, "", "", "the facts module failed: no error output (killed by a signal)"),
    (T, 127, "", "sh: 1: /usr/bin/python3: not found\n",
     "the facts module failed: The module interpreter '/usr/bin/python3' was not found."),
    (DEPLOY, 1, "", "sudo: a password is required\n",
     "the facts module failed: Missing sudo password"),
])
def test_a_failed_module_is_a_node_that_could_not_be_queried(
    target: Target, status: int | None, stdout: str, stderr: str, reason: str
) -> None:
    got = fastssh.facts_from_output(target, status, stdout, stderr)
    assert isinstance(got, Unreachable)
    assert got.error.startswith(reason)


def test_connection_failures_are_worded_like_the_plays() -> None:
    key = fastssh.connect_failure(T, asyncssh.HostKeyNotVerifiable("Host key is not trusted"))
    assert key.error == ("host key of dev-1 (10.0.0.2:22) is not the trusted one (changed or "
                         "not trusted yet): if the host was rebuilt on purpose, run `stacklock "
                         "trust dev` and compare the fingerprint out of band")
    jump = fastssh.connect_failure(DEPLOY, asyncssh.HostKeyNotVerifiable("x"), jump=True)
    assert "jump host of gpu-1 (bastion:22)" in jump.error and "stacklock trust prod" in jump.error
    auth = fastssh.connect_failure(DEPLOY, asyncssh.PermissionDenied("Permission denied"))
    assert auth.error == ("Failed to connect to the host via ssh: deploy@10.0.0.9: Permission "
                          "denied (publickey) (through jump host bastion)")
    beyond = fastssh.connect_failure(DEPLOY, asyncssh.ChannelOpenError(2, "open failed"))
    assert beyond.error.endswith("jump host bastion could not connect to 10.0.0.9 port 2222: "
                                 "open failed")
    refused = fastssh.connect_failure(T, ConnectionRefusedError(111, "Connect call failed"))
    assert refused.error.endswith("connect to host 10.0.0.2 port 22: Connection refused")
    assert "timed out" in fastssh.connect_failure(T, TimeoutError()).error
    lost = fastssh.connect_failure(T, asyncssh.ConnectionLost("Connection lost"))
    assert lost.error.startswith("Failed to connect to the host via ssh: root@10.0.0.2:")


def test_every_failure_gets_the_plays_status_in_the_report() -> None:
    """Unreachable, refused, crashed: the node is unreachable and the verdict exit 3; a value
    the module could not read stays could-not-look; neither is ever a deviation."""
    failures = [
        fastssh.connect_failure(T, asyncssh.HostKeyNotVerifiable("x")),
        fastssh.connect_failure(T, asyncssh.PermissionDenied("x")),
        fastssh.connect_failure(T, ConnectionRefusedError(111, "x")),
        fastssh.facts_from_output(T, 1, "", "ValueError: boom"),
    ]
    expected = {"dev": {"docker.version": "20.10.24"}}
    for failure in failures:
        rep = parity.compare(expected, {"dev": {"dev-1": failure}}, run_id="7")
        assert rep.exit_code == ExitCode.FAILED
        assert {c.status for c in rep.checks} == {Status.UNREACHABLE}
        assert not rep.deviations and rep.unreachable_nodes[0].error == failure.error
    blocked = facts(docker={"version": None, "error": "could not look: timed out"},
                    errors={"docker": "could not look: timed out"},
                    blocked={"docker": "could not look: timed out"})
    out = json.dumps({"stacklock_stack": blocked})
    rep = parity.compare(expected, {"dev": {"dev-1": fastssh.facts_from_output(T, 0, out, "")}},
                         run_id="7")
    assert rep.exit_code == ExitCode.FAILED and rep.unverified and not rep.deviations


def test_a_malformed_known_hosts_is_invalid_input_before_any_connection(tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("10.0.0.2 ssh-ed25519 not-base64!\n")
    bad = Target("dev", "dev-1", "10.0.0.2", 22, "root", known)
    with pytest.raises(StacklockError) as exc:
        fastssh.FanOut().run([(bad, fastssh.Payload(fastssh.Bundle("m.py", ""), {}))])
    assert exc.value.exit_code == ExitCode.INVALID
    assert "stacklock trust" in exc.value.problems[0].hint


# --------------------------------------------------------------------------- the payload


def test_the_bundle_holds_the_module_and_every_module_util_once() -> None:
    bundle = fastverify.read_bundle(ROOT)
    names = bundle.names()
    utils = sorted(p.relative_to(ROOT).as_posix()
                   for p in (ROOT / "ansible" / "module_utils").rglob("*.py")
                   if "__pycache__" not in p.parts)
    assert names == sorted(["stacklock_stack_facts.py", "ansible/__init__.py",
                            "ansible/module_utils/__init__.py", *utils])
    assert "ansible/module_utils/stacklock_facts/collect.py" in names
    assert bundle.module == "stacklock_stack_facts.py"
    assert fastverify.read_bundle(ROOT) == bundle  # the same files, the same bytes
    doc = json.loads(fastssh.Payload(bundle, {"probe_timeout": 1.0}, ["torchserve_venv"]).encode())
    assert doc == {"module": "stacklock_stack_facts.py", "bundle": bundle.data,
                   "opts": {"probe_timeout": 1.0}, "paths": ["torchserve_venv"]}
    assert "gather(o)" in fastssh.BOOTSTRAP and "source" not in doc


def _local_node(env: dict[str, str]) -> fastssh.Runner:
    """This machine as the node: each command through /bin/sh, as sshd runs it."""
    import asyncio

    async def run(command: str, data: bytes | None) -> tuple[int | None, bytes, bytes]:
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", command, env=env, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate(data or b"")
        return proc.returncode, out, err

    return run


def _module_opts(**args: Any) -> tuple[dict[str, Any], list[str]]:
    spec = fastverify.module_spec(MODULE.read_text())
    return fastverify.module_opts(args, spec)


def test_the_payload_runs_the_module_and_its_collectors_where_no_ansible_is_installed(
    tmp_path: Path
) -> None:
    """The real bundle through the real bootstrap on this machine, with an interpreter that
    cannot see any installed package (`python3 -S`): the collectors come from the zip, and the
    interpreter is the first of the fallback list found, as Ansible discovers it."""
    import asyncio
    import shutil

    system_python = shutil.which("python3", path="/usr/bin:/bin")
    if system_python is None:
        pytest.skip("no python3 in /usr/bin")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "used"
    wrapper = bin_dir / "stacklock-test-python"
    wrapper.write_text(f'#!/bin/sh\ntouch {marker}\nexec {system_python} -S "$@"\n')
    wrapper.chmod(0o755)
    (bin_dir / "python3").write_text("#!/bin/sh\nexit 99\n")  # later in the list: never used
    (bin_dir / "python3").chmod(0o755)
    target = Target("dev", "dev-1", "127.0.0.1", 22, "root", tmp_path / "known_hosts",
                    fallback=("python3.99-absent", "stacklock-test-python", "python3"))
    opts, paths = _module_opts(packages=["no-such-package-xyz"], probe_timeout=10, run_id="77",
                               archive_cache="", torchserve_model_store=str(tmp_path / "s"))
    payload = fastssh.Payload(fastverify.read_bundle(ROOT), opts, paths)
    node = _local_node({"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)})
    facts = asyncio.run(fastssh.query(node, target, payload))
    assert isinstance(facts, dict), facts
    assert marker.exists()  # discovery picked the wrapper: the first found
    assert facts["schema"] == parity.FACTS_SCHEMA and facts["run_id"] == "77"
    assert facts["packages"] == {"no-such-package-xyz": {
        "version": None, "status": "not-installed", "held": False}}
    assert facts["python"]["executable"].startswith("/")
    assert facts["torchserve"]["model_store"]["error"] == f"{tmp_path / 's'} not found"


def test_interpreter_discovery_is_ansibles() -> None:
    from ansible import constants as C

    assert tuple(
        C.config.get_config_value("INTERPRETER_PYTHON_FALLBACK")) == fastssh.INTERPRETER_FALLBACK
    assert fastssh.discovery_command(("python3.12", "/usr/bin/python3")) == (
        "echo FOUND; command -v 'python3.12'; command -v '/usr/bin/python3'; echo ENDFOUND")
    found = "FOUND\n/usr/local/bin/python3.12\n/usr/bin/python3\nENDFOUND\n"
    assert fastssh.discovered_interpreter(found) == "/usr/local/bin/python3.12"
    assert fastssh.discovered_interpreter("FOUND\nENDFOUND\n") == "/usr/bin/python3"
    assert fastssh.discovered_interpreter("Welcome!\n") == "/usr/bin/python3"


@pytest.mark.parametrize(("hv", "python", "fallback"), [
    ({}, None, fastssh.INTERPRETER_FALLBACK),
    ({"ansible_python_interpreter": "auto_silent"}, None, fastssh.INTERPRETER_FALLBACK),
    ({"ansible_python_interpreter": "/opt/py/bin/python3"}, "/opt/py/bin/python3",
     fastssh.INTERPRETER_FALLBACK),
    ({"ansible_interpreter_python_fallback": ["python3.12", "/usr/bin/python3"]}, None,
     ("python3.12", "/usr/bin/python3")),
])
def test_the_interpreter_is_the_inventorys_else_discovered(
    hv: dict[str, Any], python: str | None, fallback: tuple[str, ...]
) -> None:
    t = target(hv)
    assert t.python == python and t.fallback == fallback


def test_a_discovered_interpreter_is_used_and_named_when_it_fails() -> None:
    import asyncio

    ran: list[str] = []

    async def node(command: str, data: bytes | None) -> tuple[int | None, bytes, bytes]:
        ran.append(command)
        if command.startswith("echo FOUND"):
            return 0, b"FOUND\n/usr/libexec/platform-python\nENDFOUND\n", b""
        return 127, b"", b"sh: 1: /usr/libexec/platform-python: not found\n"

    got = asyncio.run(fastssh.query(node, target({}), fastssh.Payload(
        fastssh.Bundle("m.py", ""), {})))
    assert ran[1].startswith("/usr/libexec/platform-python -c ")
    assert isinstance(got, Unreachable)
    assert got.error == ("the facts module failed: The module interpreter "
                         "'/usr/libexec/platform-python' was not found.")


# --------------------------------------------------------------------------- output and deadline


def test_lines_around_the_modules_json_are_ignored_as_ansible_does() -> None:
    doc = json.dumps({"stacklock_stack": facts(os={"distribution": "debian"})}, indent=1)
    out = f"Welcome to gpu-1 (authorised use only)\n\n{doc}\nYou have new mail.\n"
    assert fastssh.facts_from_output(T, 0, out, "") == facts(os={"distribution": "debian"})
    assert fastssh.filter_non_json_lines("motd\n {\"a\": 1}\nbye") == ' {"a": 1}'
    for junk in ("no json at all", "{ never closed"):
        with pytest.raises(ValueError):
            fastssh.filter_non_json_lines(junk)
    nothing = fastssh.facts_from_output(T, 0, "Welcome\n", "")
    assert isinstance(nothing, Unreachable) and "holds no facts" in nothing.error


class _Conn:
    """An SSH connection whose command answers after `delay` seconds (or never)."""

    def __init__(self, delay: float | None) -> None:
        self.delay = delay
        self.aborted = self.closed = False
        self.commands: list[str] = []

    async def run(self, command: str, **kwargs: Any) -> Any:
        import asyncio
        from types import SimpleNamespace

        self.commands.append(command)
        if self.delay is None:
            await asyncio.Event().wait()  # a probe stuck in the kernel: no answer, ever
        await asyncio.sleep(self.delay or 0)
        out = json.dumps({"stacklock_stack": facts()}).encode()
        return SimpleNamespace(exit_status=0, stdout=out, stderr=b"")

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.closed = True

    async def wait_closed(self) -> None:
        return None


@pytest.mark.parametrize("delay", [None, 30.0])
def test_a_node_past_its_deadline_is_closed_and_not_queried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, delay: float | None
) -> None:
    import time

    conn = _Conn(delay)

    async def connect(*args: Any, **kwargs: Any) -> _Conn:
        return conn

    monkeypatch.setattr(fastssh.asyncssh, "connect", connect)
    (tmp_path / "known_hosts").write_text("")
    slow = Target("dev", "dev-1", "10.0.0.2", 22, "root", tmp_path / "known_hosts",
                  python="/usr/bin/python3", deadline=0.5)
    started = time.monotonic()
    [result] = fastssh.FanOut().run([(slow, fastssh.Payload(fastssh.Bundle("m.py", ""), {}))])
    assert time.monotonic() - started < 5
    assert isinstance(result.facts, Unreachable)
    assert result.facts.error == (
        "the facts module did not finish on dev-1 (10.0.0.2) within 0.5 s "
        "(stacklock_verify_deadline): a probe may be stuck on the node; the connection was closed")
    assert conn.aborted
    rep = parity.compare({"dev": {"docker.version": "1"}}, {"dev": {"dev-1": result.facts}})
    assert rep.exit_code == ExitCode.FAILED and not rep.deviations
    assert rep.unreachable_nodes[0].node == "dev-1"


def test_a_node_within_its_deadline_answers_and_is_closed_gently(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = _Conn(0.0)

    async def connect(*args: Any, **kwargs: Any) -> _Conn:
        return conn

    monkeypatch.setattr(fastssh.asyncssh, "connect", connect)
    (tmp_path / "known_hosts").write_text("")
    quick = Target("dev", "dev-1", "10.0.0.2", 22, "root", tmp_path / "known_hosts",
                   python="/usr/bin/python3", deadline=5)
    [result] = fastssh.FanOut().run([(quick, fastssh.Payload(fastssh.Bundle("m.py", ""), {}))])
    assert result.facts == facts()
    assert conn.closed and not conn.aborted


def test_the_deadline_is_the_inventorys_else_beyond_the_archive_hashing() -> None:
    assert target({"stacklock_verify_deadline": "600"}).deadline == 600.0
    for bad in ("soon", 0, -5):
        with pytest.raises(InvalidInput) as exc:
            target({"stacklock_verify_deadline": bad})
        assert exc.value.problems[0].path.endswith("stacklock_verify_deadline")
    opts, _ = _module_opts()
    assert fastverify.deadline({}, opts, target({})).deadline == fastssh.DEADLINE + 300.0
    set_by_hand = target({"stacklock_verify_deadline": 45})
    assert fastverify.deadline({"stacklock_verify_deadline": 45}, opts,
                               set_by_hand).deadline == 45.0


@pytest.mark.parametrize("flags", [[], ["-W", "default"]])
def test_importing_the_adapter_prints_no_warning(flags: list[str]) -> None:
    """asyncssh's import makes cryptography warn that DSA is deprecated: `verify --fast`
    showed ten lines of it. Only that category is filtered, only around that import."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    r = subprocess.run([sys.executable, *flags, "-c", "import stacklock.adapters.fastssh"],
                       capture_output=True, text=True, env=env, timeout=60, check=False)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    r = subprocess.run([sys.executable, "-W", "default", "-c",
                        "import stacklock.adapters.fastssh, warnings\n"
                        "from cryptography.utils import CryptographyDeprecationWarning as W\n"
                        "warnings.warn('after the import', W)"],
                       capture_output=True, text=True, env=env, timeout=60, check=False)
    assert "after the import" in r.stderr  # the filter does not outlive the import


def test_dict_options_reach_the_module_as_dicts_as_ansiblemodule_hands_them() -> None:
    """The container option (type dict) was handed to the node as its str(): the container
    collector saw no mapping and reported nothing in container mode, on the fast path only."""
    spec = fastverify.module_spec(MODULE.read_text())
    assert spec["container"]["type"] == "dict"
    want = {"name": "stacklock-serving", "image": "r/s@sha256:" + "a" * 64,
            "user": "10001:10001", "python": "/opt/torchserve/venv/bin/python"}
    opts, _ = fastverify.module_opts({"container": want}, spec)
    assert opts["container"] == want
    opts, _ = fastverify.module_opts({"container": json.dumps(want)}, spec)
    assert opts["container"] == want
    assert fastverify.module_opts({}, spec)[0]["container"] is None
    with pytest.raises(fastverify.OptionError, match="unable to convert to dict"):
        fastverify.module_opts({"container": "not json"}, spec)
