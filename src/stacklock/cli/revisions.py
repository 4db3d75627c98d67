"""`stacklock promote | rollout | rollback | status | ledger`: revisions and evidence."""

from __future__ import annotations

from pathlib import Path

import click

from stacklock.cli.base import (
    Ctx,
    F,
    cli,
    gate_options,
    get_run,
    lock_timeout_option,
    pass_ctx,
    targets,
)
from stacklock.errors import ExitCode, InvalidInput, Problem


def rollout_format_option(f: F) -> F:
    """`--format table|json` of the commands that roll an environment out."""
    return click.option(
        "--format", "fmt", type=click.Choice(["table", "json"]), default="table",
        show_default=True,
        help="json: a stacklock.rollout/v1 envelope on stdout (each node's batch and "
             "result) instead of the node table; progress stays on stderr.")(f)


@cli.command()
@click.argument("env")
@click.option("--rollout", is_flag=True,
              help="Then configure and verify ENV (canary first, in batches: see rollout).")
@click.option("--auto-rollback", is_flag=True,
              help="With --rollout: when a batch fails, return ENV to its previous revision.")
@rollout_format_option
@lock_timeout_option
@pass_ctx
def promote(c: Ctx, env: str, rollout: bool, auto_rollback: bool, fmt: str) -> None:
    """Move ENV to the revision of the environment before it in `promotion` (exit 0 done,
    1 refused: the evidence is missing, 2 invalid input)."""
    from stacklock.flows import promote as promoteflow
    from stacklock.flows import rollout as rolloutflow

    run = get_run(c)
    chosen = targets(c, [env])  # a misspelt ENV first (exit 2, the closest one named)
    if fmt == "json" and not rollout:
        raise InvalidInput("--format json needs --rollout", problems=[Problem(
            "--format", "json describes the rollout: it needs --rollout",
            f"stacklock promote {env} --rollout --format json, or leave --format out")])
    run.hold(chosen)
    outcomes = rolloutflow.Outcomes(fmt)
    promoted, new = promoteflow.promote(c.loaded(), env)
    code = promoted
    if code == ExitCode.OK and rollout:
        from stacklock.flows import rollback as rollbackflow

        c._loaded = new
        run.reload(new)
        code = rollbackflow.rollout_or_roll_back(run, run.target(env),
                                                 auto_rollback=auto_rollback,
                                                 outcomes=outcomes)
    if fmt == "json":
        rolloutflow.emit("promote", env, code, outcomes, promote_code=promoted)
    raise SystemExit(int(code))


@cli.command()
@click.argument("env")
@click.option("--auto-rollback", is_flag=True,
              help="When a batch fails, return ENV (the nodes already changed) to its "
                   "previous verified revision, then exit 1.")
@gate_options
@rollout_format_option
@lock_timeout_option
@pass_ctx
def rollout(c: Ctx, env: str, auto_rollback: bool, override_gate: str | None,
            fmt: str) -> None:
    """Configure ENV canary first, then in batches, verifying each batch before the next;
    nodes already at the revision are not touched (exit 0 done, 1 a batch failed: the
    rollout halted, or the revision was never verified before ENV; 3 could not finish)."""
    from stacklock.flows import rollback as rollbackflow
    from stacklock.flows import rollout as rolloutflow

    outcomes = rolloutflow.Outcomes(fmt)
    code = rollbackflow.rollout_or_roll_back(get_run(c), targets(c, [env])[0],
                                             auto_rollback=auto_rollback,
                                             override=override_gate, outcomes=outcomes)
    if fmt == "json":
        rolloutflow.emit("rollout", env, code, outcomes)
    raise SystemExit(int(code))


@cli.command()
@click.argument("env")
@click.option("--to", "to", default=None, metavar="REVISION",
              help="The fingerprint (or its first hex digits) to return to [default: the "
                   "newest other revision ENV verified].")
@gate_options
@rollout_format_option
@lock_timeout_option
@pass_ctx
def rollback(c: Ctx, env: str, to: str | None, override_gate: str | None, fmt: str) -> None:
    """Return ENV to a verified revision from the ledger, batch by batch, and verify it
    (exit 0 done, 1 failed, 2 no such verified revision)."""
    from stacklock.flows import rollback as rollbackflow
    from stacklock.flows import rollout as rolloutflow

    outcomes = rolloutflow.Outcomes(fmt)
    code = rollbackflow.run_rollback(get_run(c), targets(c, [env])[0], to,
                                     override=override_gate, outcomes=outcomes)
    if fmt == "json":
        rolloutflow.emit("rollback", env, code, outcomes)
    raise SystemExit(int(code))


@cli.command()
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="json: a stacklock.status/v1 envelope on stdout.")
@pass_ctx
def status(c: Ctx, fmt: str) -> None:
    """Each environment's revision (fingerprint), its latest evidence and the next step."""
    from stacklock.flows import promote as promoteflow

    raise SystemExit(int(promoteflow.print_status(c.loaded(), fmt=fmt)))


@cli.group()
def ledger() -> None:
    """The evidence ledger (<output_dir>/.stacklock/ledger.jsonl, or the S3 object the
    manifest's ledger setting names)."""


@ledger.command("verify")
@click.option("--file", "path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A local ledger file [default: the manifest's ledger, local or S3].")
@pass_ctx
def ledger_verify(c: Ctx, path: Path | None) -> None:
    """Check the hash chain, every record's signature by a trusted key, time order and the
    repository's recorded head (exit 0 intact, 1 naming the first record that is not)."""
    from stacklock.flows import ledger as ledgerflow
    from stacklock.flows import promote as promoteflow

    led = ledgerflow.open_ledger(c.loaded(), file=path)  # the manifest's trusted signers
    raise SystemExit(int(promoteflow.verify_ledger(led)))

