"""The command line's shared parts: the group, the context (manifest, verbosity, lock
timeout), the options several commands take, and the run each command gets."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from stacklock import __version__
from stacklock.console import use_manifest
from stacklock.errors import InvalidInput, Problem

if TYPE_CHECKING:  # imported where used: `stacklock --help` needs neither the schema nor flows
    from stacklock.core.manifest import LoadedManifest
    from stacklock.flows.run import Run, Target

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_MANIFEST = "stacklock.yaml"

class Ctx:
    def __init__(self, manifest: str, verbose: bool, lock_timeout: float | None = None) -> None:
        self.manifest_path = manifest
        self.verbose = verbose
        self.lock_timeout = lock_timeout
        self._loaded: LoadedManifest | None = None

    @property
    def manifest_path(self) -> str:
        return self._manifest_path

    @manifest_path.setter
    def manifest_path(self, path: str) -> None:
        """The manifest in use; every hint naming a stacklock command repeats it (`-m PATH`)
        unless it is the default."""
        self._manifest_path = path
        use_manifest(None if path == DEFAULT_MANIFEST else path, cli.commands)

    def loaded(self) -> LoadedManifest:
        if self._loaded is None:
            from stacklock.core.manifest import load_manifest

            self._loaded = load_manifest(self.manifest_path)
        return self._loaded

    def envs(self, names: tuple[str, ...] | list[str], all_envs: bool = False) -> list[str]:
        known = list(self.loaded().manifest.environments)
        if all_envs or not names:
            return known
        for n in names:
            if n not in known:
                from stacklock.core.suggest import unknown_environment

                raise unknown_environment(n, known)
        return list(names)


_pass_ctx = click.make_pass_decorator(Ctx)


def pass_ctx(f: F) -> F:
    """Pass the Ctx, and accept `--manifest` and `--verbose` after the subcommand too."""

    def set_manifest(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        if value is not None:
            ctx.ensure_object(Ctx).manifest_path = value

    def set_verbose(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value:
            ctx.ensure_object(Ctx).verbose = True
            _log_level(True)

    wrapped = click.option("-v", "--verbose", is_flag=True, expose_value=False, is_eager=True,
                           callback=set_verbose,
                           help="Log every command; tracebacks for bugs.")(_pass_ctx(f))
    return click.option("-m", "--manifest", default=None, expose_value=False, is_eager=True,
                        callback=set_manifest, help="The manifest to use.")(wrapped)  # type: ignore[return-value]


def _log_level(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger().setLevel(logging.DEBUG if verbose else logging.WARNING)


_LOCK_TIMEOUT_HELP = ("Seconds to wait for another stacklock run that holds an environment "
                      "(0: fail at once with exit 3) [default: 600 or $STACKLOCK_LOCK_TIMEOUT].")


def lock_timeout_option(f: F) -> F:
    """`--lock-timeout SECONDS` after the subcommand (commands that hold run locks)."""

    def set_timeout(ctx: click.Context, _param: click.Parameter, value: float | None) -> None:
        if value is not None:
            ctx.ensure_object(Ctx).lock_timeout = value

    return click.option("--lock-timeout", type=click.FloatRange(min=0), default=None,
                        expose_value=False, callback=set_timeout, metavar="SECONDS",
                        help=_LOCK_TIMEOUT_HELP)(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-m", "--manifest", default=lambda: os.environ.get("STACKLOCK_MANIFEST",
              DEFAULT_MANIFEST), show_default="stacklock.yaml or $STACKLOCK_MANIFEST",
              help="The manifest to use.")
@click.option("-v", "--verbose", is_flag=True, help="Log every command; tracebacks for bugs.")
@click.option("--lock-timeout", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help=_LOCK_TIMEOUT_HELP)
@click.version_option(__version__, prog_name="stacklock")
@click.pass_context
def cli(ctx: click.Context, manifest: str, verbose: bool, lock_timeout: float | None) -> None:
    """Keep the GPU model-serving stack identical in dev, staging and prod."""
    _log_level(verbose)
    ctx.obj = Ctx(manifest, verbose, lock_timeout)
    ctx.call_on_close(_forget_manifest)


def _forget_manifest() -> None:
    """Hints stop naming this call's manifest once it ends (main() keeps them until it has
    printed the error, then forgets them itself)."""
    if not RUNNING.get("main"):
        use_manifest(None)



def rules_problems(loaded: LoadedManifest) -> list[Problem]:
    from stacklock.core import rules

    return rules.check(loaded.manifest)


def require_valid(loaded: LoadedManifest) -> None:
    errors = [p for p in rules_problems(loaded) if p.severity == "error"]
    if errors:
        raise InvalidInput(f"{loaded.path.name} breaks {len(errors)} compatibility rule(s)",
                           problems=errors)


def env_option(f: F) -> F:
    f = lock_timeout_option(f)
    f = click.option("--all", "all_envs", is_flag=True, help="Every environment.")(f)
    f = click.argument("envs", nargs=-1)(f)
    return f


def _lock_timeout(c: Ctx) -> float:
    from stacklock.core.runlock import DEFAULT_TIMEOUT

    if c.lock_timeout is not None:
        return c.lock_timeout
    raw = os.environ.get("STACKLOCK_LOCK_TIMEOUT", "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0:
        raise InvalidInput(f"STACKLOCK_LOCK_TIMEOUT={raw!r} is not a number of seconds",
                           problems=[Problem("STACKLOCK_LOCK_TIMEOUT", "not seconds >= 0",
                                             "e.g. 600, or 0 to fail at once")])
    return value



def get_run(c: Ctx) -> Run:
    """This command's run (one per command): its run locks and lab resources are released
    when the command ends, however it ends."""
    from stacklock.flows.run import Run

    ctx = click.get_current_context()
    run = ctx.meta.get("stacklock.run")
    if run is None:
        run = Run(c.loaded(), verbose=c.verbose, lock_timeout=_lock_timeout(c))
        ctx.meta["stacklock.run"] = run
        ctx.call_on_close(run.close)
        RUNNING["command"] = ctx.info_name or ""
        RUNNING["run"] = run
    assert isinstance(run, Run)
    return run


def targets(c: Ctx, names: tuple[str, ...] | list[str], all_envs: bool = False) -> list[Target]:
    """The environments a command acts on, resolved once (unknown names: exit 2)."""
    return get_run(c).targets(c.envs(names, all_envs))


#: the command running now and its run (for the message after an interruption)
RUNNING: dict[str, Any] = {}


def approve_options(f: F) -> F:
    """`--auto-approve` (and `--batch-size`) of the commands that change infrastructure."""
    f = click.option("--auto-approve", is_flag=True,
                     help="Apply an aws environment's plan without asking (required in CI "
                          "or without a terminal; lab and static never ask).")(f)
    return f


def batch_option(f: F) -> F:
    return click.option("--batch-size", type=click.IntRange(min=1), default=1,
                        show_default=True,
                        help="EC2 instances replaced per batch (create-before-destroy, "
                             "the inventory refreshed after each).")(f)


def confirm(question: str) -> bool:
    """Ask on the terminal (stacklock.core.blast refuses before this without one)."""
    return click.confirm(question, default=False, err=True)


# --------------------------------------------------------------------------- changing nodes


def require_envs(command: str, envs: tuple[str, ...] | list[str], all_envs: bool) -> None:
    """A command that changes nodes acts on the environments named, or on --all: never on
    every environment because none was named (exit 2)."""
    if not envs and not all_envs:
        raise InvalidInput(f"name the environment(s) to {command}, or --all",
                           problems=[Problem("ENV", "no environment given",
                                             f"stacklock {command} ENV, or --all")])


def gate_options(f: F) -> F:
    """`--override-gate REASON` of the commands that change a node's revision."""
    return click.option(
        "--override-gate", "override_gate", default=None, metavar="REASON",
        help="Change the nodes even where the promotion gate refuses the revision (the "
             "environment before it never verified it, or not promotion_soak ago); printed "
             "and recorded in the ledger with REASON.")(f)


def yes_option(f: F) -> F:
    return click.option(
        "--yes", is_flag=True,
        help="Do not ask before changing the last environment of `promotion` (required "
             "without a terminal).")(f)


def _stdin_tty() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def consent_last(c: Ctx, names: list[str], command: str, yes: bool) -> None:
    """The last environment of `promotion` changes only with consent: --yes, or a yes on the
    terminal. Without a terminal and without --yes: exit 2, nothing changed; declined: exit 3,
    nothing changed."""
    from stacklock.errors import ToolFailed

    order = list(c.loaded().manifest.promotion)
    if not order or order[-1] not in names or yes:
        return
    last = order[-1]
    if not _stdin_tty():
        raise InvalidInput(
            f"{command} {last}: {last} is the last environment of the promotion order and "
            "nobody can be asked (stdin is not a terminal): nothing was changed",
            problems=[Problem("--yes", f"{last} changes only with consent",
                              f"stacklock {command} {' '.join(names)} --yes")])
    if not confirm(f"{command} changes {last}, the last environment of the promotion order "
                   f"({' -> '.join(order)}). Go ahead?"):
        raise ToolFailed(f"{command} of {last} was not approved: nothing was changed")
