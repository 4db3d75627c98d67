"""Drift audits: the model and the combination logic. Pure; the outside world is injected.

One audit run looks at each environment in up to four ways, each a *kind* of finding:

* ``infrastructure`` — Terraform plan JSON (never the human output). A refresh-only plan's
  ``resource_drift`` says what changed *outside* Terraform (detail "changed outside
  Terraform"); a resource the normal plan would change that did not drift means the
  configuration (the code) differs from the state (detail "configuration differs from state").
* ``stack`` — the deviations of a parity report (``stacklock.parity/v1``, the JSON form of
  `stacklock.core.parity.report_dict`, so a saved report works too): node, component, expected,
  actual. Unreachable nodes are errors, never "no drift".
* ``cloud`` — AWS: live instances tagged for the project and environment but not in the
  Terraform state (``unmanaged``), instances in the state but gone or terminated (``missing``),
  and managed instances whose type, AMI, fingerprint tag or run state differ from the lock.
* ``configuration`` — optional (``--deep``): the tasks ``ansible-playbook site.yml --check
  --diff`` would change, per host.
* ``diff`` — optional (``--kinds ...,diff``): what `stacklock diff` finds over the full
  inventories (every OS package, every Python distribution, the pinned stack) between the
  audited environments and between the nodes of each (`stacklock.diff/v1`).

`run_audit` calls the probes (`Probes`: callables the CLI wires to terraform, the verify play,
boto3 and ansible), turns their results into findings, and records anything that raises a
`StacklockError` (or an ``OSError``) as an error of that environment and kind: an environment
that could not be audited is ``error`` (exit 3), never ``ok``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from stacklock.core.plan_json import contains_true, resource_changes, resource_drift
from stacklock.errors import ExitCode, InvalidInput, StacklockError

SCHEMA = "stacklock.audit/v1"
PARITY_SCHEMA = "stacklock.parity/v1"

INFRASTRUCTURE = "infrastructure"
STACK = "stack"
CLOUD = "cloud"
CONFIGURATION = "configuration"
DIFF = "diff"
#: every kind of finding, in report order
KINDS = (INFRASTRUCTURE, STACK, CLOUD, CONFIGURATION, DIFF)

OK = "ok"
DRIFT = "drift"
ERROR = "error"
STATUSES = (OK, DRIFT, ERROR)

DETAIL_OUTSIDE = "changed outside Terraform"
DETAIL_CONFIG = "configuration differs from state"

#: EC2 states of an instance that is gone, or on its way out
GONE_STATES = ("terminated", "shutting-down")
#: EC2 states of an instance that is (or will be) serving
RUNNING_STATES = ("pending", "running")


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Finding:
    """One drift: what (`component`) of which thing (`subject`) differs, and how."""

    environment: str
    kind: str
    component: str
    subject: str
    expected: str | None
    actual: str | None
    detail: str = ""

    def describe(self) -> str:
        """`prod stack node-1 docker.version: expected 20.10.24, actual 24.0.5 [detail]`."""
        text = (
            f"{self.environment} {self.kind} {self.subject} {self.component}: "
            f"expected {_show(self.expected)}, actual {_show(self.actual)}"
        )
        return f"{text} [{self.detail}]" if self.detail else text

    def as_dict(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "kind": self.kind,
            "component": self.component,
            "subject": self.subject,
            "expected": self.expected,
            "actual": self.actual,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class AuditError:
    """A part of an environment that could not be audited (unreachable, no state, API error)."""

    kind: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "message": self.message}


@dataclass(frozen=True)
class EnvironmentAudit:
    """The audit of one environment.

    `audited`: the kinds that were audited completely (so "no finding of that kind" is a
    real "no drift"); a kind that failed is in `errors`; a kind that does not apply (cloud
    for a lab environment, configuration without --deep) is in neither.
    """

    environment: str
    findings: tuple[Finding, ...] = ()
    errors: tuple[AuditError, ...] = ()
    audited: tuple[str, ...] = ()
    duration_s: float = 0.0

    @property
    def status(self) -> str:
        """`error` when any part could not be audited, else `drift` on any finding, else `ok`."""
        if self.errors or not self.audited:
            return ERROR
        return DRIFT if self.findings else OK

    @property
    def exit_code(self) -> ExitCode:
        return {OK: ExitCode.OK, DRIFT: ExitCode.DEVIATION, ERROR: ExitCode.FAILED}[self.status]

    def findings_of(self, kind: str) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.kind == kind)

    def as_dict(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "status": self.status,
            "duration_s": round(self.duration_s, 3),
            "audited": list(self.audited),
            "findings": [f.as_dict() for f in self.findings],
            "errors": [e.as_dict() for e in self.errors],
        }


@dataclass(frozen=True)
class AuditReport:
    """One audit run over some environments (`stacklock.audit/v1`)."""

    started_at: str
    finished_at: str
    duration_s: float
    environments: tuple[EnvironmentAudit, ...]
    schema: str = SCHEMA

    @property
    def exit_code(self) -> ExitCode:
        """3 when any part of any environment could not be audited, else 1 on drift, else 0."""
        if not self.environments:
            return ExitCode.FAILED
        return max((e.exit_code for e in self.environments), key=int)

    @property
    def status(self) -> str:
        return {ExitCode.OK: OK, ExitCode.DEVIATION: DRIFT}.get(self.exit_code, ERROR)

    @property
    def findings(self) -> tuple[Finding, ...]:
        return tuple(f for e in self.environments for f in e.findings)

    def environment(self, name: str) -> EnvironmentAudit:
        for env in self.environments:
            if env.environment == name:
                return env
        raise KeyError(name)

    def summary(self) -> str:
        """`3 environment(s): 1 ok, 1 drift (4 finding(s)), 1 could not be audited`."""
        counts = {s: sum(1 for e in self.environments if e.status == s) for s in STATUSES}
        text = (
            f"{len(self.environments)} environment(s): {counts[OK]} ok, {counts[DRIFT]} drift "
            f"({len(self.findings)} finding(s)), {counts[ERROR]} could not be audited"
        )
        return f"{text}; {self.duration_s:.1f} s"

    def verdict(self) -> str:
        """One line for a heading: `no drift`, `DRIFT in staging, prod`, ..."""
        drift = [e.environment for e in self.environments if e.findings]
        failed = [e.environment for e in self.environments if e.status == ERROR]
        parts = []
        if drift:
            parts.append("DRIFT in " + ", ".join(drift))
        if failed:
            parts.append("could not audit " + ", ".join(failed))
        return "; ".join(parts) if parts else "no drift"

    def as_dict(self) -> dict[str, Any]:
        """The versioned JSON envelope (keys pinned by tests/unit/core/test_audit_report.py)."""
        return {
            "schema": self.schema,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_s": round(self.duration_s, 3),
            "exit_code": int(self.exit_code),
            "status": self.status,
            "verdict": self.verdict(),
            "summary": self.summary(),
            "environments": [e.as_dict() for e in self.environments],
        }


def report_from_dict(data: Mapping[str, Any]) -> AuditReport:
    """Read back a `stacklock.audit/v1` JSON report (e.g. to render it as Markdown later)."""
    if not isinstance(data, Mapping) or data.get("schema") != SCHEMA:
        got = data.get("schema") if isinstance(data, Mapping) else type(data).__name__
        raise InvalidInput(f"audit report: schema is {got!r}, not {SCHEMA!r} "
                           "(fix: give a report written by `stacklock audit --json`)")
    try:
        envs = tuple(
            EnvironmentAudit(
                environment=str(e["environment"]),
                findings=tuple(Finding(**{k: f.get(k) for k in _FINDING_KEYS}) for f in
                               e.get("findings", [])),
                errors=tuple(AuditError(str(x["kind"]), str(x["message"]))
                             for x in e.get("errors", [])),
                audited=tuple(str(k) for k in e.get("audited", [])),
                duration_s=float(e.get("duration_s", 0.0)),
            )
            for e in data["environments"]
        )
        return AuditReport(
            started_at=str(data["started_at"]),
            finished_at=str(data["finished_at"]),
            duration_s=float(data["duration_s"]),
            environments=envs,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(f"audit report: malformed {SCHEMA} document ({exc!r}) "
                           "(fix: give a report written by `stacklock audit --json`)") from exc


_FINDING_KEYS = ("environment", "kind", "component", "subject", "expected", "actual", "detail")


def _show(value: str | None) -> str:
    return "(missing)" if value is None else (value if value != "" else "(none)")


# --------------------------------------------------------------------------- infrastructure


def _action(actions: Sequence[str]) -> str:
    acts = tuple(actions)
    if set(acts) == {"delete", "create"}:
        return "replace"
    return "+".join(acts) if acts else "change"


def _resource_type(entry: Mapping[str, Any], address: str) -> str:
    rtype = entry.get("type")
    if isinstance(rtype, str) and rtype:
        return rtype
    # module.x.aws_instance.this["a"] -> aws_instance
    parts = [p for p in re.split(r"\.(?![^\[]*\])", address) if not p.startswith("module")]
    return parts[-2] if len(parts) >= 2 else address


def _truthy_mark(marks: Any, name: str) -> bool:
    value = marks.get(name) if isinstance(marks, Mapping) else marks
    return contains_true(value)


def _value_text(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True,
                                                             separators=(",", ":"))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _side(change: Mapping[str, Any], side: str, names: Sequence[str]) -> str | None:
    """`name=value, ...` of the changed attributes on one side (`before` / `after`)."""
    values = change.get(side)
    if values is None:
        return None  # the resource does not exist on that side
    sensitive = change.get(f"{side}_sensitive")
    unknown = change.get("after_unknown") if side == "after" else None
    shown = []
    for name in names[:4]:
        if _truthy_mark(sensitive, name):
            text = "(sensitive)"
        elif _truthy_mark(unknown, name):
            text = "(known after apply)"
        elif isinstance(values, Mapping):
            text = _value_text(values.get(name))
        else:
            text = "?"
        shown.append(f"{name}={text}")
    if len(names) > 4:
        shown.append(f"+{len(names) - 4} more")
    return ", ".join(shown) if shown else "(exists)"


def _shown_names(change: Mapping[str, Any], changed: Sequence[str]) -> list[str]:
    """The changed attributes worth showing: those with a known new value, when there are any
    (ids and outputs recomputed on replace are noise next to the attribute that caused it)."""
    unknown = change.get("after_unknown")
    known = [n for n in changed if not _truthy_mark(unknown, n)]
    return known or list(changed)


def _raw_entries(plan_json: Mapping[str, Any] | None, key: str) -> dict[str, Mapping[str, Any]]:
    out: dict[str, Mapping[str, Any]] = {}
    entries = plan_json.get(key) if isinstance(plan_json, Mapping) else None
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, Mapping) and isinstance(entry.get("change"), Mapping):
            out[str(entry.get("address", ""))] = entry
    return out


def _require_plan(env: str, plan_json: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(plan_json, Mapping) or "format_version" not in plan_json:
        raise InvalidInput(f"{env}: the {what} is not Terraform plan JSON "
                           "(fix: pass the output of `terraform show -json PLANFILE`)")
    if plan_json.get("errored"):
        raise InvalidInput(f"{env}: the {what} is an errored plan (fix: run terraform plan and "
                           "resolve its errors)")
    return plan_json


def infrastructure_findings(
    env: str,
    plan_json: Mapping[str, Any] | None,
    refresh_only_plan_json: Mapping[str, Any] | None = None,
    *,
    outside: Mapping[str, str] | None = None,
) -> list[Finding]:
    """Findings from plan JSON (`terraform show -json`), never from Terraform's human output.

    Drift ("changed outside Terraform") comes from the refresh-only plan's `resource_drift`
    when one is given, else from the normal plan's own `resource_drift`. Every change the
    normal plan would make to a resource that did not drift is "configuration differs from
    state". A drifted resource is reported once, with what apply would do to it.

    `outside`: address -> reason, for resources a provider cannot refresh but a probe knows
    changed outside Terraform (a lab node whose container was removed: the plan replaces its
    `terraform_data`); their planned change is attributed to the world, with that reason.
    """
    known_outside = dict(outside or {})
    if plan_json is None and refresh_only_plan_json is None:
        raise InvalidInput(f"{env}: no plan to audit (fix: give a plan or a refresh-only plan)")
    plan = _require_plan(env, plan_json, "plan") if plan_json is not None else None
    refresh = (_require_plan(env, refresh_only_plan_json, "refresh-only plan")
               if refresh_only_plan_json is not None else None)
    drift_source = refresh if refresh is not None else plan
    assert drift_source is not None
    drift_raw = _raw_entries(drift_source, "resource_drift")
    change_raw = _raw_entries(plan, "resource_changes")
    planned = {rc.address: rc for rc in (resource_changes(plan) if plan is not None else [])}

    findings: list[Finding] = []
    drifted: set[str] = set()
    for rc in resource_drift(drift_source):
        drifted.add(rc.address)
        entry = drift_raw.get(rc.address, {})
        change = entry.get("change") or {}
        names = _shown_names(change, rc.changed)
        if "delete" in rc.actions:
            detail = f"{DETAIL_OUTSIDE}: deleted"
        else:
            detail = f"{DETAIL_OUTSIDE}: " + (", ".join(names) or "attributes")
        if rc.address in planned:
            detail += f"; apply would {_action(planned[rc.address].actions)} it"
        findings.append(Finding(
            environment=env,
            kind=INFRASTRUCTURE,
            component=_resource_type(entry, rc.address),
            subject=rc.address,
            expected=_side(change, "before", names),
            actual=_side(change, "after", names) if "delete" not in rc.actions else None,
            detail=detail,
        ))
    for address, rc in planned.items():
        if address in drifted:
            continue
        entry = change_raw.get(address, {})
        change = entry.get("change") or {}
        names = _shown_names(change, rc.changed)
        if address in known_outside:
            findings.append(Finding(
                environment=env,
                kind=INFRASTRUCTURE,
                component=_resource_type(entry, address),
                subject=address,
                expected="exists, as recorded in the state",
                actual=known_outside[address],
                detail=f"{DETAIL_OUTSIDE}; apply would {_action(rc.actions)} it",
            ))
            continue
        detail = f"{DETAIL_CONFIG}: apply would {_action(rc.actions)} it"
        if names and rc.actions != ("create",):
            more = ", …" if len(names) > 6 else ""
            detail += " (" + ", ".join(names[:6]) + more + ")"
        findings.append(Finding(
            environment=env,
            kind=INFRASTRUCTURE,
            component=_resource_type(entry, address),
            subject=address,
            expected=_side(change, "before", names),
            actual=_side(change, "after", names),
            detail=detail,
        ))
    return sorted(findings, key=lambda f: (f.subject, f.detail))


# --------------------------------------------------------------------------- stack


def _require_parity(report: Any) -> Mapping[str, Any]:
    if not isinstance(report, Mapping) or report.get("schema") != PARITY_SCHEMA:
        got = report.get("schema") if isinstance(report, Mapping) else type(report).__name__
        raise InvalidInput(f"parity report: schema is {got!r}, not {PARITY_SCHEMA!r} "
                           "(fix: give the JSON of `stacklock verify --format json`)")
    return report


def stack_findings(parity_report: Mapping[str, Any]) -> list[Finding]:
    """The deviations of a parity report (`stacklock.parity/v1` dict) as stack findings."""
    report = _require_parity(parity_report)
    findings = []
    for dev in report.get("deviations") or []:
        cross = dev.get("kind") == "cross-environment"
        detail = "differs between environments" if cross else "differs from the lock"
        if dev.get("detail"):
            detail += f": {dev['detail']}"
        findings.append(Finding(
            environment=str(dev.get("environment", "")),
            kind=STACK,
            component=str(dev.get("component", "")),
            subject=str(dev.get("node", "")),
            expected=None if dev.get("expected") is None else str(dev["expected"]),
            actual=None if dev.get("actual") is None else str(dev["actual"]),
            detail=detail,
        ))
    return findings


def stack_errors(parity_report: Mapping[str, Any]) -> dict[str, list[str]]:
    """environment -> why parts of it could not be verified (unreachable nodes, no nodes)."""
    report = _require_parity(parity_report)
    out: dict[str, list[str]] = {}
    seen: set[tuple[str, str]] = set()
    for node in report.get("unreachable") or []:
        env, name = str(node.get("environment", "")), str(node.get("node", ""))
        seen.add((env, name))
        out.setdefault(env, []).append(f"{name} unreachable: {node.get('error') or 'no facts'}")
    for check in report.get("checks") or []:
        if check.get("status") == "could-not-look":
            env, name = str(check.get("environment", "")), str(check.get("node", ""))
            out.setdefault(env, []).append(
                f"{name} {check.get('component')}: {check.get('detail') or 'could not look'}")
            continue
        if check.get("status") != "unreachable":
            continue
        env, name = str(check.get("environment", "")), str(check.get("node", ""))
        if (env, name) in seen:
            continue
        seen.add((env, name))
        why = check.get("detail") or "no facts"
        out.setdefault(env, []).append(
            f"{why}" if name == "(none)" else f"{name} unreachable: {why}"
        )
    return out


# --------------------------------------------------------------------------- cloud


def _pick(item: Mapping[str, Any], *keys: str) -> str:
    for key in keys:
        value = item.get(key)
        if value not in (None, ""):
            return str(value)
    return ""


def _tags(item: Mapping[str, Any]) -> dict[str, str]:
    tags = item.get("tags")
    if isinstance(tags, Mapping):
        return {str(k): str(v) for k, v in tags.items()}
    if isinstance(tags, list):  # boto3's [{"Key": .., "Value": ..}]
        return {str(t.get("Key")): str(t.get("Value")) for t in tags if isinstance(t, Mapping)}
    return {}


def _instance_label(item: Mapping[str, Any], instance_id: str) -> str:
    name = _pick(item, "name") or _tags(item).get("Name", "")
    return f"{name} ({instance_id})" if name and name != instance_id else instance_id


def cloud_findings(
    env: str,
    state_instances: Sequence[Mapping[str, Any]],
    live_instances: Sequence[Mapping[str, Any]],
    expected_type: str | None,
    expected_ami: str | None,
    *,
    expected_fingerprint: str | None = None,
    fingerprint_tag: str = "fingerprint",
) -> list[Finding]:
    """Compare the instances in the Terraform state with the live ones AWS reports.

    `state_instances`: dicts with `instance_id` (or `id`), optionally `name`/`address`.
    `live_instances`: the environment's instances found by their project and environment
    tags (`stacklock.adapters.aws.Instance.as_dict()`: `instance_id`, `state`,
    `instance_type`, `image_id`, `tags`; `id`, `type`, `ami` are accepted too).
    """
    state_by_id: dict[str, Mapping[str, Any]] = {}
    for item in state_instances:
        iid = _pick(item, "instance_id", "id")
        if not iid:
            raise InvalidInput(f"{env}: a state instance has no instance_id "
                               "(fix: pass the ids from terraform output/show -json)")
        state_by_id[iid] = item
    live_by_id: dict[str, Mapping[str, Any]] = {}
    for item in live_instances:
        iid = _pick(item, "instance_id", "id", "InstanceId")
        if not iid:
            raise InvalidInput(f"{env}: a live instance has no instance_id")
        live_by_id[iid] = item

    findings: list[Finding] = []

    def add(component: str, subject: str, expected: str | None, actual: str | None,
            detail: str) -> None:
        findings.append(Finding(env, CLOUD, component, subject, expected, actual, detail))

    for iid, item in sorted(live_by_id.items()):
        state = _pick(item, "state") or "unknown"
        if iid in state_by_id or state in GONE_STATES:
            continue
        itype = _pick(item, "instance_type", "type")
        ami = _pick(item, "image_id", "ami")
        add("unmanaged", _instance_label(item, iid), "not present (not in Terraform state)",
            f"{state} {itype} {ami}".strip(),
            f"tagged for environment {env} but not managed by Terraform (made by hand, or "
            "left behind): import it or terminate it")

    for iid, item in sorted(state_by_id.items()):
        live = live_by_id.get(iid)
        label = _instance_label(live or item, iid)
        state = _pick(live, "state") if live is not None else "absent"
        if live is None or state in GONE_STATES:
            add("missing", label, "running", state or "absent",
                "in Terraform state but gone from AWS: apply the environment to recreate it")
            continue
        itype = _pick(live, "instance_type", "type")
        ami = _pick(live, "image_id", "ami")
        if expected_type and itype != expected_type:
            add("instance_type", label, expected_type, itype or None,
                "instance type differs from the lock: re-apply the environment")
        if expected_ami and ami != expected_ami:
            add("ami", label, expected_ami, ami or None,
                "AMI differs from the lock: re-apply the environment")
        if expected_fingerprint:
            tag = _tags(live).get(fingerprint_tag)
            if tag != expected_fingerprint:
                add("fingerprint", label, expected_fingerprint, tag,
                    f"tag {fingerprint_tag} differs from the lock: apply, then configure")
        if state not in RUNNING_STATES:
            add("state", label, "running", state,
                "the instance is not running: start it, or re-apply the environment")
    return findings


def state_instances_from_show(state_json: Mapping[str, Any]) -> list[dict[str, Any]]:
    """`aws_instance` resources of `terraform show -json` (state) as cloud_findings input."""
    out: list[dict[str, Any]] = []

    def walk(module: Any) -> None:
        if not isinstance(module, Mapping):
            return
        for res in module.get("resources") or []:
            if res.get("mode") == "managed" and res.get("type") == "aws_instance":
                values = res.get("values") or {}
                out.append({
                    "instance_id": values.get("id"),
                    "address": res.get("address"),
                    "instance_type": values.get("instance_type"),
                    "image_id": values.get("ami"),
                    "tags": values.get("tags") or {},
                })
        for child in module.get("child_modules") or []:
            walk(child)

    walk((state_json.get("values") or {}).get("root_module"))
    return sorted(out, key=lambda i: str(i.get("address")))


# --------------------------------------------------------------------------- configuration

_TASK_LINE = re.compile(r"^(?:TASK|RUNNING HANDLER) \[(?P<name>.*)\]")
_CHANGED_LINE = re.compile(r"^changed: \[(?P<host>[^\]]+?)(?: -> [^\]]+)?\]")


def changed_tasks_from_output(text: str) -> dict[str, list[str]]:
    """host -> names of the tasks reported `changed` in ansible-playbook's default output."""
    out: dict[str, list[str]] = {}
    task = ""
    for line in text.splitlines():
        m = _TASK_LINE.match(line)
        if m:
            task = m.group("name")
            continue
        c = _CHANGED_LINE.match(line)
        if c and task:
            names = out.setdefault(c.group("host"), [])
            if task not in names:
                names.append(task)
    return out


def configuration_findings(
    env: str,
    recap: Mapping[str, Mapping[str, int]],
    changed_tasks: Mapping[str, Sequence[str]] | None = None,
) -> list[Finding]:
    """What `ansible-playbook site.yml --check --diff` would change: one finding per host+task.

    `recap`: host -> {ok, changed, unreachable, failed} (the PLAY RECAP);
    `changed_tasks`: host -> task names that reported `changed` (`changed_tasks_from_output`).
    A host whose recap counts changes but whose task names are unknown gets one finding.
    """
    tasks = changed_tasks or {}
    findings = []
    for host in sorted(set(recap) | set(tasks)):
        names = list(tasks.get(host) or [])
        for name in names:
            findings.append(Finding(env, CONFIGURATION, name, host, "no change", "would change",
                                    "site.yml --check --diff: configure the environment"))
        count = int((recap.get(host) or {}).get("changed", 0))
        if count and not names:
            findings.append(Finding(env, CONFIGURATION, "(tasks)", host, "no change",
                                    f"{count} task(s) would change",
                                    "site.yml --check --diff: configure the environment"))
    return findings


def configuration_errors(env: str, recap: Mapping[str, Mapping[str, int]]) -> list[str]:
    """Hosts the check run could not reach or on which a task failed."""
    errors = []
    if not recap:
        errors.append(f"{env}: the check run reported no hosts")
    for host, counts in sorted(recap.items()):
        if int(counts.get("unreachable", 0)):
            errors.append(f"{host} unreachable during site.yml --check")
        elif int(counts.get("failed", 0)):
            errors.append(f"{host}: {counts['failed']} task(s) failed during site.yml --check")
    return errors


# --------------------------------------------------------------------------- probes and run


@dataclass(frozen=True)
class PlanPair:
    """Plan JSON of one environment: the normal plan, and the refresh-only plan (optional)."""

    plan_json: Mapping[str, Any] | None
    refresh_only_plan_json: Mapping[str, Any] | None = None
    #: address -> reason: resources known to have changed outside Terraform (see
    #: `infrastructure_findings`)
    outside: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CloudData:
    """What `cloud_findings` needs for one AWS environment."""

    state_instances: Sequence[Mapping[str, Any]]
    live_instances: Sequence[Mapping[str, Any]]
    expected_type: str | None
    expected_ami: str | None
    expected_fingerprint: str | None = None


@dataclass(frozen=True)
class DeepData:
    """The result of `ansible-playbook site.yml --check --diff` for one environment."""

    recap: Mapping[str, Mapping[str, int]]
    changed_tasks: Mapping[str, Sequence[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Probes:
    """The outside world, injected. Each callable may be None (that kind is not audited).

    * `plans(env)` -> PlanPair, or None when the environment has no Terraform root;
    * `parity(envs)` -> parity report dict for all environments at once (one verify run, so
      the cross-environment comparison is included);
    * `cloud(env)` -> CloudData, or None when the environment is not on AWS;
    * `deep(env)` -> DeepData (set only with --deep);
    * `deep_all(envs)` -> env -> DeepData for all environments from one check run (set only
      with --deep; used instead of `deep`, with the same findings and errors per environment);
    * `diff(envs)` -> a `stacklock.diff/v1` report dict for all environments at once.

    A probe raises `StacklockError` (e.g. `ToolFailed`) or `OSError` to say "could not
    audit": that becomes an error of the environment, never "no drift".
    """

    plans: Callable[[str], PlanPair | None] | None = None
    parity: Callable[[Sequence[str]], Mapping[str, Any]] | None = None
    cloud: Callable[[str], CloudData | None] | None = None
    deep: Callable[[str], DeepData | None] | None = None
    diff: Callable[[Sequence[str]], Mapping[str, Any]] | None = None
    deep_all: Callable[[Sequence[str]], Mapping[str, DeepData]] | None = None


#: exceptions a probe raises to say "could not audit this part"
PROBE_ERRORS: tuple[type[BaseException], ...] = (StacklockError, OSError)


def _message(exc: BaseException) -> str:
    if isinstance(exc, StacklockError):
        text = exc.message
        if exc.problems:
            text += "; " + "; ".join(p.render() for p in exc.problems)
        return text
    return f"{type(exc).__name__}: {exc}"


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Partial:
    findings: list[Finding] = field(default_factory=list)
    errors: list[AuditError] = field(default_factory=list)
    audited: list[str] = field(default_factory=list)
    duration_s: float = 0.0


def _probe_env(
    env: str,
    probes: Probes,
    progress: Callable[[str], None],
    monotonic: Callable[[], float],
) -> _Partial:
    """The per-environment probes (plans, cloud, deep); the stack part comes from `parity`."""
    t0 = monotonic()
    part = _Partial()

    def attempt(kind: str, what: str, fn: Callable[[], list[Finding] | None]) -> None:
        progress(f"{env}: {what}")
        try:
            result = fn()
        except PROBE_ERRORS as exc:
            part.errors.append(AuditError(kind, _message(exc)))
            first = (_message(exc).splitlines() or ["error"])[0]
            progress(f"{env}: {what}: could not audit ({first})")
            return
        if result is None:
            return  # not applicable to this environment
        part.findings.extend(result)
        part.audited.append(kind)

    plans_probe, cloud_probe, deep_probe = probes.plans, probes.cloud, probes.deep
    if plans_probe is not None:
        def infra() -> list[Finding] | None:
            pair = plans_probe(env)
            if pair is None:
                return None
            return infrastructure_findings(env, pair.plan_json, pair.refresh_only_plan_json,
                                           outside=pair.outside)
        attempt(INFRASTRUCTURE, "terraform plan", infra)
    if cloud_probe is not None:
        def cloud() -> list[Finding] | None:
            data = cloud_probe(env)
            if data is None:
                return None
            return cloud_findings(env, data.state_instances, data.live_instances,
                                  data.expected_type, data.expected_ami,
                                  expected_fingerprint=data.expected_fingerprint)
        attempt(CLOUD, "cloud inventory", cloud)
    if deep_probe is not None:
        def deep() -> list[Finding] | None:
            data = deep_probe(env)
            if data is None:
                return None
            failed = configuration_errors(env, data.recap)
            if failed:
                raise StacklockError("; ".join(failed))
            return configuration_findings(env, data.recap, data.changed_tasks)
        attempt(CONFIGURATION, "site.yml --check --diff", deep)
    part.duration_s = monotonic() - t0
    return part


_StackResult = dict[str, tuple[list[Finding], list[str]]]


def _rank(kind: str) -> int:
    """Report order of a kind (KINDS order; other names, like "audit", last)."""
    return KINDS.index(kind) if kind in KINDS else len(KINDS)


def _probe_parity(names: list[str], probes: Probes,
                  progress: Callable[[str], None]) -> _StackResult | None:
    """env -> (stack findings, why it could not be verified); None without a parity probe."""
    if probes.parity is None:
        return None
    progress("stack parity: " + ", ".join(names))
    stacks: _StackResult = {}
    try:
        report = probes.parity(names)
        found = stack_findings(report)
        failed = stack_errors(report)
        reported = {str(e) for e in report.get("environments") or []}
        for env in names:
            errs = list(failed.get(env, []))
            if env not in reported:
                errs.append(f"{env} is not in the parity report")
            # a finding of no one environment (an expired waiver scoped to none: "*") is
            # every audited environment's: dropping it would audit as ok what verify fails
            stacks[env] = ([f for f in found if f.environment in (env, "*")], errs)
    except PROBE_ERRORS as exc:
        for env in names:
            stacks[env] = ([], [_message(exc)])
    return stacks


def diff_findings(report: Mapping[str, Any]) -> tuple[list[Finding], dict[str, list[str]]]:
    """Findings of kind `diff` from a `stacklock.diff/v1` report, and per environment why
    it could not be looked at. Between environments: one finding per environment whose value
    is not the one most environments have (component `GROUP:NAME`, subject `*`); between the
    nodes of one environment: one per node that differs from most of its nodes."""
    if not isinstance(report, Mapping) or report.get("schema") != "stacklock.diff/v1":
        raise InvalidInput("not a stacklock.diff/v1 report")
    found: list[Finding] = []
    for d in report.get("differences") or []:
        values = d.get("values") or {}
        for who in d.get("differing") or []:
            env = d.get("environment") if d.get("scope") == "nodes" else who
            subject = who if d.get("scope") == "nodes" else "*"
            found.append(Finding(environment=str(env), kind=DIFF,
                                 component=f"{d.get('group')}:{d.get('name')}", subject=subject,
                                 expected=d.get("reference"), actual=values.get(who),
                                 detail="differs from the other environments"
                                 if subject == "*" else "differs from the other nodes"))
    failed: dict[str, list[str]] = {}
    for inc in report.get("incomplete") or []:
        failed.setdefault(str(inc.get("environment")), []).append(
            f"{inc.get('node')}: {inc.get('reason')}")
    return found, failed


def _probe_diff(names: list[str], probes: Probes,
                progress: Callable[[str], None]) -> _StackResult | None:
    """env -> (diff findings, why it could not be looked at); None without a diff probe."""
    if probes.diff is None:
        return None
    progress("inventory diff: " + ", ".join(names))
    result: _StackResult = {}
    try:
        found, failed = diff_findings(probes.diff(names))
        for env in names:
            result[env] = ([f for f in found if f.environment == env], failed.get(env, []))
    except PROBE_ERRORS as exc:
        for env in names:
            result[env] = ([], [_message(exc)])
    return result


def _combine(env: str, part: _Partial, stack: tuple[list[Finding], list[str]] | None,
             diff: tuple[list[Finding], list[str]] | None = None) -> EnvironmentAudit:
    findings, errors, audited = list(part.findings), list(part.errors), list(part.audited)
    for kind, result in ((STACK, stack), (DIFF, diff)):
        if result is None:
            continue
        kind_found, kind_failed = result
        if kind_failed:
            errors.extend(AuditError(kind, m) for m in kind_failed)
        else:
            findings.extend(kind_found)
            audited.append(kind)
    if not audited and not errors:
        errors.append(AuditError("audit", "nothing could be audited for this environment "
                                          "(no probe applies)"))
    return EnvironmentAudit(
        environment=env,
        findings=tuple(sorted(findings, key=lambda f: _rank(f.kind))),
        errors=tuple(sorted(errors, key=lambda e: _rank(e.kind))),
        audited=tuple(sorted(audited, key=_rank)),
        duration_s=part.duration_s,
    )


def _deep_of(shared: Future[Mapping[str, DeepData]]) -> Callable[[str], DeepData | None]:
    """The per-environment deep probe over one shared check run: its exception (could not
    audit) for every environment, else the environment's part (no hosts: an error, as before)."""
    def deep(env: str) -> DeepData | None:
        return shared.result().get(env) or DeepData({})
    return deep


def split_deep(recap: Mapping[str, Mapping[str, int]],
               changed_tasks: Mapping[str, Sequence[str]],
               hosts: Mapping[str, Sequence[str]]) -> dict[str, DeepData]:
    """One check run's recap and changed tasks, split by environment (env -> its hosts)."""
    return {env: DeepData({h: recap[h] for h in members if h in recap},
                          {h: list(changed_tasks[h]) for h in members if h in changed_tasks})
            for env, members in hosts.items()}


def run_audit(
    envs: Sequence[str],
    probes: Probes,
    *,
    workers: int = 1,
    progress: Callable[[str], None] | None = None,
    clock: Callable[[], datetime] | None = None,
    monotonic: Callable[[], float] | None = None,
) -> AuditReport:
    """Audit `envs` with `probes`. Never raises for a probe failure (see `Probes`).

    The parity probe runs once for all environments; the plans, cloud and deep probes once
    per environment. With `workers` > 1 they run in that many threads at once (the parity
    run alongside the environments' plans), which is what makes a three-environment audit
    take about as long as its slowest part.
    """
    names = list(envs)
    if not names:
        raise InvalidInput("no environments to audit (fix: name one, or define one in the "
                           "manifest)")
    if len(set(names)) != len(names):
        raise InvalidInput("an environment is named twice (fix: name each environment once)")
    now = clock or (lambda: datetime.now(UTC))
    mono = monotonic or time.monotonic
    say = progress or (lambda _m: None)
    started = now()
    t0 = mono()

    deep_pool = None
    if probes.deep_all is not None:
        # one check run for every environment, started first (alongside the plans and the
        # parity run); each environment's deep step takes its part: the same findings/errors
        deep_pool = ThreadPoolExecutor(max_workers=1)
        say("site.yml --check --diff: " + ", ".join(names))
        shared = deep_pool.submit(probes.deep_all, names)
        probes = replace(probes, deep_all=None, deep=_deep_of(shared))

    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            stack_future = pool.submit(_probe_parity, names, probes, say)
            diff_future = pool.submit(_probe_diff, names, probes, say)
            part_futures = [pool.submit(_probe_env, env, probes, say, mono) for env in names]
            stacks = stack_future.result()
            diffs = diff_future.result()
            parts = [f.result() for f in part_futures]
    else:
        stacks = _probe_parity(names, probes, say)
        diffs = _probe_diff(names, probes, say)
        parts = [_probe_env(env, probes, say, mono) for env in names]
    if deep_pool is not None:
        deep_pool.shutdown()
    results = tuple(_combine(env, part, stacks.get(env) if stacks is not None else None,
                             diffs.get(env) if diffs is not None else None)
                    for env, part in zip(names, parts, strict=True))
    return AuditReport(
        started_at=_utc(started),
        finished_at=_utc(now()),
        duration_s=mono() - t0,
        environments=results,
    )


def kinds_seen(reports: Iterable[EnvironmentAudit]) -> list[str]:
    """The kinds audited in any of `reports`, in KINDS order."""
    seen = {k for r in reports for k in r.audited}
    return [k for k in KINDS if k in seen]


__all__ = [
    "CLOUD",
    "CONFIGURATION",
    "DETAIL_CONFIG",
    "DETAIL_OUTSIDE",
    "DIFF",
    "DRIFT",
    "ERROR",
    "INFRASTRUCTURE",
    "KINDS",
    "OK",
    "SCHEMA",
    "STACK",
    "AuditError",
    "AuditReport",
    "CloudData",
    "DeepData",
    "EnvironmentAudit",
    "Finding",
    "PlanPair",
    "Probes",
    "changed_tasks_from_output",
    "cloud_findings",
    "configuration_errors",
    "configuration_findings",
    "diff_findings",
    "infrastructure_findings",
    "report_from_dict",
    "run_audit",
    "stack_errors",
    "stack_findings",
    "state_instances_from_show",
]
