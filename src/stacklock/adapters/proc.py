"""The one subprocess helper: every external command of stacklock runs through `run_command`.

Interruption: every child runs in its own process group (a new session), so a Ctrl-C on the
terminal reaches stacklock only. stacklock forwards it once, as SIGINT, to the running child
(Terraform then starts its graceful stop and records what it created; ansible-playbook stops
after its running task), waits for the child to end (`INTERRUPT_GRACE` seconds, then SIGTERM,
then SIGKILL), and raises `Interrupted` saying how it ended. SIGTERM and SIGHUP (a dropped SSH
session: the terminal is gone) to stacklock are handled the same way (`install_signal_handlers`):
the run ends only after its children did, with exit 3. On SIGHUP, standard output and error
are moved to /dev/null when their terminal has hung up (writing there fails with EIO), so that
the messages about stopping cannot themselves stop the stopping.

The run locks outlive nothing they guard: every child inherits the descriptors of the run locks
held when it starts (`pass_fds`, `stacklock.core.runlock.held_fds`), so a child that outlives
stacklock (SIGKILL, a crash) keeps its environments locked until it exits; see
`stacklock.core.runlock`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO

from stacklock.core import runlock
from stacklock.core.files import open_append
from stacklock.errors import ExitCode, StacklockError, ToolFailed

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


#: seconds a child gets to stop gracefully after the forwarded SIGINT (then SIGTERM, SIGKILL)
INTERRUPT_GRACE = float(os.environ.get("STACKLOCK_INTERRUPT_GRACE", "60"))
#: seconds between SIGTERM and SIGKILL
TERM_GRACE = 10.0


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (`signum`), raised like a Ctrl-C so that the same code stops the
    running child."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Interrupted(StacklockError):
    """A signal stopped stacklock while a child ran; the child has ended (how: `how`).

    Exit 130 after SIGINT (Ctrl-C), 3 after SIGTERM or SIGHUP."""

    def __init__(self, command: str, how: str, signum: int) -> None:
        name = signal.Signals(signum).name
        super().__init__(f"interrupted ({name}) while running `{command}`: {how}")
        self.command = command
        self.how = how
        self.signum = signum
        self.exit_code = ExitCode.FAILED

    @property
    def exit_status(self) -> int:
        return 130 if self.signum == signal.SIGINT else int(ExitCode.FAILED)


#: children running now (pid -> process) and those already sent the forwarded SIGINT
_children: dict[int, subprocess.Popen[str]] = {}
_signalled: set[int] = set()
_children_lock = threading.RLock()  # re-entrant: the signal handler takes it too


def _signal_group(proc: subprocess.Popen[str], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the child leads its own group (start_new_session)
    except ProcessLookupError:
        pass
    except PermissionError:
        proc.send_signal(sig)


def _interrupt_once(proc: subprocess.Popen[str]) -> bool:
    """Send SIGINT to the child itself (not its group: Terraform stops its provisioners and
    plugins itself, ansible-playbook its workers) unless it was sent already; True when
    sent now."""
    with _children_lock:
        if proc.pid in _signalled or proc.poll() is not None:
            return False
        _signalled.add(proc.pid)
    try:
        proc.send_signal(signal.SIGINT)
    except ProcessLookupError:
        return False
    return True


def forward_interrupt() -> int:
    """Forward SIGINT (once) to every running child; return how many were signalled now.
    Children of worker threads get it too (only the main thread sees KeyboardInterrupt)."""
    with _children_lock:
        running = list(_children.values())
    return sum(_interrupt_once(p) for p in running)


def _detach_hung_up_terminal() -> None:
    """Point standard output and error at /dev/null when their terminal has hung up (a write
    there fails with EIO): after SIGHUP nobody reads them, and a failing print must not cut
    short the wait for the children."""
    devnull: int | None = None
    for fd in (1, 2):
        try:
            os.write(fd, b"")
        except OSError as exc:
            if exc.errno not in (errno.EIO, errno.ENXIO):
                continue
            if devnull is None:
                devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
    if devnull is not None:
        os.close(devnull)


#: the signals that stop a run like SIGTERM (exit 3): SIGHUP is a dropped terminal or session
TERMINATING = (signal.SIGTERM, signal.SIGHUP)


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    if signum == signal.SIGHUP:
        _detach_hung_up_terminal()
    forward_interrupt()
    if signum in TERMINATING:
        raise Terminated(signum)
    raise KeyboardInterrupt()


def install_signal_handlers() -> None:
    """SIGINT, SIGTERM and SIGHUP: forward to the running children, then raise in the main
    thread (KeyboardInterrupt, or `Terminated` for SIGTERM and SIGHUP) so the run stops where
    it is, after its children."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_signal)
        for sig in TERMINATING:
            signal.signal(sig, _on_signal)


def short_command(cmd: Sequence[str], limit: int = 160) -> str:
    """A command for a message: an inline `python -c` script shown as `...`, and cut at
    `limit` characters."""
    shown = list(cmd)
    if len(shown) > 2 and shown[1] == "-c":
        shown[2] = "..."
    text = shlex.join(shown)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _say(message: str) -> None:
    from stacklock.console import err

    # nobody reads it (a terminal that hung up, a closed pipe): keep stopping the child
    with contextlib.suppress(OSError):
        err.print(f"stacklock: {message}", markup=False, highlight=False)


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
    A signal while the command runs is forwarded to it; once it has ended, `Interrupted`
    is raised (see the module docstring). The child's stdin is /dev/null unless
    `input_text` is given.
    """
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    cmd = [str(a) for a in argv]
    printable = shlex.join(cmd)
    log.debug("run: %s (cwd=%s, env+=%s)", printable, cwd, redact_env(env or {}))
    start = time.monotonic()
    fh: IO[str] | None = None
    if log_file is not None and (on_line is not None or not capture):
        fh = open_append(log_file)
        fh.write(f"\n$ {printable}\n")
        fh.flush()
    try:
        if on_line is not None:
            stdout: int | IO[str] | None = subprocess.PIPE
            stderr: int | IO[str] | None = subprocess.STDOUT
        elif fh is not None:
            stdout, stderr = fh, subprocess.STDOUT
        else:
            stdout = stderr = subprocess.PIPE if capture else None
        try:
            # the run locks go with the child: held until it exits (stacklock.core.runlock)
            proc = subprocess.Popen(
                cmd, env=full_env, cwd=cwd, text=True, start_new_session=True,
                stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
                stdout=stdout, stderr=stderr, bufsize=1 if on_line is not None else -1,
                pass_fds=runlock.held_fds())
        except FileNotFoundError as exc:
            raise ToolFailed(f"{cmd[0]}: command not found (is it installed?)") from exc
        with _children_lock:
            _children[proc.pid] = proc
        try:
            waiter = _Waiter(proc, input_text, on_line, fh)
            deadline = None if timeout is None else start + timeout
            try:
                while not waiter.wait(None if deadline is None else deadline - time.monotonic()):
                    if deadline is not None and time.monotonic() >= deadline:
                        _signal_group(proc, signal.SIGKILL)
                        waiter.wait(TERM_GRACE)
                        raise ToolFailed(f"{printable}: timed out after {timeout:.0f} s")
            except KeyboardInterrupt as exc:
                signum = exc.signum if isinstance(exc, Terminated) else signal.SIGINT
                how = _stop(proc, waiter, cmd)
                raise Interrupted(short_command(cmd), how, signum) from None
        finally:
            with _children_lock:
                _children.pop(proc.pid, None)
                _signalled.discard(proc.pid)
    finally:
        if fh is not None:
            fh.close()
    out, err = waiter.stdout, waiter.stderr
    returncode = proc.returncode
    seconds = time.monotonic() - start
    log.debug("rc=%s in %.2fs: %s", returncode, seconds, printable)
    result = Completed(tuple(cmd), returncode, out, err, seconds)
    if check and returncode not in ok_codes:
        tail = (err or out).strip().splitlines()[-15:]
        detail = "\n".join(tail)
        raise ToolFailed(f"{printable} failed with exit code {returncode}\n{detail}".rstrip())
    return result


class _Waiter:
    """Waits for a child while moving its output where it belongs (captured, or streamed
    line by line to a callback and a log file), in bounded steps, so that a signal can
    interrupt the wait and the wait can go on afterwards."""

    def __init__(self, proc: subprocess.Popen[str], input_text: str | None,
                 on_line: Callable[[str], None] | None, fh: IO[str] | None) -> None:
        self.proc = proc
        self.input_text = input_text
        self.on_line = on_line
        self.fh = fh
        self.stdout = ""
        self.stderr = ""
        self._lines: queue.Queue[str | None] | None = None
        self._eof = False
        if on_line is not None:
            assert proc.stdout is not None
            self._lines = queue.Queue()
            threading.Thread(target=self._read, args=(proc.stdout,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        assert self._lines is not None
        try:
            for line in stream:
                self._lines.put(line)
        except (OSError, ValueError):
            pass
        finally:
            self._lines.put(None)

    def wait(self, seconds: float | None) -> bool:
        """Wait up to `seconds` (None: until the end); True once the child has ended and
        its output is read."""
        if seconds is not None:
            seconds = max(0.0, seconds)
        if self._lines is None:
            first, self.input_text = self.input_text, None
            try:
                out, err = self.proc.communicate(first, timeout=seconds)
            except subprocess.TimeoutExpired:
                return False
            self.stdout, self.stderr = out or "", err or ""
            return True
        end = None if seconds is None else time.monotonic() + seconds
        while not self._eof:
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                return False
            try:
                line = self._lines.get(timeout=0.2 if left is None else min(0.2, left))
            except queue.Empty:
                continue
            if line is None:
                self._eof = True
                break
            if self.fh is not None:
                self.fh.write(line)
            assert self.on_line is not None
            self.on_line(line.rstrip("\n"))
        try:
            self.proc.wait(timeout=None if end is None else max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            return False
        return True


def _stop(proc: subprocess.Popen[str], waiter: _Waiter, cmd: Sequence[str]) -> str:
    """Stop an interrupted child: SIGINT once (Terraform's graceful stop), wait up to
    `INTERRUPT_GRACE` s while its output still flows, then SIGTERM, then SIGKILL."""
    started = time.monotonic()
    name = f"`{short_command(cmd, 80)}`"
    if _interrupt_once(proc) or proc.poll() is None:
        _say(f"interrupted: asked {name} (pid {proc.pid}) to stop gracefully; waiting up to "
             f"{INTERRUPT_GRACE:.0f} s for it (do not kill it: Terraform is recording what it "
             "created)")
    deadline = started + INTERRUPT_GRACE
    while True:
        try:
            if waiter.wait(deadline - time.monotonic()):
                return (f"it stopped gracefully after {time.monotonic() - started:.0f} s "
                        f"(exit code {proc.returncode})")
            break
        except KeyboardInterrupt:
            left = deadline - time.monotonic()
            _say(f"still waiting up to {max(0.0, left):.0f} s for {name} to stop gracefully")
    _say(f"{name} did not stop within {INTERRUPT_GRACE:.0f} s: sending SIGTERM")
    _signal_group(proc, signal.SIGTERM)
    for sig, what in ((signal.SIGKILL, "terminated"), (None, "killed")):
        try:
            if waiter.wait(TERM_GRACE):
                return f"it did not stop within {INTERRUPT_GRACE:.0f} s and was {what}"
        except KeyboardInterrupt:
            pass
        if sig is not None:
            _signal_group(proc, sig)
    return "it did not stop and was killed (it may still be running)"
