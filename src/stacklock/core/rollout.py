"""Rollout plans: which nodes go in which batch, and when a rollout halts; what a rollout did
to each node (the table and `stacklock.rollout/v1`). Pure."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stacklock.core.promotion import short


@dataclass(frozen=True)
class Policy:
    canary: int = 1
    batch: int | str = "25%"
    max_failures: int = 0


#: the policy of an environment that names none: the last environment of the promotion
#: order (or one called prod) goes canary first in 25 % batches; the others all at once
PROD_DEFAULT = Policy(canary=1, batch="25%", max_failures=0)
OTHER_DEFAULT = Policy(canary=0, batch="100%", max_failures=0)


def default_policy(env: str, order: Sequence[str]) -> Policy:
    last = bool(order) and env == order[-1]
    return PROD_DEFAULT if last or env == "prod" else OTHER_DEFAULT


def batch_size(batch: int | str, total: int) -> int:
    if isinstance(batch, int):
        return max(1, batch)
    pct = int(batch.rstrip("%"))
    return max(1, math.ceil(total * pct / 100))


def plan(hosts: Sequence[str], policy: Policy) -> list[list[str]]:
    """Batches in order: the canary (first `canary` hosts, sorted), then batches of the
    policy's size. Every host exactly once; no batch is empty."""
    ordered = sorted(hosts)
    out: list[list[str]] = []
    canary = min(policy.canary, len(ordered))
    if canary:
        out.append(ordered[:canary])
    rest = ordered[canary:]
    size = batch_size(policy.batch, len(ordered))
    for i in range(0, len(rest), size):
        out.append(rest[i:i + size])
    return out


# ------------------------------------------------------------------------------ the result
#
# What a rollout did to each node, for the table people read and for `--format json`
# (`stacklock.rollout/v1`, keys pinned by tests/unit/flows/test_rollout_json.py). The table and
# the envelope are built from the same NodeOutcome, so they cannot disagree.

ROLLOUT_SCHEMA = "stacklock.rollout/v1"

#: a node's result: configured and verified; configure or its batch's verify failed; in a
#: batch the halted rollout never reached; already at the revision before the rollout began
UPDATED, FAILED, UNTOUCHED, CURRENT = "updated", "failed", "untouched", "current"
RESULTS = (UPDATED, FAILED, UNTOUCHED, CURRENT)

#: what the rollout was for: `stacklock rollout` / `promote --rollout`, `stacklock rollback`,
#: or the rollback --auto-rollback ran after a halted rollout
KINDS = ("rollout", "rollback", "auto-rollback")


def batch_label(n: int, policy: Policy) -> str:
    """'canary' for the first batch of a policy with a canary, else 'batch N' (1-based)."""
    return "canary" if n == 1 and policy.canary else f"batch {n}"


@dataclass(frozen=True)
class NodeOutcome:
    """One node of a rollout. `batch`: its batch's label, None when it was in none (already at
    the revision). `revision`: the fingerprint it runs now as far as the rollout knows (None:
    not known, a failed node or a previous revision the ledger does not hold)."""

    node: str
    batch: str | None
    attempted: bool
    result: str
    revision: str | None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"node": self.node, "batch": self.batch, "attempted": self.attempted,
                "result": self.result, "revision": self.revision, "detail": self.detail}

    def revision_cell(self, new: str) -> str:
        """The table's revision column (`new`: the rollout's revision)."""
        if self.result == FAILED:
            return f"{short(new)} attempted"
        return short(self.revision) if self.revision else "previous (unknown)"

    def state_cell(self) -> str:
        """The table's state column."""
        return {UPDATED: "updated and verified",
                FAILED: f"FAILED: {self.detail}",
                UNTOUCHED: "untouched",
                CURRENT: "already at the revision: not touched"}[self.result]


@dataclass(frozen=True)
class RolloutResult:
    """One rollout of one environment. `verify_exit_code`: the final verify over every node
    (None when the rollout halted before it); `exit_code`: this rollout's."""

    kind: str
    environment: str
    stack: str
    revision: str
    previous_revision: str | None
    policy: Policy
    batches: int
    halted: bool
    nodes: tuple[NodeOutcome, ...]
    verify_exit_code: int | None
    exit_code: int
    logs: str

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "environment": self.environment, "stack": self.stack,
                "revision": self.revision, "previous_revision": self.previous_revision,
                "policy": {"canary": self.policy.canary, "batch": self.policy.batch,
                           "max_failures": self.policy.max_failures},
                "batches": self.batches, "halted": self.halted,
                "failed": sum(n.result == FAILED for n in self.nodes),
                "nodes": [n.as_dict() for n in self.nodes],
                "verify_exit_code": self.verify_exit_code, "exit_code": self.exit_code,
                "logs": self.logs}


@dataclass(frozen=True)
class RolloutReport:
    """What `rollout`, `rollback` and `promote --rollout` print with `--format json`: the
    rollouts the command ran, in order (a halted rollout, then its auto-rollback).
    `promote_exit_code`: the promote step's own code (`promote` only: 1 refused, and then
    no rollout ran)."""

    command: str
    environment: str
    exit_code: int
    rollouts: tuple[RolloutResult, ...]
    promote_exit_code: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"schema": ROLLOUT_SCHEMA, "command": self.command,
                "environment": self.environment, "exit_code": self.exit_code,
                "promote_exit_code": self.promote_exit_code,
                "rollouts": [r.as_dict() for r in self.rollouts]}
