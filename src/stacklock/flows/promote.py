"""`stacklock promote ENV` and `stacklock status`.

Promotion of ENV = ENV names the stack of the environment before it in `promotion`, allowed
only when the ledger holds passing evidence of that exact fingerprint there (at least
`promotion_soak` old). The change is an edit of the manifest made with ruamel.yaml's round
trip (comments, order, quoting and flow style kept), shown as a diff; then the lock is
checked, the files are rendered, and with `--rollout` the environment is rolled out.

Exit codes: 0 promoted (or already there); 1 refused: the evidence it needs is missing (the
message says which); 2 invalid input (no promotion order, unknown environment, ENV first in
the order); 3 could not finish.

Every edit of the manifest (promote, rollback) holds the project's manifest lock
(`<output_dir>/.stacklock/locks/_manifest.lock`, the run-lock mechanics) and reads the manifest
again under it, so two edits never lose one another; and it is all or nothing: the new
manifest, lock and rendered files are computed and checked in memory, written to temporary
files, then renamed into place; on any failure the files already replaced are restored.
"""

from __future__ import annotations

import difflib
import json
import os
import shlex
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.table import Table

from stacklock.console import emit_json, info, out, step, with_manifest
from stacklock.core import ledger as core
from stacklock.core import promotion, runlock
from stacklock.core.files import atomic_write, default_mode, ensure_dir
from stacklock.core.lock import fingerprint_of
from stacklock.core.manifest import LoadedManifest, load_manifest, parse_manifest
from stacklock.core.suggest import unknown_environment
from stacklock.errors import ExitCode, InvalidInput, Problem, StacklockError, ToolFailed
from stacklock.flows import ledger as ledgerflow

#: the run lock every edit of the manifest holds (not an environment's name: those never
#: start with `_`)
MANIFEST_LOCK = "_manifest"


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
        raise unknown_environment(env, loaded.manifest.environments)
    project = loaded.manifest.project
    if env not in order or order.index(env) == 0:
        d = promotion.decide(order, env, revisions(loaded), [], now or datetime.now(UTC),
                             project=project)
        raise InvalidInput(d.reason, problems=[Problem("ENV", d.reason,
                                                       "promote one of: " + ", ".join(order[1:]))])
    records = ledgerflow.open_ledger(loaded).records()
    soak = promotion.soak_seconds(loaded.manifest.promotion_soak)
    return promotion.decide(order, env, revisions(loaded), records, now or datetime.now(UTC),
                            soak, project=project,
                            expected=promotion.expected_of(loaded.manifest))


@contextmanager
def manifest_edit(loaded: LoadedManifest, timeout: float = runlock.DEFAULT_TIMEOUT
                  ) -> Iterator[LoadedManifest]:
    """Hold the project's manifest lock; yield the manifest as it is on disk now."""
    def waiting(_name: str, holder: runlock.Holder | None) -> None:
        info(f"  waiting for another edit of {loaded.path.name}: "
             f"{holder.describe() if holder else 'a run that is just starting'}")

    lock = runlock.RunLock(loaded.output_root, MANIFEST_LOCK, timeout=timeout, on_wait=waiting,
                           command=shlex.join(["stacklock", *sys.argv[1:]]))
    lock.acquire()
    try:
        yield load_manifest(loaded.path)
    finally:
        lock.release()


def write_together(changes: Mapping[Path, str | None]) -> None:
    """Write every file of `changes` (None: remove it), all or none: each new text goes to a
    temporary file beside its target first; only when all are written are they renamed into
    place; if anything fails, the files already replaced or removed get their old bytes back."""
    old: dict[Path, bytes | None] = {}
    temps: dict[Path, str] = {}
    done: list[Path] = []
    try:
        for path, text in changes.items():
            old[path] = path.read_bytes() if path.is_file() else None
            if text is None:
                continue
            ensure_dir(path.parent)
            mode = (os.stat(path).st_mode & 0o777) if path.is_file() else default_mode(path)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            temps[path] = tmp
            with os.fdopen(fd, "wb") as fh:
                fh.write(text.encode("utf-8"))
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, mode)
        for path, text in changes.items():
            if text is None:
                path.unlink(missing_ok=True)
            else:
                os.replace(temps[path], path)
                del temps[path]
            done.append(path)
    except BaseException as exc:
        for tmp in temps.values():
            Path(tmp).unlink(missing_ok=True)
        for path in reversed(done):
            before = old[path]
            if before is None:
                path.unlink(missing_ok=True)
            else:
                atomic_write(path, before, mode=default_mode(path) if not path.exists()
                             else os.stat(path).st_mode & 0o777)
        if isinstance(exc, OSError):
            raise ToolFailed(f"cannot write {exc.filename or 'the files'}: "
                             f"{exc.strerror or exc}; nothing was changed") from exc
        raise


def _lock_for(new: LoadedManifest) -> tuple[dict[str, Any], str | None]:
    """The lock of the edited manifest (in memory) and its new text (None: unchanged). Moving
    an environment to another stack can change only which regions a stack's AMI is resolved
    for; anything else that is stale is exit 2 (`stacklock lock`), nothing written."""
    from stacklock.core import lock as lockmod

    status = lockmod.check_lock(new)
    existing = lockmod.read_lock(new.lock_path)
    if status.current and existing is not None:
        return existing, None
    fix = "run stacklock lock first, then promote again; nothing was changed"
    if existing is None:
        raise InvalidInput(status.reason, problems=[Problem(new.lock_path.name, status.reason,
                                                            fix)])
    try:
        fresh = lockmod.build_lock(new, lockmod.amis_from_lock(existing, new.manifest),
                                   lockmod.closures_from_lock(existing, new),
                                   lockmod.apt_sets_from_lock(existing, new))
    except StacklockError:
        raise InvalidInput(status.reason, problems=[Problem(new.lock_path.name, status.reason,
                                                            fix)]) from None
    before = {n: s.get("fingerprint") for n, s in (existing.get("stacks") or {}).items()}
    after = {n: s.get("fingerprint") for n, s in fresh["stacks"].items()}
    if before != after:
        raise InvalidInput(status.reason, problems=[Problem(new.lock_path.name, status.reason,
                                                            fix)])
    return fresh, lockmod.dump_lock(fresh)


def edit_stack(loaded: LoadedManifest, env: str, stack: str) -> tuple[LoadedManifest, str]:
    """Make `environments.ENV.stack` name `stack`: the manifest, its lock and the rendered
    files, all or nothing (`write_together`). `loaded`: read under the manifest lock. Returns
    the new manifest and the diff of the manifest."""
    from stacklock.core import render as rendermod

    old_text = loaded.path.read_text("utf-8")
    new_text = set_stack(old_text, env, stack)
    new = LoadedManifest(parse_manifest(new_text, source=str(loaded.path)), loaded.path,
                         new_text)
    step("lock check")
    lock, lock_text = _lock_for(new)
    step("render")
    tree = rendermod.render_tree(new, lock)
    changes: dict[Path, str | None] = {loaded.path: new_text}
    if lock_text is not None:
        changes[new.lock_path] = lock_text
    for rel in rendermod.stale_files(new, tree):
        changes[new.output_root / rel] = tree.get(rel)
    write_together(changes)
    info(f"  rendered {len(tree)} file(s), {len(changes) - 1 - (lock_text is not None)} "
         "changed" + (f"; {new.lock_path.name} updated" if lock_text is not None else ""))
    diff = "".join(difflib.unified_diff(old_text.splitlines(True), new_text.splitlines(True),
                                        str(loaded.path.name), str(loaded.path.name)))
    return load_manifest(loaded.path), diff


def promote(loaded: LoadedManifest, env: str, *, now: datetime | None = None,
            lock_timeout: float = runlock.DEFAULT_TIMEOUT) -> tuple[ExitCode, LoadedManifest]:
    """Edit the manifest, its lock and the rendered files together, under the manifest lock.
    Returns the code and the new manifest."""
    step(f"promote {env}")
    with manifest_edit(loaded, lock_timeout) as current:
        d = decide(current, env, now)
        if d.noop:
            info(f"  {d.reason}: nothing to promote")
            return ExitCode.OK, current
        if not d.allowed:
            info(f"  refused: {d.reason}")
            return ExitCode.DEVIATION, current
        assert d.stack is not None and d.source is not None
        old_stack = current.manifest.environments[env].stack
        info(f"  evidence: {d.reason}")
        new, diff = edit_stack(current, env, d.stack)
    info(f"  {loaded.path.name}: environments.{env}.stack {old_stack} -> {d.stack} "
         f"(revision {promotion.short(d.fingerprint)}, verified in {d.source})")
    for line in diff.splitlines():
        info(f"    {line}")
    return ExitCode.OK, new


STATUS_SCHEMA = "stacklock.status/v1"


@dataclass(frozen=True)
class StatusEvidence:
    """The latest passing verify of an environment (`stacklock status --format json`)."""

    seq: int
    time: str
    fingerprint: str
    nodes: tuple[str, ...]
    current: bool  # of the environment's revision now (False: an older revision)

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "time": self.time, "fingerprint": self.fingerprint,
                "nodes": list(self.nodes), "current": self.current}


@dataclass(frozen=True)
class StatusEnvironment:
    environment: str
    stack: str
    fingerprint: str
    latest_passing_verify: StatusEvidence | None
    next_step: str

    def as_dict(self) -> dict[str, Any]:
        latest = self.latest_passing_verify
        return {"environment": self.environment, "stack": self.stack,
                "fingerprint": self.fingerprint,
                "latest_passing_verify": latest.as_dict() if latest else None,
                "next_step": with_manifest(self.next_step)}


@dataclass(frozen=True)
class StatusReport:
    """`stacklock status` for a machine: a versioned envelope (keys pinned by a test)."""

    project: str
    promotion: tuple[str, ...]
    ledger: str
    records: int
    environments: tuple[StatusEnvironment, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"schema": STATUS_SCHEMA, "project": self.project,
                "promotion": list(self.promotion), "ledger": self.ledger,
                "records": self.records,
                "environments": [e.as_dict() for e in self.environments]}


def print_status(loaded: LoadedManifest, now: datetime | None = None, *,
                 fmt: str = "table") -> ExitCode:
    order = list(loaded.manifest.promotion)
    records = ledgerflow.open_ledger(loaded).records()
    soak = promotion.soak_seconds(loaded.manifest.promotion_soak)
    rows = promotion.status(order, revisions(loaded), records, now or datetime.now(UTC), soak,
                            project=loaded.manifest.project,
                            expected=promotion.expected_of(loaded.manifest))
    if fmt == "json":
        emit_json(StatusReport(
            project=loaded.manifest.project, promotion=tuple(order),
            ledger=str(ledgerflow.open_ledger(loaded).where), records=len(records),
            environments=tuple(StatusEnvironment(
                r.environment, r.stack, r.fingerprint,
                None if r.latest is None else StatusEvidence(
                    r.latest.seq, r.latest.time, r.latest.fingerprint, tuple(r.latest.nodes),
                    r.latest.fingerprint == r.fingerprint),
                r.next_step) for r in rows)).as_dict())
        return ExitCode.OK
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
    """`stacklock ledger verify`: 0 intact (every record chained, signed by a trusted key, in
    time order, and the repository's recorded head still there), 1 naming the first record
    that is not."""
    path = ledger.where
    head = ledger.head()
    records, error = ledger.check(ledger.read_text())
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
    signers = sorted({str((r.get("signer") or {}).get("name")) for r in records})
    if not records:
        out.print(f"{path}: no records yet (a new ledger; {ledger.trust.source} trusts "
                  f"{len(ledger.trust.keys)} key(s))", markup=False, highlight=False)
        return ExitCode.OK
    last = records[-1]
    out.print(f"{path}: {len(records)} record(s), chain intact, every record signed by a "
              f"trusted key ({', '.join(signers)}), times in order"
              + (f", holds the recorded head seq {head.seq}" if head else "")
              + f" ({len(revs)} revision(s), {len(core.all_evidence(records))} evidence "
              f"record(s)); head seq {last['seq']} {last['hash']}", markup=False,
              highlight=False)
    return ExitCode.OK
