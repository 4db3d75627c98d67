"""The `stacklock` command line: parses arguments, calls one flow per command, maps errors to
exit codes. One module per group of commands; importing them registers the commands."""

from __future__ import annotations

import re
import signal
import sys
import traceback

import click
from rich.markup import escape

from stacklock.cli import (  # noqa: F401 (register)
    audit,
    image,
    infra,
    init,
    inspect,
    keys,
    lab,
    manifest,
    revisions,
)
from stacklock.cli.base import RUNNING, cli
from stacklock.console import err, print_problems, use_manifest
from stacklock.errors import ExitCode, Problem, StacklockError

#: what to run after an interrupted command (the roles and `apply` repair what was left)
_AFTER_INTERRUPT = {
    "apply": "Terraform stopped gracefully and recorded what it created (a node it was "
             "creating is marked tainted and is replaced). Next: `stacklock apply {envs}`, "
             "then `stacklock plan {envs}` shows no changes.",
    "destroy": "Terraform stopped gracefully; what it had not destroyed yet is still in its "
               "state. Next: `stacklock destroy {envs}` again.",
    "provision": "Nodes may be half-created or half-configured. Next: `stacklock provision "
                 "{envs}` again (apply replaces a half-created node; configure repairs an "
                 "interrupted dpkg, re-holds the pins and finishes the venv switch).",
    "configure": "Nodes may be half-configured (an interrupted apt or pip install). Next: "
                 "`stacklock configure {envs}` again (the roles repair dpkg, re-hold the "
                 "pinned packages and build the venv side by side), then `stacklock verify "
                 "{envs}`.",
    "demo": "Next: `stacklock demo` again (apply and configure repair what was left).",
}
_READ_ONLY = "Nothing was changed on the nodes; run the command again."


def _interrupted(exit_status: int, detail: str) -> None:
    command = str(RUNNING.get("command", ""))
    run = RUNNING.get("run")
    envs = " ".join(run.held_envs) if run is not None else ""
    hint = _AFTER_INTERRUPT.get(command, _READ_ONLY).format(envs=envs or "--all")
    if run is not None and run._run_dir is not None:
        hint += f" Logs: {run.run_dir}"
    err.print(f"[bold red]interrupted:[/] {escape(detail)}", markup=True, highlight=False)
    err.print(f"  {hint}", markup=False, highlight=False)
    raise SystemExit(exit_status)


def _signalled(exc: KeyboardInterrupt) -> None:
    """A signal while no child ran (children of worker threads got it forwarded)."""
    from stacklock.adapters import proc

    if isinstance(exc, proc.Terminated):
        _interrupted(int(ExitCode.FAILED), signal.Signals(exc.signum).name)
    _interrupted(130, "SIGINT (Ctrl-C)")


def _adds_to(message: str, problems: list[Problem]) -> bool:
    """Each error is printed once: one line per problem, and the error's own summary only
    when it says something they do not (a count of several, or a word, name or path that
    the one problem does not have)."""
    if len(problems) != 1:
        return True
    text = (problems[0].render() + " " + problems[0].source).lower()
    words = (w.strip("'\"`:;,.()") for w in re.findall(r"[^\s]+", message.lower()))
    return any(w and w not in text for w in words)


def main(argv: list[str] | None = None) -> None:
    RUNNING["main"] = True
    try:
        _main(argv)
    finally:
        RUNNING.pop("main", None)
        use_manifest(None)  # the next call in this process (tests) starts without it


def _main(argv: list[str] | None = None) -> None:
    from stacklock.adapters import proc

    verbose = "-v" in (argv or sys.argv[1:]) or "--verbose" in (argv or sys.argv[1:])
    proc.install_signal_handlers()
    try:
        cli.main(args=argv, prog_name="stacklock", standalone_mode=False)
    except click.exceptions.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except click.Abort as exc:  # click turns KeyboardInterrupt (and Terminated) into Abort
        if isinstance(exc.__cause__, KeyboardInterrupt):
            _signalled(exc.__cause__)
        err.print("aborted")
        raise SystemExit(130) from None
    except click.ClickException as exc:
        exc.show()
        raise SystemExit(int(ExitCode.INVALID)) from None
    except proc.Interrupted as exc:
        _interrupted(exc.exit_status, exc.message)
    except StacklockError as exc:
        if exc.problems:
            print_problems(exc.problems)
        if _adds_to(exc.message, exc.problems):
            err.print(f"[bold red]error:[/] {escape(exc.message)}", markup=True, highlight=False)
        raise SystemExit(int(exc.exit_code)) from None
    except KeyboardInterrupt as exc:
        _signalled(exc)
    except Exception as exc:  # a bug: say so, keep the traceback for --verbose
        if verbose:
            traceback.print_exc()
        err.print(f"internal error (a bug in stacklock): {type(exc).__name__}: {exc}\n"
                  "run again with --verbose for the traceback", markup=False)
        raise SystemExit(int(ExitCode.FAILED)) from None


if __name__ == "__main__":
    main()

__all__ = ["cli", "main"]
