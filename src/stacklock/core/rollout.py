"""Rollout plans: which nodes go in which batch, and when a rollout halts. Pure."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


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
