"""Applying and destroying with the blast radius in view (stacklock.core.blast).

`apply_approved`: plan (saved), print every change as `stacklock plan` does, get the approval
(`--auto-approve`, a terminal, or refuse), then apply exactly the saved plan; when it replaces
more than `batch_size` EC2 instances, one batch at a time (a targeted plan per batch, checked
against the approved one, applied, the inventory refreshed, `after_batch` called), then the
rest. `destroy_approved`: a destroy plan names what goes, is approved, and is applied as saved.

The run's outputs (`run`: its `run_dir` and `write_inventory`) and Terraform (`tf`) are passed
in (duck-typed), so the decisions can be tested with a fake Terraform and plan JSON fixtures.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from stacklock.console import info, step
from stacklock.core import blast
from stacklock.core.plan_json import ResourceChange, resource_changes
from stacklock.errors import ToolFailed

#: asks a yes/no question on the terminal (click.confirm in the CLI)
Confirm = Callable[[str], bool]
#: called after each batch: (environment, the batch's instance addresses)
AfterBatch = Callable[[str, Sequence[str]], None]


def _stdin_tty() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def _approve(what: str, env: str, provider: str, changes: Sequence[ResourceChange], *,
             auto_approve: bool, confirm: Confirm | None, implied: bool,
             environ: Mapping[str, str] | None, stdin_tty: bool | None) -> None:
    decision = blast.approval(
        what=what, env=env, provider=provider, auto_approve=auto_approve, implied=implied,
        environ=os.environ if environ is None else environ,
        stdin_tty=_stdin_tty() if stdin_tty is None else stdin_tty)
    if decision == "go":
        return
    question = f"{what} {env}: {blast.summary(changes)}. Go ahead?"
    if confirm is None or not confirm(question):
        raise ToolFailed(f"{what} of {env} was not approved: nothing was changed")


def _plan_file(run: Any, env: str, name: str) -> Path:
    path: Path = run.run_dir / f"{name}-{env}.tfplan"
    return path


def _apply_checked(tf: Any, run: Any, env: str, name: str, approved: Sequence[ResourceChange],
                   target: Sequence[str] = ()) -> bool:
    """Plan (targeted), refuse anything the approved plan did not hold, apply the saved plan.
    Returns whether anything was applied."""
    plan_file = _plan_file(run, env, name)
    try:
        result = tf.plan(detailed_exitcode=True, out=plan_file, target=list(target))
        changes = resource_changes(result.plan_json or {})
        if not result.changes:
            return False
        extra = blast.unapproved(changes, approved)
        if extra:
            raise ToolFailed(
                f"{env}: the plan changed since it was approved ("
                + "; ".join(f"{blast.action(c)} {c.address}" for c in extra)
                + f"): stopped; run `stacklock apply {env}` again to see and approve it")
        tf.apply(plan_file=plan_file)
        return True
    finally:
        plan_file.unlink(missing_ok=True)


def apply_approved(
    run: Any,
    env: str,
    tf: Any,
    *,
    provider: str,
    auto_approve: bool = False,
    implied: bool = False,
    confirm: Confirm | None = None,
    batch_size: int = 1,
    after_batch: AfterBatch | None = None,
    environ: Mapping[str, str] | None = None,
    stdin_tty: bool | None = None,
) -> list[list[str]]:
    """Show the plan of `env`, get it approved, apply it (replaced instances in batches);
    the inventory is refreshed after each batch and at the end. Returns the batches used
    ([] when the plan was applied at once)."""
    plan_file = _plan_file(run, env, "apply")
    try:
        result = tf.plan(detailed_exitcode=True, out=plan_file)
        changes = resource_changes(result.plan_json or {})
        if not result.changes:
            info(f"  {env}: no changes")
            run.write_inventory(env, tf.output())
            return []
        for line in blast.plan_lines(changes):
            info(line)
        batches = blast.replacement_batches(changes, batch_size)
        info(f"  {env}: {blast.summary(changes)}")
        if batches:
            info(f"  {env}: {sum(map(len, batches))} instances are replaced "
                 f"create-before-destroy, {batch_size} at a time ({len(batches)} batches), "
                 "the inventory refreshed after each")
        _approve("apply", env, provider, changes, auto_approve=auto_approve, confirm=confirm,
                 implied=implied, environ=environ, stdin_tty=stdin_tty)
        if not batches:
            tf.apply(plan_file=plan_file)
            run.write_inventory(env, tf.output())
            return []
    finally:
        plan_file.unlink(missing_ok=True)
    for number, batch in enumerate(batches, 1):
        step(f"{env}: batch {number}/{len(batches)}: replacing {', '.join(batch)}")
        _apply_checked(tf, run, env, f"batch{number}", changes, target=batch)
        run.write_inventory(env, tf.output())
        info(f"  {env}: batch {number}/{len(batches)} replaced, inventory refreshed")
        if after_batch is not None:
            after_batch(env, batch)
    if _apply_checked(tf, run, env, "rest", changes):
        info(f"  {env}: the rest of the approved plan applied")
    run.write_inventory(env, tf.output())
    return batches


def destroy_approved(
    run: Any,
    env: str,
    tf: Any,
    *,
    provider: str,
    auto_approve: bool = False,
    confirm: Confirm | None = None,
    environ: Mapping[str, str] | None = None,
    stdin_tty: bool | None = None,
) -> list[str]:
    """Name what a destroy of `env` removes (from a destroy plan), get it approved, apply that
    plan. Returns the addresses destroyed."""
    plan_file = _plan_file(run, env, "destroy")
    try:
        result = tf.plan(detailed_exitcode=True, out=plan_file, destroy=True)
        changes = [c for c in resource_changes(result.plan_json or {}) if "delete" in c.actions]
        if not changes:
            info(f"  {env}: nothing to destroy")
            if result.changes:
                tf.apply(plan_file=plan_file)  # outputs only
            return []
        info(f"  {env}: {len(changes)} resource(s) will be destroyed:")
        for ch in changes:
            info(f"    destroy  {ch.address}")
        _approve("destroy", env, provider, changes, auto_approve=auto_approve,
                 confirm=confirm, implied=False, environ=environ, stdin_tty=stdin_tty)
        tf.apply(plan_file=plan_file)
        return [c.address for c in changes]
    finally:
        plan_file.unlink(missing_ok=True)


__all__ = ["AfterBatch", "Confirm", "apply_approved", "destroy_approved"]
