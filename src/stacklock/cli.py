"""The `stacklock` command line: parses arguments, calls the core, maps errors to exit codes."""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.markup import escape

from stacklock import __version__
from stacklock.console import emit_json, err, info, print_problems, step
from stacklock.core.files import atomic_write
from stacklock.core.manifest import LoadedManifest, load_manifest
from stacklock.errors import ExitCode, InvalidInput, Problem, StacklockError

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_MANIFEST = "stacklock.yaml"


class Ctx:
    def __init__(self, manifest: str, verbose: bool, lock_timeout: float | None = None) -> None:
        self.manifest_path = manifest
        self.verbose = verbose
        self.lock_timeout = lock_timeout
        self._loaded: LoadedManifest | None = None

    def loaded(self) -> LoadedManifest:
        if self._loaded is None:
            self._loaded = load_manifest(self.manifest_path)
        return self._loaded

    def envs(self, names: tuple[str, ...] | list[str], all_envs: bool = False) -> list[str]:
        known = list(self.loaded().manifest.environments)
        if all_envs or not names:
            return known
        for n in names:
            if n not in known:
                raise InvalidInput(
                    f"unknown environment {n!r}",
                    problems=[Problem("ENV", f"{n!r} is not an environment of the manifest",
                                      "use one of: " + ", ".join(known))],
                )
        return list(names)


_pass_ctx = click.make_pass_decorator(Ctx)


def pass_ctx(f: F) -> F:
    """Pass the Ctx, and accept `--manifest` after the subcommand too."""

    def set_manifest(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        if value is not None:
            ctx.ensure_object(Ctx).manifest_path = value

    wrapped = _pass_ctx(f)
    return click.option("-m", "--manifest", default=None, expose_value=False, is_eager=True,
                        callback=set_manifest, help="The manifest to use.")(wrapped)  # type: ignore[return-value]


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
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(name)s: %(message)s", stream=sys.stderr)
    ctx.obj = Ctx(manifest, verbose, lock_timeout)


# --------------------------------------------------------------------------- validate


def _rules_problems(loaded: LoadedManifest) -> list[Problem]:
    from stacklock.core import rules

    return rules.check(loaded.manifest)


@cli.command()
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
@click.option("--online", is_flag=True,
              help="Also ask AWS that each instance type is offered and has the expected GPU.")
@pass_ctx
def validate(c: Ctx, strict: bool, fmt: str, online: bool) -> None:
    """Check the manifest's schema and compatibility rules (exit 2 on errors)."""
    try:
        loaded = c.loaded()
        problems = _rules_problems(loaded)
        if online:
            from stacklock.adapters import aws

            problems += aws.check_environments(loaded.manifest)
    except InvalidInput as exc:
        if fmt == "json":
            emit_json({"schema": "stacklock.validate/v1", "ok": False,
                       "problems": [p.as_dict() for p in exc.problems]})
            raise SystemExit(int(ExitCode.INVALID)) from None
        raise
    errors = [p for p in problems if p.severity == "error"]
    warnings = [p for p in problems if p.severity != "error"]
    failed = bool(errors) or (strict and bool(warnings))
    if fmt == "json":
        emit_json({"schema": "stacklock.validate/v1", "ok": not failed,
                   "problems": [p.as_dict() for p in problems]})
    else:
        print_problems(problems)
        m = loaded.manifest
        summary = (f"{loaded.path.name}: {len(m.stacks)} stack(s), "
                   f"{len(m.environments)} environment(s), "
                   f"{len(errors)} error(s), {len(warnings)} warning(s)")
        info(("INVALID " if failed else "OK ") + summary)
    if failed:
        raise SystemExit(int(ExitCode.INVALID))


def _require_valid(loaded: LoadedManifest) -> None:
    errors = [p for p in _rules_problems(loaded) if p.severity == "error"]
    if errors:
        raise InvalidInput(f"{loaded.path.name} breaks {len(errors)} compatibility rule(s)",
                           problems=errors)


# --------------------------------------------------------------------------- lock


@cli.command()
@click.option("--check", is_flag=True, help="Exit 1 when the lock is stale; write nothing.")
@click.option("--offline", is_flag=True,
              help="Never call AWS or a package index: reuse the AMI ids and the Python "
                   "closures of the existing lock.")
@click.option("--apt-index", "apt_index", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A Packages file (plain or .gz) of the apt repositories that serve the "
                   "stack (repeatable): every apt set becomes the whole Depends closure of its "
                   "top packages within the component's family, exact versions from the index.")
@pass_ctx
def lock(c: Ctx, check: bool, offline: bool, apt_index: tuple[Path, ...]) -> None:
    """Resolve every pin and write <manifest>.lock (deterministic)."""
    from stacklock.core import lock as lockmod

    loaded = c.loaded()
    if check:
        status = lockmod.check_lock(loaded)
        info(status.reason)
        raise SystemExit(0 if status.current else int(ExitCode.DEVIATION))
    _require_valid(loaded)
    existing = lockmod.read_lock(loaded.lock_path)
    amis = lockmod.amis_from_lock(existing, loaded.manifest)
    needed = lockmod.ami_regions(loaded.manifest)
    missing = {s: [r for r in regions if r not in amis.get(s, {})] for s, regions in needed.items()}
    missing = {s: r for s, r in missing.items() if r}
    if missing and not offline:
        from stacklock.adapters import aws

        for stack_name, regions in missing.items():
            image = loaded.manifest.stacks[stack_name].ami
            assert image is not None
            step(f"resolving AMI {image.name} (owner {image.owner}) in {', '.join(regions)}")
            amis.setdefault(stack_name, {}).update(
                aws.resolve_amis(image.owner, image.name, regions))
    closures = lockmod.closures_from_lock(existing, loaded)
    todo = [n for n in sorted(loaded.manifest.stacks) if n not in closures]
    if todo and not offline:
        from stacklock.adapters import pyresolve
        from stacklock.core.credentials import load_credentials

        netrc = load_credentials(loaded.manifest).netrc_text()

        for stack_name in todo:
            stack = loaded.manifest.stacks[stack_name]
            src = lockmod.pip_sources(loaded, stack)
            where = ", ".join([src["index_url"], *src["extra_index_urls"], *src["find_links"]])
            step(f"resolving the Python closure of {stack_name} for Python "
                 f"{stack.python.version} against {where}")
            closure = pyresolve.resolve_closure(
                lockmod.pip_requirements(loaded, stack), stack.python.version,
                pyresolve.Sources(src["index_url"], tuple(src["extra_index_urls"]),
                                  tuple(src["find_links"])), netrc=netrc)
            if lockmod.torch_from_pypi(loaded, stack):
                lockmod.check_pypi_torch(stack_name, stack, closure)
            lockmod.remember_closure(lockmod.closure_inputs(loaded, stack), closure)
            closures[stack_name] = closure
            info(f"  {len(closure)} distributions, each with its sha256")
    apt_sets = lockmod.apt_sets_from_lock(existing, loaded)
    if apt_index:
        from stacklock.core import aptclosure

        where = ", ".join(str(p) for p in apt_index)
        step(f"resolving every apt set's dependency closure from {where}")
        index = aptclosure.parse_index(_read_index(p) for p in apt_index)
        apt_sets = lockmod.resolve_apt_sets(loaded, index, where)
    data = lockmod.build_lock(loaded, amis, closures, apt_sets)
    unresolved = lockmod.unresolved_closures(data)
    if unresolved:
        raise InvalidInput("the Python closure is not resolved; nothing written",
                           problems=unresolved)
    text = lockmod.dump_lock(data)
    old = loaded.lock_path.read_text("utf-8") if loaded.lock_path.is_file() else None
    if old == text:
        info(f"{loaded.lock_path.name} is up to date")
        return
    atomic_write(loaded.lock_path, text)
    for name, stack in sorted(data["stacks"].items()):
        info(f"locked stack {name}: {stack['fingerprint']}")
    info(f"wrote {loaded.lock_path.name}")


def _read_index(path: Path) -> str:
    """A Packages file's text; a file that is not one is bad input naming it."""
    import gzip

    try:
        raw = path.read_bytes()
        text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8")
    except (OSError, UnicodeDecodeError, gzip.BadGzipFile, EOFError) as exc:
        raise InvalidInput(f"--apt-index {path}: cannot read it ({exc})", problems=[Problem(
            "--apt-index", f"{path} is not a readable Packages file",
            "give the Packages or Packages.gz file of the repository (dists/SUITE/COMPONENT/"
            "binary-amd64/Packages.gz)")]) from None
    if "Package:" not in text:
        raise InvalidInput(f"--apt-index {path}: no package stanza in it", problems=[Problem(
            "--apt-index", f"{path} holds no 'Package:' stanza",
            "give the repository's Packages file (dists/SUITE/COMPONENT/binary-amd64/Packages.gz)")])
    return text


# --------------------------------------------------------------------------- render


@cli.command()
@click.option("--check", is_flag=True, help="Exit 1 and list stale files; write nothing.")
@pass_ctx
def render(c: Ctx, check: bool) -> None:
    """Generate Terraform roots and Ansible group_vars from the manifest and lock."""
    from stacklock.core import lock as lockmod
    from stacklock.core import render as rendermod

    loaded = c.loaded()
    _require_valid(loaded)
    data = lockmod.load_current_lock(loaded)
    tree = rendermod.render_tree(loaded, data)
    if check:
        stale = rendermod.stale_files(loaded, tree)
        for rel in stale:
            info(f"stale: {loaded.output_root / rel}")
        if stale:
            info(f"{len(stale)} generated file(s) are stale: run `stacklock render`")
            raise SystemExit(int(ExitCode.DEVIATION))
        info(f"{len(tree)} generated file(s) are current")
        return
    changed = rendermod.write_tree(loaded, tree)
    for rel in changed:
        info(f"wrote {loaded.output_root / rel}")
    info(f"{len(tree)} file(s) rendered, {len(changed)} changed")


# --------------------------------------------------------------------------- infrastructure


def _env_option(f: F) -> F:
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


def _orchestrator(c: Ctx) -> Any:
    """This run's orchestrator (one per command): its run locks and lab resources are
    released when the command ends, however it ends."""
    from stacklock.flows.orchestrate import Orchestrator

    ctx = click.get_current_context()
    orch = ctx.meta.get("stacklock.orchestrator")
    if orch is None:
        orch = Orchestrator(c.loaded(), verbose=c.verbose, lock_timeout=_lock_timeout(c))
        ctx.meta["stacklock.orchestrator"] = orch
        ctx.call_on_close(orch.close)
        _RUNNING["command"] = ctx.info_name or ""
        _RUNNING["orchestrator"] = orch
    return orch


#: the command running now and its orchestrator (for the message after an interruption)
_RUNNING: dict[str, Any] = {}


@cli.command()
@_env_option
@pass_ctx
def plan(c: Ctx, envs: tuple[str, ...], all_envs: bool) -> None:
    """terraform plan for environments (exit 0 no changes, 1 changes pending)."""
    orch = _orchestrator(c)
    changes = orch.plan(c.envs(envs, all_envs))
    raise SystemExit(int(ExitCode.DEVIATION) if changes else 0)


def _approve_options(f: F) -> F:
    """`--auto-approve` (and `--batch-size`) of the commands that change infrastructure."""
    f = click.option("--auto-approve", is_flag=True,
                     help="Apply an aws environment's plan without asking (required in CI "
                          "or without a terminal; lab and static never ask).")(f)
    return f


def _batch_option(f: F) -> F:
    return click.option("--batch-size", type=click.IntRange(min=1), default=1,
                        show_default=True,
                        help="EC2 instances replaced per batch (create-before-destroy, "
                             "the inventory refreshed after each).")(f)


def _confirm(question: str) -> bool:
    """Ask on the terminal (stacklock.core.blast refuses before this without one)."""
    return click.confirm(question, default=False, err=True)


@cli.command()
@_env_option
@_approve_options
@_batch_option
@pass_ctx
def apply(c: Ctx, envs: tuple[str, ...], all_envs: bool, auto_approve: bool,
          batch_size: int) -> None:
    """terraform apply, then write inventories/<env>/hosts.yml from its outputs.

    An aws environment's plan is shown and must be approved (a terminal, or --auto-approve;
    refused with exit 2 in CI or without a terminal); replaced instances go in batches."""
    _orchestrator(c).apply(c.envs(envs, all_envs), auto_approve=auto_approve, confirm=_confirm,
                           batch_size=batch_size)


@cli.command()
@_env_option
@_approve_options
@pass_ctx
def destroy(c: Ctx, envs: tuple[str, ...], all_envs: bool, auto_approve: bool) -> None:
    """terraform destroy for environments (and remove their hosts.yml): names what goes; an
    aws environment's destroy must be approved (a terminal, or --auto-approve)."""
    if not envs and not all_envs:
        raise InvalidInput("name the environment(s) to destroy, or --all",
                           problems=[Problem("ENV", "no environment given",
                                             "stacklock destroy ENV, or --all")])
    _orchestrator(c).destroy(c.envs(envs, all_envs), auto_approve=auto_approve,
                             confirm=_confirm)


@cli.command()
@_env_option
@click.option("--force", is_flag=True,
              help="Converge every node (default: only nodes whose stack facts deviate from "
                   "their lock, are new or could not be read).")
@_approve_options
@_batch_option
@pass_ctx
def provision(c: Ctx, envs: tuple[str, ...], all_envs: bool, force: bool, auto_approve: bool,
              batch_size: int) -> None:
    """lock check, render, apply, configure (site.yml, on the nodes that deviate) and verify.

    Like apply, an aws environment's plan must be approved; replaced instances go in batches,
    each configured and verified before the next."""
    code = _orchestrator(c).provision(c.envs(envs, all_envs), force=force,
                                      auto_approve=auto_approve, confirm=_confirm,
                                      batch_size=batch_size)
    raise SystemExit(int(code))


@cli.command()
@_env_option
@click.option("--force", is_flag=True,
              help="Converge every node (default: only nodes whose stack facts deviate from "
                   "their lock, are new or could not be read).")
@pass_ctx
def configure(c: Ctx, envs: tuple[str, ...], all_envs: bool, force: bool) -> None:
    """Run only the Ansible part (site.yml) on environments: first the stack facts of every
    node, then the roles on the nodes that deviate, are new or could not be read (all: --force)."""
    _orchestrator(c).configure(c.envs(envs, all_envs), force=force)


@cli.command()
@_env_option
@click.option("--yes", is_flag=True,
              help="Trust every offered key without asking, changed ones included.")
@click.option("--replace", multiple=True, metavar="HOST",
              help="Replace the trusted key of HOST (name or address) when it changed.")
@pass_ctx
def trust(c: Ctx, envs: tuple[str, ...], all_envs: bool, yes: bool,
          replace: tuple[str, ...]) -> None:
    """Fetch and show each host's SSH host key (SHA256 fingerprint) and trust it (exit 0/3).

    Writes inventories/ENV/known_hosts, which every connection is checked against.
    """
    from stacklock.flows.trust import run_trust

    if not envs and not all_envs:
        raise InvalidInput("name the environment(s) whose host keys to trust, or --all",
                           problems=[Problem("ENV", "no environment given",
                                             "stacklock trust ENV, or --all")])

    def confirm(question: str) -> bool:
        if not sys.stdin.isatty():
            raise InvalidInput("stdin is not a terminal: nothing was trusted", problems=[
                Problem("--yes", "cannot ask for confirmation",
                        "compare the fingerprints out of band, then pass --yes")])
        return click.confirm(question, default=False, err=True)

    names = c.envs(envs, all_envs)
    _orchestrator(c).hold(names)
    code = run_trust(c.loaded(), names, yes=yes, replace=replace, confirm=confirm)
    raise SystemExit(int(code))


@cli.command()
@click.argument("envs", nargs=-1)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a JUnit XML report here.")
@click.option("--deep", is_flag=True,
              help="Hash every model archive again (no digest reused from the nodes' cache).")
@click.option("--fast", is_flag=True,
              help="Collect over one direct SSH connection per node (asyncssh) instead of the "
                   "verify play: the same facts module, inventories, host keys and comparison.")
@lock_timeout_option
@pass_ctx
def verify(c: Ctx, envs: tuple[str, ...], fmt: str, junit: Path | None, deep: bool,
           fast: bool) -> None:
    """Collect the real stack from every node and compare (exit 0 match, 1 deviation, 3 unreachable)."""
    code = _orchestrator(c).verify(c.envs(envs), fmt=fmt, junit=junit, deep=deep, fast=fast)
    raise SystemExit(int(code))


# --------------------------------------------------------------------------- revisions


@cli.command()
@click.argument("env")
@click.option("--rollout", is_flag=True,
              help="Then configure and verify ENV (canary first, in batches: see rollout).")
@click.option("--auto-rollback", is_flag=True,
              help="With --rollout: when a batch fails, return ENV to its previous revision.")
@lock_timeout_option
@pass_ctx
def promote(c: Ctx, env: str, rollout: bool, auto_rollback: bool) -> None:
    """Move ENV to the revision of the environment before it in `promotion` (exit 0 done,
    1 refused: the evidence is missing, 2 invalid input)."""
    from stacklock.flows import promote as promoteflow

    orch = _orchestrator(c)
    orch.hold([env])
    code, new = promoteflow.promote(c.loaded(), env)
    if code == ExitCode.OK and rollout:
        from stacklock.flows import rollout as rolloutflow

        c._loaded = orch.loaded = new
        code = rolloutflow.run_rollout(orch, env, auto_rollback=auto_rollback)
    raise SystemExit(int(code))


@cli.command()
@click.argument("env")
@click.option("--auto-rollback", is_flag=True,
              help="When a batch fails, return ENV (the nodes already changed) to its "
                   "previous verified revision, then exit 1.")
@lock_timeout_option
@pass_ctx
def rollout(c: Ctx, env: str, auto_rollback: bool) -> None:
    """Configure ENV canary first, then in batches, verifying each batch before the next;
    nodes already at the revision are not touched (exit 0 done, 1 a batch failed: the
    rollout halted, or the revision was never verified before ENV; 3 could not finish)."""
    from stacklock.flows import rollout as rolloutflow

    code = rolloutflow.run_rollout(_orchestrator(c), c.envs([env])[0],
                                   auto_rollback=auto_rollback)
    raise SystemExit(int(code))


@cli.command()
@click.argument("env")
@click.option("--to", "to", default=None, metavar="REVISION",
              help="The fingerprint (or its first hex digits) to return to [default: the "
                   "newest other revision ENV verified].")
@lock_timeout_option
@pass_ctx
def rollback(c: Ctx, env: str, to: str | None) -> None:
    """Return ENV to a verified revision from the ledger, batch by batch, and verify it
    (exit 0 done, 1 failed, 2 no such verified revision)."""
    from stacklock.flows import rollback as rollbackflow

    orch = _orchestrator(c)
    code = rollbackflow.run_rollback(orch, c.envs([env])[0], to)
    raise SystemExit(int(code))


@cli.command()
@pass_ctx
def status(c: Ctx) -> None:
    """Each environment's revision (fingerprint), its latest evidence and the next step."""
    from stacklock.flows import promote as promoteflow

    raise SystemExit(int(promoteflow.print_status(c.loaded())))


@cli.group()
def ledger() -> None:
    """The evidence ledger (<output_dir>/.stacklock/ledger.jsonl, or the S3 object the
    manifest's ledger setting names)."""


@ledger.command("verify")
@click.option("--file", "path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A local ledger file [default: the manifest's ledger, local or S3].")
@pass_ctx
def ledger_verify(c: Ctx, path: Path | None) -> None:
    """Check the hash chain (exit 0 intact, 1 naming the first tampered record)."""
    from stacklock.flows import ledger as ledgerflow
    from stacklock.flows import promote as promoteflow

    led = ledgerflow.LocalLedger(path) if path else ledgerflow.open_ledger(c.loaded())
    raise SystemExit(int(promoteflow.verify_ledger(led)))


@cli.command()
@click.argument("envs", nargs=-1)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to write the documents [default: <output_dir>/.stacklock/sbom].")
@click.option("--format", "fmt", type=click.Choice(["json"]), default="json", show_default=True,
              help="CycloneDX 1.6 JSON.")
@lock_timeout_option
@pass_ctx
def sbom(c: Ctx, envs: tuple[str, ...], out_dir: Path | None, fmt: str) -> None:
    """Write a CycloneDX 1.6 SBOM per node and per environment (exit 0, or 3: a node could
    not be looked at)."""
    from stacklock.flows.sbom import run_sbom

    names = c.envs(envs)
    target = out_dir or c.loaded().output_root / ".stacklock" / "sbom"
    raise SystemExit(int(run_sbom(_orchestrator(c), names, target)))


@cli.command()
@click.argument("envs", nargs=-1)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@click.option("--fail-on-drift", is_flag=True,
              help="Exit 1 when anything differs (default: exit 0 with the report).")
@lock_timeout_option
@pass_ctx
def diff(c: Ctx, envs: tuple[str, ...], fmt: str, fail_on_drift: bool) -> None:
    """Compare environments (and the nodes of each) on every OS package, every Python
    distribution and the pinned stack; no ENV: all environments."""
    from stacklock.flows.diff import run_diff

    code = run_diff(_orchestrator(c), c.envs(envs), fmt=fmt, fail_on_drift=fail_on_drift)
    raise SystemExit(code)


# --------------------------------------------------------------------------- audits


@cli.command()
@click.argument("envs", nargs=-1)
@click.option("--deep", is_flag=True, help="Also run site.yml --check --diff (configuration drift).")
@click.option("--kinds", default="infrastructure,stack,cloud", show_default=True,
              help="Which drift to audit (comma-separated): infrastructure, stack, cloud, "
                   "diff (every OS package and Python distribution across environments).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "markdown"]), default="table",
              show_default=True, help="What to print on stdout.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the JSON report here (atomically).")
@click.option("--markdown", "md_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the Markdown report here.")
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a JUnit XML report here.")
@click.option("--prometheus", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a Prometheus textfile here (node_exporter's textfile collector).")
@click.option("--history", type=click.Path(dir_okay=False, path_type=Path),
              help="The JSONL history: one line appended per run "
                   "[default: <output_dir>/.stacklock/audit/history.jsonl].")
@lock_timeout_option
@pass_ctx
def audit(c: Ctx, envs: tuple[str, ...], deep: bool, kinds: str, fmt: str, json_path: Path | None,
          md_path: Path | None, junit: Path | None, prometheus: Path | None,
          history: Path | None) -> None:
    """Drift audit: terraform plan, live stack vs lock, cloud inventory (exit 0/1/3).

    `stacklock audit history [ENV]` shows when each environment drifted and recovered.
    """
    from stacklock.console import out
    from stacklock.core import audit as auditmod
    from stacklock.core import audit_report

    loaded = c.loaded()
    history = history or loaded.output_root / ".stacklock" / "audit" / "history.jsonl"
    if envs and envs[0] == "history":
        if len(envs) > 2:
            raise InvalidInput("usage: stacklock audit history [ENV]")
        env = envs[1] if len(envs) == 2 else None
        if env is not None:
            c.envs([env])
        out.print(audit_report.history_table(audit_report.history_summary(history, env)))
        return
    from stacklock.flows.audit import RealProbes

    names = c.envs(envs)
    orch = _orchestrator(c)
    orch.hold(names)
    orch.ensure_current()
    wanted = {k.strip() for k in kinds.split(",") if k.strip()}
    unknown = wanted - {"infrastructure", "stack", "cloud", "diff"}
    if unknown or not wanted:
        raise InvalidInput(f"--kinds: unknown kind(s) {', '.join(sorted(unknown)) or '(none)'}",
                           problems=[Problem("--kinds", f"{kinds!r} is not a list of kinds",
                                             "use infrastructure, stack, cloud, diff")])
    probes = RealProbes(orch, deep=deep).probes()
    probes = auditmod.Probes(
        plans=probes.plans if "infrastructure" in wanted else None,
        parity=probes.parity if "stack" in wanted else None,
        cloud=probes.cloud if "cloud" in wanted else None,
        deep=probes.deep,
        deep_all=probes.deep_all,
        diff=probes.diff if "diff" in wanted else None)
    report = auditmod.run_audit(names, probes,
                                workers=len(names) + 1, progress=step)
    audit_report.write_reports(report, audit_report.ReportTargets(
        json=json_path, markdown=md_path, junit=junit, prometheus=prometheus, history=history))
    if fmt == "json":
        sys.stdout.write(audit_report.report_json(report))
    elif fmt == "markdown":
        sys.stdout.write(audit_report.render_markdown(report))
    else:
        audit_report.print_table(report, out)
    raise SystemExit(int(report.exit_code))


@cli.command()
@click.argument("envs", nargs=-1)
@click.option("--interval", default="daily", show_default=True,
              help="hourly, daily, weekly, Nmin, Nh, HH:MM or a systemd calendar time.")
@click.option("--out", "outdir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("schedules"), show_default=True, help="Where to write the files.")
@click.option("--user", default="stacklock", show_default=True,
              help="The unprivileged account that runs the audit (never root: see INSTALL.md).")
@click.option("--repo-dir", default=None, help="The checkout on the audit host [default: here].")
@click.option("--deep", is_flag=True, help="Audit configuration drift too (site.yml --check).")
@pass_ctx
def schedule(c: Ctx, envs: tuple[str, ...], interval: str, outdir: Path, user: str,
             repo_dir: str | None, deep: bool) -> None:
    """Write ready-to-install audit schedules: systemd timer, cron entry, GitHub Actions."""
    from stacklock.core import schedule as schedmod

    loaded = c.loaded()
    names = c.envs(envs)
    repo = repo_dir or str(Path.cwd())
    manifest = os.path.relpath(loaded.path, repo) if loaded.path.is_relative_to(repo) else str(
        loaded.path)
    files = schedmod.render_schedules(names, interval, repo, manifest, user, deep=deep,
                                      output_dir=str(loaded.output_root.resolve()))
    for path in schedmod.write_schedules(outdir, files):
        info(f"wrote {path}")


# --------------------------------------------------------------------------- lab and demo


@cli.group()
def lab() -> None:
    """The local lab: its node image and its air-gapped package mirror."""


@lab.command("image")
@click.option("--force", is_flag=True, help="Rebuild even when the image exists.")
@pass_ctx
def lab_image(c: Ctx, force: bool) -> None:
    """Build (or rebuild) the Debian 12 systemd image of lab nodes."""
    from stacklock.adapters import docker

    image = c.loaded().manifest.lab.image if Path(c.manifest_path).is_file() else docker.LAB_IMAGE
    docker.ensure_daemon()
    step(f"building {image} (debootstrap + docker import)")
    built = docker.build_image(image, force=force)
    info(f"{image}: {'built' if built else 'already present (use --force to rebuild)'}")


@lab.command("mirror")
@pass_ctx
def lab_mirror(c: Ctx) -> None:
    """Download and index the lab's local apt and pip mirror again (downloads are cached)."""
    from stacklock.adapters import mirror

    step("building the local mirror (real Debian packages, test toolkit packages, wheels)")
    info(f"mirror ready in {mirror.build_mirror(force=True)}")


@cli.command()
@lock_timeout_option
@_approve_options
@pass_ctx
def demo(c: Ctx, auto_approve: bool) -> None:
    """The main job on the local lab: validate, lock check, render, provision all, verify."""
    from stacklock.core import lock as lockmod
    from stacklock.core import render as rendermod

    started = time.monotonic()
    loaded = c.loaded()
    _orchestrator(c).hold(list(loaded.manifest.environments))
    step(f"validate {loaded.path.name}")
    problems = _rules_problems(loaded)
    print_problems(problems)
    if any(p.severity == "error" for p in problems):
        raise InvalidInput(f"{loaded.path.name} is invalid")
    data = lockmod.load_current_lock(loaded)
    info(f"  lock is current: {len(data['stacks'])} stack(s)")
    tree = rendermod.render_tree(loaded, data)
    changed = rendermod.write_tree(loaded, tree)
    info(f"  rendered {len(tree)} file(s), {len(changed)} changed")
    code = _orchestrator(c).provision(list(loaded.manifest.environments),
                                      auto_approve=auto_approve, confirm=_confirm)
    info(f"demo finished in {time.monotonic() - started:.0f} s with exit code {int(code)}")
    raise SystemExit(int(code))


# --------------------------------------------------------------------------- entry point


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
    command = str(_RUNNING.get("command", ""))
    orch = _RUNNING.get("orchestrator")
    envs = " ".join(orch.held_envs) if orch is not None else ""
    hint = _AFTER_INTERRUPT.get(command, _READ_ONLY).format(envs=envs or "--all")
    if orch is not None and orch._run_dir is not None:
        hint += f" Logs: {orch.run_dir}"
    err.print(f"[bold red]interrupted:[/] {escape(detail)}", markup=True, highlight=False)
    err.print(f"  {hint}", markup=False, highlight=False)
    raise SystemExit(exit_status)


def _signalled(exc: KeyboardInterrupt) -> None:
    """A signal while no child ran (children of worker threads got it forwarded)."""
    from stacklock.adapters import proc

    terminated = isinstance(exc, proc.Terminated)
    _interrupted(int(ExitCode.FAILED) if terminated else 130,
                 "SIGTERM" if terminated else "SIGINT (Ctrl-C)")


def main(argv: list[str] | None = None) -> None:
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
