"""`stacklock promote ENV` and `stacklock status`.

Promotion of ENV = ENV names the stack of the environment before it in `promotion`, allowed
only when the ledger holds passing evidence of that exact fingerprint there (at least
`promotion_soak` old). The change is an edit of the manifest made with ruamel.yaml's round
trip (comments, order, quoting and flow style kept), shown as a diff; then the lock is
checked, the files are rendered, and with `--rollout` the environment is rolled out.

Exit codes: 0 promoted (or already there); 1 refused: the evidence it needs is missing (the
message says which); 2 invalid input (no promotion order, unknown environment, ENV first in
the order); 3 could not finish.
"""

from __future__ import annotations

import difflib
import json
from datetime import UTC, datetime

from rich.table import Table

from stacklock.console import info, out, step
from stacklock.core import ledger as core
from stacklock.core import promotion
from stacklock.core.files import atomic_write
from stacklock.core.lock import fingerprint_of
from stacklock.core.manifest import LoadedManifest, load_manifest
from stacklock.errors import ExitCode, InvalidInput, Problem
from stacklock.flows import ledger as ledgerflow


def _order(loaded: LoadedManifest) -> list[str]:
    order = list(loaded.manifest.promotion)
    if not order:
        raise InvalidInput("the manifest has no promotion order", problems=[Problem(
            "promotion", "not set", "add e.g. `promotion: [dev, staging, prod]` to the manifest")])
    return order


def revisions(loaded: LoadedManifest) -> dict[str, promotion.Revision]:
    return promotion.revisions_of(ledgerflow.env_stacks(loaded), ledgerflow.current_lock(loaded))


def set_stack(text: str, env: str, stack: str) -> str:
    """The manifest text with `environments.ENV.stack` set to `stack`, and nothing else
    changed: ruamel.yaml's round-trip loader finds where the value is (line and column, in
    block or flow style, quoted or not), and only that scalar is replaced, so comments,
    indentation, quoting and key order stay byte for byte."""
    from ruamel.yaml import YAML

    data = YAML(typ="rt").load(text)
    node = data["environments"][env]
    old = str(node["stack"])
    line, col = node.lc.value("stack")
    lines = text.splitlines(keepends=True)
    row = lines[line]
    for token in (old, f'"{old}"', f"'{old}'"):
        if row.startswith(token, col):
            quote = token[0] if token[0] in "'\"" else ""
            lines[line] = row[:col] + f"{quote}{stack}{quote}" + row[col + len(token):]
            return "".join(lines)
    raise InvalidInput(f"environments.{env}.stack: cannot find {old!r} where YAML says it is "
                       f"(line {line + 1}); edit the manifest by hand")


def decide(loaded: LoadedManifest, env: str, now: datetime | None = None) -> promotion.Decision:
    order = _order(loaded)
    if env not in loaded.manifest.environments:
        raise InvalidInput(f"unknown environment {env!r}", problems=[Problem(
            "ENV", f"{env!r} is not an environment of the manifest",
            "use one of: " + ", ".join(loaded.manifest.environments))])
    if env not in order or order.index(env) == 0:
        d = promotion.decide(order, env, revisions(loaded), [], now or datetime.now(UTC))
        raise InvalidInput(d.reason, problems=[Problem("ENV", d.reason,
                                                       "promote one of: " + ", ".join(order[1:]))])
    records = ledgerflow.open_ledger(loaded).records()
    soak = promotion.soak_seconds(loaded.manifest.promotion_soak)
    return promotion.decide(order, env, revisions(loaded), records, now or datetime.now(UTC), soak)


def promote(loaded: LoadedManifest, env: str, *, now: datetime | None = None) -> tuple[
        ExitCode, LoadedManifest]:
    """Edit the manifest, check the lock, render. Returns the code and the new manifest."""
    from stacklock.core import lock as lockmod
    from stacklock.core import render as rendermod

    step(f"promote {env}")
    d = decide(loaded, env, now)
    if d.noop:
        info(f"  {d.reason}: nothing to promote")
        return ExitCode.OK, loaded
    if not d.allowed:
        info(f"  refused: {d.reason}")
        return ExitCode.DEVIATION, loaded
    assert d.stack is not None and d.source is not None
    old_stack = loaded.manifest.environments[env].stack
    info(f"  evidence: {d.reason}")
    old_text = loaded.path.read_text("utf-8")
    new_text = set_stack(old_text, env, d.stack)
    diff = "".join(difflib.unified_diff(old_text.splitlines(True), new_text.splitlines(True),
                                        str(loaded.path.name), str(loaded.path.name)))
    atomic_write(loaded.path, new_text)
    try:
        new = load_manifest(loaded.path)
    except InvalidInput:
        atomic_write(loaded.path, old_text)  # never leave a manifest that does not load
        raise
    info(f"  {loaded.path.name}: environments.{env}.stack {old_stack} -> {d.stack} "
         f"(revision {promotion.short(d.fingerprint)}, verified in {d.source})")
    for line in diff.splitlines():
        info(f"    {line}")
    step("lock check")
    lock = lockmod.load_current_lock(new)
    step("render")
    tree = rendermod.render_tree(new, lock)
    changed = rendermod.write_tree(new, tree)
    info(f"  rendered {len(tree)} file(s), {len(changed)} changed")
    return ExitCode.OK, new


def print_status(loaded: LoadedManifest, now: datetime | None = None) -> ExitCode:
    order = list(loaded.manifest.promotion)
    records = ledgerflow.open_ledger(loaded).records()
    soak = promotion.soak_seconds(loaded.manifest.promotion_soak)
    rows = promotion.status(order, revisions(loaded), records, now or datetime.now(UTC), soak)
    table = Table(title="revisions" + (f" (promotion: {' -> '.join(order)})" if order else ""),
                  header_style="bold")
    for col in ("environment", "stack", "revision", "latest passing verify", "next step"):
        table.add_column(col)
    for r in rows:
        if r.latest is None:
            ev = "none"
        else:
            same = "" if r.latest.fingerprint == r.fingerprint else \
                f" of {promotion.short(r.latest.fingerprint)} (an older revision)"
            ev = f"{r.latest.time}{same}, {len(r.latest.nodes)} node(s), seq {r.latest.seq}"
        table.add_row(r.environment, r.stack, promotion.short(r.fingerprint), ev, r.next_step)
    out.print(table)
    info(f"ledger: {ledgerflow.open_ledger(loaded).where} ({len(records)} record(s), "
         "chain intact)")
    return ExitCode.OK


def verify_ledger(ledger: ledgerflow.Ledger) -> ExitCode:
    """`stacklock ledger verify`: 0 intact, 1 naming the first tampered record."""
    path = ledger.where
    records, error = core.check_text(ledger.read_text())
    if error is not None:
        out.print(f"{path}: TAMPERED at {error.describe()}; the {len(records)} record(s) "
                  "before it are intact", markup=False, highlight=False)
        return ExitCode.DEVIATION
    revs = core.revisions(records)
    bad = []
    for fp, body in revs.items():
        try:
            if fingerprint_of(json.loads(body.get("lock_text", "{}"))) != fp:
                bad.append(fp)
        except ValueError:
            bad.append(fp)
    if bad:
        out.print(f"{path}: revision record(s) whose lock does not hash to their fingerprint: "
                  + ", ".join(b[:12] for b in bad), markup=False, highlight=False)
        return ExitCode.DEVIATION
    head = records[-1]["hash"] if records else core.GENESIS
    out.print(f"{path}: {len(records)} record(s), chain intact "
              f"({len(revs)} revision(s), {len(core.evidence(records))} evidence record(s)); "
              f"head {head}", markup=False, highlight=False)
    return ExitCode.OK
