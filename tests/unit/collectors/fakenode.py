"""A fake node for the stack facts collectors: recorded command outputs, files and HTTP
answers behind the `System` interface (ansible/module_utils/stacklock_facts/node.py).

Two recorded nodes: a lab node (Debian 12, no GPU, the pinned stack installed from the mirror,
TorchServe serving one model) and the real H100 node of shared/reference/compatibility.md
(driver 580.159.04 that is no dpkg package, CUDA 13.0 from `cuda-*-13-0` packages, nvcc
13.0.88, no version.json, torch 2.11.0+cu130). Recorded texts too long to keep inline are in
tests/fixtures/facts/recorded/.

Importing this module makes `ansible.module_utils.stacklock_facts` importable: it loads the
facts module from ansible/library, which serves the package from this checkout.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[3]
MODULE_PATH = REPO / "ansible" / "library" / "stacklock_stack_facts.py"
FIXTURES = REPO / "tests" / "fixtures" / "facts"
RECORDED = FIXTURES / "recorded"


def load_facts_module() -> ModuleType:
    """ansible/library/stacklock_stack_facts.py, loaded once (as `stacklock_stack_facts`)."""
    if "stacklock_stack_facts" in sys.modules:
        return sys.modules["stacklock_stack_facts"]
    spec = importlib.util.spec_from_file_location("stacklock_stack_facts", MODULE_PATH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["stacklock_stack_facts"] = mod
    spec.loader.exec_module(mod)
    return mod


def recorded(name: str) -> str:
    """A recorded text of tests/fixtures/facts/recorded/."""
    return (RECORDED / name).read_text(encoding="utf-8")


facts_module = load_facts_module()

from ansible.module_utils.stacklock_facts.collect import gather as _gather  # noqa: E402
from ansible.module_utils.stacklock_facts.common import CannotLook, ProbeError  # noqa: E402
from ansible.module_utils.stacklock_facts.node import Result, System  # noqa: E402

DEFAULT_OPTS: dict[str, Any] = {
    "packages": [],
    "pip_packages": [],
    "torchserve_venv": "/opt/torchserve/venv",
    "torchserve_config": "/etc/torchserve/config.properties",
    "torchserve_model_store": "/var/lib/torchserve/model-store",
    "torchserve_key_file": None,
    "torchserve_management_url": "http://127.0.0.1:8081",
    "probe_timeout": 5.0,
    "use_nvml": True,
}

Answer = tuple[int, str, str] | Exception


class FakeSystem(System):
    """A node made of recorded command outputs, files and HTTP answers."""

    def __init__(
        self,
        *,
        commands: Mapping[str, Answer],
        files: Mapping[str, str | bytes],
        executables: Mapping[str, str],
        http: Mapping[str, tuple[int, str] | Exception] | None = None,
        uname: Mapping[str, str],
        python: Mapping[str, str],
        nvml: list[dict[str, Any]] | Exception | None = None,
        links: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(5.0)
        self.commands = dict(commands)
        self.files = dict(files)
        self.executables = dict(executables)
        self.http = dict(http or {})
        self._uname = dict(uname)
        self._python = dict(python)
        self._nvml = nvml
        self.links = dict(links or {})
        self.ran: list[list[str]] = []
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.handlers: dict[str, Callable[[str, dict[str, str]], tuple[int, str]]] = {}
        self.denied: set[str] = set()

    @staticmethod
    def key(argv: list[str]) -> str:
        return " ".join([os.path.basename(argv[0]), *argv[1:2]])

    def run(self, argv: list[str], timeout: float | None = None) -> Any:
        self.ran.append(list(argv))
        answer = self.commands.get(self.key(argv))
        if answer is None:
            raise ProbeError(f"{argv[0]}: command not found")
        if isinstance(answer, Exception):
            raise answer
        return Result(*answer)

    def which(self, name: str) -> str | None:
        return self.executables.get(name)

    def realpath(self, path: str) -> str:
        return self.links.get(path, path)

    def exists(self, path: str) -> bool:
        return path in self.files or path in self.executables.values()

    def read_text(self, path: str) -> str | None:
        if path in self.denied:
            raise CannotLook(f"{path}: [Errno 13] Permission denied")
        value = self.files.get(path)
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else value

    def sha256(self, path: str) -> str | None:
        if path in self.denied:
            raise CannotLook(f"{path}: [Errno 13] Permission denied")
        value = self.files.get(path)
        if value is None:
            return None
        data = value if isinstance(value, bytes) else value.encode()
        return hashlib.sha256(data).hexdigest()

    # the archive digest cache: a clock, hashing speed, file identities, private writes
    clock = 0.0
    #: bytes hashed per (fake) second; archives of the store cost len(bytes) / speed
    hash_speed = float("inf")

    def now(self) -> float:
        return self.clock

    def sha256_until(self, path: str, deadline: float) -> str | None:
        self.hashed = [*getattr(self, "hashed", []), path]
        value = self.files.get(path)
        if value is not None:
            self.clock += len(value) / self.hash_speed
            if self.clock > deadline:
                raise CannotLook(f"{path}: hashing did not finish in time")
        return self.sha256(path)

    def file_identity(self, path: str) -> list[int] | None:
        value = self.files.get(path)
        if value is None:
            return None
        meta = getattr(self, "meta", {}).get(path, {})
        return [1, meta.get("ino", zlib.crc32(path.encode())), len(value),
                meta.get("mtime", 1), meta.get("ctime", 1)]

    def read_private(self, path: str) -> str | None:
        if path in getattr(self, "insecure", set()):
            return None
        return self.read_text(path)

    def write_private(self, path: str, text: str) -> None:
        if path in getattr(self, "read_only", set()):
            raise OSError(13, "Permission denied", path)
        self.written = [*getattr(self, "written", []), path]
        self.files[path] = text

    def listdir(self, path: str) -> list[str] | None:
        prefix = path.rstrip("/") + "/"
        names = sorted({p[len(prefix):].split("/")[0] for p in self.files if p.startswith(prefix)})
        return names or None

    def glob(self, pattern: str) -> list[str]:
        import fnmatch

        cands = set(self.files) | set(self.executables.values())
        cands |= {os.path.dirname(p) for p in self.files}
        return sorted(p for p in cands if fnmatch.fnmatch(p, pattern))

    def walk_files(self, top: str) -> list[str]:
        prefix = top.rstrip("/") + "/"
        return sorted(p for p in self.files if p.startswith(prefix))

    def uname(self) -> dict[str, str]:
        return dict(self._uname)

    def python(self) -> dict[str, str]:
        return dict(self._python)

    def http_get(self, url: str, headers: dict[str, str], timeout: float | None = None) -> Any:
        self.requests.append((url, dict(headers)))
        if url in self.handlers:
            return self.handlers[url](url, dict(headers))
        answer = self.http.get(url)
        if answer is None:
            raise ProbeError(f"GET {url}: [Errno 111] Connection refused")
        if isinstance(answer, Exception):
            raise answer
        return answer

    def nvml(self, timeout: float | None = None) -> Any:
        if isinstance(self._nvml, Exception):
            raise self._nvml
        return self._nvml


# --------------------------------------------------------------------------- recorded nodes

LAB_CONFIG = (
    "allowed_urls=file:///var/lib/torchserve/model-store/.*\n"
    "default_workers_per_model=1\n"
    "disable_token_authorization=false\n"
    "enable_envvars_config=false\n"
    "enable_model_api=false\n"
    "inference_address=http://127.0.0.1:8080\n"
    "install_py_dep_per_model=false\n"
    "job_queue_size=50\n"
    "load_models=tiny-linear=tiny-linear.mar\n"
    "management_address=http://127.0.0.1:8081\n"
    "max_request_size=6553500\n"
    "max_response_size=6553500\n"
    "metrics_address=http://127.0.0.1:8082\n"
    "metrics_mode=prometheus\n"
    "model_store=/var/lib/torchserve/model-store\n"
)
LAB_MAR = b"PK\x03\x04 tiny-linear model archive bytes (recorded fixture)\n"
LAB_KEY_FILE = json.dumps({
    "management": {"key": "mgmt-SECRET-123", "expiration time": "2026-11-23T17:00:00Z"},
    "inference": {"key": "inf-SECRET-456", "expiration time": "2026-11-23T17:00:00Z"},
    "API": {"key": "api-SECRET-789"},
})

LAB_DPKG = [
    ("bash", "5.2.15-2+b8", "ii "),
    ("python3", "3.11.2-1+b1", "ii "),
    ("nvidia-driver", "535.309.01-0+deb12u1", "hi "),
    ("nvidia-kernel-dkms", "535.309.01-0+deb12u1", "hi "),
    ("libcuda1", "535.309.01-0+deb12u1", "ii "),
    ("libcudart11.0", "11.8.89~11.8.0-5~deb12u1", "hi "),
    ("docker.io", "20.10.24+dfsg1-1+deb12u1+b6", "hi "),
    ("containerd", "1.6.20~ds1-1+deb12u2", "ii "),
    ("nvidia-container-toolkit", "1.17.8-1", "hi "),
    ("nvidia-container-toolkit-base", "1.17.8-1", "hi "),
    ("openjdk-17-jre-headless", "17.0.21.1+2-1~deb12u1", "hi "),
    ("docker-ce", "", "un "),
]
LAB_PACKAGES = ["nvidia-driver", "nvidia-kernel-dkms", "libcudart11.0", "docker.io",
                "nvidia-container-toolkit", "nvidia-container-toolkit-base",
                "openjdk-17-jre-headless"]
LAB_PIP = ["pyyaml", "numpy"]

SYSTEMCTL_ACTIVE = recorded("systemctl-show-active.txt")


def dpkg_output(rows: list[tuple[str, str, str]]) -> str:
    return "".join(f"{n}\t{v}\t{s}\n" for n, v, s in rows)


def protection_files(rows: list[tuple[str, str, str]], names: list[str],
                     role: str = "stack") -> dict[str, str]:
    """The apt preferences and unattended-upgrades blacklist the roles write for `names`."""
    import re

    versions = {n: v for n, v, _ in rows}
    pref = "# managed by ansible (stacklock_packages: stack) - do not edit\n"
    black = 'Unattended-Upgrade::Package-Blacklist {\n    "nvidia-";\n'
    for name in sorted(names):
        pref += f"\nPackage: {name}\nPin: version {versions[name]}\nPin-Priority: 1001\n"
        black += f'    "^{re.escape(name)}$";\n'
    return {f"/etc/apt/preferences.d/stacklock-{role}.pref": pref,
            f"/etc/apt/apt.conf.d/51stacklock-{role}-unattended-upgrades": black + "};\n"}


def venv_output(python: str, packages: Mapping[str, str | None], torch_cuda: str | None) -> str:
    torch = {"version": packages["torch"], "cuda": torch_cuda, "source": "torch/version.py"}
    return json.dumps({"python": python, "executable": "/opt/torchserve/venv/bin/python",
                       "packages": dict(packages), "torch": torch}) + "\n"


def torchserve_api(models: Mapping[str, str], base: str = "http://127.0.0.1:8081") -> dict[
    str, tuple[int, str]
]:
    out = {f"{base}/models?limit=1000": (200, json.dumps({"models": [
        {"modelName": n, "modelUrl": f"{n}.mar"} for n in models]}))}
    for name, version in models.items():
        out[f"{base}/models/{name}"] = (200, json.dumps([{
            "modelName": name, "modelVersion": version, "modelUrl": f"{name}.mar",
            "workers": [{"id": "9000", "status": "READY"}]}]))
    return out


def lab_node(**overrides: Any) -> FakeSystem:
    """A provisioned lab node: Debian 12 container, no GPU, the lab stack installed."""
    kwargs: dict[str, Any] = {
        "commands": {
            "dpkg-query -W": (0, dpkg_output(LAB_DPKG), ""),
            "docker info": (0, json.dumps({"ServerVersion": "20.10.24+dfsg1",
                                           "DefaultRuntime": "runc",
                                           "Runtimes": {"runc": {}, "nvidia": {}}}) + "\n", ""),
            "nvidia-ctk --version": (0, "NVIDIA Container Toolkit CLI version 1.17.8\n"
                                        "commit: 6ed6f63\n", ""),
            "python -I": (0, venv_output("3.11.2", {
                "torch": "2.13.0+cpu", "torchserve": "0.12.0", "torch-model-archiver": "0.12.0",
                "pyyaml": "6.0.3", "numpy": "2.3.5"}, None), ""),
            "systemctl show": (0, SYSTEMCTL_ACTIVE, ""),
        },
        "files": {
            "/etc/os-release": 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/'
                               'Linux"\nVERSION_ID="12"\nVERSION_CODENAME=bookworm\nID=debian\n',
            "/etc/docker/daemon.json": json.dumps({"runtimes": {"nvidia": {"path": "nvidia-"
                                                                           "container-runtime"}}}),
            "/etc/torchserve/config.properties": LAB_CONFIG,
            "/var/lib/torchserve/model-store/tiny-linear.mar": LAB_MAR,
            "/var/lib/torchserve/key_file.json": LAB_KEY_FILE,
            "/opt/torchserve/venv/bin/python": "#!python",
            **protection_files(LAB_DPKG, LAB_PACKAGES),
            "/usr/lib/jvm/java-17-openjdk-amd64/release": 'IMPLEMENTOR="Debian"\n'
            'JAVA_RUNTIME_VERSION="17.0.21.1+2-Debian-1deb12u1"\nJAVA_VERSION="17.0.21.1"\n',
        },
        "executables": {
            "dpkg-query": "/usr/bin/dpkg-query", "docker": "/usr/bin/docker",
            "dockerd": "/usr/sbin/dockerd", "nvidia-ctk": "/usr/bin/nvidia-ctk",
            "java": "/usr/bin/java", "systemctl": "/usr/bin/systemctl",
        },
        "links": {"/usr/bin/java": "/usr/lib/jvm/java-17-openjdk-amd64/bin/java"},
        "http": torchserve_api({"tiny-linear": "1.0"}),
        "uname": {"kernel": "6.1.0-27-amd64", "architecture": "x86_64", "hostname": "dev-1"},
        "python": {"version": "3.11.2", "executable": "/usr/bin/python3"},
        "nvml": None,
    }
    kwargs.update(overrides)
    return FakeSystem(**kwargs)


H100_SMI = recorded("h100-nvidia-smi.csv")
H100_PROC = recorded("h100-proc-driver-nvidia-version.txt")
H100_DPKG = [
    ("cuda-toolkit-13-0", "13.0.2-1", "hi "),
    ("cuda-cudart-13-0", "13.0.96-1", "hi "),
    ("cuda-nvcc-13-0", "13.0.88-1", "ii "),
    ("cuda-runtime-13-0", "", "un "),
    ("docker-ce", "5:28.5.1-1~ubuntu.24.04~noble", "hi "),
    ("nvidia-container-toolkit", "1.18.0-1", "hi "),
    ("nvidia-container-toolkit-base", "1.18.0-1", "hi "),
    ("openjdk-17-jre-headless", "17.0.16+8~us1-0ubuntu1~24.04.1", "hi "),
    ("nvidia-driver-580-open", "", "un "),  # known to dpkg, never installed: the .run driver
]
H100_PACKAGES = ["cuda-toolkit-13-0", "cuda-cudart-13-0", "docker-ce", "nvidia-container-toolkit",
                 "openjdk-17-jre-headless"]


def h100_node(**overrides: Any) -> FakeSystem:
    """The real H100 node of compatibility.md (November 2026)."""
    kwargs: dict[str, Any] = {
        "commands": {
            "dpkg-query -W": (0, dpkg_output(H100_DPKG), ""),
            "nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total": (
                0, H100_SMI, ""),
            "nvcc --version": (0, recorded("h100-nvcc-version.txt"), ""),
            "docker info": (0, json.dumps({"ServerVersion": "28.5.1", "DefaultRuntime": "nvidia",
                                           "Runtimes": {"runc": {}, "nvidia": {}}}) + "\n", ""),
            "nvidia-ctk --version": (0, "NVIDIA Container Toolkit CLI version 1.18.0\n", ""),
            "java -version": (0, "", 'openjdk version "17.0.16" 2025-07-15\n'),
            "python -I": (0, venv_output("3.12.3", {
                "torch": "2.11.0+cu130", "torchserve": "0.12.0",
                "torch-model-archiver": "0.12.0", "pyyaml": "6.0.3", "numpy": "2.3.5"},
                "13.0"), ""),
            "systemctl show": (0, SYSTEMCTL_ACTIVE, ""),
        },
        "files": {
            "/etc/os-release": 'PRETTY_NAME="Ubuntu 24.04.3 LTS"\nNAME="Ubuntu"\n'
                               'VERSION_ID="24.04"\nVERSION_CODENAME=noble\nID=ubuntu\n',
            "/proc/driver/nvidia/version": H100_PROC,
            "/proc/driver/nvidia/gpus/0000:18:00.0/information": "Model: \t\t NVIDIA H100 80GB "
                                                                 "HBM3\nIRQ:   \t\t 16\n",
            "/usr/local/cuda-13.0/bin/nvcc": "#!elf",
            "/etc/docker/daemon.json": json.dumps({"default-runtime": "nvidia"}),
            "/etc/torchserve/config.properties": LAB_CONFIG,
            "/var/lib/torchserve/model-store/tiny-linear.mar": LAB_MAR,
            "/var/lib/torchserve/key_file.json": LAB_KEY_FILE,
            "/opt/torchserve/venv/bin/python": "#!python",
            **protection_files(H100_DPKG, H100_PACKAGES),
        },
        "executables": {
            "dpkg-query": "/usr/bin/dpkg-query", "nvidia-smi": "/usr/bin/nvidia-smi",
            "docker": "/usr/bin/docker", "nvidia-ctk": "/usr/bin/nvidia-ctk",
            "java": "/usr/bin/java", "systemctl": "/usr/bin/systemctl",
        },
        "http": torchserve_api({"tiny-linear": "1.0"}),
        "uname": {"kernel": "6.18.0-1004-nvidia", "architecture": "x86_64", "hostname": "h100-1"},
        "python": {"version": "3.12.3", "executable": "/usr/bin/python3"},
        "nvml": None,
    }
    kwargs.update(overrides)
    return FakeSystem(**kwargs)


def gather(system: FakeSystem, **opts: Any) -> dict[str, Any]:
    options = dict(DEFAULT_OPTS, **opts)
    result: dict[str, Any] = _gather(options, system)
    return result


def stable(facts: dict[str, Any]) -> dict[str, Any]:
    """The facts without the run-dependent timing."""
    return {k: v for k, v in facts.items() if k != "seconds"}


