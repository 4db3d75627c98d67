"""stacklock.adapters.ansible_template: the role files the controller hashes are rendered byte
for byte as Ansible writes them.

Each file `role_files` hashes from a template (or a copy task's content) is rendered twice,
with the example group_vars: through the adapter, and through a real
`ansible localhost -c local -m ansible.builtin.template` (or `.copy`) run of the venv's
ansible, its variables given as `-e @FILE` in the play's order (the roles' defaults, the
group_vars file, the roles' vars, the include_role's vars and loop item read here from the
role's tasks, what the controller decides of the node); the bytes must be identical, and equal
to the sha256 in `role_files`.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from stacklock.adapters import ansible_template
from stacklock.flows import integrity

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
ROLES = ROOT / "ansible" / "roles"
ANSIBLE = Path(sys.executable).parent / "ansible"
EXAMPLES = {
    "lab-dev": ROOT / "examples/lab/inventories/dev/group_vars/dev/stacklock.yml",
    "onprem-prod": ROOT / "examples/onprem/inventories/prod/group_vars/prod/stacklock.yml",
    "static-dev": ROOT / "examples/static/inventories/dev/group_vars/dev/stacklock.yml",
}


def _include_vars(caller: str, included: str) -> dict[str, Any]:
    """The `vars:` of `caller`'s include_role of `included`, read from its tasks here."""
    for path in sorted((ROLES / caller / "tasks").glob("*.yml")):
        for task in yaml.safe_load(path.read_text("utf-8")) or []:
            args = task.get("ansible.builtin.include_role")
            if isinstance(args, dict) and args.get("name") == included:
                return dict(task.get("vars") or {})
    raise AssertionError(f"{caller} includes no {included}")


def _copy_content(role: str, dest: str) -> str:
    for path in sorted((ROLES / role / "tasks").glob("*.yml")):
        for task in yaml.safe_load(path.read_text("utf-8")) or []:
            args = task.get("ansible.builtin.copy")
            if isinstance(args, dict) and args.get("dest") == dest:
                return str(args["content"])
    raise AssertionError(f"{role} has no copy task for {dest}")


def _layers(group_vars: Path, source: integrity.Source, tmp: Path) -> list[Path]:
    """The -e files, lowest first, as a play layers them."""
    layers = [p for r in integrity.ROLES if (p := ROLES / r / "defaults" / "main.yml").is_file()]
    layers.append(group_vars)
    layers += [p for r in integrity.ROLES if (p := ROLES / r / "vars" / "main.yml").is_file()]
    task = _include_vars(source.caller, source.role) if source.caller else {}
    if source.item is not None:
        task["item"] = dict(source.item)
    (tmp / "task.yml").write_text(yaml.safe_dump(task), "utf-8")
    (tmp / "node.json").write_text(json.dumps({"ansible_facts": {}, **source.node}), "utf-8")
    return [*layers, tmp / "task.yml", tmp / "node.json"]


def _ansible(module: str, args: str, layers: list[Path], tmp: Path) -> None:
    cmd = [str(ANSIBLE), "localhost", "-c", "local", "-m", module, "-a", args]
    for layer in layers:
        cmd += ["-e", f"@{layer}"]
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCAL_TEMP": str(tmp / "local"), "ANSIBLE_REMOTE_TEMP": str(tmp / "remote"),
           "ANSIBLE_LOCALHOST_WARNING": "false"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _through_ansible(group_vars: Path, path: str, source: integrity.Source,
                     tmp: Path) -> bytes:
    tmp.mkdir(parents=True)
    out = tmp / "out"
    layers = _layers(group_vars, source, tmp)
    if source.template:
        src = ROLES / source.role / "templates" / source.template
        _ansible("ansible.builtin.template", f"src={src} dest={out}", layers, tmp)
    else:
        args = json.dumps({"content": _copy_content(source.role, path), "dest": str(out)})
        _ansible("ansible.builtin.copy", args, layers, tmp)
    return out.read_bytes()


def _ours(hv: Mapping[str, Any], path: str, source: integrity.Source) -> bytes:
    host = integrity.host_vars(hv)
    if source.template:
        return ansible_template.render(source.role, source.template, source.variables(host),
                                       dest=path)
    return ansible_template.render_content(ansible_template.copy_content(source.role, path),
                                           source.variables(host))


@pytest.mark.slow
@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_every_rendered_role_file_is_what_ansible_writes(example: str, tmp_path: Path) -> None:
    group_vars = EXAMPLES[example]
    hv = yaml.safe_load(group_vars.read_text("utf-8"))
    sources = integrity.role_file_sources(hv)
    hashes = {f.path: f.sha256 for files in integrity.role_files(hv).values() for f in files}
    assert {s.template for s in sources.values()} >= {
        "preferences.j2", "unattended-upgrades.j2", "repository.list.j2",
        "config.properties.j2", "torchserve.service.j2", ""}
    jobs = sorted(sources.items())
    with ThreadPoolExecutor(max_workers=2) as pool:
        theirs = list(pool.map(lambda job: _through_ansible(
            group_vars, job[0], job[1], tmp_path / f"r{jobs.index(job)}"), jobs))
    for (path, source), written in zip(jobs, theirs, strict=True):
        assert _ours(hv, path, source) == written, path
        assert hashes[path] == hashlib.sha256(written).hexdigest(), path


def test_the_lab_daemon_json_has_the_nvidia_runtime_and_the_container_options() -> None:
    """The lab's daemon.json as the controller renders it (the test above shows ansible
    writes the same bytes): the nvidia runtime (the toolkit is pinned) and the options of a
    host that is itself a container (a lab node)."""
    hv = yaml.safe_load(EXAMPLES["lab-dev"].read_text("utf-8"))
    source = integrity.role_file_sources(hv)["/etc/docker/daemon.json"]
    data = json.loads(_ours(hv, "/etc/docker/daemon.json", source))
    assert data["runtimes"]["nvidia"]["path"] == "nvidia-container-runtime"
    assert data["iptables"] is False and data["bridge"] == "none"


# --------------------------------------------------------------------------- the adapter alone


def test_layers_defaults_under_the_host_and_role_vars_over_it() -> None:
    host = {"docker_log_max_size": "99m", "_docker_container_types": ["nothing"]}
    v = ansible_template.variables(host, ["docker"])
    assert ansible_template.value(v, "docker_log_max_size") == "99m"  # host over default
    assert ansible_template.value(v, "docker_log_driver") == "json-file"  # the default
    assert "docker" in ansible_template.value(v, "_docker_container_types")  # role vars win
    node = {"__docker_nvidia_runtime_bin": {"stat": {"exists": False}}}
    v = ansible_template.variables(host, ["docker"], node=node)
    assert ansible_template.value(v, "_docker_daemon_config")["log-opts"]["max-size"] == "99m"


def test_host_values_are_data_not_templates() -> None:
    v = ansible_template.variables({"docker_log_driver": "{{ 1 + 1 }}"}, ["docker"])
    assert ansible_template.value(v, "docker_log_driver") == "{{ 1 + 1 }}"


def test_what_only_the_node_knows_is_a_render_error() -> None:
    """The official CUDA repository names the node's OS from its gathered facts."""
    v = ansible_template.variables({}, ["cuda"], node={"ansible_facts": {}})
    with pytest.raises(ansible_template.RenderError):
        ansible_template.value(v, "cuda_official_repositories[0].uri")


def test_a_template_that_reads_the_run_is_refused(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "r" / "templates").mkdir(parents=True)
    (tmp_path / "r" / "templates" / "x.j2").write_text("# {{ template_run_date }}\n")
    (tmp_path / "r" / "templates" / "y.j2").write_text("a {{ b }}\n\n")
    monkeypatch.setattr(ansible_template, "roles_dir", lambda: tmp_path)
    with pytest.raises(ansible_template.RenderError, match="template_run_date"):
        ansible_template.render("r", "x.j2", {}, dest="/x")
    with pytest.raises(ansible_template.RenderError):
        ansible_template.render("r", "y.j2", {}, dest="/y")
    # trailing newlines kept, as the template action keeps them
    assert ansible_template.render("r", "y.j2", {"b": "c"}, dest="/y") == b"a c\n\n"
