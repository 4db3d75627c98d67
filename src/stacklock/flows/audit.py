"""`stacklock audit`: the real probes (terraform, the verify play, docker, boto3) behind the
pure audit core in `stacklock.audit`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from stacklock.adapters.proc import run_command
from stacklock.core import audit as auditmod
from stacklock.core import report as reportmod
from stacklock.core.manifest import AwsEnvironment, LabEnvironment
from stacklock.errors import ToolFailed
from stacklock.flows.orchestrate import Orchestrator

LAB_NODE_ADDRESS = 'module.nodes.terraform_data.node["{name}"]'


def gone_lab_nodes(outputs: Mapping[str, Any]) -> dict[str, str]:
    """Lab nodes in Terraform's state whose container is gone or stopped.

    `terraform_data` cannot refresh, so Terraform cannot see a removed container by itself;
    the audit asks Docker and then plans those nodes' replacement (`-replace`)."""
    gone: dict[str, str] = {}
    for name, host in sorted((outputs.get("hosts") or {}).items()):
        container = host.get("container", name)
        res = run_command(["docker", "inspect", "-f", "{{.State.Running}}", container],
                          check=False, timeout=30)
        if res.returncode != 0:
            gone[LAB_NODE_ADDRESS.format(name=name)] = f"container {container} is gone"
        elif res.stdout.strip() != "true":
            gone[LAB_NODE_ADDRESS.format(name=name)] = f"container {container} is stopped"
    return gone


class RealProbes:
    def __init__(self, orch: Orchestrator, *, deep: bool = False) -> None:
        self.orch = orch
        self.deep_enabled = deep

    def plans(self, env: str) -> auditmod.PlanPair | None:
        tf = self.orch._terraform(env)
        tf.init()
        outputs = tf.output()
        if not outputs.get("hosts"):
            raise ToolFailed(f"{env}: no Terraform state with nodes (never applied?): "
                             f"run `stacklock apply {env}` first")
        outside: dict[str, str] = {}
        if isinstance(self.orch.loaded.manifest.environments[env], LabEnvironment):
            outside = gone_lab_nodes(outputs)
        plan = tf.plan(detailed_exitcode=True, replace=sorted(outside))
        refresh = tf.plan(detailed_exitcode=True, refresh_only=True)
        return auditmod.PlanPair(plan.plan_json, refresh.plan_json, outside)

    def parity(self, envs: Sequence[str]) -> Mapping[str, Any]:
        from stacklock.flows.verify import collect

        return reportmod.report_dict(collect(self.orch, list(envs), quiet=True))

    def cloud(self, env: str) -> auditmod.CloudData | None:
        spec = self.orch.loaded.manifest.environments[env]
        if not isinstance(spec, AwsEnvironment):
            return None
        from stacklock.adapters import aws
        from stacklock.core import lock as lockmod

        lock = lockmod.load_current_lock(self.orch.loaded)
        locked = lock["stacks"][spec.stack]
        tf = self.orch._terraform(env)
        tf.init()
        state = auditmod.state_instances_from_show(tf.show_state())
        live = [i.as_dict() for i in aws.live_inventory(self.orch.loaded.manifest.project,
                                                        env, spec.region)]
        return auditmod.CloudData(state, live, spec.instance_type,
                                  (locked.get("ami") or {}).get(spec.region),
                                  locked["fingerprint"])

    def deep(self, env: str) -> auditmod.DeepData | None:
        from stacklock.adapters import ansible

        log = self.orch.log_file(f"site-check-{env}.log")
        recap = ansible.run_playbook("site.yml", self.orch._inventories([env]), log_file=log,
                                     extra_args=["--check", "--diff"], ok_codes=(0, 2, 4),
                                     quiet=True, credentials=self.orch.credentials())
        text = log.read_text("utf-8") if log.is_file() else ""
        return auditmod.DeepData(recap, auditmod.changed_tasks_from_output(text))

    def deep_all(self, envs: Sequence[str]) -> Mapping[str, auditmod.DeepData]:
        """One `site.yml --check --diff` over every environment's inventory (instead of one
        run per environment), split by environment for the same report."""
        from stacklock.adapters import ansible

        log = self.orch.log_file("site-check.log")
        recap = ansible.run_playbook("site.yml", self.orch._inventories(list(envs)),
                                     log_file=log, extra_args=["--check", "--diff"],
                                     ok_codes=(0, 2, 4), quiet=True,
                                     credentials=self.orch.credentials())
        text = log.read_text("utf-8") if log.is_file() else ""
        hosts = {env: self.orch.inventory_hosts(env) for env in envs}
        return auditmod.split_deep(recap, auditmod.changed_tasks_from_output(text), hosts)

    def diff(self, envs: Sequence[str]) -> Mapping[str, Any]:
        from stacklock.flows.diff import collect

        return collect(self.orch, list(envs), quiet=True).as_dict()

    def probes(self) -> auditmod.Probes:
        return auditmod.Probes(plans=self.plans, parity=self.parity, cloud=self.cloud,
                               deep_all=self.deep_all if self.deep_enabled else None,
                               diff=self.diff)
