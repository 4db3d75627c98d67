#!/usr/bin/python
# Copyright: stacklock contributors. Apache-2.0.
"""Gather the GPU model-serving stack of one node, read-only, in a single execution.

Python standard library only: it runs on the node with the node's python3.
Every probe is bounded by a timeout; a failed probe records an ``error`` for its section and
never fails the module. The schema (``stacklock.facts/v1``) is documented in docs/facts.md.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob as _glob
import hashlib
import json
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import threading
import time

DOCUMENTATION = r"""
---
module: stacklock_stack_facts
short_description: Gather the pinned GPU serving stack of a node (stacklock.facts/v1)
description:
  - Reads, in one execution and without changing anything, the OS, the GPUs, the running
    NVIDIA driver and the installed driver packages, the CUDA toolkit, Docker and its default
    runtime, the nvidia-container-toolkit, Java, Python, torch and TorchServe inside the
    service's virtualenv, the sha256 of TorchServe's config and of every model archive, the
    models TorchServe serves, the systemd state of torchserve and docker, dpkg holds and the
    installed version of each package named in O(packages).
  - Every probe is bounded by O(probe_timeout); a probe that fails records C(error) in its
    section (and in C(errors)) instead of failing the module. A probe that could not look
    (permission denied, timeout, token refused, a crash) says so with C(could not look:) and is
    listed in C(blocked): its value is unknown, not absent.
  - Read-only, with one exception: when TorchServe refuses the management or inference key
    (the keys in key_file.json expire C(token_expiration_min) after TorchServe started, 60
    minutes by default), the module asks TorchServe's own token API for a fresh key of that kind
    with the API key (which does not expire) and retries once. A refused key is an expired key,
    so no working key is taken from anyone. A smoke test (O(smoke)) is one inference request per
    model; the model answers it as any client's.
  - Returns C(ansible_facts.stacklock_stack); the schema is documented in docs/facts.md.
version_added: "0.1.0"
options:
  packages:
    description: apt package names whose installed version and hold state are reported.
    type: list
    elements: str
    default: []
  package_families:
    description:
      - Shell globs (fnmatch) of the pinned components' package families (C(nvidia-*),
        C(libnvidia-*), C(cuda-*)). Every installed package whose name matches one is reported
        in C(family_packages) with its version and hold, so that C(stacklock verify) sees a
        family member the lock does not pin.
    type: list
    elements: str
    default: []
  pip_packages:
    description: extra Python distributions whose version is read inside the venv.
    type: list
    elements: str
    default: []
  torchserve_venv:
    description: TorchServe's virtualenv.
    type: path
    default: /opt/torchserve/venv
  torchserve_config:
    description: TorchServe's config.properties.
    type: path
    default: /etc/torchserve/config.properties
  torchserve_model_store:
    description: the model store whose C(.mar) files are hashed.
    type: path
    default: /var/lib/torchserve/model-store
  torchserve_key_file:
    description:
      - TorchServe's key_file.json (token authorization). When not set, the working
        directories C(/var/lib/torchserve), C(/opt/torchserve) and C(/etc/torchserve) are tried.
    type: path
  torchserve_management_url:
    description: TorchServe's management API.
    type: str
    default: http://127.0.0.1:8081
  torchserve_inference_url:
    description: TorchServe's inference API (the smoke tests' C(/predictions/NAME/VERSION)).
    type: str
    default: http://127.0.0.1:8080
  smoke:
    description:
      - the models whose smoke test runs, as the lock renders them (C(torchserve_models) entries
        with a C(smoke)), each C({name, version, smoke: {input_base64, input_sha256,
        content_type, ...}}). The module POSTs the input to
        C(/predictions/NAME/VERSION) with the inference key and reports the response's status,
        sha256 and numbers under C(torchserve.smoke.NAME); the comparison happens on the
        controller (stacklock.parity).
    type: list
    elements: dict
    default: []
  probe_timeout:
    description: seconds each probe (command, HTTP request) may take.
    type: float
    default: 10
  use_nvml:
    description: read GPUs through NVML first when pynvml is importable.
    type: bool
    default: true
  inventory:
    description:
      - also report every installed dpkg package (name, version, architecture) as
        C(os_packages), for the SBOM and C(stacklock diff). Off by default, so that verify
        returns only what it compares.
    type: bool
    default: false
  run_id:
    description:
      - an identifier of this verification run, returned as C(run_id), so that the comparison
        can tell facts of this run from stale facts (a fact cache, an earlier run).
    type: str
  deep:
    description:
      - hash every model archive again, ignoring the archive digest cache.
    type: bool
    default: false
  archive_cache:
    description:
      - where the digests of model archives are kept between runs (root, 0600), each with the
        file's identity (device, inode, size, mtime, ctime); a digest is reused only while that
        identity is unchanged. An empty string disables the cache. This file is the module's
        second write (the first renews an expired TorchServe key); it is not written in check
        mode.
    type: str
    default: /var/cache/stacklock/archive-digests.json
  archive_hash_timeout:
    description:
      - seconds all archive hashing of one run may take; an archive still unhashed then is
        reported as could-not-look (exit 3), and the digests finished so far are cached, so
        the next run goes on where this one stopped.
    type: float
    default: 300
attributes:
  check_mode:
    support: full
author: stacklock
"""

EXAMPLES = r"""
- name: Gather the stack
  stacklock_stack_facts:
    packages: [docker.io, nvidia-driver]
"""

RETURN = r"""
ansible_facts:
  description: C(stacklock_stack), a dict with C(schema=stacklock.facts/v1).
  returned: always
  type: dict
"""

SCHEMA = "stacklock.facts/v1"

DEFAULT_KEY_FILES = (
    "/var/lib/torchserve/key_file.json",
    "/opt/torchserve/key_file.json",
    "/etc/torchserve/key_file.json",
)

#: dpkg names that carry the NVIDIA driver (Debian, Ubuntu, NVIDIA's CUDA repository)
DRIVER_PACKAGE_RE = re.compile(
    r"^(nvidia-driver(-\d+)?(-open|-server|-server-open)?|nvidia-open(-\d+)?|cuda-drivers(-\d+)?"
    r"|nvidia-kernel-(dkms|open-dkms|source|common(-\d+)?)|nvidia-open-kernel-dkms"
    r"|nvidia-dkms-\d+(-open|-server)?"
    r"|libnvidia-compute-\d+(-server)?|nvidia-utils-\d+(-server)?|nvidia-headless-\d+.*"
    r"|nvidia-smi|firmware-nvidia-gsp.*|nvidia-firmware-\d+.*|libcuda1)$"
)
#: the package whose upstream version is the driver version, most specific first
DRIVER_VERSION_PACKAGE_RE = (
    re.compile(r"^nvidia-driver(-\d+)?(-open|-server|-server-open)?$"),
    re.compile(r"^cuda-drivers(-\d+)?$"),
    re.compile(r"^nvidia-open(-\d+)?$"),
    re.compile(r"^nvidia-(open-)?kernel-(open-)?dkms$"),
    re.compile(r"^nvidia-dkms-\d+(-open|-server)?$"),
    re.compile(r"^libnvidia-compute-\d+(-server)?$"),
    re.compile(r"^nvidia-utils-\d+(-server)?$"),
    re.compile(r"^libcuda1$"),
)
CUDA_PACKAGE_RE = re.compile(
    r"^(cuda-toolkit-\d+-\d+|cuda-cudart-\d+-\d+|cuda-nvcc-\d+-\d+|cuda-runtime-\d+-\d+"
    r"|cuda-libraries-\d+-\d+|libcudart\d+(\.\d+)?|nvidia-cuda-toolkit)$"
)
DOCKER_PACKAGES = ("docker-ce", "docker.io", "moby-engine", "docker-engine")
TOOLKIT_PACKAGES = ("nvidia-container-toolkit", "nvidia-container-toolkit-base")
SERVICES = ("torchserve", "docker")

#: run inside TorchServe's venv: versions via importlib.metadata, torch.version.cuda without
#: importing torch when possible (parsing torch/version.py is ~1000x faster than `import torch`)
VENV_SCRIPT = r"""
import ast, importlib.metadata as md, importlib.util, json, os, sys
out = {"python": "%d.%d.%d" % sys.version_info[:3], "executable": sys.executable,
       "packages": {}, "torch": {}}
import re
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
for name in json.loads(sys.argv[1]):
    try:
        out["packages"][name] = md.version(name)
    except md.PackageNotFoundError:
        out["packages"][name] = None
out["distributions"] = {}
for dist in md.distributions():
    name = dist.metadata["Name"] if dist.metadata else None
    if name:
        out["distributions"][norm(name)] = dist.version
try:
    spec = importlib.util.find_spec("torch")
except Exception as exc:
    spec = None
    out["torch"]["error"] = "%s: %s" % (type(exc).__name__, exc)
if spec is not None and spec.origin:
    path = os.path.join(os.path.dirname(spec.origin), "version.py")
    try:
        values = {}
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read())
        for node in tree.body:
            target = None
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                target, value = node.target, node.value
            if isinstance(target, ast.Name):
                try:
                    values[target.id] = ast.literal_eval(value)
                except ValueError:
                    pass
        out["torch"] = {"version": values["__version__"], "cuda": values.get("cuda"),
                        "source": "torch/version.py"}
    except Exception:
        try:
            import torch
            out["torch"] = {"version": torch.__version__, "cuda": torch.version.cuda,
                            "source": "import torch"}
        except Exception as exc:
            out["torch"] = {"error": "import torch: %s: %s" % (type(exc).__name__, exc)}
elif "error" not in out["torch"]:
    out["torch"]["error"] = "torch is not installed in %s" % sys.prefix
print(json.dumps(out))
"""


class ProbeError(Exception):
    """A probe could not produce its value; the message is recorded as the section's error."""


class ApiError(ProbeError):
    """The service answered, but not with what was asked for (HTTP 500, not JSON)."""


#: every message of a probe that could not look starts with this (the parity comparison
#: reports such a component as "could not look", exit 3, never as a deviation)
CANNOT_LOOK = "could not look: "


class CannotLook(ProbeError):
    """The probe could not look (permission denied, timeout, authentication refused, a crash):
    the value is unknown, which is not the same as absent or different."""

    def __init__(self, message):
        super().__init__(message if message.startswith(CANNOT_LOOK) else CANNOT_LOOK + message)


#: HTTP statuses TorchServe answers a missing, wrong or expired token with
AUTH_REFUSED = (400, 401, 403)


class Result:
    def __init__(self, rc, stdout, stderr):
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr


class System:
    """Everything the module reads from the node. Tests replace it with a fake."""

    def __init__(self, timeout=10.0):
        self.timeout = timeout

    def run(self, argv, timeout=None):
        """Run argv (no shell). Raises ProbeError when it is missing or times out."""
        limit = timeout or self.timeout
        env = dict(os.environ, LC_ALL="C", LANG="C")
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=limit, env=env, check=False,
                stdin=subprocess.DEVNULL,
            )
        except FileNotFoundError:
            raise ProbeError(f"{argv[0]}: command not found") from None
        except subprocess.TimeoutExpired:
            raise CannotLook("{}: timed out after {:.0f} s".format(" ".join(argv), limit)) from None
        except OSError as exc:
            raise CannotLook(f"{argv[0]}: {exc}") from None
        return Result(proc.returncode, proc.stdout or "", proc.stderr or "")

    def which(self, name):
        path = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        return shutil.which(name, path=path)

    def realpath(self, path):
        return os.path.realpath(path)

    def exists(self, path):
        return os.path.exists(path)

    def read_text(self, path):
        """The file's text, or None when it does not exist. Other errors raise ProbeError."""
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CannotLook(f"{path}: {exc}") from None

    def sha256(self, path):
        digest = hashlib.sha256()
        try:
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CannotLook(f"{path}: {exc}") from None
        return digest.hexdigest()

    def now(self):
        return time.monotonic()

    def sha256_until(self, path, deadline):
        """sha256 of the file, or CannotLook once `deadline` (monotonic) has passed."""
        digest = hashlib.sha256()
        try:
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
                    if time.monotonic() > deadline:
                        raise CannotLook(f"{path}: hashing did not finish in time")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CannotLook(f"{path}: {exc}") from None
        return digest.hexdigest()

    def file_identity(self, path):
        """[device, inode, size, mtime_ns, ctime_ns] of a regular file, else None."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]

    def read_private(self, path):
        """The text of a file only root (this process's user) can have written: owned by the
        effective user, no group/other permissions, not a symlink; else None."""
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if st.st_uid != os.geteuid() or st.st_mode & 0o077 or not stat.S_ISREG(st.st_mode):
                return None
            with os.fdopen(fd, encoding="utf-8", errors="replace") as fh:
                fd = -1
                return fh.read(1 << 22)
        finally:
            if fd >= 0:
                os.close(fd)

    def write_private(self, path, text):
        """Write `text` atomically, 0600 in a 0700 directory. Raises OSError."""
        folder = os.path.dirname(path)
        os.makedirs(folder, mode=0o700, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def listdir(self, path):
        try:
            return sorted(os.listdir(path))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CannotLook(f"{path}: {exc}") from None

    def glob(self, pattern):
        return sorted(_glob.glob(pattern))

    def walk_files(self, top):
        """Every file path below `top` (no symlinked directories followed)."""
        for base, _dirs, files in os.walk(top):
            for name in files:
                yield os.path.join(base, name)

    def uname(self):
        u = platform.uname()
        return {"kernel": u.release, "architecture": u.machine, "hostname": u.node}

    def python(self):
        return {
            "version": "{}.{}.{}".format(*sys.version_info[:3]),
            "executable": sys.executable,
        }

    def http_get(self, url, headers, timeout=None):
        """(status, body). Connection problems raise ProbeError. Never uses a proxy."""
        import urllib.error
        import urllib.request

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        req = urllib.request.Request(url, headers=headers)
        try:
            with opener.open(req, timeout=timeout or self.timeout) as resp:
                return resp.status, resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            body = exc.read().decode("utf-8", "replace") if exc.fp else ""
            return exc.code, body
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            where = url.split("?")[0]
            if isinstance(reason, TimeoutError) or "timed out" in str(reason):
                raise CannotLook(f"GET {where}: no answer within {timeout or self.timeout:.0f} s") \
                    from None
            raise ProbeError(f"GET {where}: {reason}") from None

    def http_post(self, url, headers, body, timeout=None, limit=1 << 20):
        """(status, body bytes, truncated) of a POST. At most `limit` bytes of the answer are
        read. Connection problems raise ProbeError, a timeout CannotLook. Never uses a proxy."""
        import urllib.error
        import urllib.request

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        req = urllib.request.Request(url, data=body, headers=headers, method="POST")
        where = url.split("?")[0]
        try:
            with opener.open(req, timeout=timeout or self.timeout) as resp:
                data = resp.read(limit + 1)
                return resp.status, data[:limit], len(data) > limit
        except urllib.error.HTTPError as exc:
            data = exc.read(limit + 1) if exc.fp else b""
            return exc.code, data[:limit], len(data) > limit
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, TimeoutError) or "timed out" in str(reason):
                raise CannotLook(f"POST {where}: no answer within {timeout or self.timeout:.0f} s") \
                    from None
            raise ProbeError(f"POST {where}: {reason}") from None

    def nvml(self, timeout=None):
        """GPU list through NVML, or None when pynvml is not importable."""
        try:
            import pynvml  # type: ignore[import-not-found]
        except Exception:
            return None
        box = {}

        def work():
            try:
                pynvml.nvmlInit()
                try:
                    driver = pynvml.nvmlSystemGetDriverVersion()
                    driver = driver.decode() if isinstance(driver, bytes) else driver
                    gpus = []
                    for i in range(pynvml.nvmlDeviceGetCount()):
                        h = pynvml.nvmlDeviceGetHandleByIndex(i)
                        name = pynvml.nvmlDeviceGetName(h)
                        name = name.decode() if isinstance(name, bytes) else name
                        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
                        mem = pynvml.nvmlDeviceGetMemoryInfo(h).total // (1024 * 1024)
                        gpus.append({"index": i, "name": name, "driver_version": driver,
                                     "compute_capability": f"{major}.{minor}",
                                     "memory_mib": int(mem)})
                    box["gpus"] = gpus
                finally:
                    pynvml.nvmlShutdown()
            except Exception as exc:
                box["error"] = f"NVML: {exc}"

        t = threading.Thread(target=work, daemon=True)
        t.start()
        t.join(timeout or self.timeout)
        if t.is_alive():
            raise CannotLook("NVML: timed out")
        if "error" in box:
            raise ProbeError(box["error"])
        return box.get("gpus", [])


# --------------------------------------------------------------------------- helpers


def upstream_version(debian_version):
    """`5:27.3.1-1~debian.12` -> `27.3.1`; `20.10.24+dfsg1-1+deb12u1+b6` -> `20.10.24`."""
    if not debian_version:
        return None
    m = re.match(r"^(?:\d+:)?(\d+(?:\.\d+)*)", debian_version)
    return m.group(1) if m else None


def major_minor(version):
    if not version:
        return None
    m = re.match(r"^(\d+)\.(\d+)", version)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def _first_line(text):
    text = (text or "").strip()
    return text.splitlines()[-1] if text else ""


def _cmd_error(argv, res):
    tail = _first_line(res.stderr or res.stdout)
    return f"{' '.join(argv)} exited {res.rc}: {tail}"


# --------------------------------------------------------------------------- probes


def probe_os(sy):
    out = sy.uname()
    text = sy.read_text("/etc/os-release")
    values = {}
    for line in (text or "").splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            values[k.strip()] = v.strip().strip('"').strip("'")
    out.update({
        "distribution": values.get("ID"),
        "release": values.get("VERSION_ID"),
        "codename": values.get("VERSION_CODENAME"),
        "pretty_name": values.get("PRETTY_NAME"),
    })
    if text is None:
        out["error"] = "/etc/os-release not found"
    return out


def probe_dpkg(sy, inventory=None):
    """All packages dpkg knows: {name: {version, status, held}} (one dpkg-query call).

    `inventory`, a list, receives every installed package as {name, version, architecture,
    status}, foreign-architecture ones (multiarch) included."""
    argv = ["dpkg-query", "-W",
            "-f=${Package}\t${Version}\t${db:Status-Abbrev}\t${Architecture}\n"]
    res = sy.run(argv)
    if res.rc != 0:
        raise CannotLook(_cmd_error(argv, res))
    pkgs = {}
    for line in res.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        name, version, abbrev = parts[0], parts[1], parts[2]
        arch = parts[3].strip() if len(parts) > 3 else ""
        want = abbrev[:1]
        state = abbrev[1:2]
        installed = state in ("i", "U", "F", "W", "t")  # installed, or half-way there
        entry = {"version": version if installed else None,
                 "status": "installed" if state == "i" else ("config-files" if state == "c"
                                                             else "not-installed" if state == "n"
                                                             else "half-installed"),
                 "held": want == "h"}
        prev = pkgs.get(name)
        if prev is None or (entry["version"] and not prev["version"]):
            pkgs[name] = entry
        if inventory is not None and entry["version"]:
            inventory.append({"name": name, "version": version, "architecture": arch or None,
                              "status": entry["status"]})
    if inventory is not None:
        inventory.sort(key=lambda e: (e["name"], e["architecture"] or "", e["version"]))
    return pkgs


def family_packages(dpkg, globs):
    """{name: {version, held}} of every installed package whose name matches one of `globs`."""
    return {name: {"version": e["version"], "held": e["held"]}
            for name, e in sorted(dpkg.items())
            if e["version"] and any(fnmatch.fnmatchcase(name, g) for g in globs)}


def parse_nvidia_smi(text):
    gpus = []
    for i, line in enumerate(x for x in text.splitlines() if x.strip()):
        cols = [c.strip() for c in line.split(",")]
        if len(cols) < 4:
            raise ProbeError(f"unexpected nvidia-smi line: {line!r}")
        mem = re.match(r"^(\d+)", cols[3])
        gpus.append({
            "index": i,
            "name": cols[0],
            "driver_version": cols[1],
            "compute_capability": cols[2] if re.match(r"^\d+\.\d+$", cols[2]) else None,
            "memory_mib": int(mem.group(1)) if mem else None,
        })
    return gpus


def parse_proc_version(text):
    """(`580.159.04`, `open`) from /proc/driver/nvidia/version."""
    m = re.search(r"Kernel Module(?:\s+for\s+\S+)?\s+(\d+\.\d+(?:\.\d+)?)", text or "")
    if not m:
        return None, None
    module = "open" if "Open Kernel Module" in text else "proprietary"
    return m.group(1), module


def probe_gpu(sy, use_nvml):
    """GPUs and the running driver: NVML, then nvidia-smi, then /proc."""
    errors = []
    gpus, source = None, None
    if use_nvml:
        try:
            found = sy.nvml()
            if found is not None:
                gpus, source = found, "nvml"
        except ProbeError as exc:
            errors.append(str(exc))
    if gpus is None:
        smi = sy.which("nvidia-smi")
        if smi:
            fields = "name,driver_version,compute_cap,memory.total"
            argv = [smi, "--query-gpu=" + fields, "--format=csv,noheader"]
            try:
                res = sy.run(argv)
                if res.rc != 0 and "compute_cap" in (res.stdout + res.stderr):
                    argv = [smi, "--query-gpu=name,driver_version,pci.bus_id,memory.total",
                            "--format=csv,noheader"]
                    res = sy.run(argv)
                if res.rc == 0:
                    gpus, source = parse_nvidia_smi(res.stdout), "nvidia-smi"
                else:
                    errors.append(_cmd_error(argv, res))
            except ProbeError as exc:
                errors.append(str(exc))
    proc_text = None
    try:
        proc_text = sy.read_text("/proc/driver/nvidia/version")
    except ProbeError as exc:
        errors.append(str(exc))
    proc_version, kernel_module = parse_proc_version(proc_text) if proc_text else (None, None)
    if gpus is None and proc_text is not None:
        gpus, source = [], "proc"
        for d in sy.glob("/proc/driver/nvidia/gpus/*"):
            info = sy.read_text(os.path.join(d, "information")) or ""
            m = re.search(r"^Model:\s*(.+)$", info, re.M)
            gpus.append({"index": len(gpus), "name": m.group(1).strip() if m else None,
                         "driver_version": proc_version, "compute_capability": None,
                         "memory_mib": None})
    out = {"present": bool(gpus), "count": len(gpus or []), "source": source,
           "devices": gpus or []}
    if gpus:
        first = gpus[0]
        out.update({"name": first["name"], "compute_capability": first["compute_capability"],
                    "memory_mib": first["memory_mib"]})
        names = sorted({g["name"] for g in gpus if g["name"]})
        if len(names) > 1:
            out["name"] = ", ".join(names)
    else:
        out.update({"name": None, "compute_capability": None, "memory_mib": None})
    running = None
    if gpus and gpus[0].get("driver_version"):
        running = gpus[0]["driver_version"]
    elif proc_version:
        running = proc_version
    if errors and not gpus:
        out["error"] = "; ".join(errors)
    return out, {"running": running, "kernel_module": kernel_module,
                 "proc_version": proc_version,
                 "running_source": source if running and source != "proc" else
                 ("proc" if running else None)}


#: the driver's main kernel module file (Debian's DKMS package names it nvidia-current)
NVIDIA_KO_RE = re.compile(r"^nvidia(-current)?\.ko(\.(xz|zst|gz))?$")


def probe_kernels(sy, root="/lib/modules"):
    """{kernel release: True/False}: whether each installed kernel has the NVIDIA module.

    A kernel update whose DKMS build failed leaves the next boot without a driver; this shows
    it before the reboot. Kernels without modules.dep (leftover directories) are skipped."""
    out = {}
    for kdir in sy.glob(os.path.join(root, "*")):
        if not sy.exists(os.path.join(kdir, "modules.dep")):
            continue
        out[os.path.basename(kdir)] = any(
            NVIDIA_KO_RE.match(os.path.basename(f)) for f in sy.walk_files(kdir))
    return out


def probe_driver(running, dpkg):
    packages = {}
    version_from_pkg = None
    for name in sorted(dpkg or {}):
        e = dpkg[name]
        if e["version"] and DRIVER_PACKAGE_RE.match(name):
            packages[name] = e["version"]
    for rx in DRIVER_VERSION_PACKAGE_RE:
        hits = [n for n in packages if rx.match(n)]
        if hits:
            version_from_pkg = upstream_version(packages[sorted(hits)[-1]])
            break
    out = {
        "running_version": running["running"],
        "running_source": running["running_source"],
        "kernel_module": running["kernel_module"],
        "packages": packages,
        "package_version": version_from_pkg,
        "version": running["running"] or version_from_pkg,
        "source": running["running_source"] or ("package" if version_from_pkg else None),
    }
    return out


def probe_cuda(sy, dpkg):
    out = {"version": None, "full_version": None, "source": None, "nvcc": None,
           "version_json": None, "packages": {}}
    errors = []
    nvcc = sy.which("nvcc")
    if not nvcc:
        for cand in ["/usr/local/cuda/bin/nvcc", *sy.glob("/usr/local/cuda-*/bin/nvcc")[::-1]]:
            if sy.exists(cand):
                nvcc = cand
                break
    if nvcc:
        try:
            res = sy.run([nvcc, "--version"])
            m = re.search(r"release (\d+\.\d+), V(\d+\.\d+\.\d+)", res.stdout)
            if res.rc == 0 and m:
                out["nvcc"] = {"path": nvcc, "release": m.group(1), "version": m.group(2)}
            else:
                errors.append(_cmd_error([nvcc, "--version"], res))
        except ProbeError as exc:
            errors.append(str(exc))
    try:
        text = sy.read_text("/usr/local/cuda/version.json")
        if text is not None:
            data = json.loads(text)
            out["version_json"] = (data.get("cuda") or {}).get("version")
        else:
            txt = sy.read_text("/usr/local/cuda/version.txt")
            m = re.search(r"CUDA Version (\d+\.\d+(?:\.\d+)?)", txt or "")
            if m:
                out["version_json"] = m.group(1)
    except (ProbeError, ValueError, AttributeError) as exc:
        errors.append(f"/usr/local/cuda/version.json: {exc}")
    for name in sorted(dpkg or {}):
        if dpkg[name]["version"] and CUDA_PACKAGE_RE.match(name):
            out["packages"][name] = dpkg[name]["version"]
    pkg_full = None
    for rx in (r"^cuda-toolkit-(\d+)-(\d+)$", r"^cuda-cudart-(\d+)-(\d+)$",
               r"^cuda-runtime-(\d+)-(\d+)$", r"^cuda-nvcc-(\d+)-(\d+)$"):
        hits = sorted(n for n in out["packages"] if re.match(rx, n))
        if hits:
            name = hits[-1]
            m = re.match(rx, name)
            mm = f"{m.group(1)}.{m.group(2)}"
            full = upstream_version(out["packages"][name])
            pkg_full = full if major_minor(full) == mm else mm
            break
    if pkg_full is None:
        for name in sorted(out["packages"]):
            if name.startswith("libcudart") or name == "nvidia-cuda-toolkit":
                pkg_full = upstream_version(out["packages"][name])
    if out["nvcc"]:
        out["full_version"], out["source"] = out["nvcc"]["version"], "nvcc"
    elif out["version_json"]:
        out["full_version"], out["source"] = out["version_json"], "version.json"
    elif pkg_full:
        out["full_version"], out["source"] = pkg_full, "package"
    out["version"] = major_minor(out["full_version"])
    if errors and not out["version"]:
        out["error"] = "; ".join(errors)
    return out


def probe_docker(sy, dpkg):
    out = {"version": None, "raw_version": None, "source": None, "default_runtime": None,
           "default_runtime_source": None, "runtimes": [], "package": None}
    errors = []
    docker = sy.which("docker")
    if docker:
        argv = [docker, "info", "--format", "{{json .}}"]
        try:
            res = sy.run(argv)
            if res.rc == 0:
                info = json.loads(res.stdout.strip().splitlines()[-1])
                out["raw_version"] = info.get("ServerVersion")
                out["source"] = "docker info"
                out["default_runtime"] = info.get("DefaultRuntime")
                out["default_runtime_source"] = "docker info" if out["default_runtime"] else None
                out["runtimes"] = sorted((info.get("Runtimes") or {}).keys())
            else:
                errors.append(_cmd_error(argv, res))
        except (ProbeError, ValueError, IndexError) as exc:
            errors.append(f"docker info: {exc}")
    if not out["raw_version"]:
        dockerd = sy.which("dockerd")
        if dockerd:
            try:
                res = sy.run([dockerd, "--version"])
                m = re.search(r"version ([0-9][^\s,]*)", res.stdout)
                if res.rc == 0 and m:
                    out["raw_version"], out["source"] = m.group(1), "dockerd --version"
            except ProbeError as exc:
                errors.append(str(exc))
    for name in DOCKER_PACKAGES:
        e = (dpkg or {}).get(name)
        if e and e["version"]:
            out["package"] = {"name": name, "version": e["version"]}
            if not out["raw_version"]:
                out["raw_version"], out["source"] = e["version"], "package"
            break
    out["version"] = upstream_version(out["raw_version"])
    if not out["default_runtime"]:
        try:
            text = sy.read_text("/etc/docker/daemon.json")
            conf = json.loads(text) if text and text.strip() else {}
            if conf.get("default-runtime"):
                out["default_runtime"] = conf["default-runtime"]
                out["default_runtime_source"] = "/etc/docker/daemon.json"
            out["runtimes"] = sorted(set(out["runtimes"]) | set(conf.get("runtimes") or {}))
        except (ProbeError, ValueError, AttributeError) as exc:
            errors.append(f"/etc/docker/daemon.json: {exc}")
        if not out["default_runtime"] and out["version"]:
            out["default_runtime"], out["default_runtime_source"] = "runc", "docker default"
    if errors:
        out["warnings"] = errors
    if errors and not out["version"]:
        out["error"] = "; ".join(errors)
    return out


def probe_toolkit(sy, dpkg):
    out = {"version": None, "source": None, "packages": {}}
    for name in TOOLKIT_PACKAGES:
        e = (dpkg or {}).get(name)
        if e and e["version"]:
            out["packages"][name] = e["version"]
    ctk = sy.which("nvidia-ctk")
    err = None
    if ctk:
        try:
            res = sy.run([ctk, "--version"])
            m = re.search(r"version (\d+\.\d+\.\d+)", res.stdout)
            if res.rc == 0 and m:
                out["version"], out["source"] = m.group(1), "nvidia-ctk"
            else:
                err = _cmd_error([ctk, "--version"], res)
        except ProbeError as exc:
            err = str(exc)
    if not out["version"]:
        for name in TOOLKIT_PACKAGES:
            if name in out["packages"]:
                out["version"] = upstream_version(out["packages"][name])
                out["source"] = "package"
                break
    if err and not out["version"]:
        out["error"] = err
    return out


def probe_java(sy, dpkg):
    out = {"version": None, "major": None, "source": None, "packages": {}}
    for name in sorted(dpkg or {}):
        if re.match(r"^openjdk-\d+-(jre|jdk)(-headless)?$", name) and dpkg[name]["version"]:
            out["packages"][name] = dpkg[name]["version"]
    java = sy.which("java") or next(iter(sy.glob("/usr/lib/jvm/*/bin/java")[::-1]), None)
    err = None
    if java:
        # the JDK's `release` file next to bin/java: no JVM start (30 nodes on 2 cores...)
        home = os.path.dirname(os.path.dirname(sy.realpath(java)))
        try:
            text = sy.read_text(os.path.join(home, "release")) or ""
        except ProbeError:
            text = ""
        m = re.search(r'^JAVA_VERSION="([^"]+)"', text, re.M)
        if m:
            out["version"], out["source"] = m.group(1), os.path.join(home, "release")
            out["home"] = home
    if java and not out["version"]:
        try:
            res = sy.run([java, "-version"])
            text = res.stderr + res.stdout
            m = re.search(r'version "([^"]+)"', text)
            if res.rc == 0 and m:
                out["version"], out["source"] = m.group(1), "java -version"
            else:
                err = _cmd_error([java, "-version"], res)
        except ProbeError as exc:
            err = str(exc)
    if out["version"]:
        v = out["version"]
        out["major"] = v.split(".")[1] if v.startswith("1.") else re.split(r"[.+_-]", v)[0]
    elif out["packages"]:
        name = sorted(out["packages"])[-1]
        out["major"] = re.match(r"^openjdk-(\d+)", name).group(1)
        out["version"], out["source"] = upstream_version(out["packages"][name]), "package"
    if err and not out["major"]:
        out["error"] = err
    return out


def probe_venv(sy, venv, extra):
    py = os.path.join(venv, "bin", "python")
    out = {"path": venv, "python": None, "packages": {}, "torch": None}
    if not sy.exists(py):
        out["error"] = f"{py} not found"
        return out
    names = ["torch", "torchserve", "torch-model-archiver"]
    names += [n for n in extra if n not in names]
    argv = [py, "-I", "-c", VENV_SCRIPT, json.dumps(names)]
    res = sy.run(argv)
    if res.rc != 0:
        out["error"] = f"{py} exited {res.rc}: {_first_line(res.stderr)}"
        return out
    try:
        data = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        out["error"] = f"{py} printed no JSON: {_first_line(res.stdout)}"
        return out
    out["python"] = data.get("python")
    out["packages"] = data.get("packages") or {}
    out["torch"] = data.get("torch") or {}
    dists = data.get("distributions")
    if isinstance(dists, dict):
        out["distributions"] = dict(sorted(dists.items()))
        if extra:  # the locked closure was named: what else is in the venv
            locked = {_norm(n) for n in names}
            out["unlocked"] = {n: v for n, v in out["distributions"].items() if n not in locked}
    return out


def _norm(name):
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", str(name)).lower()


def _keys(sy, key_file, kind="management"):
    """(path, key of `kind`, API key) from TorchServe's key_file.json; (None, None, None)
    when there is none (token authorization off). Unreadable or without that key: CannotLook."""
    candidates = [key_file] if key_file else list(DEFAULT_KEY_FILES)
    for path in candidates:
        text = sy.read_text(path)
        if text is None:
            continue
        try:
            data = json.loads(text)
            return path, data[kind]["key"], (data.get("API") or {}).get("key")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise CannotLook(f"{path}: no {kind} key in it") from None
    return None, None, None


def refresh_key(sy, base, api_key, kind):
    """Ask TorchServe for a fresh `kind` key (its own token API, authorized by the API key,
    which never expires); TorchServe rewrites key_file.json. True when it said yes.

    Used only after the current key was refused: a key TorchServe refuses is expired (the
    inference and management keys live `token_expiration_min`, 60 minutes by default), so
    nobody loses a working key by this."""
    if not api_key:
        return False
    try:
        status, _body = sy.http_get(f"{base}/token?type={kind}",
                                    {"Authorization": f"Bearer {api_key}"})
    except ProbeError:
        return False
    return status == 200


def probe_torchserve_api(sy, base_url, key_file):
    """(running, models, error, key_path, refreshed). models: {name: {version, workers,
    workers_ready}}. A refused key is renewed once through TorchServe's token API."""
    base = base_url.rstrip("/")
    key_path, key, api_key = _keys(sy, key_file)
    refreshed = False

    def get(url):
        nonlocal key_path, key, api_key, refreshed
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        status, body = sy.http_get(url, headers)
        if status in AUTH_REFUSED and key and not refreshed:
            refreshed = refresh_key(sy, base, api_key, "management")
            if refreshed:
                key_path, key, api_key = _keys(sy, key_file)
                status, body = sy.http_get(url, {"Authorization": f"Bearer {key}"})
        if status in AUTH_REFUSED:
            where = url.split("?")[0]
            how = ("even with a fresh key from TorchServe's token API" if refreshed else
                   "and no fresh key could be had (API key missing or refused)" if key else
                   "and no key file was found")
            raise CannotLook(f"GET {where}: HTTP {status}: the management key was refused {how}")
        return status, body

    models = {}
    url = base + "/models?limit=1000"
    names = []
    for _ in range(100):
        status, body = get(url)
        if status != 200:
            where = url.split("?")[0]
            raise ApiError(f"GET {where}: HTTP {status} {_first_line(body)[:200]}")
        try:
            data = json.loads(body)
        except ValueError:
            raise ApiError(f"GET {url.split('?')[0]}: not JSON") from None
        names += [m.get("modelName") for m in data.get("models", []) if m.get("modelName")]
        token = data.get("nextPageToken")
        if not token:
            break
        url = base + f"/models?limit=1000&next_page_token={token}"
    for name in sorted(set(names)):
        status, body = get(base + "/models/" + name)
        entry = {"version": None, "workers": 0, "workers_ready": 0}
        if status == 200:
            try:
                desc = json.loads(body)
                desc = desc[0] if isinstance(desc, list) and desc else desc
                entry["version"] = str(desc.get("modelVersion")) if desc.get(
                    "modelVersion") is not None else None
                workers = desc.get("workers") or []
                entry["workers"] = len(workers)
                entry["workers_ready"] = sum(1 for w in workers if w.get("status") == "READY")
            except (ValueError, AttributeError):
                entry["error"] = "describe: not JSON"
        else:
            entry["error"] = f"GET /models/{name}: HTTP {status}"
        models[name] = entry
    return True, models, None, key_path, refreshed


#: the most bytes of a smoke response that are read (and hashed)
SMOKE_RESPONSE_LIMIT = 1 << 20
#: the most numbers reported from a smoke response
SMOKE_MAX_NUMBERS = 4096


def _key_of(sy, key_file, kind):
    """(key of `kind`, API key) from TorchServe's key_file.json: see _keys."""
    return _keys(sy, key_file, kind)[1:]


def _key_refused(status, body):
    """TorchServe refuses a missing, wrong or expired key with HTTP 400 and an
    InvalidKeyException (0.12): told apart from a model refusing its input (400 too)."""
    if status not in AUTH_REFUSED:
        return False
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    return status in (401, 403) or "InvalidKeyException" in text or "Token Authorization" in text


def _numbers(data, out):
    """Append the numbers of a JSON value (a number, or lists of numbers) to `out`; False when
    it holds anything else."""
    if isinstance(data, bool):
        return False
    if isinstance(data, int | float):
        out.append(float(data))
        return len(out) <= SMOKE_MAX_NUMBERS
    if isinstance(data, list):
        return all(_numbers(item, out) for item in data)
    return False


def _excerpt(body):
    text = body[:200].decode("utf-8", "replace")
    return re.sub(r"\s+", " ", CONTROL_CHARS.sub(" ", text)).strip()[:120]


CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def probe_smoke(sy, opts):
    """Each model's smoke test: the locked input POSTed to TorchServe's inference API
    (`/predictions/NAME/VERSION`) with the inference key; a refused key is renewed once through
    TorchServe's token API. {name: {status, sha256, size, numbers, check, ...} or {error}}.
    The answer is reported, never judged here: stacklock.parity compares it with the lock."""
    import base64
    from urllib.parse import quote

    out = {}
    tests = [t for t in opts.get("smoke") or [] if isinstance(t, dict) and t.get("name")]
    if not tests:
        return out
    base = str(opts.get("torchserve_inference_url") or "http://127.0.0.1:8080").rstrip("/")
    # a wildcard listen address is reached on the loopback
    base = re.sub(r"^(https?://)(0\.0\.0\.0|\[::\])(?=[:/]|$)",
                  lambda m: m.group(1) + ("127.0.0.1" if "." in m.group(2) else "[::1]"), base)
    management = str(opts.get("torchserve_management_url") or "http://127.0.0.1:8081").rstrip("/")
    key_file = opts.get("torchserve_key_file")
    key = api_key = None
    key_error = None
    try:
        key, api_key = _key_of(sy, key_file, "inference")
    except CannotLook as exc:
        key_error = str(exc)
    refreshed = False
    for test in sorted(tests, key=lambda t: str(t["name"])):
        name, version = str(test["name"]), str(test.get("version") or "")
        spec = test.get("smoke") if isinstance(test.get("smoke"), dict) else {}
        check = "sha256" if spec.get("sha256") else "numbers" if spec.get("expected") is not None \
            else None
        entry = {"check": check}
        out[name] = entry
        if key_error:
            entry["error"] = key_error
            continue
        try:
            body = base64.b64decode(str(spec.get("input_base64") or ""), validate=True)
        except ValueError:
            entry["error"] = f"{CANNOT_LOOK}the smoke input of {name} is not base64"
            continue
        if hashlib.sha256(body).hexdigest() != spec.get("input_sha256"):
            entry["error"] = (f"{CANNOT_LOOK}the smoke input of {name} arrived altered (its "
                              "sha256 is not the locked one)")
            continue
        url = f"{base}/predictions/{quote(name, safe='')}"
        if version:
            url += "/" + quote(version, safe="")
        headers = {"Content-Type": str(spec.get("content_type") or "application/octet-stream")}
        started = sy.now()
        try:
            status, answer, truncated = _post(sy, url, headers, body, key)
            if _key_refused(status, answer) and key and not refreshed:
                refreshed = refresh_key(sy, management, api_key, "inference")
                if refreshed:
                    key, api_key = _key_of(sy, key_file, "inference")
                    status, answer, truncated = _post(sy, url, headers, body, key)
            if _key_refused(status, answer):
                how = ("even with a fresh key from TorchServe's token API" if refreshed else
                       "and no fresh key could be had (API key missing or refused)" if key else
                       "and no key file was found")
                raise CannotLook(f"POST {url}: HTTP {status}: the inference key was refused {how}")
        except ProbeError as exc:
            entry["error"] = str(exc)
            continue
        entry["seconds"] = round(sy.now() - started, 3)
        entry["status"] = status
        entry["url"] = url
        if truncated:
            entry["error"] = (f"POST {url}: the answer is larger than {SMOKE_RESPONSE_LIMIT} "
                              "bytes; a smoke test needs a small one")
            entry["status"] = None
            continue
        entry["size"] = len(answer)
        entry["sha256"] = hashlib.sha256(answer).hexdigest()
        entry["excerpt"] = _excerpt(answer)
        numbers = []
        try:
            parsed = json.loads(answer.decode("utf-8"))
            entry["numbers"] = numbers if _numbers(parsed, numbers) else None
        except ValueError:
            entry["numbers"] = None
    if refreshed:
        for entry in out.values():
            entry["token_refreshed"] = True
    return out


def _post(sy, url, headers, body, key):
    auth = dict(headers, Authorization=f"Bearer {key}") if key else headers
    return sy.http_post(url, auth, body, limit=SMOKE_RESPONSE_LIMIT)


ARCHIVE_CACHE_SCHEMA = "stacklock.archive-digests/v1"


def hash_archives(sy, store, names, opts):
    """The sha256 of each archive of the model store, within `archive_hash_timeout` seconds.

    A digest from the cache is reused while the file's identity (device, inode, size, mtime,
    ctime) is the one recorded with it: rewriting, replacing or appending to the file changes
    it (ctime cannot be set back). `deep` hashes everything again. Returns the model store's
    `archives`, `reused` (names whose digest came from the cache) and, when the time ran out,
    `error` (could not look: exit 3)."""
    cache_path = opts.get("archive_cache")
    if cache_path is None:
        cache_path = "/var/cache/stacklock/archive-digests.json"
    deep = bool(opts.get("deep"))
    timeout = float(opts.get("archive_hash_timeout") or 300)
    deadline = sy.now() + timeout
    cached = {}
    if cache_path and not deep:
        try:
            doc = json.loads(sy.read_private(cache_path) or "{}")
            if isinstance(doc, dict) and doc.get("schema") == ARCHIVE_CACHE_SCHEMA:
                cached = doc.get("files") or {}
        except ValueError:
            cached = {}
    archives, reused, fresh, late = {}, [], {}, []
    for name in names:
        path = os.path.join(store, name)
        identity = sy.file_identity(path)
        entry = cached.get(path) if isinstance(cached, dict) else None
        if (identity is not None and isinstance(entry, dict)
                and entry.get("identity") == identity
                and re.fullmatch(r"[0-9a-f]{64}", str(entry.get("sha256")))):
            archives[name] = entry["sha256"]
            reused.append(name)
            fresh[path] = entry
            continue
        if sy.now() > deadline:
            late.append(name)
            continue
        try:
            digest = sy.sha256_until(path, deadline)
        except CannotLook as exc:
            if "did not finish in time" not in str(exc):
                raise
            late.append(name)
            continue
        archives[name] = digest
        # cached only when the file did not change while it was hashed
        if digest is not None and identity is not None and sy.file_identity(path) == identity:
            fresh[path] = {"identity": identity, "sha256": digest}
    out = {"archives": archives, "reused": reused, "deep": deep}
    if late:
        out["error"] = (f"{CANNOT_LOOK}hashing the model archives took longer than "
                        f"{timeout:.0f} s (archive_hash_timeout); not hashed: "
                        + ", ".join(late) + "; the next run goes on with them")
    if cache_path and not opts.get("_check_mode") and fresh != cached:
        text = json.dumps({"schema": ARCHIVE_CACHE_SCHEMA, "files": fresh}, sort_keys=True)
        try:
            sy.write_private(cache_path, text + "\n")
        except OSError as exc:  # not root (no become): every run hashes, nothing else changes
            out["cache_error"] = f"{cache_path}: {exc}"
    return out


def probe_torchserve(sy, opts):
    out = {"config": {"path": opts["torchserve_config"], "sha256": None},
           "model_store": {"path": opts["torchserve_model_store"], "archives": {}},
           "management_url": opts["torchserve_management_url"],
           "running": False, "models": {}}
    try:
        out["config"]["sha256"] = sy.sha256(opts["torchserve_config"])
        if out["config"]["sha256"] is None:
            out["config"]["error"] = "{} not found".format(opts["torchserve_config"])
    except ProbeError as exc:
        out["config"]["error"] = str(exc)
    store = opts["torchserve_model_store"]
    try:
        entries = sy.listdir(store)
        if entries is None:
            out["model_store"]["error"] = f"{store} not found"
        out["model_store"].update(hash_archives(
            sy, store, [e for e in entries or [] if e.endswith(".mar")], opts))
    except ProbeError as exc:
        out["model_store"]["error"] = str(exc)
    try:
        running, models, err, key_path, refreshed = probe_torchserve_api(
            sy, opts["torchserve_management_url"], opts.get("torchserve_key_file"))
        out["running"], out["models"] = running, models
        out["token_auth"] = key_path is not None
        out["token_refreshed"] = refreshed
        if err:
            out["error"] = err
    except ApiError as exc:  # it runs, but its models could not be listed
        out["running"] = True
        out["error"] = str(exc)
    except CannotLook as exc:  # the key could not be read or was refused: unknown
        out["running"] = None
        out["error"] = str(exc)
    except ProbeError as exc:  # nothing answers: not running
        out["running"] = False
        out["error"] = str(exc)
    return out


#: the files stacklock_packages writes to protect the pins
APT_PREFERENCES_GLOB = "/etc/apt/preferences.d/stacklock-*.pref"
APT_BLACKLIST_GLOB = "/etc/apt/apt.conf.d/51stacklock-*-unattended-upgrades"
_BLACKLIST_ENTRY_RE = re.compile(r'^\s*"\^(?P<name>[^"]+)\$";\s*$')


def probe_apt_protection(sy):
    """What protects the pins: apt preferences (Package/Pin/Pin-Priority stanzas) and the
    unattended-upgrades blacklist, as the stacklock roles write them, with each file's digest.

    pins: {package: {version, priority, file}}; blacklisted: {package: file}."""
    out = {"files": {}, "pins": {}, "blacklisted": {}}
    for path in sy.glob(APT_PREFERENCES_GLOB):
        text = sy.read_text(path)
        if text is None:
            continue
        out["files"][path] = hashlib.sha256(text.encode("utf-8")).hexdigest()
        for stanza in re.split(r"\n\s*\n", text):
            fields = {}
            for line in stanza.splitlines():
                if ":" in line and not line.lstrip().startswith("#"):
                    key, value = line.split(":", 1)
                    fields[key.strip().lower()] = value.strip()
            name, pin = fields.get("package"), fields.get("pin", "")
            if not name or not pin.startswith("version "):
                continue
            try:
                priority = int(fields.get("pin-priority", ""))
            except ValueError:
                priority = None
            for pkg in name.split():
                out["pins"][pkg] = {"version": pin[len("version "):].strip(),
                                    "priority": priority, "file": path}
    for path in sy.glob(APT_BLACKLIST_GLOB):
        text = sy.read_text(path)
        if text is None:
            continue
        out["files"][path] = hashlib.sha256(text.encode("utf-8")).hexdigest()
        for line in text.splitlines():
            m = _BLACKLIST_ENTRY_RE.match(line)
            if m:
                out["blacklisted"][m.group("name").replace("\\", "")] = path
    return out


def probe_services(sy):
    out = {}
    systemctl = sy.which("systemctl")
    if not systemctl:
        return {n: {"error": "systemctl not found"} for n in SERVICES}
    argv = [systemctl, "show", "--no-pager",
            "-p", "Id", "-p", "LoadState", "-p", "ActiveState", "-p", "SubState",
            "-p", "UnitFileState"] + [f"{n}.service" for n in SERVICES]
    try:
        res = sy.run(argv)
    except ProbeError as exc:
        return {n: {"error": str(exc)} for n in SERVICES}
    blocks = [b for b in re.split(r"\n\s*\n", res.stdout.strip()) if b.strip()]
    if res.rc != 0 or len(blocks) != len(SERVICES):
        return {n: {"error": _cmd_error(argv, res)} for n in SERVICES}
    for name, block in zip(SERVICES, blocks, strict=False):
        kv = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        out[name] = {
            "load": kv.get("LoadState"),
            "active": kv.get("ActiveState"),
            "sub": kv.get("SubState"),
            "enabled": kv.get("UnitFileState") or None,
        }
    return out


def _section(errors, name, fn, *args):
    """Run one probe; on failure return {"error": ...} and record it in `errors`."""
    try:
        value = fn(*args)
    except ProbeError as exc:
        value = {"error": str(exc)}
    except Exception as exc:  # a bug in a probe must not hide the other sections
        value = {"error": f"{CANNOT_LOOK}the {name} probe crashed: {type(exc).__name__}: {exc}"}
    if isinstance(value, dict) and value.get("error"):
        errors[name] = value["error"]
    return value


def gather(opts, sy=None):
    """The `stacklock.facts/v1` dict for this node. `sy` replaces the node (tests)."""
    started = time.monotonic()
    sy = sy or System(float(opts.get("probe_timeout") or 10))
    errors = {}
    facts = {"schema": SCHEMA}
    facts["os"] = _section(errors, "os", probe_os, sy)
    dpkg = None
    inventory = [] if opts.get("inventory") else None
    try:
        dpkg = probe_dpkg(sy, inventory)
    except ProbeError as exc:
        errors["packages"] = str(exc)
        inventory = None if inventory is None else False
    if inventory is not None:
        # every installed package (inventory: true); null when dpkg could not be read
        facts["os_packages"] = inventory if inventory is not False else None
    gpu_and_driver = _section(errors, "gpu", lambda: probe_gpu(sy, opts.get("use_nvml", True)))
    if isinstance(gpu_and_driver, tuple):
        facts["gpu"], running = gpu_and_driver
    else:
        facts["gpu"] = dict(gpu_and_driver, present=False, count=0)
        running = {"running": None, "kernel_module": None, "running_source": None}
    facts["nvidia_driver"] = _section(errors, "nvidia_driver", probe_driver, running, dpkg)
    if isinstance(facts["nvidia_driver"], dict) and "error" not in facts["nvidia_driver"]:
        try:
            kernels = probe_kernels(sy)
            facts["nvidia_driver"]["kernels"] = kernels
            facts["nvidia_driver"]["kernels_without_module"] = sorted(
                k for k, ok in kernels.items() if not ok)
        except ProbeError as exc:
            facts["nvidia_driver"]["kernels_error"] = str(exc)
    facts["cuda"] = _section(errors, "cuda", probe_cuda, sy, dpkg)
    facts["docker"] = _section(errors, "docker", probe_docker, sy, dpkg)
    facts["nvidia_container_toolkit"] = _section(errors, "nvidia_container_toolkit",
                                                 probe_toolkit, sy, dpkg)
    facts["java"] = _section(errors, "java", probe_java, sy, dpkg)
    facts["python"] = _section(errors, "python", sy.python)
    ts = _section(errors, "torchserve", probe_torchserve, sy, opts)
    venv = _section(errors, "torchserve_venv", probe_venv, sy, opts["torchserve_venv"],
                    list(opts.get("pip_packages") or []))
    ts["venv"] = venv
    if opts.get("smoke"):
        smoke = _section(errors, "torchserve.smoke", probe_smoke, sy, opts)
        if isinstance(smoke, dict) and "error" not in smoke:
            for name, entry in smoke.items():
                if entry.get("error"):
                    errors[f"torchserve.smoke.{name}"] = entry["error"]
        if isinstance(ts, dict):
            ts["smoke"] = smoke
    facts["torchserve"] = ts
    for key in ("config", "model_store"):
        if isinstance(ts.get(key), dict) and ts[key].get("error"):
            errors[f"torchserve.{key}"] = ts[key]["error"]
    facts["services"] = _section(errors, "services", probe_services, sy)
    facts["apt_protection"] = _section(errors, "apt_protection", probe_apt_protection, sy)
    for name, svc in (facts["services"] or {}).items():
        if isinstance(svc, dict) and svc.get("error"):
            errors[f"services.{name}"] = svc["error"]
    wanted = list(opts.get("packages") or [])
    if dpkg is None:
        facts["packages"] = {n: {"version": None, "held": None, "status": None,
                                 "error": errors["packages"]} for n in wanted}
        facts["holds"] = None
    else:
        facts["packages"] = {n: dict(dpkg.get(n) or {"version": None, "status": "not-installed",
                                                     "held": False}) for n in wanted}
        facts["holds"] = sorted(n for n, e in dpkg.items() if e["held"])
    globs = [str(g) for g in opts.get("package_families") or []]
    if globs:
        # installed members of the pinned families, pinned or not (None: dpkg unreadable)
        facts["family_packages"] = None if dpkg is None else family_packages(dpkg, globs)
    facts["errors"] = errors
    # what could not be looked at: unknown, never "absent" or "different" (parity: exit 3)
    facts["blocked"] = {k: v for k, v in errors.items() if CANNOT_LOOK in str(v)}
    if opts.get("run_id"):
        facts["run_id"] = str(opts["run_id"])
    facts["seconds"] = round(time.monotonic() - started, 3)
    return facts


def main():
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(
        argument_spec={
            "packages": {"type": "list", "elements": "str", "default": []},
            "pip_packages": {"type": "list", "elements": "str", "default": []},
            "package_families": {"type": "list", "elements": "str", "default": []},
            "torchserve_venv": {"type": "path", "default": "/opt/torchserve/venv"},
            "torchserve_config": {"type": "path",
                                  "default": "/etc/torchserve/config.properties"},
            "torchserve_model_store": {"type": "path",
                                       "default": "/var/lib/torchserve/model-store"},
            "torchserve_key_file": {"type": "path", "default": None, "no_log": False},
            "torchserve_management_url": {"type": "str", "default": "http://127.0.0.1:8081"},
            "torchserve_inference_url": {"type": "str", "default": "http://127.0.0.1:8080"},
            "smoke": {"type": "list", "elements": "dict", "default": []},
            "probe_timeout": {"type": "float", "default": 10.0},
            "use_nvml": {"type": "bool", "default": True},
            "run_id": {"type": "str", "default": None},
            "inventory": {"type": "bool", "default": False},
            "deep": {"type": "bool", "default": False},
            "archive_cache": {"type": "str",
                              "default": "/var/cache/stacklock/archive-digests.json"},
            "archive_hash_timeout": {"type": "float", "default": 300.0},
        },
        supports_check_mode=True,
    )
    facts = gather(dict(module.params, _check_mode=module.check_mode))
    module.exit_json(changed=False, ansible_facts={"stacklock_stack": facts})


if __name__ == "__main__":
    main()
