"""Promotion rules: which revision an environment may move to, and what verify says about
environments that run different revisions. Pure: decisions from the manifest's order, each
environment's fingerprint and the ledger's records.

A stack revision is its lock fingerprint. An environment gets its revision by naming a stack;
promoting ENV makes it name the stack of the environment before it in `promotion`, and is
allowed only when the ledger holds passing evidence of that exact fingerprint there (at least
`promotion_soak` old).

Every gate takes the ledger's checked records and `project` (the manifest's project) and
accepts only evidence of that project whose nodes are exactly the environment's expected nodes
(`ledger.evidence`); with `expected` (env -> the nodes the manifest says it has now), evidence
of another node set than today's is not accepted either. The gates:

* `decide(order, env, revs, records, now, soak, *, project, expected)`: may ENV be promoted;
* `rollout_refusal(order, env, fp, records, *, project, expected)`: why ENV may not be given
  revision `fp` (None: it may) -- the gate of every path that changes a node;
* `findings(order, revs, records, verified_now, *, project, expected)`: what verify says;
* `status(order, revs, records, now, soak, *, project, expected)`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from stacklock.core import ledger
from stacklock.core.schema import LabEnvironment, Manifest, StaticEnvironment

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def soak_seconds(text: str | None) -> int:
    if not text:
        return 0
    m = re.fullmatch(r"([0-9]+)([smhd])", text)
    if not m:
        raise ValueError(f"not a duration like 30m or 1h: {text!r}")
    return int(m.group(1)) * _UNITS[m.group(2)]


def short(fingerprint: str | None) -> str:
    """The first 12 hex digits of a fingerprint (`sha256:` dropped)."""
    return (fingerprint or "(none)").removeprefix("sha256:")[:12]


@dataclass(frozen=True)
class Revision:
    environment: str
    stack: str
    fingerprint: str


def expected_nodes(manifest: Manifest, env: str) -> list[str]:
    """The nodes the manifest says `env` has, by their inventory names: a static environment's
    hosts; on lab and aws `<project>-<env>-<i>` for i = 1..count (the Terraform modules' names:
    the lab's containers, the aws Name tags that `terraform output` keys the hosts by)."""
    spec = manifest.environments[env]
    if isinstance(spec, StaticEnvironment):
        return sorted(h.name for h in spec.hosts)
    return sorted(f"{manifest.project}-{env}-{i}" for i in range(1, spec.count + 1))


def expected_of(manifest: Manifest) -> dict[str, list[str]]:
    """env -> its expected nodes, for every environment."""
    return {env: expected_nodes(manifest, env) for env in manifest.environments}


def evidence_refusal(env: str, expected: Sequence[str], inventory: Sequence[str],
                     verified: Sequence[str], identities: Mapping[str, str | None]
                     ) -> str | None:
    """Why a passing verify of `env` may not be recorded as evidence (None: it may): the
    inventory (`hosts.yml`) and the nodes verified must be exactly the expected nodes, each
    with a pinned identity."""
    want = set(expected)
    for what, got in (("the inventory", set(inventory)), ("the verify report", set(verified))):
        if got != want:
            parts = []
            if want - got:
                parts.append("missing " + ", ".join(sorted(want - got)))
            if got - want:
                parts.append("not this project's: " + ", ".join(sorted(got - want)))
            return (f"{what} of {env} does not hold exactly the nodes the manifest says it has "
                    f"({', '.join(sorted(want))}): {'; '.join(parts)} -- run stacklock apply "
                    f"{env} (it writes inventories/{env}/hosts.yml), then verify again")
    unknown = sorted(n for n in want if not identities.get(n))
    if unknown:
        return (f"no pinned host key for {', '.join(unknown)} in inventories/{env}/known_hosts"
                f" -- run stacklock trust {env} (or apply it), then verify again")
    return None


def stacks_of_revision(lock: Mapping[str, Any], fingerprint: str) -> list[str]:
    """The stacks of `lock` that are revision `fingerprint`, by fingerprint: the stack part
    that decides the node. A stack's per-region AMI ids are not part of it (which regions use
    an image changes with the environments, the image does not), so a revision stays found
    when the regions that use its AMI changed."""
    from stacklock.core.lock import fingerprint_of

    return sorted(name for name, locked in (lock.get("stacks") or {}).items()
                  if locked.get("fingerprint") == fingerprint
                  and fingerprint_of(dict(locked)) == fingerprint)


def is_lab_only(manifest: Manifest) -> bool:
    return all(isinstance(e, LabEnvironment) for e in manifest.environments.values())


def revisions_of(environments: Mapping[str, str], lock: Mapping[str, Any]) -> dict[str, Revision]:
    """env -> its Revision, from env -> stack name and the lock."""
    return {env: Revision(env, stack, str(lock["stacks"][stack]["fingerprint"]))
            for env, stack in environments.items()}


@dataclass(frozen=True)
class Decision:
    environment: str
    allowed: bool
    #: the environment whose revision `environment` would take (None: first in the order)
    source: str | None
    #: the stack and fingerprint it would move to
    stack: str | None
    fingerprint: str | None
    reason: str
    #: the same revision already: nothing to do
    noop: bool = False
    evidence: ledger.Evidence | None = None


def previous(order: Sequence[str], env: str) -> str | None:
    i = list(order).index(env)
    return order[i - 1] if i > 0 else None


def decide(order: Sequence[str], env: str, revs: Mapping[str, Revision],
           records: Sequence[Mapping[str, Any]], now: datetime, soak: int = 0, *,
           project: str, expected: Mapping[str, Sequence[str]] | None = None) -> Decision:
    """May `env` take the revision of the environment before it in `order`? Only evidence of
    `project` over the environment's complete node set counts."""
    if env not in order:
        return Decision(env, False, None, None, None,
                        f"{env} is not in the promotion order ({', '.join(order) or 'none'})")
    src = previous(order, env)
    if src is None:
        return Decision(env, False, None, None, None,
                        f"{env} is first in the promotion order: it takes new revisions by a "
                        "change of its stack in the manifest, not by promotion")
    want = revs[src]
    if revs[env].fingerprint == want.fingerprint:
        return Decision(env, True, src, want.stack, want.fingerprint,
                        f"{env} already runs revision {short(want.fingerprint)} "
                        f"(stack {revs[env].stack}), as {src} does", noop=True)
    evs = ledger.evidence(records, project, expected)
    ev = ledger.latest_evidence(evs, src, want.fingerprint)
    if ev is None:
        return Decision(env, False, src, want.stack, want.fingerprint,
                        f"no passing verify of {src} at revision {short(want.fingerprint)} "
                        f"(stack {want.stack}) of project {project} on all its nodes in the ledger: "
                        f"roll it out there (`stacklock "
                        f"rollout {src}`), or `stacklock verify {src}` if its nodes already "
                        "run it (exit 0 records the evidence), then promote again")
    first = ledger.first_evidence(evs, src, want.fingerprint) or ev
    age = (now - first.when).total_seconds()
    if age < soak:
        return Decision(env, False, src, want.stack, want.fingerprint,
                        f"{src} verified revision {short(want.fingerprint)} at {first.time}, "
                        f"{int(age)} s ago; promotion_soak asks for {soak} s: promote again "
                        f"after {int(soak - age)} s", evidence=first)
    return Decision(env, True, src, want.stack, want.fingerprint,
                    f"{src} verified revision {short(want.fingerprint)} (stack {want.stack}) at "
                    f"{ev.time} on {len(ev.nodes)} node(s) (ledger seq {ev.seq})", evidence=ev)


@dataclass(frozen=True)
class Finding:
    """What verify says about an environment's revision within the promotion order."""

    environment: str
    fingerprint: str
    expected: str
    detail: str
    #: true: a revision no earlier environment verified (always a deviation)
    untested: bool


def findings(order: Sequence[str], revs: Mapping[str, Revision],
             records: Sequence[Mapping[str, Any]], verified_now: Sequence[str] = (), *,
             project: str, expected: Mapping[str, Sequence[str]] | None = None
             ) -> list[Finding]:
    """For the environments in `revs` (those verified now), in promotion order:

    * an environment whose fingerprint no earlier environment verified (in the ledger, or
      passing in this very run: `verified_now`) is untested: "prod runs a revision staging
      never verified";
    * an environment whose revision differs from the one before it is behind (or ahead):
      named with both revisions and the next step.
    """
    out: list[Finding] = []
    if not order:
        return out
    verified: dict[str, set[str]] = {}
    for ev in ledger.evidence(records, project, expected):
        verified.setdefault(ev.environment, set()).add(ev.fingerprint)
    for env in verified_now:
        if env in revs:
            verified.setdefault(env, set()).add(revs[env].fingerprint)
    for i, env in enumerate(order):
        if env not in revs:
            continue
        fp = revs[env].fingerprint
        earlier = list(order[:i])
        if earlier and not any(fp in verified.get(e, set()) for e in earlier):
            out.append(Finding(
                env, fp, f"a revision {', '.join(earlier)} verified",
                f"{env} runs revision {short(fp)} (stack {revs[env].stack}) that "
                f"{' or '.join(earlier)} never verified -- next: verify it in "
                f"{earlier[-1]} first, or return {env} to its verified revision "
                f"(stacklock rollback {env})", untested=True))
            continue
        prev = earlier[-1] if earlier else None
        if prev is not None and prev in revs and revs[prev].fingerprint != fp:
            ahead = revs[prev]
            newer_elsewhere = fp in verified.get(prev, set())
            state = "behind" if newer_elsewhere else "on another revision than"
            out.append(Finding(
                env, fp, ahead.fingerprint,
                f"{env} is {state} {prev}: {env} at revision {short(fp)} (stack "
                f"{revs[env].stack}), {prev} at {short(ahead.fingerprint)} (stack "
                f"{ahead.stack}) -- next: stacklock promote {env} once {prev} verified "
                f"{short(ahead.fingerprint)}", untested=False))
    return out


def _named(items: Any, value: Any) -> dict[str, str]:
    return {str(i.get("name")): value(i) for i in items or () if isinstance(i, Mapping)}


def _pairs(what: str, old: Mapping[str, str], new: Mapping[str, str]) -> list[str]:
    out = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if a != b:
            out.append(f"{what} {name}: {a or '(none)'} -> {b or '(none)'}")
    return out


def changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two locked stacks (a lock's `stacks.NAME`), one line per change:
    components, apt packages, Python distributions, models, TorchServe's config, the OS.
    Pure; the rollout prints it as the summary of what changes on each node."""
    out: list[str] = []
    oc, nc = old.get("components") or {}, new.get("components") or {}
    for comp in sorted(set(oc) | set(nc)):
        a, b = oc.get(comp) or {}, nc.get(comp) or {}
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                out.append(f"{comp}.{key}: {a.get(key)} -> {b.get(key)}")
    oa, na = old.get("apt") or {}, new.get("apt") or {}
    for comp in sorted(set(oa) | set(na)):
        out += _pairs("apt", _named(oa.get(comp), lambda i: str(i.get("version"))),
                      _named(na.get(comp), lambda i: str(i.get("version"))))
    out += _pairs("pip", _named(old.get("pip"), lambda i: str(i.get("version"))),
                  _named(new.get("pip"), lambda i: str(i.get("version"))))

    def model(i: Mapping[str, Any]) -> str:
        return f"{i.get('version')} (sha256 {str(i.get('sha256'))[:12]})"

    out += _pairs("model", _named(old.get("models"), model), _named(new.get("models"), model))
    ot, nt = old.get("torchserve") or {}, new.get("torchserve") or {}
    if ot.get("config_sha256") != nt.get("config_sha256"):
        oconf, nconf = ot.get("config") or {}, nt.get("config") or {}
        keys = sorted(k for k in set(oconf) | set(nconf) if oconf.get(k) != nconf.get(k))
        out.append("torchserve config: " + (", ".join(keys) if keys else "changed"))
    if old.get("os") != new.get("os"):
        out.append(f"os: {old.get('os')} -> {new.get('os')}")
    return out


def rollout_refusal(order: Sequence[str], env: str, fp: str,
                    records: Sequence[Mapping[str, Any]], *, project: str,
                    expected: Mapping[str, Sequence[str]] | None = None) -> str | None:
    """Why ENV may not be given revision `fp` (None: it may). In the promotion order, an
    environment only ever receives a revision that the environment just before it verified, or
    that it verified itself (a return to it): prod never gets what staging did not verify,
    even from a hand-edited manifest. The first environment of the order, and environments
    outside it, take any revision. Only evidence of `project` over the environment's complete
    node set counts (with `expected`: the node set it has now)."""
    if env not in order or list(order).index(env) == 0:
        return None
    prev = order[list(order).index(env) - 1]
    if any(e.fingerprint == fp and e.environment in (prev, env)
           for e in ledger.evidence(records, project, expected)):
        return None
    return (f"revision {short(fp)} was never verified in {prev} (nor in {env}) -- next: roll "
            f"it out and verify it in {prev} first (stacklock promote {env} then moves {env} "
            f"to it), or put environments.{env}.stack back")


@dataclass(frozen=True)
class StatusRow:
    environment: str
    stack: str
    fingerprint: str
    latest: ledger.Evidence | None
    next_step: str


def status(order: Sequence[str], revs: Mapping[str, Revision],
           records: Sequence[Mapping[str, Any]], now: datetime, soak: int = 0, *,
           project: str, expected: Mapping[str, Sequence[str]] | None = None
           ) -> list[StatusRow]:
    names = list(order) + [e for e in revs if e not in order]
    evs = ledger.evidence(records, project, expected)
    rows = []
    for env in names:
        rev = revs[env]
        latest = ledger.latest_evidence(evs, env)
        current = ledger.latest_evidence(evs, env, rev.fingerprint)
        if current is None:
            step = f"stacklock verify {env} (no passing verify of this revision yet)"
        elif env in order and order.index(env) + 1 < len(order):
            nxt = order[order.index(env) + 1]
            d = decide(order, nxt, revs, records, now, soak, project=project,
                       expected=expected)
            step = (f"{nxt} runs it too" if d.noop else
                    f"stacklock promote {nxt}" if d.allowed else f"wait: {d.reason}")
        else:
            step = "verified; nothing to promote to" if env in order else "not in promotion"
        rows.append(StatusRow(env, rev.stack, rev.fingerprint, latest, step))
    return rows
