"""`stacklock plan | apply | destroy | provision | configure | trust | demo`: the nodes."""

from __future__ import annotations

import sys
import time

import click

from stacklock.cli.base import (
    Ctx,
    approve_options,
    batch_option,
    cli,
    confirm,
    consent_last,
    env_option,
    gate_options,
    get_run,
    lock_timeout_option,
    pass_ctx,
    require_envs,
    rules_problems,
    targets,
    yes_option,
)
from stacklock.console import info, print_problems, step
from stacklock.errors import ExitCode, InvalidInput, Problem


@cli.command()
@env_option
@pass_ctx
def plan(c: Ctx, envs: tuple[str, ...], all_envs: bool) -> None:
    """terraform plan for environments (exit 0 no changes, 1 changes pending)."""
    from stacklock.flows import provision as flow

    changes = flow.plan(get_run(c), targets(c, envs, all_envs))
    raise SystemExit(int(ExitCode.DEVIATION) if changes else 0)


@cli.command()
@env_option
@approve_options
@batch_option
@gate_options
@pass_ctx
def apply(c: Ctx, envs: tuple[str, ...], all_envs: bool, auto_approve: bool,
          batch_size: int, override_gate: str | None) -> None:
    """terraform apply, then write inventories/<env>/hosts.yml from its outputs.

    An aws environment's plan is shown and must be approved (a terminal, or --auto-approve;
    refused with exit 2 in CI or without a terminal); replaced instances go in batches. An aws
    environment's instances are built from its stack's image: the promotion gate applies
    (lab and static nodes get no revision from apply: configure gives it)."""
    require_envs("apply", envs, all_envs)
    from stacklock.flows import provision as flow

    flow.apply(get_run(c), targets(c, envs, all_envs), auto_approve=auto_approve,
               confirm=confirm, batch_size=batch_size, override=override_gate)


@cli.command()
@env_option
@approve_options
@pass_ctx
def destroy(c: Ctx, envs: tuple[str, ...], all_envs: bool, auto_approve: bool) -> None:
    """terraform destroy for environments (and remove their hosts.yml): names what goes; an
    aws environment's destroy must be approved (a terminal, or --auto-approve)."""
    if not envs and not all_envs:
        raise InvalidInput("name the environment(s) to destroy, or --all",
                           problems=[Problem("ENV", "no environment given",
                                             "stacklock destroy ENV, or --all")])
    from stacklock.flows import provision as flow

    flow.destroy(get_run(c), targets(c, envs, all_envs), auto_approve=auto_approve,
                 confirm=confirm)


@cli.command()
@env_option
@click.option("--force", is_flag=True,
              help="Converge every node (default: only nodes whose stack facts deviate from "
                   "their lock, are new or could not be read).")
@approve_options
@batch_option
@gate_options
@yes_option
@pass_ctx
def provision(c: Ctx, envs: tuple[str, ...], all_envs: bool, force: bool, auto_approve: bool,
              batch_size: int, override_gate: str | None, yes: bool) -> None:
    """lock check, render, apply, configure (site.yml, on the nodes that deviate) and verify.

    Like apply, an aws environment's plan must be approved; replaced instances go in batches,
    each configured and verified before the next. With a promotion order, the environments
    go in its order, each verified before the next one that needs its evidence; a revision
    the gate refuses stops it before anything changes (exit 1)."""
    require_envs("provision", envs, all_envs)
    from stacklock.flows import gate as gateflow
    from stacklock.flows import provision as flow

    run = get_run(c)
    chosen = targets(c, envs, all_envs)
    run.hold(chosen)
    gate = gateflow.check(run, chosen, override=override_gate, verified_in_run=True,
                          what="provision")
    consent_last(c, [t.name for t in chosen], "provision", yes)
    code = flow.provision(run, chosen, force=force, auto_approve=auto_approve, confirm=confirm,
                          batch_size=batch_size, gate=gate)
    raise SystemExit(int(code))


@cli.command()
@env_option
@click.option("--force", is_flag=True,
              help="Converge every node (default: only nodes whose stack facts deviate from "
                   "their lock, are new or could not be read).")
@gate_options
@yes_option
@pass_ctx
def configure(c: Ctx, envs: tuple[str, ...], all_envs: bool, force: bool,
              override_gate: str | None, yes: bool) -> None:
    """Run only the Ansible part (site.yml) on environments: first the stack facts of every
    node, then the roles on the nodes that deviate, are new or could not be read (all: --force).

    Each environment's revision must pass the promotion gate (exit 1, nothing changed)."""
    require_envs("configure", envs, all_envs)
    from stacklock.flows import configure as flow
    from stacklock.flows import gate as gateflow

    run = get_run(c)
    chosen = targets(c, envs, all_envs)
    run.hold(chosen)
    gate = gateflow.check(run, chosen, override=override_gate, what="configure")
    consent_last(c, [t.name for t in chosen], "configure", yes)
    flow.configure(run, chosen, force=force, gate=gate)


@cli.command()
@env_option
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

    def ask(question: str) -> bool:
        if not sys.stdin.isatty():
            raise InvalidInput("stdin is not a terminal: nothing was trusted", problems=[
                Problem("--yes", "cannot ask for confirmation",
                        "compare the fingerprints out of band, then pass --yes")])
        return click.confirm(question, default=False, err=True)

    chosen = targets(c, envs, all_envs)
    get_run(c).hold(chosen)
    code = run_trust(c.loaded(), [t.name for t in chosen], yes=yes, replace=replace,
                     confirm=ask)
    raise SystemExit(int(code))


@cli.command()
@lock_timeout_option
@approve_options
@pass_ctx
def demo(c: Ctx, auto_approve: bool) -> None:
    """The main job on the local lab: validate, lock check, render, provision all, verify."""
    from stacklock.core import lock as lockmod
    from stacklock.core import render as rendermod

    started = time.monotonic()
    loaded = c.loaded()
    everything = targets(c, list(loaded.manifest.environments))
    get_run(c).hold(everything)
    step(f"validate {loaded.path.name}")
    problems = rules_problems(loaded)
    print_problems(problems)
    if any(p.severity == "error" for p in problems):
        raise InvalidInput(f"{loaded.path.name} is invalid")
    data = lockmod.load_current_lock(loaded)
    info(f"  lock is current: {len(data['stacks'])} stack(s)")
    tree = rendermod.render_tree(loaded, data)
    changed = rendermod.write_tree(loaded, tree)
    info(f"  rendered {len(tree)} file(s), {len(changed)} changed")
    from stacklock.flows import gate as gateflow
    from stacklock.flows import provision as flow

    gate = gateflow.check(get_run(c), everything, verified_in_run=True, what="demo")
    order = list(loaded.manifest.promotion)
    if order:
        info(f"  promotion order {' -> '.join(order)}: each environment is configured and "
             "verified before the next one (its evidence opens the next one's gate)")
        info(f"  {order[-1]} is the last environment of the promotion order: the demo gives "
             "its own consent (it provisions the local lab; configure/provision would ask)")
    code = flow.provision(get_run(c), everything, auto_approve=auto_approve, confirm=confirm,
                          gate=gate)
    info(f"demo finished in {time.monotonic() - started:.0f} s with exit code {int(code)}")
    raise SystemExit(int(code))

