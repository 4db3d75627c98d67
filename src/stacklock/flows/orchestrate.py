"""Provisioning flows: lock check → render → terraform → inventory → ansible → verify.

This module sequences the core and the adapters; it holds no comparison or rendering logic.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from stacklock.console import info, step
from stacklock.core import lock as lockmod
from stacklock.core import render as rendermod
from stacklock.core import runlock
from stacklock.core.files import atomic_write, ensure_dir
from stacklock.core.inventory import hosts_yaml
from stacklock.core.manifest import LabEnvironment, LoadedManifest, StaticEnvironment
from stacklock.errors import ExitCode, InvalidInput, Problem, ToolFailed


def new_run_dir(root: Path) -> Path:
    """A folder of this run's own under `.stacklock/runs` (0700): the time, the pid and a
    random suffix, created exclusively, so two runs in the same second never share one."""
    runs = ensure_dir(root / ".stacklock" / "runs")
    for _ in range(10):
        path = runs / f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{secrets.token_hex(3)}"
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            continue
        os.chmod(path, 0o700)
        return path
    raise ToolFailed(f"could not create a run folder under {runs}")


class Orchestrator:
    def __init__(self, loaded: LoadedManifest, *, verbose: bool = False,
                 lock_timeout: float = runlock.DEFAULT_TIMEOUT,
                 command: str | None = None) -> None:
        self.loaded = loaded
        self.verbose = verbose
        self.root = loaded.output_root
        self._run_dir: Path | None = None
        self._resources = ExitStack()
        #: what the lab has been made ready for in this run: "", "nodes", or "nodes+mirror"
        self._lab_ready = ""
        self.locks = runlock.RunLocks(
            self.root, timeout=lock_timeout, on_wait=_waiting,
            command=command or shlex.join(["stacklock", *sys.argv[1:]]))
        self._resources.callback(self.locks.release)
        #: every environment this run has locked (kept after the release, for messages)
        self.held_envs: list[str] = []
        self._credentials: Any = None
        #: the parity report configure read before choosing its nodes (None: not read)
        self.pre_report: Any = None

    @property
    def run_dir(self) -> Path:
        """This run's folder for logs and reports, created on first use."""
        if self._run_dir is None:
            self._run_dir = new_run_dir(self.root)
        return self._run_dir

    def hold(self, envs: list[str]) -> None:
        """Hold the run lock of every environment of `envs` until this run ends (sorted
        order; a second run waits up to the lock timeout, then fails with exit 3)."""
        self.locks.acquire(envs)
        self.held_envs = sorted(set(self.held_envs) | set(envs))

    def __enter__(self) -> Orchestrator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop what this run started (the lab's mirror server, unless another run still
        uses it), then release the run locks; lab nodes stay."""
        self._resources.close()

    # ------------------------------------------------------------------ helpers

    def credentials(self) -> Any:
        """The mirror and index credentials of this run (environment, secrets file; see
        stacklock.core.credentials), read once; exit 2 when they are unusable."""
        if self._credentials is None:
            from stacklock.core.credentials import load_credentials

            self._credentials = load_credentials(self.loaded.manifest)
        return self._credentials

    def env_dir(self, env: str) -> Path:
        return self.root / "terraform" / "environments" / env

    def inventory_dir(self, env: str) -> Path:
        return self.root / "inventories" / env

    def provider(self, env: str) -> str:
        return self.loaded.manifest.environments[env].provider

    def log_file(self, name: str) -> Path:
        return self.run_dir / name

    def _terraform(self, env: str) -> Any:
        from stacklock.adapters.terraform import Terraform

        env_dir = self.env_dir(env)
        if not (env_dir / "main.tf").is_file():
            raise InvalidInput(
                f"{env_dir}/main.tf does not exist",
                problems=[Problem(f"environments.{env}", "not rendered yet",
                                  "run: stacklock render")],
            )
        return Terraform(env_dir, log_file=self.log_file(f"terraform-{env}.log"),
                         lock_timeout=self.locks.timeout)

    def ensure_current(self) -> dict[str, Any]:
        """The lock must be current and the generated files in step with it."""
        lock = lockmod.load_current_lock(self.loaded)
        tree = rendermod.render_tree(self.loaded, lock)
        stale = rendermod.stale_files(self.loaded, tree)
        if stale:
            raise InvalidInput(
                f"{len(stale)} generated file(s) are stale",
                problems=[Problem(s, "stale generated file", "run: stacklock render")
                          for s in stale],
            )
        return lock

    def _prepare(self, envs: list[str], *, need_mirror: bool = False) -> None:
        wanted = "nodes+mirror" if need_mirror else "nodes"
        if self._lab_ready == "nodes+mirror" or self._lab_ready == wanted:
            return
        if any(isinstance(self.loaded.manifest.environments[e], LabEnvironment) for e in envs):
            from stacklock.flows import lab

            lab.prepare(self.loaded, stack=self._resources, need_mirror=need_mirror)
            self._lab_ready = wanted

    # ------------------------------------------------------------------ terraform

    def plan(self, envs: list[str]) -> bool:
        self.hold(envs)
        self.ensure_current()
        self._prepare(envs)
        any_changes = False
        for env in envs:
            step(f"{env}: terraform plan")
            tf = self._terraform(env)
            tf.init()
            gone = self._gone_nodes(env, tf)
            result = tf.plan(detailed_exitcode=True, replace=sorted(gone))
            from stacklock.adapters.terraform import resource_changes

            changes = resource_changes(result.plan_json or {})
            for ch in changes:
                action = "replace" if ch.is_replace else "/".join(ch.actions)
                info(f"  {action:>8}  {ch.address}")
            info(f"  {env}: {'changes pending' if result.changes else 'no changes'}")
            any_changes |= result.changes
        return any_changes

    def apply(self, envs: list[str], *, auto_approve: bool = False, implied_lab: bool = False,
              confirm: Any = None, batch_size: int = 1, after_batch: Any = None) -> None:
        """terraform apply. An aws environment's plan is printed and must be approved
        (`auto_approve`, `confirm` on a terminal; refused in CI or without a terminal), and
        replaced instances go `batch_size` at a time (stacklock.flows.infra); lab and static
        environments apply without asking (`implied_lab`: provision and demo approve the lab
        implicitly, which is the same)."""
        self.hold(envs)
        self.ensure_current()
        self._prepare(envs)
        for env in envs:
            step(f"{env}: terraform apply")
            tf = self._terraform(env)
            tf.init()
            started = time.monotonic()
            if self.provider(env) == "aws":
                from stacklock.flows.infra import apply_approved

                apply_approved(self, env, tf, provider="aws", auto_approve=auto_approve,
                               confirm=confirm, batch_size=batch_size, after_batch=after_batch)
                info(f"  {env}: done in {time.monotonic() - started:.1f} s, "
                     f"inventory {self.inventory_dir(env) / 'hosts.yml'}")
                continue
            gone = self._gone_nodes(env, tf)
            tf.apply(auto_approve=True, replace=sorted(gone))
            self.write_inventory(env, tf.output())
            info(f"  {env}: applied in {time.monotonic() - started:.1f} s, "
                 f"inventory {self.inventory_dir(env) / 'hosts.yml'}")

    def _gone_nodes(self, env: str, tf: Any) -> dict[str, str]:
        """Lab nodes whose container is gone: Terraform replaces them (it cannot see it)."""
        if self.provider(env) != "lab":
            return {}
        from stacklock.flows.audit import gone_lab_nodes

        gone = gone_lab_nodes(tf.output())
        for address, why in gone.items():
            info(f"  {env}: {why}: {address} must be replaced")
        return gone

    def write_inventory(self, env: str, outputs: dict[str, Any]) -> Path:
        key = None
        if self.provider(env) == "lab":
            key = "{{ inventory_dir }}/../../" + rendermod.LAB_SSH_KEY
        text = hosts_yaml(env, self.provider(env), outputs, key)
        path = atomic_write(self.inventory_dir(env) / "hosts.yml", text)
        self.write_known_hosts(env, outputs)
        return path

    def write_known_hosts(self, env: str, outputs: dict[str, Any]) -> Path | None:
        """The host keys apply can vouch for, in `inventories/ENV/known_hosts`: a lab node's
        own key read through Docker (the whole file, rewritten on every apply, so a replaced
        node's new key is recorded), a static host's `host_key` from the manifest (pinned over
        whatever was there). Other hosts are trusted with `stacklock trust ENV`."""
        from stacklock.core import hostkeys

        spec = self.loaded.manifest.environments[env]
        path = hostkeys.known_hosts_path(self.root, env)
        entries: list[hostkeys.Entry] = []
        if isinstance(spec, LabEnvironment):
            from stacklock.flows import lab

            for name, h in sorted((outputs.get("hosts") or {}).items()):
                key = lab.node_host_key(str(h.get("container", name)))
                pattern = hostkeys.host_pattern(str(h["address"]), int(h.get("port", 22)))
                entries.append(hostkeys.Entry(pattern, hostkeys.PublicKey(
                    key.type, key.body, f"{name} (lab node, read through docker)")))
                info(f"  {env}: host key of {name} ({pattern}): {key.type} {key.fingerprint}")
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
        text = hostkeys.format_known_hosts(env, entries)
        if path.is_file() and path.read_text("utf-8") == text:
            return path
        return atomic_write(path, text)

    def destroy(self, envs: list[str], *, auto_approve: bool = False,
                confirm: Any = None) -> None:
        """terraform destroy through a destroy plan that names what goes; an aws
        environment's must be approved (stacklock.flows.infra)."""
        from stacklock.flows.infra import destroy_approved

        self.hold(envs)
        for env in envs:
            step(f"{env}: terraform destroy")
            tf = self._terraform(env)
            tf.init()
            destroy_approved(self, env, tf, provider=self.provider(env),
                             auto_approve=auto_approve, confirm=confirm)
            hosts = self.inventory_dir(env) / "hosts.yml"
            if hosts.exists():
                hosts.unlink()
            info(f"  {env}: destroyed")

    # ------------------------------------------------------------------ ansible

    def _inventories(self, envs: list[str]) -> list[Path]:
        paths = []
        for env in envs:
            inv = self.inventory_dir(env)
            if not (inv / "hosts.yml").is_file():
                raise InvalidInput(
                    f"{inv}/hosts.yml does not exist",
                    problems=[Problem(f"environments.{env}", "not provisioned yet",
                                      f"run: stacklock apply {env}")],
                )
            paths.append(inv)
        return paths

    def inventory_hosts(self, env: str) -> list[str]:
        """The host names of `inventories/ENV/hosts.yml` (as Ansible names them)."""
        import yaml

        doc = yaml.safe_load((self.inventory_dir(env) / "hosts.yml").read_text("utf-8")) or {}
        group = (((doc.get("all") or {}).get("children") or {}).get(env) or {})
        return sorted((group.get("hosts") or {}).keys())

    def select_nodes(self, envs: list[str], *, force: bool = False) -> list[Any]:
        """Which nodes configure runs the roles on, and why (stacklock.core.converge): the
        stack facts of every node are read first (the verify play); a node is skipped only
        when that parity report shows it matches its lock. The report is kept in the run
        folder (`configure-facts.json`) as the proof."""
        from stacklock.core import converge
        from stacklock.core import report as reportmod
        from stacklock.flows.verify import collect

        hosts = {env: self.inventory_hosts(env) for env in envs}
        report = None
        self.pre_report = None
        if not force:
            step(f"configure {', '.join(envs)}: read the stack facts first "
                 "(converge only what deviates; --force converges every node)")
            self._prepare(envs)
            try:
                report = collect(self, envs, quiet=True)
            except ToolFailed as exc:
                info(f"  the stack facts could not be read: every node is configured ({exc})")
            if report is not None:
                self.pre_report = report
                atomic_write(self.log_file("configure-facts.json"),
                             json.dumps(reportmod.report_dict(report), indent=1,
                                        sort_keys=True) + "\n")
        decisions = converge.select(report, hosts, force=force)
        for decision in decisions:
            info(f"  {decision.describe()}")
        return decisions

    def configure(self, envs: list[str], *, force: bool = False) -> dict[str, Any]:
        """Run site.yml on the nodes that deviate from their lock (or are new, or could not
        be read); on every node with `force`. Returns the recap ({} when nothing deviated)."""
        from stacklock.adapters import ansible
        from stacklock.core import converge

        self.hold(envs)
        self.ensure_current()
        self.credentials()  # unusable credentials (a group-readable file) stop here, exit 2
        self._inventories(envs)
        decisions = self.select_nodes(envs, force=force)
        targets = converge.limit(decisions)
        if not targets:
            info(f"configured {', '.join(envs)}: every node matches its lock, site.yml not run"
                 f" (proof: {self.log_file('configure-facts.json')})")
            return {}
        self._prepare(envs, need_mirror=True)
        every = len(targets) == len(decisions)
        step(f"configure {', '.join(envs)}: ansible-playbook site.yml on "
             + ("every node" if every else f"{len(targets)} of {len(decisions)} node(s)"))
        recap = ansible.run_playbook(
            "site.yml", self._inventories(envs), log_file=self.log_file("site.log"),
            credentials=self.credentials(),
            extra_args=() if every else ("--limit", ",".join(targets)),
        )
        changed = ansible.recap_changed(recap)
        info(f"configured {', '.join(envs)}: {ansible.summarize(recap)}"
             + (" — nothing changed" if changed == 0 else ""))
        return recap

    def verify(self, envs: list[str], *, fmt: str = "table", junit: Path | None = None,
               deep: bool = False, collected: Any = None, fast: bool = False) -> ExitCode:
        from stacklock.flows.verify import run_verify

        self.hold(envs)
        self.ensure_current()
        return run_verify(self, envs, fmt=fmt, junit=junit, deep=deep, collected=collected,
                          fast=fast)

    def _converge_batch(self, env: str, batch: Any) -> None:
        """After a batch of replaced instances (provision): configure the environment (the new
        nodes deviate, so they are the ones converged) and verify it; a failing verify stops
        the rollout before the next batch, the remaining old instances untouched."""
        self.configure([env])
        code = self.verify([env])
        if code != ExitCode.OK:
            raise ToolFailed(f"{env}: verify failed (exit {int(code)}) after replacing "
                             f"{', '.join(batch)}: the rollout stopped before the next batch; "
                             f"the other instances are untouched (logs in {self.run_dir})")

    def preflight(self, envs: list[str]) -> None:
        """AWS environments: the instance type is offered and has the GPU validated for."""
        from stacklock.core.manifest import AwsEnvironment

        aws_envs = [e for e in envs
                    if isinstance(self.loaded.manifest.environments[e], AwsEnvironment)]
        if not aws_envs:
            return
        from stacklock.adapters import aws

        step(f"preflight {', '.join(aws_envs)}: instance types offered, GPUs as validated")
        problems = []
        for name in aws_envs:
            spec = self.loaded.manifest.environments[name]
            assert isinstance(spec, AwsEnvironment)
            problems += [p for p in aws.check_instance_types(spec, name)
                         if p.severity == "error"]
        if problems:
            raise InvalidInput("AWS preflight failed: nothing was provisioned", problems=problems)

    def provision(self, envs: list[str], *, force: bool = False, auto_approve: bool = False,
                  confirm: Any = None, batch_size: int = 1) -> ExitCode:
        self.hold(envs)
        started = time.monotonic()
        self.ensure_current()
        self.preflight(envs)
        self.apply(envs, auto_approve=auto_approve, implied_lab=True, confirm=confirm,
                   batch_size=batch_size, after_batch=self._converge_batch)
        recap = self.configure(envs, force=force)
        changed = sum(r.get("changed", 0) for r in recap.values())
        if not recap and self.pre_report is not None:
            # no roles ran: the facts configure just read are this run's verdict
            step(f"verify {', '.join(envs)}: the stack facts read before configure "
                 "(nothing was configured since)")
            code = self.verify(envs, collected=self.pre_report)
        else:
            code = self.verify(envs)
        info(f"provisioned {', '.join(envs)} in {time.monotonic() - started:.0f} s: "
             f"{len(recap)} host(s), changed={changed}"
             + (" (nothing changed)" if changed == 0 else "")
             + f"; logs in {self.run_dir}")
        return code


def _waiting(env: str, holder: runlock.Holder | None) -> None:
    who = holder.describe() if holder else "a run that is just starting"
    info(f"  {env}: waiting for another stacklock run to finish: {who}")


__all__ = ["Orchestrator", "ToolFailed", "new_run_dir"]
