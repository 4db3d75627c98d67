"""The Ansible roles against real systemd containers (molecule, docker driver), air-gapped.

The module fixture starts what the tests need and stops what it started: a Docker daemon
(reused when one answers), the lab image (built once, cached), the local mirror (real Debian
packages + the toolkit test packages + a pip index, cached in the mirror directory) served on
127.0.0.1, and the community.docker collection taken from the `ansible` wheel.

The molecule scenario `stack` (ansible/molecule/stack) converges ansible/playbooks/site.yml,
converges again and requires changed=0, verifies the real state of the node, and changes the
toolkit pin 1.17.8-1 -> 1.18.0-1 (new version installed, held, pinned).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from stacklock.adapters import docker as lab_docker
from stacklock.adapters import mirror
from stacklock.adapters.proc import run_command

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = ROOT / "ansible"
MODEL = ROOT / "examples" / "models" / "tiny-linear.mar"
MIRROR_HOST = "127.0.0.1"
MIRROR_PORT = int(os.environ.get("STACKLOCK_TEST_MIRROR_PORT", "8711"))
BIN = Path(sys.executable).parent


def _env(collections: Path) -> dict[str, str]:
    return {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "ANSIBLE_COLLECTIONS_PATH": str(collections),
        "ANSIBLE_ROLES_PATH": str(ANSIBLE_DIR / "roles"),
        "ANSIBLE_FORCE_COLOR": "false",
        "PY_COLORS": "0",
        "NO_COLOR": "1",
    }


@pytest.fixture(scope="module")
def collections() -> Path:
    return mirror.ensure_collections()


@pytest.fixture(scope="module")
def lab(collections: Path) -> Iterator[dict[str, str]]:
    daemon = lab_docker.acquire_daemon()
    server: mirror.ServerHandle | None = None
    try:
        lab_docker.build_image()
        mirror.build_mirror()
        server = mirror.start_server(MIRROR_HOST, MIRROR_PORT)
        env = _env(collections)
        env["MIRROR_URL"] = server.url
        env["TINY_MODEL_SHA256"] = hashlib.sha256(MODEL.read_bytes()).hexdigest()
        yield env
    finally:
        if server is not None:
            mirror.stop_server(server)
        lab_docker.release_daemon(daemon)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return str(resp.read().decode("utf-8"))


@pytest.mark.slow
def test_mirror_serves_the_stack_and_names_its_test_packages(lab: dict[str, str]) -> None:
    url = lab["MIRROR_URL"]
    packages = _get(f"{url}/apt/Packages")
    stanzas = {}
    for block in packages.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and line[0] != " ")
        stanzas[(fields["Package"], fields["Version"])] = fields
    for pin in (
        ("docker.io", "20.10.24+dfsg1-1+deb12u1+b6"),
        ("nvidia-driver", "535.309.01-0+deb12u1"),
        ("libcudart11.0", "11.8.89~11.8.0-5~deb12u1"),
        ("openjdk-17-jre-headless", "17.0.21.1+2-1~deb12u1"),
    ):
        assert pin in stanzas, f"{pin} missing from the mirror"
        assert "stacklock test package" not in stanzas[pin]["Description"]
    for version in mirror.TOOLKIT_TEST_VERSIONS:
        toolkit = stanzas[("nvidia-container-toolkit", version)]
        assert toolkit["Description"].startswith("stacklock test package — not NVIDIA's")
    torch_page = _get(f"{url}/simple/torch/")
    assert "torch-2.13.0+cpu-cp311" in torch_page
    assert "#sha256=" in torch_page
    for project in ("torchserve", "torch-model-archiver", "pyyaml", "numpy"):
        assert ".whl" in _get(f"{url}/simple/{project}/"), project


@pytest.mark.slow
def test_molecule_stack_converge_idempotence_verify_pin_change(lab: dict[str, str]) -> None:
    log_file = ROOT / ".cache" / "logs" / "molecule-stack.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.write_text("")
    start = time.monotonic()
    res = run_command(
        [str(BIN / "molecule"), "test", "-s", "stack"],
        cwd=ANSIBLE_DIR,
        env=lab,
        check=False,
        capture=False,
        log_file=log_file,
        timeout=1800,
    )
    minutes = (time.monotonic() - start) / 60
    output = log_file.read_text(errors="replace")
    tail = "\n".join(output.splitlines()[-60:])
    assert res.returncode == 0, f"molecule test failed after {minutes:.1f} min:\n{tail}"
    for step in ("converge", "idempotence", "check", "verify", "side_effect"):
        done = re.search(rf"(\[stack > {step}\]|{step}:) Executed: Successful", output)
        assert done, f"{step} did not run:\n{tail}"
    # a check-mode run on the converged node changes nothing and fails nothing
    check = re.search(r"\[stack > check\] Executing(.*?)\[stack > check\] Executed", output, re.S)
    assert check, f"no check step in the molecule output:\n{tail}"
    assert re.search(r"changed=0\s+unreachable=0\s+failed=0", check.group(1)), check.group(1)[-2000:]
    print(f"molecule test -s stack: {minutes:.1f} min")


def _playbook(tmp_path: Path, text: str, env: dict[str, str]) -> tuple[int, str]:
    play = tmp_path / "play.yml"
    play.write_text(text)
    res = run_command(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            str(play),
        ],
        env={**env, "ANSIBLE_STDOUT_CALLBACK": "default", "ANSIBLE_NOCOLOR": "1"},
        check=False,
        timeout=300,
    )
    return res.returncode, res.stdout + res.stderr


def test_model_sha256_mismatch_fails_the_play(tmp_path: Path, collections: Path) -> None:
    wrong = "0" * 64
    rc, out = _playbook(
        tmp_path,
        f"""
- hosts: localhost
  gather_facts: false
  tasks:
    - ansible.builtin.include_role:
        name: torchserve
        tasks_from: preflight
      vars:
        torchserve_version: 0.12.0
        torchserve_java_packages: [{{name: openjdk-17-jre-headless, version: "17"}}]
        torchserve_torch_version: 2.13.0+cpu
        torchserve_pip_packages:
          - {{name: torch, version: 2.13.0+cpu, sha256: ["{"a" * 64}"]}}
          - {{name: torchserve, version: 0.12.0, sha256: ["{"b" * 64}"]}}
        torchserve_models:
          - {{name: tiny-linear, version: "1.0", file: tiny-linear.mar,
              sha256: "{wrong}", src: "{MODEL}"}}
""",
        _env(collections),
    )
    assert rc != 0
    assert f"the manifest pins {wrong}" in out
    assert hashlib.sha256(MODEL.read_bytes()).hexdigest() in out


def test_cuda_preflight_rejects_a_too_old_driver(tmp_path: Path, collections: Path) -> None:
    rc, out = _playbook(
        tmp_path,
        """
- hosts: localhost
  gather_facts: false
  tasks:
    - ansible.builtin.include_role:
        name: cuda
        tasks_from: preflight
      vars:
        cuda_version: "12.8"
        cuda_full_version: 12.8.93
        cuda_packages: [{name: cuda-toolkit-12-8, version: 12.8.1-1}]
        cuda_driver_version: 535.309.01
""",
        _env(collections),
    )
    assert rc != 0
    assert "CUDA 12.8 needs driver 570.26 or newer" in out


def test_nvidia_driver_preflight_requires_a_gpu(tmp_path: Path, collections: Path) -> None:
    if _has_gpu():
        pytest.skip("this machine has an NVIDIA GPU: the no-GPU refusal cannot be seen here")
    rc, out = _playbook(
        tmp_path,
        """
- hosts: localhost
  gather_facts: false
  tasks:
    - ansible.builtin.include_role:
        name: nvidia_driver
        tasks_from: preflight
      vars:
        nvidia_driver_version: 535.309.01
        nvidia_driver_branch: 535
        nvidia_driver_packages: [{name: nvidia-driver, version: 535.309.01-0+deb12u1}]
""",
        _env(collections),
    )
    assert rc != 0
    assert "no NVIDIA PCI device" in out


def test_ansible_lint_production_profile(collections: Path) -> None:
    lint = shutil.which("ansible-lint", path=str(BIN)) or "ansible-lint"
    res = run_command(
        [lint, "--profile", "production", "--strict", "ansible/roles", "ansible/playbooks"],
        cwd=ROOT,
        env=_env(collections),
        check=False,
        timeout=600,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert "0 failure(s), 0 warning(s)" in out


def _has_gpu() -> bool:
    return any(
        (dev / "vendor").read_text().strip() == "0x10de"
        for dev in Path("/sys/bus/pci/devices").glob("*")
        if (dev / "vendor").exists()
    )


def test_nvidia_driver_run_skips_the_driver_reload_without_a_gpu_and_says_so(
        tmp_path: Path, collections: Path) -> None:
    if _has_gpu():
        pytest.skip("this machine has an NVIDIA GPU: the no-GPU skip cannot be seen here")
    rc, out = _playbook(
        tmp_path,
        """
- hosts: localhost
  gather_facts: false
  tasks:
    - ansible.builtin.include_role:
        name: nvidia_driver
        tasks_from: "{{ item }}"
      loop: [preflight, run]
      vars:
        nvidia_driver_version: 535.309.01
        nvidia_driver_branch: 535
        nvidia_driver_packages: [{name: nvidia-driver, version: 535.309.01-0+deb12u1}]
        nvidia_driver_require_gpu: false
        nvidia_driver_persistenced_enabled: false
        nvidia_driver_reboot: true
""",
        _env(collections),
    )
    assert rc == 0, out[-3000:]
    assert "the driver reload step (drain, reload the kernel modules or reboot, verify) is " \
           "skipped" in " ".join(out.split())
    assert re.search(r"changed=0\s+unreachable=0\s+failed=0", out), out[-2000:]
    for task in ("Reload - drain the node", "Reload - reboot", "Reload - unload"):
        assert task not in out  # nothing of the reload ran: no drain, no modprobe, no reboot


def test_nvidia_driver_reads_the_loaded_module_and_what_to_unload(
        tmp_path: Path, collections: Path) -> None:
    """The role's probes of /proc/driver/nvidia/version and /proc/modules (real kernel texts)."""
    import base64

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    proprietary = ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.309.01  "
                   "Tue Oct 21 11:44:31 UTC 2025\nGCC version:  gcc version 12.2.0\n")
    open_module = ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95.05  "
                   "Release Build  (dvs-builder@U16-I1-N08-05-3)\n")
    modules = ("nvidia_uvm 1789952 0 - Live 0x0000000000000000 (POE)\n"
               "nvidia_drm 122880 0 - Live 0x0000000000000000 (POE)\n"
               "ext4 1015808 1 - Live 0x0000000000000000\n"
               "nvidia 60989440 2 nvidia_uvm,nvidia_drm, Live 0x0000000000000000 (POE)\n")
    rc, out = _playbook(
        tmp_path,
        f"""
- hosts: localhost
  gather_facts: false
  tasks:
    - ansible.builtin.include_vars:
        file: {ANSIBLE_DIR}/roles/nvidia_driver/vars/main.yml
    - ansible.builtin.assert:
        that:
          - _nvidia_driver_loaded == "535.309.01"
          - _nvidia_driver_loaded_modules == ["nvidia_uvm", "nvidia_drm", "nvidia"]
          - not (_nvidia_driver_reload_failed | bool)
      vars:
        __nvidia_driver_proc: {{content: "{b64(proprietary)}"}}
        __nvidia_driver_proc_modules: {{content: "{b64(modules)}"}}
    - ansible.builtin.assert:
        that:
          - _nvidia_driver_loaded == "580.95.05"
          - _nvidia_driver_loaded_modules == []
          - _nvidia_driver_reload_failed | bool
      vars:
        __nvidia_driver_proc: {{content: "{b64(open_module)}"}}
        __nvidia_driver_proc_modules: {{content: ""}}
        __nvidia_driver_unload: {{rc: 1}}
    - ansible.builtin.assert:
        that: _nvidia_driver_loaded == ""
      vars:
        __nvidia_driver_proc: {{failed: true}}
""",
        _env(collections),
    )
    assert rc == 0, out[-3000:]
    assert re.search(r"failed=0", out), out[-2000:]
