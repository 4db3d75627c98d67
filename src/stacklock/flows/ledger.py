"""Where the evidence ledger lives, and the flows that write and check it.

`Ledger` is the interface; `open_ledger(loaded)` picks its home from the manifest
(`manifest.ledger_location`):

* `LocalLedger`: `<output_dir>/.stacklock/ledger.jsonl` (0600), the default. Appends hold an
  exclusive `flock` on the file, so two verify runs never write the same `seq` twice.
* `S3Ledger`: one object, `s3://BUCKET/<project>/ledger.jsonl` by default, in the environments'
  S3 state bucket when every environment is on AWS and they share one, or where the manifest's
  `ledger:` names it, so that a team and its CI share one ledger. An append reads the object,
  checks the whole chain, adds its records after the head it read and writes the object back
  only if it is unchanged (PutObject If-Match on the ETag it read; If-None-Match: * for the
  first record). When another writer got there first (412/409) it reads again, checks again,
  builds its records on the new head and tries again, up to `S3_TRIES` times.

The records and the chain: `stacklock.core.ledger`.
"""

from __future__ import annotations

import fcntl
import os
import random
import time as _time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stacklock.core import ledger as core
from stacklock.core.manifest import LedgerLocation, LoadedManifest, ledger_location
from stacklock.errors import ExitCode, InvalidInput, Problem, StacklockError, ToolFailed

if TYPE_CHECKING:
    from stacklock.core.parity import ParityReport

LEDGER_NAME = "ledger.jsonl"
#: conditional writes an S3 append tries before it gives up (exit 3)
S3_TRIES = 12

Entries = list[tuple[str, Mapping[str, Any]]]
#: what to append, decided on the records that are there (read again on every try)
Builder = Callable[[Sequence[Mapping[str, Any]]], Entries]


class LedgerTampered(StacklockError):
    """The ledger's chain is broken: the evidence cannot be trusted (exit 1)."""

    def __init__(self, where: Path | str, error: core.ChainError) -> None:
        super().__init__(f"{where}: the ledger was tampered with at {error.describe()}",
                         ExitCode.DEVIATION)
        self.error = error


def ledger_path(loaded: LoadedManifest) -> Path:
    """The local ledger file (where a local ledger lives)."""
    return loaded.output_root / ".stacklock" / LEDGER_NAME


class Ledger(ABC):
    """The evidence ledger: read whole and checked, appended to after a check of the chain."""

    @property
    @abstractmethod
    def where(self) -> str:
        """Its location, for messages: a path or an s3:// URL."""

    @abstractmethod
    def read_text(self) -> str:
        """The ledger's text as stored ("" when it does not exist yet), unchecked."""

    @abstractmethod
    def append_with(self, build: Builder, time: str | None = None) -> list[dict[str, Any]]:
        """Append the records `build` returns for the records there (kind, body); return the
        records written. The chain is checked before (raises LedgerTampered)."""

    def records(self) -> list[dict[str, Any]]:
        """Every record, after checking the chain (raises LedgerTampered)."""
        return checked(self.where, self.read_text())

    def append(self, entries: Entries, time: str | None = None) -> list[dict[str, Any]]:
        """Append records (kind, body) after checking the chain; return them."""
        return self.append_with(lambda _records: entries, time)


def checked(where: str, text: str) -> list[dict[str, Any]]:
    records, error = core.check_text(text)
    if error is not None:
        raise LedgerTampered(where, error)
    return records


class LocalLedger(Ledger):
    """A local ledger file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def where(self) -> str:
        return str(self.path)

    def read_text(self) -> str:
        try:
            return self.path.read_text("utf-8")
        except FileNotFoundError:
            return ""

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

    def append_with(self, build: Builder, time: str | None = None) -> list[dict[str, Any]]:
        with self._locked() as fd:
            records = self.records()
            written = core.extend(records, build(records), time)
            os.write(fd, "".join(core.dumps(r) for r in written).encode("utf-8"))
            os.fsync(fd)
        return written


class S3Ledger(Ledger):
    """The ledger as one S3 object, appended to with conditional writes (see the module)."""

    def __init__(self, bucket: str, key: str, region: str, *, setting: str = "ledger.bucket",
                 tries: int = S3_TRIES) -> None:
        self.bucket = bucket
        self.key = key
        self.region = region
        self.setting = setting  # the manifest field that named the bucket (for errors)
        self.tries = tries
        self.conflicts = 0  # writes lost to another writer (retried)

    @property
    def where(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def _missing_bucket(self) -> InvalidInput:
        msg = f"the ledger's bucket {self.bucket} does not exist (region {self.region})"
        return InvalidInput(msg, problems=[Problem(
            self.setting, msg, "create it (versioned, encrypted, like a Terraform state "
            "bucket), name another one in ledger.bucket, or set ledger: {store: local}",
            rule="ledger")])

    def _read(self) -> tuple[str, str | None]:
        from stacklock.adapters import aws

        try:
            got = aws.s3_read(self.region, self.bucket, self.key)
        except aws.AwsError as exc:
            if exc.code == "NoSuchBucket":
                raise self._missing_bucket() from None
            raise
        if got is None:
            return "", None
        data, etag = got
        try:
            return data.decode("utf-8"), etag
        except UnicodeDecodeError:
            raise LedgerTampered(self.where, core.ChainError(
                1, None, "the object is not UTF-8 text")) from None

    def read_text(self) -> str:
        return self._read()[0]

    def append_with(self, build: Builder, time: str | None = None) -> list[dict[str, Any]]:
        from stacklock.adapters import aws

        for attempt in range(self.tries):
            text, etag = self._read()
            records = checked(self.where, text)
            written = core.extend(records, build(records), time)
            if not written:
                return []
            body = (text + "".join(core.dumps(r) for r in written)).encode("utf-8")
            try:
                new_etag = aws.s3_write_if(self.region, self.bucket, self.key, body, etag)
            except aws.AwsError as exc:
                if exc.code == "NoSuchBucket":
                    raise self._missing_bucket() from None
                raise
            if new_etag is not None:
                return written
            self.conflicts += 1
            _time.sleep(core.backoff(attempt, random.random()))
        raise ToolFailed(f"{self.where}: another writer changed the ledger {self.tries} times "
                         "while this one tried to append; nothing was written: run it again")


def location(loaded: LoadedManifest) -> LedgerLocation:
    loc, problems = ledger_location(loaded.manifest)
    if problems:  # load_manifest has refused these already; a hand-built manifest may not
        raise InvalidInput(problems[0].message, problems=problems)
    return loc


def open_ledger(loaded: LoadedManifest) -> Ledger:
    """The manifest's ledger: an S3 object or the local file (`manifest.ledger_location`)."""
    loc = location(loaded)
    if loc.bucket:
        setting = "ledger.bucket" if loaded.manifest.ledger.bucket else "ledger"
        return S3Ledger(loc.bucket, loc.key, loc.region, setting=setting)
    return LocalLedger(ledger_path(loaded))


def record_evidence(ledger: Ledger, lock: Mapping[str, Any], env_stacks: Mapping[str, str],
                    report: Mapping[str, Any], time: str | None = None) -> list[dict[str, Any]]:
    """Evidence of a passing verify for each environment of the JSON `report` (with a revision
    record first for each fingerprint the ledger has not seen). `env_stacks`: env -> stack.
    The revisions the ledger holds are looked up on the records the append builds on, so a
    writer that lost a race to another does not record a revision twice."""
    report_digest = core.digest(report)
    observed = report.get("observed") or {}

    def build(records: Sequence[Mapping[str, Any]]) -> Entries:
        known = set(core.revisions(records))
        entries: Entries = []
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
        return entries

    return ledger.append_with(build, time)


# --------------------------------------------------------------------------- verify's hooks


REVISION_COMPONENT = "stack.revision"


def env_stacks(loaded: LoadedManifest) -> dict[str, str]:
    return {env: spec.stack for env, spec in loaded.manifest.environments.items()}


def current_lock(loaded: LoadedManifest) -> dict[str, Any]:
    """The lock file as it is (verify has already checked it is current)."""
    from stacklock.core import lock as lockmod

    lock = lockmod.read_lock(loaded.lock_path)
    if lock is None:
        raise StacklockError(f"{loaded.lock_path} does not exist", ExitCode.INVALID)
    return lock


def passing_envs(report: ParityReport) -> list[str]:
    """Environments whose every node was reached and matches its lock in this report."""
    from stacklock.core.parity import Kind, Status

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
    from stacklock.core.parity import Check, Kind, Status

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
    from stacklock.core import report as reportmod

    return record_evidence(open_ledger(loaded), current_lock(loaded), env_stacks(loaded),
                           reportmod.report_dict(report))
