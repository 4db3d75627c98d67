"""Where the evidence ledger lives, and the flows that write and check it.

The ledger is `<output_dir>/.stacklock/ledger.jsonl` (0600), one record a line (the format and
the chain: `stacklock.core.ledger`). Appends hold an exclusive `flock` on the file, so two
verify runs of different environments never write the same `seq` twice.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stacklock.core import ledger as core
from stacklock.errors import ExitCode, StacklockError
from stacklock.manifest import LoadedManifest

if TYPE_CHECKING:
    from stacklock.parity import ParityReport

LEDGER_NAME = "ledger.jsonl"


class LedgerTampered(StacklockError):
    """The ledger's chain is broken: the evidence cannot be trusted (exit 1)."""

    def __init__(self, path: Path, error: core.ChainError) -> None:
        super().__init__(f"{path}: the ledger was tampered with at {error.describe()}",
                         ExitCode.DEVIATION)
        self.error = error


def ledger_path(loaded: LoadedManifest) -> Path:
    return loaded.output_root / ".stacklock" / LEDGER_NAME


class Ledger:
    """A local ledger file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read_text(self) -> str:
        try:
            return self.path.read_text("utf-8")
        except FileNotFoundError:
            return ""

    def records(self) -> list[dict[str, Any]]:
        """Every record, after checking the chain (raises LedgerTampered)."""
        records, error = core.check_text(self.read_text())
        if error is not None:
            raise LedgerTampered(self.path, error)
        return records

    @contextmanager
    def _locked(self) -> Iterator[int]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.fchmod(fd, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)  # releases the flock

    def append(self, entries: list[tuple[str, Mapping[str, Any]]],
               time: str | None = None) -> list[dict[str, Any]]:
        """Append records (kind, body) after checking the chain; return them."""
        with self._locked() as fd:
            records = self.records()
            prev: dict[str, Any] | None = records[-1] if records else None
            written = []
            for kind, body in entries:
                rec = core.new_record(prev, kind, body, time)
                os.write(fd, core.dumps(rec).encode("utf-8"))
                written.append(rec)
                prev = rec
            os.fsync(fd)
        return written


def open_ledger(loaded: LoadedManifest) -> Ledger:
    return Ledger(ledger_path(loaded))


def record_evidence(ledger: Ledger, lock: Mapping[str, Any], env_stacks: Mapping[str, str],
                    report: Mapping[str, Any], time: str | None = None) -> list[dict[str, Any]]:
    """Evidence of a passing verify for each environment of the JSON `report` (with a revision
    record first for each fingerprint the ledger has not seen). `env_stacks`: env -> stack."""
    known = set(core.revisions(ledger.records()))
    entries: list[tuple[str, Mapping[str, Any]]] = []
    report_digest = core.digest(report)
    observed = report.get("observed") or {}
    for env in report.get("environments") or []:
        stack = env_stacks[env]
        locked = lock["stacks"][stack]
        fp = str(locked["fingerprint"])
        if fp not in known:
            entries.append(("revision", core.revision_body(
                fp, stack, str(lock.get("project", "")), locked)))
            known.add(fp)
        nodes = sorted((observed.get(env) or {}).keys())
        body = core.evidence_body(env, fp, stack, nodes, observed.get(env) or {}, {})
        body["report_sha256"] = report_digest
        entries.append(("evidence", body))
    return ledger.append(entries, time)


# --------------------------------------------------------------------------- verify's hooks


REVISION_COMPONENT = "stack.revision"


def env_stacks(loaded: LoadedManifest) -> dict[str, str]:
    return {env: spec.stack for env, spec in loaded.manifest.environments.items()}


def current_lock(loaded: LoadedManifest) -> dict[str, Any]:
    """The lock file as it is (verify has already checked it is current)."""
    from stacklock import lock as lockmod

    lock = lockmod.read_lock(loaded.lock_path)
    if lock is None:
        raise StacklockError(f"{loaded.lock_path} does not exist", ExitCode.INVALID)
    return lock


def passing_envs(report: ParityReport) -> list[str]:
    """Environments whose every node was reached and matches its lock in this report."""
    from stacklock.parity import Kind, Status

    out = []
    for env in report.environments:
        mine = [c for c in report.checks if c.environment == env and c.kind is not Kind.CROSS]
        if mine and all(c.status is Status.MATCH for c in mine):
            out.append(env)
    return out


def with_revision_checks(loaded: LoadedManifest, report: ParityReport,
                         records: list[dict[str, Any]] | None = None) -> ParityReport:
    """With a promotion order: a deviation for each environment of the report that runs a
    revision no earlier environment verified, and one naming each environment that is behind
    the one before it (both revisions). Without one: the report unchanged."""
    import dataclasses

    from stacklock.core import promotion
    from stacklock.parity import Check, Kind, Status

    order = loaded.manifest.promotion
    if not order:
        return report
    if records is None:
        records = open_ledger(loaded).records()
    stacks = env_stacks(loaded)
    revs = promotion.revisions_of({e: stacks[e] for e in report.environments if e in stacks},
                                  current_lock(loaded))
    extra = [Check(f.environment, "*", REVISION_COMPONENT, promotion.short(f.expected)
                   if not f.untested else f.expected, promotion.short(f.fingerprint),
                   Status.DEVIATION, Kind.CROSS, f.detail)
             for f in promotion.findings(order, revs, records, passing_envs(report))]
    if not extra:
        return report
    return dataclasses.replace(report, checks=report.checks + tuple(extra))


def record_passing(loaded: LoadedManifest, report: ParityReport) -> list[dict[str, Any]]:
    """Evidence for every environment of a passing (exit 0) report."""
    from stacklock import report as reportmod

    return record_evidence(open_ledger(loaded), current_lock(loaded), env_stacks(loaded),
                           reportmod.report_dict(report))
