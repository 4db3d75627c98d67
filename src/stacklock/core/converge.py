"""Converge only what deviates: which nodes `configure` runs site.yml on, and why. Pure.

The input is the parity report of the stack facts read just before configuring (the verify
play, the same comparison as `stacklock verify`) and the hosts of the inventories. A node is
skipped only when the report is the proof that it needs nothing: it answered with fresh facts
and every check that names it matches. Everything else is configured:

- a host of the inventory the report does not name (new, never queried);
- an unreachable node, or one whose facts were stale or could not be collected;
- a value that could not be read (permission, timeout, a crashed probe): unknown is not "equal";
- any deviation that names the node (from its lock, or from the other nodes/environments).

Checks of a whole environment (node `*`, e.g. two environments' locks differ) name no node:
configuring cannot change a lock, so they select nothing. `force` configures every host.

The facts do not see every byte the roles write (docs/facts.md, "What the facts cover"): a
hand edit that only touches such a file is repaired by `configure --force`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from stacklock.core.parity import Check, ParityReport, Status, show

#: at most this many findings are named per node in its reason (the rest are counted)
MAX_NAMED = 3


@dataclass(frozen=True)
class Decision:
    environment: str
    node: str
    configure: bool
    reason: str

    def describe(self) -> str:
        verb = "configure" if self.configure else "skip     "
        return f"{verb} {self.environment}/{self.node}: {self.reason}"


def _finding(check: Check) -> str:
    if check.status is Status.UNVERIFIED:
        return f"{check.component} could not be read"
    return f"{check.component} {show(check.actual)} (lock: {show(check.expected)})"


def _named(findings: Sequence[str]) -> str:
    text = "; ".join(findings[:MAX_NAMED])
    if len(findings) > MAX_NAMED:
        text += f"; and {len(findings) - MAX_NAMED} more"
    return text


def select(
    report: ParityReport | None,
    hosts: Mapping[str, Sequence[str]],
    *,
    force: bool = False,
) -> list[Decision]:
    """One decision per host of `hosts` (environment -> inventory host names), in environment
    then host order. `report` None (the facts could not be read at all) configures every host."""
    decisions: list[Decision] = []
    nodes = {(n.environment, n.node): n for n in (report.nodes if report else ())}
    by_node: dict[tuple[str, str], list[Check]] = {}
    for check in report.checks if report else ():
        by_node.setdefault((check.environment, check.node), []).append(check)
    for env in hosts:
        for host in sorted(hosts[env]):
            key = (env, host)
            if force:
                decisions.append(Decision(env, host, True, "--force: every node is converged"))
                continue
            if report is None:
                decisions.append(Decision(env, host, True, "no stack facts could be read"))
                continue
            result = nodes.get(key)
            if result is None:
                decisions.append(Decision(env, host, True, "new: no stack facts yet"))
                continue
            if not result.reachable:
                decisions.append(Decision(
                    env, host, True,
                    f"unreachable before configure: {result.error or 'no facts'}"))
                continue
            checks = by_node.get(key, [])
            unverified = [_finding(c) for c in checks if c.status is Status.UNVERIFIED]
            deviations = [_finding(c) for c in checks if c.status is Status.DEVIATION]
            other = [c for c in checks if c.status is Status.UNREACHABLE]
            if other:
                decisions.append(Decision(
                    env, host, True, f"unreachable before configure: {other[0].detail}"))
            elif deviations or unverified:
                parts = []
                if deviations:
                    parts.append(f"{len(deviations)} deviation(s): {_named(deviations)}")
                if unverified:
                    parts.append(f"{len(unverified)} value(s) could not be read: "
                                 f"{_named(unverified)}")
                decisions.append(Decision(env, host, True, "; ".join(parts)))
            elif not checks:
                decisions.append(Decision(env, host, True, "no checks in the report"))
            else:
                decisions.append(Decision(
                    env, host, False,
                    f"matches its lock: {len(checks)} checks, 0 deviations (parity report)"))
    return decisions


def limit(decisions: Sequence[Decision]) -> list[str]:
    """The hosts to configure, for `ansible-playbook --limit`."""
    return sorted({d.node for d in decisions if d.configure})


__all__ = ["Decision", "limit", "select"]
