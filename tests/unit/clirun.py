"""`stacklock ARGS` in the test's own process, through the console script's entry point
(`stacklock.cli.main`): its exit code, stdout and stderr, like `subprocess.run` gives them.

A new process costs about half a CPU second (Python, click, pydantic, the schema); a test that
runs the CLI many times runs most cases here and keeps one real process per behaviour that
depends on the process boundary (exit status, nothing on stderr but the message, no file
written). Import it with `sys.path.insert(0, <tests/unit>)`, as the modules here do.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Result:
    """What `subprocess.run(..., capture_output=True, text=True)` gives, by the same names."""

    returncode: int
    stdout: str
    stderr: str


@contextlib.contextmanager
def _environ(env: Mapping[str, str | None]) -> Iterator[None]:
    """os.environ with ENV applied (None removes a name), restored afterwards."""
    saved = {k: os.environ.get(k) for k in env}
    try:
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, old in saved.items():
            if old is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = old


def stacklock(*args: str, cwd: Path | str | None = None,
              env: Mapping[str, str | None] | None = None) -> Result:
    """Run `stacklock ARGS` here: in CWD, with ENV on top of this process's environment."""
    from stacklock.cli import main

    out, err = io.StringIO(), io.StringIO()
    code: int | str | None = 0
    with contextlib.ExitStack() as stack:
        stack.enter_context(_environ(env or {}))
        if cwd is not None:
            stack.enter_context(contextlib.chdir(cwd))
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code
    if code is None:
        code = 0
    if not isinstance(code, int):  # SystemExit("message"): Python prints it and exits 1
        err.write(f"{code}\n")
        code = 1
    return Result(code, out.getvalue(), err.getvalue())
