"""The serving_container role's ECR login tasks (tasks/ecr_login.yml) run for real with
ansible-playbook on this machine: root's Docker config for an image in ECR, written where the
test says (not /root/.docker), must be the bytes, owner and mode verify's files class expects,
and a second run changes nothing. What it cannot show here: a pull from ECR (no AWS; the
credential helper's own run is described in docs/containers.md, "What ran where")."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from stacklock.adapters import ansible_template
from stacklock.core import serving
from stacklock.flows import integrity

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LAB_GV = ROOT / "examples/lab/inventories/dev/group_vars/dev/stacklock.yml"
ECR_HOST = "111122223333.dkr.ecr.us-east-1.amazonaws.com"
DIGEST = "sha256:" + "a" * 64
PLAY = """\
- name: The serving_container role's ECR login tasks
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: ECR login
      ansible.builtin.include_role:
        name: serving_container
        tasks_from: ecr_login.yml
"""


def _host_vars() -> dict[str, Any]:
    """The lab example's group_vars in container mode with an image in ECR, as render writes
    them for a Debian 12 stack."""
    hv: dict[str, Any] = yaml.safe_load(LAB_GV.read_text("utf-8"))
    locked = {"serving": {"runtime": "container"}, "os": {"distribution": "debian",
                                                          "release": "12"},
              "apt": {"docker": hv["docker_packages"]},
              "image": {"config_digest": "sha256:" + "e" * 64, "digest": DIGEST,
                        "registry": ECR_HOST, "registry_url": f"https://{ECR_HOST}",
                        "repository": "acme/dev/serving", "user": "10001:10001"}}
    hv.update(serving.container_vars("dev", "lab-2026-11", locked, gpu=False))
    hv["docker_packages"] = serving.docker_packages("dev", "lab-2026-11", locked)
    return hv


def _play(tmp_path: Path, extra: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    (tmp_path / "play.yml").write_text(PLAY)
    (tmp_path / "extra.json").write_text(json.dumps(extra))
    env = {**os.environ, "ANSIBLE_ROLES_PATH": str(ROOT / "ansible/roles"),
           "ANSIBLE_LOCALHOST_WARNING": "false", "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
           "ANSIBLE_PYTHON_INTERPRETER": sys.executable}
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,",
         "-e", f"@{tmp_path / 'extra.json'}", str(tmp_path / "play.yml")],
        capture_output=True, text=True, env=env, timeout=300, check=False)


def test_the_ecr_login_tasks_write_what_verify_expects(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the tasks write a root-owned file")
    hv = _host_vars()
    expected = {f.path: f for f in integrity.role_files(hv)["serving_container"]}[
        serving.DOCKER_CONFIG]
    where = tmp_path / "root" / ".docker" / "config.json"
    # the real helper where Debian's package is installed here, else a stand-in file (the
    # task checks that the binary is there: the docker role installs it from docker_packages)
    helper = shutil.which("docker-credential-ecr-login")
    if helper is None:
        helper = str(tmp_path / "helper")
        Path(helper).write_text("a stand-in\n")
    extra = {"serving_runtime": "container", "serving_container": hv["serving_container"],
             "docker_packages": hv["docker_packages"],
             "_serving_container_docker_config": str(where),
             "_serving_container_ecr_helper": helper}
    first = _play(tmp_path, extra)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
    data = where.read_bytes()
    assert json.loads(data) == {"credHelpers": {ECR_HOST: "ecr-login"}}
    assert ansible_template.sha256(data) == expected.sha256
    st = where.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, int(expected.mode, 8))
    assert stat.S_IMODE(where.parent.stat().st_mode) == 0o700
    again = _play(tmp_path, extra)
    assert again.returncode == 0 and "changed=0" in again.stdout, again.stdout[-3000:]

    # no helper on the node: the task fails, naming it, before anything is pulled
    missing = _play(tmp_path, {**extra, "_serving_container_ecr_helper": str(tmp_path / "no")})
    assert missing.returncode != 0
    assert "the credential helper is installed" in missing.stdout
