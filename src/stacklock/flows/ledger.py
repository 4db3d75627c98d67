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

Every read checks the whole chain, every record's signature against the manifest's trusted
signers (`<manifest stem>.signers`), that times never go backwards, and that the ledger still
holds the head this repository last saw (`<manifest stem>.ledger-head`, rewritten after every
append by this controller); anything else is `LedgerTampered` (exit 1) naming the record.
Appends are signed with this user's key (`stacklock.flows.keys.signer_for`).

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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stacklock.console import info
from stacklock.core import ledger as core
from stacklock.core import promotion
from stacklock.core.files import atomic_write
from stacklock.core.manifest import LedgerLocation, LoadedManifest, ledger_location
from stacklock.core.signing import Trust, WriterKey
from stacklock.errors import ExitCode, InvalidInput, Problem, StacklockError, ToolFailed

if TYPE_CHECKING:
    from stacklock.core.parity import ParityReport

LEDGER_NAME = "ledger.jsonl"
#: conditional writes an S3 append tries before it gives up (exit 3)
S3_TRIES = 12

Entries = list[tuple[str, Mapping[str, Any]]]
#: what to append, decided on the records that are there (read again on every try)
Builder = Callable[[Sequence[Mapping[str, Any]]], Entries]
#: the key that signs an append, asked for only when something is appended
SignerSource = Callable[[], WriterKey]


def ledger_path(loaded: LoadedManifest) -> Path:
    """The local ledger file (where a local ledger lives)."""
    return loaded.output_root / ".stacklock" / LEDGER_NAME


class Ledger(ABC):
    """The evidence ledger: read whole and checked, appended to after a check of the chain.

    `trust`: the keys whose records are accepted; `head_file`: where this repository keeps
    the head it last saw (None: not kept); `signer`: gives the key that signs appends."""

    def __init__(self, *, trust: Trust | None = None, head_file: Path | None = None,
                 signer: SignerSource | None = None) -> None:
        self.trust = trust if trust is not None else Trust({})
        self.head_file = head_file
        self.signer = signer

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

    def head(self) -> core.Head | None:
        """The head this repository last saw (None: none recorded)."""
        if self.head_file is None:
            return None
        try:
            text = self.head_file.read_text("utf-8")
        except FileNotFoundError:
            return None
        try:
            return core.parse_head(text)
        except ValueError as exc:
            raise InvalidInput(f"{self.head_file}: {exc}", problems=[Problem(
                self.head_file.name, str(exc), "restore it from git (it is committed)")]
            ) from None

    def check(self, text: str) -> tuple[list[dict[str, Any]], core.ChainError | None]:
        return core.check_text(text, self.trust, self.head())

    def records(self) -> list[dict[str, Any]]:
        """Every record, after checking the chain, the signatures, the times and the head
        (raises LedgerTampered)."""
        records, error = self.check(self.read_text())
        if error is not None:
            raise LedgerTampered(self.where, error)
        return records

    def append(self, entries: Entries, time: str | None = None) -> list[dict[str, Any]]:
        """Append records (kind, body) after checking the chain; return them."""
        return self.append_with(lambda _records: entries, time)

    def signing_key(self) -> WriterKey:
        if self.signer is None:
            raise InvalidInput(f"{self.where}: no signing key to append with",
                               problems=[Problem("STACKLOCK_SIGNING_KEY", "no key",
                                                 "stacklock ledger key new")])
        key = self.signer()
        if not self.trust.trusts(key.public):
            raise InvalidInput(f"your signing key {key.name} ({key.key_id}) is not trusted by "
                               f"{self.trust.source}", problems=[Problem(
                                   self.trust.source, f"{key.name} is not a trusted signer",
                                   "stacklock ledger key trust, then commit the signers file "
                                   "through review")])
        return key

    def _extend(self, records: Sequence[Mapping[str, Any]], entries: Entries, key: WriterKey,
                time: str | None) -> list[dict[str, Any]]:
        try:
            return core.extend(records, entries, key, time)
        except core.ClockBehind as exc:
            raise ToolFailed(f"{self.where}: {exc}: set this machine's clock right (NTP); "
                             "nothing was written") from None

    def _saw(self, written: Sequence[Mapping[str, Any]]) -> None:
        """Record the new head in the head file (never moves it back)."""
        if self.head_file is None or not written:
            return
        new = core.head_of(written, self.where)
        assert new is not None
        old = self.head()
        if old is not None and old.seq >= new.seq:
            return
        atomic_write(self.head_file, core.format_head(new), mode=0o644)


class LedgerTampered(StacklockError):
    """The ledger's chain is broken: the evidence cannot be trusted (exit 1)."""

    def __init__(self, where: Path | str, error: core.ChainError) -> None:
        super().__init__(f"{where}: the ledger was tampered with at {error.describe()}",
                         ExitCode.DEVIATION)
        self.error = error


class LocalLedger(Ledger):
    """A local ledger file."""

    def __init__(self, path: Path, *, trust: Trust | None = None, head_file: Path | None = None,
                 signer: SignerSource | None = None) -> None:
        super().__init__(trust=trust, head_file=head_file, signer=signer)
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
        key = self.signing_key()
        with self._locked() as fd:
            records = self.records()
            written = self._extend(records, build(records), key, time)
            os.write(fd, "".join(core.dumps(r) for r in written).encode("utf-8"))
            os.fsync(fd)
            self._saw(written)
        return written


class S3Ledger(Ledger):
    """The ledger as one S3 object, appended to with conditional writes (see the module)."""

    def __init__(self, bucket: str, key: str, region: str, *, setting: str = "ledger.bucket",
                 tries: int = S3_TRIES, trust: Trust | None = None,
                 head_file: Path | None = None, signer: SignerSource | None = None) -> None:
        super().__init__(trust=trust, head_file=head_file, signer=signer)
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

        key = self.signing_key()
        for attempt in range(self.tries):
            text, etag = self._read()
            records, error = self.check(text)
            if error is not None:
                raise LedgerTampered(self.where, error)
            written = self._extend(records, build(records), key, time)
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
                self._saw(written)
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


def open_ledger(loaded: LoadedManifest, file: Path | None = None) -> Ledger:
    """The manifest's ledger: an S3 object or the local file (`manifest.ledger_location`), or
    the local `file` given (`ledger verify --file`), checked against the manifest's trusted
    signers and the head its repository last saw; appends signed with this user's key."""
    from stacklock.flows import keys

    trust = keys.trust(loaded)
    head = core.head_path(loaded.path)

    def signer() -> WriterKey:
        return keys.signer_for(loaded)

    def refreshed() -> WriterKey:  # a lab manifest may have just trusted the key
        key = signer()
        led.trust = keys.trust(loaded)
        return key

    led: Ledger
    if file is not None:
        led = LocalLedger(file, trust=trust, head_file=None, signer=refreshed)
        return led
    loc = location(loaded)
    if loc.bucket:
        setting = "ledger.bucket" if loaded.manifest.ledger.bucket else "ledger"
        led = S3Ledger(loc.bucket, loc.key, loc.region, setting=setting, trust=trust,
                       head_file=head, signer=refreshed)
    else:
        led = LocalLedger(ledger_path(loaded), trust=trust, head_file=head, signer=refreshed)
    return led


@dataclass(frozen=True)
class NodeSet:
    """What evidence says about an environment's nodes: those the manifest says it has, and
    each one's identity (`SHA256:...` of its pinned SSH host key, `ssm:<instance>` over SSM)."""

    expected: tuple[str, ...]
    keys: Mapping[str, str]


def record_evidence(ledger: Ledger, lock: Mapping[str, Any], env_stacks: Mapping[str, str],
                    report: Mapping[str, Any], *, project: str, node_sets: Mapping[str, NodeSet],
                    time: str | None = None) -> list[dict[str, Any]]:
    """Evidence of a passing verify for each environment of the JSON `report` that
    `node_sets` names (with a revision record first for each fingerprint the ledger has not
    seen). `env_stacks`: env -> stack. The revisions the ledger holds are looked up on the
    records the append builds on, so a writer that lost a race to another does not record a
    revision twice."""
    report_digest = core.digest(report)
    observed = report.get("observed") or {}

    def build(records: Sequence[Mapping[str, Any]]) -> Entries:
        known = set(core.revisions(records))
        entries: Entries = []
        for env in report.get("environments") or []:
            if env not in node_sets:
                continue
            stack = env_stacks[env]
            locked = lock["stacks"][stack]
            fp = str(locked["fingerprint"])
            if fp not in known:
                entries.append(("revision", core.revision_body(fp, stack, project, locked)))
                known.add(fp)
            nodes = sorted((observed.get(env) or {}).keys())
            ns = node_sets[env]
            body = core.evidence_body(env, fp, stack, nodes, observed.get(env) or {}, {},
                                      project=project, expected=ns.expected,
                                      node_keys={n: ns.keys[n] for n in nodes if n in ns.keys})
            body["report_sha256"] = report_digest
            # --- the waivers in force for this verify (parity.waivers; stacklock.core.waivers)
            in_force = [w for w in report.get("waivers") or []
                        if w.get("environment") in (None, env)]
            if in_force:
                body["waivers"] = in_force
            # ---
            entries.append(("evidence", body))
        return entries

    return ledger.append_with(build, time)


def inventory_identities(loaded: LoadedManifest, env: str) -> tuple[list[str], dict[str, str]]:
    """The hosts of `inventories/ENV/hosts.yml` and each one's identity: the fingerprint of
    its key in the environment's pinned known_hosts (`ssm:<instance id>` for an SSM host)."""
    import yaml

    from stacklock.core import hostkeys

    path = loaded.output_root / "inventories" / env / "hosts.yml"
    try:
        doc = yaml.safe_load(path.read_text("utf-8")) or {}
    except FileNotFoundError:
        return [], {}
    group = ((doc.get("all") or {}).get("children") or {}).get(env) or {}
    hosts: dict[str, Any] = group.get("hosts") or {}
    known = hostkeys.by_pattern(hostkeys.load_known_hosts(
        hostkeys.known_hosts_path(loaded.output_root, env)))
    ids: dict[str, str] = {}
    for name, h in hosts.items():
        h = h or {}
        if h.get("ansible_connection") == "community.aws.aws_ssm":
            ids[str(name)] = f"ssm:{h.get('ansible_aws_ssm_instance_id', name)}"
            continue
        entry = known.get(hostkeys.host_pattern(str(h.get("ansible_host", name)),
                                                int(h.get("ansible_port", 22))))
        if entry is not None:
            ids[str(name)] = entry.key.fingerprint
    return sorted(str(n) for n in hosts), ids


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
    the one before it (both revisions). Without one: the report unchanged. Only evidence of
    this project over each environment's whole node set counts."""
    import dataclasses

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
             for f in promotion.findings(order, revs, records, passing_envs(report),
                                         project=loaded.manifest.project,
                                         expected=promotion.expected_of(loaded.manifest))]
    if not extra:
        return report
    return dataclasses.replace(report, checks=report.checks + tuple(extra))


def record_passing(loaded: LoadedManifest, report: ParityReport) -> list[dict[str, Any]]:
    """Evidence for every environment of a passing (exit 0) report whose inventory and
    verified nodes are exactly the nodes the manifest says it has, each with a pinned host
    key; for the others it says why no evidence is recorded (the verdict stands)."""
    from stacklock.core import report as reportmod

    data = reportmod.report_dict(report)
    observed = data.get("observed") or {}
    node_sets: dict[str, NodeSet] = {}
    for env in report.environments:
        expected = promotion.expected_nodes(loaded.manifest, env)
        inventory, ids = inventory_identities(loaded, env)
        why = promotion.evidence_refusal(env, expected, inventory,
                                         sorted((observed.get(env) or {}).keys()), ids)
        if why is not None:
            info(f"  no evidence recorded for {env}: {why}")
            continue
        node_sets[env] = NodeSet(tuple(expected), {n: ids[n] for n in expected})
    if not node_sets:
        return []
    return record_evidence(open_ledger(loaded), current_lock(loaded), env_stacks(loaded), data,
                           project=loaded.manifest.project, node_sets=node_sets)
