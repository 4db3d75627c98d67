"""`stacklock audit`: the real probes (terraform, the verify play, docker, boto3) behind the
pure audit core in `stacklock.audit`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from stacklock.core import audit as auditmod
from stacklock.core import report as reportmod
from stacklock.core.manifest import AwsEnvironment, LabEnvironment
from stacklock.errors import ToolFailed
from stacklock.flows.lab import gone_lab_nodes
from stacklock.flows.run import Run, Target, inventories


class RealProbes:
    """The audit's probes over the targets of one run (by environment name, as the pure
    audit core asks for them)."""

    def __init__(self, run: Run, targets: Sequence[Target], *, deep: bool = False) -> None:
        self.run = run
        self.targets = {t.name: t for t in targets}
        self.deep_enabled = deep

    def _of(self, envs: Sequence[str]) -> list[Target]:
        return [self.targets[e] for e in envs]

    def plans(self, env: str) -> auditmod.PlanPair | None:
        tf = self.run.terraform(self.targets[env])
        tf.init()
        outputs = tf.output()
        if not outputs.get("hosts"):
            raise ToolFailed(f"{env}: no Terraform state with nodes (never applied?): "
                             f"run `stacklock apply {env}` first")
        outside: dict[str, str] = {}
        if isinstance(self.targets[env].spec, LabEnvironment):
            outside = gone_lab_nodes(outputs)
        plan = tf.plan(detailed_exitcode=True, replace=sorted(outside))
        refresh = tf.plan(detailed_exitcode=True, refresh_only=True)
        return auditmod.PlanPair(plan.plan_json, refresh.plan_json, outside)

    def parity(self, envs: Sequence[str]) -> Mapping[str, Any]:
        from stacklock.flows.verify import collect

        return reportmod.report_dict(collect(self.run, self._of(envs), quiet=True))

    def cloud(self, env: str) -> auditmod.CloudData | None:
        spec = self.targets[env].spec
        if not isinstance(spec, AwsEnvironment):
            return None
        from stacklock.adapters import aws
        from stacklock.core import lock as lockmod

        lock = lockmod.load_current_lock(self.run.loaded)
        locked = lock["stacks"][spec.stack]
        tf = self.run.terraform(self.targets[env])
        tf.init()
        state = auditmod.state_instances_from_show(tf.show_state())
        live = [i.as_dict() for i in aws.live_inventory(self.run.loaded.manifest.project,
                                                        env, spec.region)]
        return auditmod.CloudData(state, live, spec.instance_type,
                                  (locked.get("ami") or {}).get(spec.region),
                                  locked["fingerprint"])

    def deep(self, env: str) -> auditmod.DeepData | None:
        from stacklock.adapters import ansible

        log = self.run.log_file(f"site-check-{env}.log")
        recap = ansible.run_playbook("site.yml", inventories(self._of([env])), log_file=log,
                                     extra_args=["--check", "--diff"], ok_codes=(0, 2, 4),
                                     quiet=True, credentials=self.run.credentials())
        text = log.read_text("utf-8") if log.is_file() else ""
        return auditmod.DeepData(recap, auditmod.changed_tasks_from_output(text))

    def deep_all(self, envs: Sequence[str]) -> Mapping[str, auditmod.DeepData]:
        """One `site.yml --check --diff` over every environment's inventory (instead of one
        run per environment), split by environment for the same report."""
        from stacklock.adapters import ansible

        log = self.run.log_file("site-check.log")
        recap = ansible.run_playbook("site.yml", inventories(self._of(envs)),
                                     log_file=log, extra_args=["--check", "--diff"],
                                     ok_codes=(0, 2, 4), quiet=True,
                                     credentials=self.run.credentials())
        text = log.read_text("utf-8") if log.is_file() else ""
        hosts = {t.name: t.hosts() for t in self._of(envs)}
        return auditmod.split_deep(recap, auditmod.changed_tasks_from_output(text), hosts)

    def diff(self, envs: Sequence[str]) -> Mapping[str, Any]:
        from stacklock.flows.diff import collect

        return collect(self.run, self._of(envs), quiet=True).as_dict()

    def probes(self) -> auditmod.Probes:
        return auditmod.Probes(plans=self.plans, parity=self.parity, cloud=self.cloud,
                               deep_all=self.deep_all if self.deep_enabled else None,
                               diff=self.diff)
