"""stacklock installed from its wheel, with no checkout around: a repository started with
`stacklock init`, rendered, checked and (with root and Docker) run on one lab node.

The wheel is built from a copy of this source tree (setup.py copies the roles, playbooks,
plugins, Terraform modules, the lab's node script and the examples into stacklock/share/) and
installed into a fresh virtual environment under a temporary folder (uv, from PyPI and its
cache: the same packages `pipx install` would fetch, in seconds). Every command runs there,
from a folder outside the checkout, without STACKLOCK_HOME.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.integration]


def unhint(text: str) -> str:
    """Hints name the manifest in use (`stacklock -m PATH COMMAND`); the command is what the
    assertions check."""
    return re.sub(r"stacklock -m \S+ ", "stacklock ", text)

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "slinst"
NETWORK = "10.228"  # this test's own lab range (demo 10.213; other tests 10.214-10.217)
LAB_MODULE_SOURCE = "../../../vendor/stacklock/terraform/modules/gpu_node_lab"

#: what a copy of the source tree leaves out (the wheel is built from the copy, so a
#: concurrent run never shares build/ or *.egg-info with the checkout)
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", ".cache", "build", "dist", "*.egg-info", "__pycache__", ".stacklock",
    ".terraform", "*.tfstate*", ".mypy_cache", ".ruff_cache", ".pytest_cache", "tests",
    "benchmarks", "docs", "schedules")


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    env: dict[str, str]
    work: Path  # a folder outside the checkout

    def sl(self, *args: str, cwd: Path | None = None, timeout: int = 600
           ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.venv / "bin" / "stacklock"), *args],
                              cwd=cwd or self.work, env=self.env, capture_output=True,
                              text=True, timeout=timeout, check=False)

    def python(self, code: str) -> str:
        res = subprocess.run([str(self.venv / "bin" / "python"), "-c", code], cwd=self.work,
                             env=self.env, capture_output=True, text=True, timeout=120,
                             check=True)
        return res.stdout.strip()


def build_wheel(dest: Path) -> Path:
    """The wheel of this source tree (built from a copy of it), in `dest`."""
    src = dest / "src-copy"
    shutil.copytree(ROOT, src, symlinks=True, ignore=_NOT_SOURCE)
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                          str(dest), str(src)], capture_output=True, text=True, timeout=600,
                         check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    shutil.rmtree(src)
    (wheel,) = dest.glob("stacklock-*.whl")
    return wheel


def _uv() -> str:
    found = Path(sys.executable).parent / "uv"
    return str(found) if found.exists() else shutil.which("uv") or "uv"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("install")
    started = time.monotonic()
    wheel = build_wheel(base / "dist")
    venv = base / "venv"
    env = {k: v for k, v in os.environ.items()
           if k not in ("STACKLOCK_HOME", "VIRTUAL_ENV", "PYTHONPATH", "STACKLOCK_MANIFEST")}
    python = shutil.which("python3", path="/usr/bin:/usr/local/bin") or sys.executable
    for argv in ([_uv(), "venv", "-q", "--python", python, str(venv)],
                 [_uv(), "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
                  str(wheel)]):
        res = subprocess.run(argv, capture_output=True, text=True, timeout=900, env=env,
                             check=False)
        assert res.returncode == 0, f"{argv}: {res.stdout[-2000:]}{res.stderr[-2000:]}"
    env.update(NO_COLOR="1", COLUMNS="200", PATH=f"{venv / 'bin'}:{env.get('PATH', '')}",
               XDG_CACHE_HOME=str(base / "cache"))
    work = base / "work"
    work.mkdir()
    print(f"wheel built and installed in {time.monotonic() - started:.0f} s")
    return Installed(wheel, venv, env, work)


# --------------------------------------------------------------------------- the wheel


def test_wheel_contents(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as whl:
        infos = {i.filename: i for i in whl.infolist()}
    share = "stacklock/share/"
    for rel in ("ansible.cfg", "ansible/ansible.cfg", "ansible/playbooks/site.yml",
                "ansible/playbooks/verify.yml", "ansible/library/stacklock_stack_facts.py",
                "ansible/module_utils/stacklock_facts/collect.py",
                "ansible/action_plugins/stacklock_parity.py",
                "ansible/roles/torchserve/tasks/main.yml",
                "terraform/modules/gpu_node_lab/main.tf", "terraform/modules/gpu_node_aws/main.tf",
                "terraform/modules/gpu_node_static/main.tf", "scripts/lab-node.sh",
                "examples/lab.yaml", "examples/lab.lock", "examples/models/tiny-linear.mar"):
        assert share + rel in infos, rel
    # the node script keeps its executable bit; the playbooks' roles symlink is not copied
    mode = infos[share + "scripts/lab-node.sh"].external_attr >> 16
    assert mode & stat.S_IXUSR
    assert not any(n.startswith(share + "ansible/playbooks/roles/") for n in infos)
    assert not any("__pycache__" in n or n.endswith(".tfstate") for n in infos)


def test_installed_stacklock_reads_its_own_share(installed: Installed) -> None:
    where = installed.python("from stacklock.core import share; print(share.share_root()); "
                             "print(share.checkout_root())")
    share_root, checkout = where.splitlines()
    assert share_root.startswith(str(installed.venv)) and share_root.endswith("stacklock/share")
    assert checkout == "None"
    assert (Path(share_root) / "ansible" / "roles" / "docker").is_dir()


# --------------------------------------------------------------------------- init, render


def _init(installed: Installed, repo: Path, *extra: str) -> None:
    res = installed.sl("init", str(repo), "--project", PROJECT, "--network",
                       f"{NETWORK}.0.0/16", "--environment", "dev", *extra)
    assert res.returncode == 0, res.stderr
    for args in (["lock"], ["render"]):
        res = installed.sl(*args, cwd=repo)
        assert res.returncode == 0, f"{args}: {res.stderr}"


def test_init_render_check_validate_outside_any_checkout(installed: Installed) -> None:
    repo = installed.work / "serving"
    _init(installed, repo)
    for name in ("stacklock.yaml", "stacklock.lock", ".gitignore", "models/tiny-linear.mar",
                 "vendor/stacklock/VERSION", "vendor/stacklock/scripts/lab-node.sh",
                 "vendor/stacklock/terraform/modules/gpu_node_lab/main.tf",
                 "terraform/environments/dev/main.tf",
                 "inventories/dev/group_vars/dev/stacklock.yml"):
        assert (repo / name).is_file(), name
    assert os.access(repo / "vendor/stacklock/scripts/lab-node.sh", os.X_OK)
    main_tf = (repo / "terraform/environments/dev/main.tf").read_text()
    assert f'source = "{LAB_MODULE_SOURCE}"' in main_tf
    # nothing rendered names the install folder or the checkout
    for path in repo.rglob("*"):
        if path.is_file() and path.suffix in (".tf", ".yml"):
            text = path.read_text()
            assert str(installed.venv) not in text and "site-packages" not in text, path
            assert str(ROOT) not in text, path
    for args in (["render", "--check"], ["validate"], ["lock", "--check"]):
        res = installed.sl(*args, cwd=repo)
        assert res.returncode == 0, f"{args}: {res.stdout}{res.stderr}"

    # the same files wherever the repository and stacklock live: a moved copy is current
    moved = installed.work / "elsewhere" / "deeper" / "serving"
    shutil.copytree(repo, moved)
    res = installed.sl("render", "--check", cwd=moved)
    assert res.returncode == 0, res.stderr

    # a vendored module that is not this stacklock's: render --check exits 1 naming it,
    # `init --upgrade` puts it back
    module = moved / "vendor/stacklock/terraform/modules/gpu_node_lab/main.tf"
    module.write_text(module.read_text() + "# edited by hand\n")
    res = installed.sl("render", "--check", cwd=moved)
    assert res.returncode == 1
    assert f"stale: {module}" in res.stderr and "stacklock init --upgrade" in unhint(res.stderr)
    res = installed.sl("init", "--upgrade", str(moved))
    assert res.returncode == 0 and "gpu_node_lab/main.tf" in res.stderr, res.stderr
    assert installed.sl("render", "--check", cwd=moved).returncode == 0

    # init refuses to overwrite a manifest (exit 2)
    res = installed.sl("init", str(repo))
    assert res.returncode == 2 and "already exists" in res.stderr


def test_render_without_vendored_modules_refuses(installed: Installed) -> None:
    """An installed stacklock never writes module paths into its own install folder."""
    repo = installed.work / "novendor"
    _init(installed, repo)
    shutil.rmtree(repo / "vendor")
    res = installed.sl("render", "--check", cwd=repo)
    assert res.returncode == 2, res.stderr
    assert "no vendored stacklock modules" in res.stderr and "init --upgrade" in res.stderr


def test_this_repositorys_examples_render_the_same_from_the_wheel(installed: Installed) -> None:
    """A stacklock source tree counts as vendored: the installed CLI renders the repository's
    own examples with the same module paths as the checkout's CLI."""
    for manifest in ("examples/lab.yaml", "examples/static.yaml", "stacklock.yaml"):
        res = installed.sl("-m", str(ROOT / manifest), "render", "--check")
        stale_tf = [line for line in res.stderr.splitlines()
                    if line.startswith("stale:") and line.endswith(".tf")]
        assert stale_tf == [], res.stderr


def test_the_audit_workflow_installs_the_vendored_version(installed: Installed) -> None:
    repo = installed.work / "scheduled"
    _init(installed, repo)
    res = installed.sl("schedule", "dev", "--interval", "daily", "--out", str(repo / "sched"),
                       cwd=repo)
    assert res.returncode == 0, res.stderr
    (workflow,) = (repo / "sched").rglob("*.yml")
    version = installed.python("import stacklock; print(stacklock.__version__)")
    steps = [step for job in yaml.safe_load(workflow.read_text())["jobs"].values()
             for step in job["steps"]]
    assert {"run": f"python -m pip install stacklock=={version}"}.items() <= next(
        s for s in steps if "pip install" in str(s.get("run"))).items()


# --------------------------------------------------------------------------- the lab demo


def _lab_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, veth pairs, dockerd)"
    for tool in ("ip", "ssh", "debootstrap", "dockerd", "dpkg-scanpackages"):
        if shutil.which(tool) is None:
            return f"{tool} is missing: run scripts/bootstrap.sh (make test does)"
    return None


@pytest.fixture(scope="module")
def lab_repo(installed: Installed, lab_docker: str) -> Iterator[Path]:
    reason = _lab_skip_reason()
    if reason:
        pytest.skip(reason)
    repo = installed.work / "lab"
    _init(installed, repo)
    try:
        yield repo
    finally:
        installed.sl("destroy", "--all", cwd=repo, timeout=600)
        leftovers = subprocess.run(["docker", "ps", "-aq", "--filter", f"name={PROJECT}-"],
                                   capture_output=True, text=True, check=False).stdout.split()
        if leftovers:
            subprocess.run(["docker", "rm", "-f", *leftovers], capture_output=True, check=False)


@pytest.mark.slow
def test_lab_demo_from_the_installed_wheel(installed: Installed, lab_repo: Path) -> None:
    """`stacklock demo` in the new repository: one lab node provisioned, configured from the
    local mirror with the installed roles, verified with the installed facts module."""
    started = time.monotonic()
    res = installed.sl("demo", cwd=lab_repo, timeout=2400)
    seconds = time.monotonic() - started
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"demo failed ({seconds:.0f} s):\n{out[-6000:]}"
    assert "parity: all nodes match the lock and each other" in out
    print(f"lab demo from the installed wheel: {seconds:.0f} s (one node)")
    # the state records the vendored node script, never the install folder
    state = (lab_repo / "terraform/environments/dev/terraform.tfstate").read_text()
    assert str(lab_repo / "vendor/stacklock/scripts/lab-node.sh") in state
    assert str(installed.venv) not in state
    res = installed.sl("verify", "--fast", cwd=lab_repo, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


# --------------------------------------------------------------------------- the collection


def _ansible_bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """stacklock.stack built by scripts/build_collection.py and installed offline into a
    temporary collections path; yields the tarball and the environment that finds it."""
    base = tmp_path_factory.mktemp("collection")
    res = subprocess.run([sys.executable, str(ROOT / "scripts/build_collection.py"), "--out",
                          str(base / "dist")], capture_output=True, text=True, timeout=300,
                         check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    tarball = Path(res.stdout.strip().splitlines()[-1])
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_COLLECTIONS_PATH=str(base / "collections"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_HOST_KEY_CHECKING="True")
    res = subprocess.run([_ansible_bin("ansible-galaxy"), "collection", "install", "--offline",
                          "-p", str(base / "collections"), str(tarball)], cwd=base, env=env,
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    return tarball, env


def test_collection_holds_roles_module_plugins_playbooks(
        collection: tuple[Path, dict[str, str]]) -> None:
    import tarfile

    tarball, _env = collection
    assert tarball.name == "stacklock-stack-0.1.0.tar.gz"
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
        module = tar.extractfile("plugins/modules/stacklock_stack_facts.py")
        assert module is not None
        text = module.read().decode()
    for name in ("MANIFEST.json", "FILES.json", "README.md", "meta/runtime.yml",
                 "roles/torchserve/tasks/main.yml", "playbooks/site.yml",
                 "playbooks/verify.yml", "plugins/module_utils/stacklock_facts/collect.py",
                 "plugins/action/stacklock_parity.py", "plugins/action/stacklock_gate.py"):
        assert name in names, name
    # the collectors are imported from the collection, never from ansible.module_utils
    assert "ansible.module_utils.stacklock_facts" not in text
    assert ("from ansible_collections.stacklock.stack.plugins.module_utils.stacklock_facts."
            "collect import") in text


def test_collection_module_runs_from_the_collection(
        collection: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """A real run: Ansible ships the module and its collectors (rewritten imports) and the
    module gathers this machine's stack, read-only."""
    _tarball, env = collection
    res = subprocess.run([_ansible_bin("ansible"), "localhost", "-c", "local", "-i",
                          "localhost,", "-e", f"ansible_python_interpreter={sys.executable}",
                          "-m", "stacklock.stack.stacklock_stack_facts"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert '"schema": "stacklock.facts/v1"' in res.stdout


@pytest.mark.parametrize("playbook", ["site", "verify", "inventory"])
def test_collection_playbooks_pass_syntax_check(
        collection: tuple[Path, dict[str, str]], tmp_path: Path, playbook: str) -> None:
    _tarball, env = collection
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  children:\n    dev:\n      hosts:\n        n1: {}\n")
    res = subprocess.run([_ansible_bin("ansible-playbook"), "--syntax-check", "-i",
                          str(inventory), f"stacklock.stack.{playbook}"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_collection_module_doc(collection: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """ansible-doc reads the module's DOCUMENTATION (the docs are that block, nothing else)."""
    _tarball, env = collection
    res = subprocess.run([_ansible_bin("ansible-doc"), "stacklock.stack.stacklock_stack_facts"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                         check=False)
    assert res.returncode == 0, (
        "ansible-doc cannot read the facts module's DOCUMENTATION (ansible/library/"
        "stacklock_stack_facts.py must hold valid YAML):\n" + res.stderr[-2000:])
    assert "stacklock.facts/v1" in res.stdout and "probe_timeout" in res.stdout


# --------------------------------------------------------------------------- the EE


def test_execution_environment_build_context(
        installed: Installed, collection: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """ansible-builder (from PyPI) writes the EE's build context; no image is built here (no
    container registry is reachable for the base image)."""
    work = tmp_path / "ee"
    shutil.copytree(ROOT / "ee", work / "ee")
    shutil.copy(ROOT / "execution-environment.yml", work / "execution-environment.yml")
    (work / "dist").mkdir()
    shutil.copy(installed.wheel, work / "dist")
    shutil.copy(collection[0], work / "dist")
    builder = tmp_path / "builder"
    for argv in ([_uv(), "venv", "-q", str(builder)],
                 [_uv(), "pip", "install", "-q", "--python", str(builder / "bin/python"),
                  "ansible-builder>=3.1,<4"],
                 [str(builder / "bin/ansible-builder"), "create", "-f",
                  "execution-environment.yml", "-c", "context", "--output-filename",
                  "Containerfile", "-v", "3"]):
        res = subprocess.run(argv, cwd=work, capture_output=True, text=True, timeout=600,
                             check=False)
        assert res.returncode == 0, f"{argv}:\n{res.stdout[-3000:]}{res.stderr[-3000:]}"
    context = work / "context"
    containerfile = (context / "Containerfile").read_text()
    assert 'ARG EE_BASE_IMAGE="quay.io/centos/centos:stream9"' in containerfile
    assert "/tmp/stacklock-wheels/*.whl" in containerfile
    build = context / "_build"
    assert (build / "collections/stacklock-stack-0.1.0.tar.gz").is_file()
    assert (build / f"wheels/{installed.wheel.name}").is_file()
    assert "stacklock-stack-0.1.0.tar.gz" in (build / "requirements.yml").read_text()
    assert "openssh-clients" in (build / "bindep.txt").read_text()
    assert "jinja2" in (build / "requirements.txt").read_text()
