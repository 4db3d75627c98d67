# Copyright: stacklock contributors. Apache-2.0.
"""The node as the collectors see it: commands, files, HTTP and NVML, each bounded in time.

``System`` is the only code of the facts module that touches the node; the tests replace it
with a fake node made of recorded outputs."""

from __future__ import annotations

import contextlib
import glob as _glob
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from ansible.module_utils.stacklock_facts.common import CannotLook, ProbeError


class Result:
    """A finished command: exit status and its output as text."""

    def __init__(self, rc: int, stdout: str, stderr: str) -> None:
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr


def read_private(path: str, limit: int = 1 << 24) -> str | None:
    """The text of a file only this process's user can have written: owned by the effective
    user, no group/other permissions, a regular file, not a symlink; else None. At most `limit`
    characters."""
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
            return fh.read(limit)
    finally:
        if fd >= 0:
            os.close(fd)


def write_private(path: str, text: str) -> None:
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


class System:
    """Everything the module reads from the node. Tests replace it with a fake."""

    def __init__(self, timeout: float = 10.0) -> None:
        self.timeout = timeout

    def run(self, argv: list[str], timeout: float | None = None) -> Result:
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

    def which(self, name: str) -> str | None:
        path = (os.environ.get("PATH", "")
                + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        return shutil.which(name, path=path)

    def realpath(self, path: str) -> str:
        return os.path.realpath(path)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def read_text(self, path: str) -> str | None:
        """The file's text, or None when it does not exist. Other errors raise ProbeError."""
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CannotLook(f"{path}: {exc}") from None

    def sha256(self, path: str) -> str | None:
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

    def now(self) -> float:
        return time.monotonic()

    def sha256_until(self, path: str, deadline: float) -> str | None:
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

    def file_identity(self, path: str) -> list[int] | None:
        """[device, inode, size, mtime_ns, ctime_ns] of a regular file, else None."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]

    def read_private(self, path: str) -> str | None:
        """The text of a file only root (this process's user) can have written: owned by the
        effective user, no group/other permissions, not a symlink; else None."""
        return read_private(path)

    def write_private(self, path: str, text: str) -> None:
        """Write `text` atomically, 0600 in a 0700 directory. Raises OSError."""
        write_private(path, text)

    def listdir(self, path: str) -> list[str] | None:
        try:
            return sorted(os.listdir(path))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CannotLook(f"{path}: {exc}") from None

    def glob(self, pattern: str) -> list[str]:
        return sorted(_glob.glob(pattern))

    def walk_files(self, top: str) -> Iterator[str]:
        """Every file path below `top` (no symlinked directories followed)."""
        for base, _dirs, files in os.walk(top):
            for name in files:
                yield os.path.join(base, name)

    def uname(self) -> dict[str, str]:
        u = platform.uname()
        return {"kernel": u.release, "architecture": u.machine, "hostname": u.node}

    def python(self) -> dict[str, str]:
        return {
            "version": "{}.{}.{}".format(*sys.version_info[:3]),
            "executable": sys.executable,
        }

    def http_get(self, url: str, headers: dict[str, str],
                 timeout: float | None = None) -> tuple[int, str]:
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

    def http_post(self, url: str, headers: dict[str, str], body: bytes,
                  timeout: float | None = None, limit: int = 1 << 20) -> tuple[int, bytes, bool]:
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

    def nvml(self, timeout: float | None = None) -> list[dict[str, Any]] | None:
        """GPU list through NVML, or None when pynvml is not importable."""
        try:
            import pynvml  # type: ignore[import-not-found]
        except Exception:
            return None
        box: dict[str, Any] = {}

        def work() -> None:
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
        gpus: list[dict[str, Any]] = box.get("gpus", [])
        return gpus
