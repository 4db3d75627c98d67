# Copyright: stacklock contributors. Apache-2.0.
"""Action plugin `stacklock_gate`: the promotion gate of site.yml, on the controller.

Runs once (run_once, delegate_to localhost) before any host task. For every environment of
the play's hosts it reads the host's `stacklock_gate` variable (rendered by `stacklock
render`: project, environment, the fingerprint this inventory installs, the promotion order
and soak, the manifest and where its ledger lives, paths relative to the inventory folder)
and calls `stacklock.flows.gate.check_play` -- the same decision `stacklock configure`,
`provision`, `rollout` and `rollback` make, on the same ledger (chain and signatures checked).
A revision the environment before it in `promotion` never verified (or verified more recently
than `promotion_soak`) fails the play, saying what is missing and the command that fixes it.

In check mode (`--check`, as `stacklock audit --deep` runs it) nothing changes: a refusal is
a warning, and no override is recorded. Hosts without a `stacklock_gate` variable (an inventory
stacklock did not render, e.g. the molecule test bed) fail the play unless an override is
given, which is then printed and not recorded (there is no ledger to record it in).

Options (all optional):
  override   a reason: let a refused revision through; printed loudly and recorded in the
             ledger as a `gate-override` record (default: `stacklock_gate_override`)
  run_id     the stacklock run that started the play: an override it recorded already is
             not recorded again (default: `stacklock_gate_run`)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

try:
    from stacklock.core.manifest import load_manifest
    from stacklock.errors import StacklockError
    from stacklock.flows import gate
    from stacklock.flows import ledger as ledgerflow
except ImportError:  # a checkout without `pip install -e .`: use its src/ directly
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
    from stacklock.core.manifest import load_manifest
    from stacklock.errors import StacklockError
    from stacklock.flows import gate
    from stacklock.flows import ledger as ledgerflow

display = Display()

_KEYS = ("project", "environment", "fingerprint", "manifest", "ledger")


def _resolve(inventory_dir: str, rel: str) -> Path:
    return (Path(inventory_dir) / rel).resolve()


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        result["changed"] = False
        args = self._task.args
        hostvars = task_vars["hostvars"]
        hosts = list(task_vars.get("ansible_play_hosts_all") or [])
        override = str(args.get("override") or task_vars.get("stacklock_gate_override") or "")
        run_id = str(args.get("run_id") or task_vars.get("stacklock_gate_run") or "")
        # --check (audit --deep) changes nothing: a refusal is reported, never recorded
        check_mode = bool(self._task.check_mode or self._play_context.check_mode)

        # environment -> (its stacklock_gate, its inventory folder): every host of one
        # environment must say the same
        envs: dict[str, tuple[dict[str, Any], str]] = {}
        for h in hosts:
            hv = hostvars[h]
            spec = hv.get("stacklock_gate")
            if not isinstance(spec, dict) or any(k not in spec for k in _KEYS):
                if override:  # a test bed without a manifest (molecule): nothing to record
                    display.warning(f"!!! THE PROMOTION GATE IS OVERRIDDEN ({override}): host "
                                    f"{h} has no stacklock_gate variable, nothing is checked "
                                    "or recorded")
                    continue
                raise AnsibleActionFail(
                    f"stacklock_gate: host {h} has no stacklock_gate variable: its inventory "
                    "was not rendered by this stacklock (run `stacklock render`), so the "
                    "revision it would install cannot be checked")
            spec = dict(self._templar.template(spec))
            env = str(spec["environment"])
            inv = str(hv.get("inventory_dir") or ".")
            seen = envs.setdefault(env, (spec, inv))
            if seen[0]["fingerprint"] != spec["fingerprint"]:
                raise AnsibleActionFail(
                    f"stacklock_gate: the hosts of {env} would get two revisions "
                    f"({seen[0]['fingerprint']}, {spec['fingerprint']}): render again")
        if not envs:
            result["msg"] = "no hosts: nothing to check"
            return result

        manifests = {_resolve(inv, str(spec["manifest"])) for spec, inv in envs.values()}
        if len(manifests) != 1:
            raise AnsibleActionFail("stacklock_gate: the inventories belong to different "
                                    f"manifests ({', '.join(map(str, sorted(manifests)))})")
        manifest = manifests.pop()
        try:
            loaded = load_manifest(manifest)
            for env, (spec, inv) in envs.items():
                self._same(loaded, env, spec, inv)
            res = gate.check_play(
                loaded, {env: str(spec["fingerprint"]) for env, (spec, _) in envs.items()},
                override=None if check_mode else (override or None), run_id=run_id,
                command="ansible-playbook site.yml (" + ", ".join(sorted(envs)) + ")")
        except StacklockError as exc:
            if check_mode:
                display.warning(f"stacklock_gate (check mode, nothing changes): {exc.message}")
                result["msg"] = f"check mode: the gate would refuse: {exc.message}"
                return result
            result["failed"] = True
            result["msg"] = f"stacklock_gate: refused: {exc.message}"
            return result
        for v in res.verdicts:
            if v.basis == "override":
                display.warning(f"!!! THE PROMOTION GATE IS OVERRIDDEN: {v.describe()}")
            else:
                display.display(f"stacklock_gate: {v.describe()}")
        for rec in res.recorded:
            display.warning(f"!!! gate override recorded in the ledger: "
                            f"{rec['body']['environment']} (seq {rec['seq']}, reason: "
                            f"{rec['body']['reason']})")
        for body in res.reused:
            display.display(f"stacklock_gate: override of {body.get('environment')} already "
                            f"recorded by stacklock run {body.get('run')}")
        result["stacklock_gate"] = {
            v.environment: {"fingerprint": v.fingerprint, "allowed": v.allowed,
                            "basis": v.basis, "reason": v.reason} for v in res.verdicts}
        result["msg"] = "; ".join(v.describe() for v in res.verdicts)
        return result

    @staticmethod
    def _same(loaded: Any, env: str, spec: dict[str, Any], inv: str) -> None:
        """The rendered variable must belong to this manifest and name its ledger."""
        m = loaded.manifest
        if spec["project"] != m.project or env not in m.environments:
            raise AnsibleActionFail(
                f"stacklock_gate: the inventory of {env} is of project {spec['project']}, "
                f"{loaded.path} is {m.project}: render again")
        where = ledgerflow.open_ledger(loaded).where
        rendered = str(spec["ledger"])
        if not rendered.startswith("s3://"):
            rendered = str(_resolve(inv, rendered))
            where = str(Path(where).resolve())
        if rendered != where or list(spec.get("promotion") or []) != list(m.promotion) \
                or (spec.get("promotion_soak") or "") != (m.promotion_soak or ""):
            raise AnsibleActionFail(
                f"stacklock_gate: the inventory of {env} is stale (ledger {rendered}, "
                f"promotion {spec.get('promotion')}, soak {spec.get('promotion_soak')!r}; "
                f"the manifest says {where}, {list(m.promotion)}, {m.promotion_soak!r}): "
                "run `stacklock render`")
