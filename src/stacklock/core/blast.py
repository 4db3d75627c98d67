"""Blast radius of an apply or destroy (pure): what a plan changes, who must approve it, and
in which batches replaced instances go.

* **Approval.** A change to an ``aws`` environment (apply or destroy) is shown and must be
  approved: ``--auto-approve``, or a "yes" typed on a terminal. Without a terminal on stdin,
  or with ``CI`` set to true, stacklock refuses (exit 2) rather than guess. ``lab`` and
  ``static`` environments are not asked: a lab is disposable local containers that ``apply``
  rebuilds in a minute, and a static environment's Terraform only records hosts it never
  changes; their plans are still printed.
* **Batches.** Replaced EC2 instances (a new AMI, another instance type) are
  create-before-destroy (the gpu_node_aws module's lifecycle) and, when a plan replaces more
  than ``batch_size`` instances of an environment, they are applied ``batch_size`` at a time
  (``terraform apply -target=ADDRESS`` per batch, in index order), so the environment never
  loses more than one batch of serving capacity and a failing batch stops the rollout.
* **Nothing unapproved.** Every plan applied after the approval (a batch, the rest) must hold
  only changes of the approved plan (`unapproved`), or the run stops with exit 3.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from stacklock.core.plan_json import ResourceChange
from stacklock.errors import InvalidInput, Problem

#: the environment variable CI services set (GitHub Actions, GitLab, CircleCI, Travis, ...)
CI_ENV = "CI"
#: providers whose apply and destroy must be approved
ASKING_PROVIDERS = frozenset({"aws"})

_INSTANCE = re.compile(r"(?:^|\.)aws_instance\.[A-Za-z0-9_-]+(?:\[(?P<key>[^\]]*)\])?$")


def action(change: ResourceChange) -> str:
    """The action as `plan` prints it: create, update, replace, delete, ..."""
    return "replace" if change.is_replace else "/".join(change.actions)


def plan_lines(changes: Iterable[ResourceChange]) -> list[str]:
    """One line per change, as `stacklock plan` prints them."""
    return [f"  {action(ch):>8}  {ch.address}" for ch in changes]


def summary(changes: Sequence[ResourceChange]) -> str:
    """'2 to replace, 1 to create' (in a fixed order)."""
    counts: dict[str, int] = {}
    for ch in changes:
        counts[action(ch)] = counts.get(action(ch), 0) + 1
    order = ["create", "update", "replace", "delete"]
    names = sorted(counts, key=lambda a: (order.index(a) if a in order else len(order), a))
    return ", ".join(f"{counts[a]} to {a}" for a in names) or "no changes"


def is_instance(address: str) -> bool:
    return _INSTANCE.search(address) is not None


def _index_key(address: str) -> tuple[int, int, str]:
    m = _INSTANCE.search(address)
    key = (m.group("key") or "") if m else ""
    if key.isdigit():
        return (0, int(key), address)
    return (1, 0, address)


def replaced_instances(changes: Iterable[ResourceChange]) -> list[str]:
    """Addresses of the EC2 instances the plan replaces, in index order."""
    return sorted((ch.address for ch in changes if ch.is_replace and is_instance(ch.address)),
                  key=_index_key)


def replacement_batches(changes: Iterable[ResourceChange], batch_size: int = 1) -> list[list[str]]:
    """The batches replaced instances go in: [] when the plan replaces at most `batch_size`
    instances (then the whole approved plan is applied at once), else consecutive groups of
    `batch_size` addresses in index order."""
    if batch_size < 1:
        raise InvalidInput(f"--batch-size {batch_size}: must be at least 1",
                           problems=[Problem("--batch-size", "must be at least 1",
                                             "e.g. --batch-size 1")])
    replaced = replaced_instances(changes)
    if len(replaced) <= batch_size:
        return []
    return [replaced[i:i + batch_size] for i in range(0, len(replaced), batch_size)]


def unapproved(changes: Iterable[ResourceChange],
               approved: Iterable[ResourceChange]) -> list[ResourceChange]:
    """The changes of a later plan that the approved plan did not hold (same address and
    action), e.g. because the infrastructure changed in between."""
    allowed = {(ch.address, action(ch)) for ch in approved}
    return [ch for ch in changes if (ch.address, action(ch)) not in allowed]


def in_ci(environ: Mapping[str, str]) -> bool:
    return environ.get(CI_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def approval(
    *,
    what: str,
    env: str,
    provider: str,
    auto_approve: bool,
    environ: Mapping[str, str],
    stdin_tty: bool,
    implied: bool = False,
) -> Literal["go", "ask"]:
    """Whether `what` ("apply", "destroy") of `env` goes ahead ("go"), must be confirmed on
    the terminal ("ask"), or is refused (InvalidInput, exit 2: no terminal, or CI)."""
    if auto_approve or implied or provider not in ASKING_PROVIDERS:
        return "go"
    if in_ci(environ) or not stdin_tty:
        why = f"{CI_ENV}={environ.get(CI_ENV, '')}" if in_ci(environ) else \
            "stdin is not a terminal"
        raise InvalidInput(
            f"refusing to {what} {provider} environment {env} without confirmation ({why}): "
            "nothing was changed",
            problems=[Problem("--auto-approve", f"{what} of {env} needs an approval and "
                              "nobody can be asked",
                              f"review `stacklock plan {env}`, then run `stacklock {what} "
                              f"{env} --auto-approve`")])
    return "ask"


__all__ = [
    "ASKING_PROVIDERS",
    "CI_ENV",
    "action",
    "approval",
    "in_ci",
    "is_instance",
    "plan_lines",
    "replaced_instances",
    "replacement_batches",
    "summary",
    "unapproved",
]
