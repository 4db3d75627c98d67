"""The one subprocess helper: every external command of stacklock runs through `run_command`."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from stacklock.errors import ToolFailed

log = logging.getLogger("stacklock.proc")

#: environment variable names whose values are never logged
_SECRET_MARKERS = ("SECRET", "TOKEN", "PASSWORD", "KEY", "CREDENTIAL")


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def redact_env(env: Mapping[str, str]) -> dict[str, str]:
    return {
        k: ("***" if any(m in k.upper() for m in _SECRET_MARKERS) else v) for k, v in env.items()
    }


def run_command(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    check: bool = True,
    ok_codes: Sequence[int] = (0,),
    input_text: str | None = None,
    timeout: float | None = None,
    capture: bool = True,
    log_file: Path | None = None,
    on_line: Callable[[str], None] | None = None,
) -> Completed:
    """Run `argv` (never through a shell) and return its result.

    `env` is added to the current environment. With `check`, a return code outside
    `ok_codes` raises ToolFailed (exit 3) naming the command and the tail of its stderr.
    With `log_file`, stdout and stderr are appended there instead of being captured.
    With `on_line`, stdout and stderr (merged) are streamed line by line to the callback
    (and to `log_file` when given) while the command runs; the result's stdout is empty.
    """
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    cmd = [str(a) for a in argv]
    printable = shlex.join(cmd)
    log.debug("run: %s (cwd=%s, env+=%s)", printable, cwd, redact_env(env or {}))
    start = time.monotonic()
    try:
        if on_line is not None:
            rc = _stream(cmd, full_env, cwd, log_file, on_line, printable, timeout)
            out, err = "", ""
            proc: subprocess.CompletedProcess[str] = subprocess.CompletedProcess(cmd, rc)
        elif log_file is not None and not capture:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            with log_file.open("a", encoding="utf-8") as fh:
                fh.write(f"\n$ {printable}\n")
                fh.flush()
                proc = subprocess.run(
                    cmd,
                    env=full_env,
                    cwd=cwd,
                    input=input_text,
                    text=True,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                    check=False,
                )
            out, err = "", ""
        else:
            proc = subprocess.run(
                cmd,
                env=full_env,
                cwd=cwd,
                input=input_text,
                text=True,
                capture_output=capture,
                timeout=timeout,
                check=False,
            )
            out, err = proc.stdout or "", proc.stderr or ""
    except FileNotFoundError as exc:
        raise ToolFailed(f"{cmd[0]}: command not found (is it installed?)") from exc
    except subprocess.TimeoutExpired as exc:
        raise ToolFailed(f"{printable}: timed out after {timeout:.0f} s") from exc
    seconds = time.monotonic() - start
    log.debug("rc=%s in %.2fs: %s", proc.returncode, seconds, printable)
    result = Completed(tuple(cmd), proc.returncode, out, err, seconds)
    if check and proc.returncode not in ok_codes:
        tail = (err or out).strip().splitlines()[-15:]
        detail = "\n".join(tail)
        raise ToolFailed(f"{printable} failed with exit code {proc.returncode}\n{detail}".rstrip())
    return result


def _stream(
    cmd: list[str],
    env: dict[str, str],
    cwd: Path | str | None,
    log_file: Path | None,
    on_line: Callable[[str], None],
    printable: str,
    timeout: float | None,
) -> int:
    fh = None
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = log_file.open("a", encoding="utf-8")
        fh.write(f"\n$ {printable}\n")
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        with subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                if fh is not None:
                    fh.write(line)
                on_line(line.rstrip("\n"))
                if deadline is not None and time.monotonic() > deadline:
                    proc.kill()
                    raise subprocess.TimeoutExpired(cmd, timeout or 0)
            return proc.wait()
    finally:
        if fh is not None:
            fh.close()
