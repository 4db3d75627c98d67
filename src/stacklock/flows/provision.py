"""`stacklock plan | apply | destroy | provision`: Terraform for the targets, the inventories
and known_hosts from its outputs, then (provision) configure and verify.

Sequences the core and the adapters; holds no comparison or rendering logic.

The promotion gate (`stacklock.flows.gate`) is checked before anything changes. `apply` changes
a node's revision only on aws (an instance is built from its stack's image, tagged with the
fingerprint), so only an aws target's apply is gated; a lab apply creates bare containers and a
static apply records the hosts, and `configure` gives them their revision, gated. `provision`
with a promotion order goes in that order: the environments whose gate is open now first,
verified, and then each one whose gate the verify just opened (the same revision as the
environment before it, no `promotion_soak`), checked again on the ledger before it changes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stacklock.console import info, step
from stacklock.core import hostkeys
from stacklock.core import render as rendermod
from stacklock.core.files import atomic_write
from stacklock.core.inventory import hosts_yaml
from stacklock.core.manifest import AwsEnvironment, LabEnvironment, StaticEnvironment
from stacklock.errors import ExitCode, InvalidInput, Problem, ToolFailed
from stacklock.flows import configure as configureflow
from stacklock.flows import gate as gateflow
from stacklock.flows import infra
from stacklock.flows import lab as labflow
from stacklock.flows import verify as verifyflow
from stacklock.flows.run import Run, Target, names_of


class _Outputs:
    """What `flows.infra` needs of a run: its folder, and writing the inventory from
    Terraform's outputs."""

    def __init__(self, run: Run, target: Target) -> None:
        self.run = run
        self.target = target

    @property
    def run_dir(self) -> Path:
        return self.run.run_dir

    def write_inventory(self, _env: str, outputs: dict[str, Any]) -> Path:
        return write_inventory(self.run, self.target, outputs)


def gone_nodes(target: Target, tf: Any) -> dict[str, str]:
    """Lab nodes whose container is gone: Terraform replaces them (it cannot see it)."""
    if target.provider != "lab":
        return {}
    gone = labflow.gone_lab_nodes(tf.output())
    for address, why in gone.items():
        info(f"  {target.name}: {why}: {address} must be replaced")
    return gone


def refuse_example(run: Run, targets: Sequence[Target]) -> None:
    """An example lock (AMI ids from a local moto server) never reaches a cloud: exit 2."""
    from stacklock.core import lock as lockmod

    why = lockmod.example_reason(run.ensure_current())
    aws = [t.name for t in targets if t.provider == "aws"]
    if why and aws:
        raise InvalidInput(
            f"{run.loaded.lock_path.name} is {why}", problems=[Problem(
                run.loaded.lock_path.name, f"an example lock: {', '.join(aws)} not applied",
                "run: stacklock lock (with AWS credentials: it resolves the AMI ids for real "
                "and drops the example mark)")])


def plan(run: Run, targets: Sequence[Target]) -> bool:
    """terraform plan of each target; True when any has changes pending."""
    run.hold(targets)
    run.ensure_current()
    run.prepare(targets)
    any_changes = False
    for t in targets:
        step(f"{t.name}: terraform plan")
        tf = run.terraform(t)
        tf.init()
        result = tf.plan(detailed_exitcode=True, replace=sorted(gone_nodes(t, tf)))
        from stacklock.adapters.terraform import resource_changes

        for ch in resource_changes(result.plan_json or {}):
            action = "replace" if ch.is_replace else "/".join(ch.actions)
            info(f"  {action:>8}  {ch.address}")
        info(f"  {t.name}: {'changes pending' if result.changes else 'no changes'}")
        any_changes |= result.changes
    return any_changes


def apply(run: Run, targets: Sequence[Target], *, auto_approve: bool = False,
          confirm: Any = None, batch_size: int = 1, after_batch: Any = None,
          gate: gateflow.Gate | None = None, override: str | None = None) -> None:
    """terraform apply. An aws environment's plan is printed and must be approved
    (`auto_approve`, `confirm` on a terminal; refused in CI or without a terminal), and
    replaced instances go `batch_size` at a time (stacklock.flows.infra); lab and static
    environments apply without asking. An aws target's revision passes the gate first
    (`gate`: checked already; None: checked here, with `override`)."""
    run.hold(targets)
    run.ensure_current()
    refuse_example(run, targets)
    aws = [t for t in targets if t.provider == "aws"]
    if aws and gate is None:
        gate = gateflow.check(run, aws, override=override, what="apply")
    if gate is not None and aws:
        gateflow.record_overrides(run, gate, names_of(aws))
    run.prepare(targets)
    for t in targets:
        step(f"{t.name}: terraform apply")
        tf = run.terraform(t)
        tf.init()
        started = time.monotonic()
        if t.provider == "aws":
            infra.apply_approved(_Outputs(run, t), t.name, tf, provider="aws",
                                 auto_approve=auto_approve, confirm=confirm,
                                 batch_size=batch_size, after_batch=after_batch)
            info(f"  {t.name}: done in {time.monotonic() - started:.1f} s, "
                 f"inventory {t.hosts_file}")
            continue
        tf.apply(auto_approve=True, replace=sorted(gone_nodes(t, tf)))
        write_inventory(run, t, tf.output())
        info(f"  {t.name}: applied in {time.monotonic() - started:.1f} s, "
             f"inventory {t.hosts_file}")


def write_inventory(run: Run, target: Target, outputs: dict[str, Any]) -> Path:
    key = None
    if target.provider == "lab":
        key = "{{ inventory_dir }}/../../" + rendermod.LAB_SSH_KEY
    text = hosts_yaml(target.name, target.provider, outputs, key)
    path = atomic_write(target.hosts_file, text)
    write_known_hosts(target, outputs)
    return path


def write_known_hosts(target: Target, outputs: dict[str, Any]) -> Path | None:
    """The host keys apply can vouch for, in `inventories/ENV/known_hosts`: a lab node's
    own key read through Docker (the whole file, rewritten on every apply, so a replaced
    node's new key is recorded), a static host's `host_key` from the manifest (pinned over
    whatever was there). Other hosts are trusted with `stacklock trust ENV`."""
    spec = target.spec
    path = target.known_hosts
    entries: list[hostkeys.Entry] = []
    if isinstance(spec, LabEnvironment):
        for name, h in sorted((outputs.get("hosts") or {}).items()):
            key = labflow.node_host_key(str(h.get("container", name)))
            pattern = hostkeys.host_pattern(str(h["address"]), int(h.get("port", 22)))
            entries.append(hostkeys.Entry(pattern, hostkeys.PublicKey(
                key.type, key.body, f"{name} (lab node, read through docker)")))
            info(f"  {target.name}: host key of {name} ({pattern}): {key.type} "
                 f"{key.fingerprint}")
    elif isinstance(spec, StaticEnvironment):
        pinned = []
        for host in spec.hosts:
            if host.host_key:
                key = hostkeys.parse_public_key(host.host_key)
                pinned.append(hostkeys.Entry(
                    hostkeys.host_pattern(host.address, host.port),
                    hostkeys.PublicKey(key.type, key.body,
                                       f"{host.name} (pinned in the manifest)")))
        if not pinned:
            return None
        entries = hostkeys.merge(hostkeys.load_known_hosts(path), pinned)
    else:
        return None
    text = hostkeys.format_known_hosts(target.name, entries)
    if path.is_file() and path.read_text("utf-8") == text:
        return path
    return atomic_write(path, text)


def destroy(run: Run, targets: Sequence[Target], *, auto_approve: bool = False,
            confirm: Any = None) -> None:
    """terraform destroy through a destroy plan that names what goes; an aws
    environment's must be approved (stacklock.flows.infra)."""
    run.hold(targets)
    for t in targets:
        step(f"{t.name}: terraform destroy")
        tf = run.terraform(t)
        tf.init()
        infra.destroy_approved(_Outputs(run, t), t.name, tf, provider=t.provider,
                               auto_approve=auto_approve, confirm=confirm)
        t.hosts_file.unlink(missing_ok=True)
        info(f"  {t.name}: destroyed")


def preflight(targets: Sequence[Target]) -> None:
    """AWS environments: the instance type is offered and has the GPU validated for."""
    aws_targets = [t for t in targets if isinstance(t.spec, AwsEnvironment)]
    if not aws_targets:
        return
    from stacklock.adapters import aws

    step(f"preflight {', '.join(names_of(aws_targets))}: instance types offered, GPUs as "
         "validated")
    problems = []
    for t in aws_targets:
        assert isinstance(t.spec, AwsEnvironment)
        problems += [p for p in aws.check_instance_types(t.spec, t.name)
                     if p.severity == "error"]
    if problems:
        raise InvalidInput("AWS preflight failed: nothing was provisioned", problems=problems)


def provision(run: Run, targets: Sequence[Target], *, force: bool = False,
              auto_approve: bool = False, confirm: Any = None,
              batch_size: int = 1, gate: gateflow.Gate | None = None,
              override: str | None = None) -> ExitCode:
    """lock check, gate, apply, configure (the nodes that deviate) and verify; with a
    promotion order, in waves (the module)."""
    run.hold(targets)
    started = time.monotonic()
    run.ensure_current()
    refuse_example(run, targets)
    if gate is None:
        gate = gateflow.check(run, targets, override=override, verified_in_run=True,
                              what="provision")
    preflight(targets)
    by_name = {t.name: t for t in targets}
    waves = [[by_name[e] for e in wave] for wave in gate.waves] or [list(targets)]

    def converge_batch(env: str, batch: Any) -> None:
        """After a batch of replaced instances: configure the environment (the new nodes
        deviate, so they are the ones converged) and verify it; a failing verify stops the
        rollout before the next batch, the remaining old instances untouched."""
        t = by_name[env]
        configureflow.configure(run, [t], gate=gate)
        code = verifyflow.verify(run, [t])
        if code != ExitCode.OK:
            raise ToolFailed(f"{env}: verify failed (exit {int(code)}) after replacing "
                             f"{', '.join(batch)}: the rollout stopped before the next batch; "
                             f"the other instances are untouched (logs in {run.run_dir})")

    apply(run, targets, auto_approve=auto_approve, confirm=confirm, batch_size=batch_size,
          after_batch=converge_batch, gate=gate)
    if len(waves) > 1:
        return _in_waves(run, targets, waves, gate, force=force, started=started)
    result = configureflow.configure(run, targets, force=force, gate=gate)
    recap = result.recap
    changed = sum(r.get("changed", 0) for r in recap.values())
    if not recap and result.pre_report is not None:
        # no roles ran: the facts configure just read are this run's verdict
        step(f"verify {', '.join(names_of(targets))}: the stack facts read before configure "
             "(nothing was configured since)")
        code = verifyflow.verify(run, targets, collected=result.pre_report)
    else:
        code = verifyflow.verify(run, targets)
    info(f"provisioned {', '.join(names_of(targets))} in {time.monotonic() - started:.0f} s: "
         f"{len(recap)} host(s), changed={changed}"
         + (" (nothing changed)" if changed == 0 else "")
         + f"; logs in {run.run_dir}")
    return code


def _in_waves(run: Run, targets: Sequence[Target], waves: list[list[Target]],
              gate: gateflow.Gate, *, force: bool, started: float) -> ExitCode:
    """Configure and verify each wave before the next: a wave's passing verify records the
    evidence that opens the next wave's gate, which is checked again on the ledger. A wave
    that fails verify stops the run; the later ones are untouched. Then one verify of every
    target, across environments."""
    for n, wave in enumerate(waves, start=1):
        names = names_of(wave)
        step(f"wave {n}/{len(waves)} of the promotion order: {', '.join(names)}")
        if n > 1:  # the evidence the earlier waves just recorded must open this gate
            wave_gate = gateflow.check(run, wave, override=gate.override, what="provision")
            wave_gate.recorded = gate.recorded
            gate = wave_gate
        configureflow.configure(run, wave, force=force, gate=gate)
        code = verifyflow.verify(run, wave)
        if code != ExitCode.OK:
            later = [t.name for w in waves[n:] for t in w]
            info(f"  {', '.join(names)}: verify exit {int(code)}: stopped"
                 + (f"; {', '.join(later)} untouched (their gate needs this evidence)"
                    if later else ""))
            return code
    step(f"verify {', '.join(names_of(targets))}: every environment, one comparison")
    code = verifyflow.verify(run, targets)
    info(f"provisioned {', '.join(names_of(targets))} in {time.monotonic() - started:.0f} s "
         f"in {len(waves)} wave(s) of the promotion order; logs in {run.run_dir}")
    return code
