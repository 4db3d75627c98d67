# Copyright: stacklock contributors. Apache-2.0.
"""Action plugin `stacklock_parity`: the parity comparison on the controller, over every host.

Runs once (run_once, delegate_to localhost) after `stacklock_stack_facts` ran on each host. It
calls `stacklock.core.parity.compare` -- the same comparison `stacklock verify` uses -- so the play
and the CLI reach the same verdict. It writes the JSON report (`stacklock.parity/v1`), prints a
compact table, and fails naming every deviation (environment, node, component, expected,
actual) and every unreachable node.

Options (all optional):
  report_path   where the JSON report is written (parents are created)
  junit_path    where a JUnit XML report is written
  environments  the inventory groups that are environments; default: every group holding a
                host of the play that is not all/ungrouped and not a sub-group of another
  may_differ    components allowed to differ between environments; default: the
                `stacklock_parity_may_differ` variable of the first host
  waivers       known, accepted deviations (parity.waivers: item, node, environment, reason,
                expires); default: the `stacklock_parity_waivers` variable of the first host
  facts_var     host fact holding the stack facts (stacklock_stack)
  result_var    registered result of the facts task, for the reason a host has no facts
  run_id        this run's id, given to the facts task: facts without it are stale (exit 3)
  fail          fail the task when the verdict is not 0 (true)
  table_width   width of the printed table (160)
  max_lines     problem lines in the failure message (60; all of them are in the report)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

try:
    from stacklock.core import parity, report
    from stacklock.core.files import atomic_write
except ImportError:  # a checkout without `pip install -e .`: use its src/ directly
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
    from stacklock.core import parity, report
    from stacklock.core.files import atomic_write

display = Display()

_NOT_ENVIRONMENTS = {"all", "ungrouped"}


def environments_of(
    groups: dict[str, list[str]], hosts: list[str], explicit: list[str] | None
) -> dict[str, list[str]]:
    """environment -> hosts of the play in it (inventory group name = environment name)."""
    scope = set(hosts)
    if explicit:
        missing = [e for e in explicit if e not in groups]
        if missing:
            raise AnsibleActionFail(
                f"stacklock_parity: environment group(s) {', '.join(missing)} are not in the "
                "inventory; pass -i inventories/<env> for each, or fix `environments`"
            )
        return {e: [h for h in groups[e] if h in scope] for e in explicit}
    cands = {
        g: frozenset(h for h in members if h in scope)
        for g, members in groups.items()
        if g not in _NOT_ENVIRONMENTS
    }
    cands = {g: m for g, m in cands.items() if m}
    top = {g: m for g, m in cands.items() if not any(m < other for other in cands.values())}
    owner: dict[str, list[str]] = {}
    for g, members in top.items():
        for h in members:
            owner.setdefault(h, []).append(g)
    ambiguous = {h: sorted(gs) for h, gs in owner.items() if len(gs) > 1}
    if ambiguous:
        h, gs = sorted(ambiguous.items())[0]
        raise AnsibleActionFail(
            f"stacklock_parity: host {h} is in several groups ({', '.join(gs)}); set "
            "`stacklock_verify_environments` to the list of environment groups"
        )
    unplaced = sorted(scope - set(owner))
    out = {g: sorted(top[g]) for g in sorted(top, key=lambda g: _env_order(g))}
    if unplaced:
        out["ungrouped"] = unplaced
    return out


def _env_order(name: str) -> tuple[int, str]:
    known = ("dev", "development", "test", "qa", "staging", "stage", "preprod", "prod",
             "production")
    return (known.index(name), name) if name in known else (len(known), name)


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        result["changed"] = False
        args = self._task.args
        hostvars = task_vars["hostvars"]
        groups = {k: list(v) for k, v in task_vars.get("groups", {}).items()}
        hosts = list(task_vars.get("ansible_play_hosts_all") or groups.get("all", []))
        facts_var = args.get("facts_var", "stacklock_stack")
        result_var = args.get("result_var", "__stacklock_verify_facts")

        envs = environments_of(groups, hosts, args.get("environments") or None)
        expected: dict[str, dict[str, str | None]] = {}
        facts: dict[str, dict[str, Any]] = {}
        may_differ = args.get("may_differ")
        waivers = args.get("waivers")
        for env, members in envs.items():
            facts[env] = {}
            for h in members:
                facts[env][h] = self._facts_of(hostvars[h], facts_var, result_var)
            if members:
                hv = hostvars[members[0]]
                group_vars = {k: hv.get(k) for k in parity.GROUP_VAR_KEYS if k in hv}
                expected[env] = parity.expected_from_vars(self._templar.template(group_vars))
                if may_differ is None:
                    may_differ = hv.get("stacklock_parity_may_differ")
                if waivers is None:
                    waivers = self._templar.template(hv.get("stacklock_parity_waivers"))
            else:
                expected[env] = {}
        run_id = args.get("run_id")
        rep = parity.compare(expected, facts, list(may_differ or []),
                             run_id=str(run_id) if run_id else None, waivers=waivers or None)

        for key, render in (("report_path", report.to_json), ("junit_path", report.to_junit)):
            if args.get(key):
                path = Path(os.path.expanduser(str(args[key]))).resolve()
                result[key] = str(atomic_write(path, render(rep)))

        width = int(args.get("table_width", 160))
        display.display(report.to_text(rep, width=width, compact=True,
                                       title="stacklock parity (ansible verify)"))
        code = int(rep.exit_code)
        result["stacklock_parity"] = {
            "exit_code": code,
            "summary": rep.summary(),
            "environments": list(rep.environments),
            "deviations": len(rep.deviations),
            "unreachable": [f"{n.environment}/{n.node}" for n in rep.unreachable_nodes],
        }
        result["exit_code"] = code
        verdict = report.verdict(rep)
        if code != 0 and bool(args.get("fail", True)):
            problems = rep.problems()
            limit = int(args.get("max_lines", 60))
            shown = problems[:limit]
            if len(problems) > limit:
                where = result.get("report_path", "the JSON report")
                shown.append(f"... and {len(problems) - limit} more (see {where})")
            result["failed"] = True
            result["msg"] = "\n".join([f"{verdict} (exit {code})", *shown])
        else:
            result["msg"] = f"{verdict}: {rep.summary()}"
        return result

    @staticmethod
    def _facts_of(hv: Any, facts_var: str, result_var: str) -> Any:
        facts = hv.get(facts_var) if facts_var in hv else None
        if isinstance(facts, dict) and facts.get("schema"):
            facts = json.loads(json.dumps(facts))  # plain dicts, no Ansible lazy types
            # the endpoint as a client sees it (stacklock_endpoint_client, on the controller)
            client = hv.get("stacklock_endpoint_client") \
                if "stacklock_endpoint_client" in hv else None
            if isinstance(client, dict):
                facts["endpoint_client"] = json.loads(json.dumps(client))
            return facts
        registered = hv.get(result_var) if result_var in hv else None
        reason = "no facts: the host failed or was not reached"
        if isinstance(registered, dict):
            msg = str(registered.get("msg") or "").strip()
            if registered.get("unreachable"):
                reason = msg or "no reason given"
                from stacklock.core import hostkeys

                if hostkeys.is_host_key_failure(msg):
                    groups = [g for g in (hv.get("group_names") or [])
                              if g not in _NOT_ENVIRONMENTS]
                    name = str(hv.get("inventory_hostname", "?"))
                    reason = hostkeys.untrusted_hint(
                        name, str(hv.get("ansible_host", name)), str(hv.get("ansible_port", 22)),
                        groups[0] if groups else None)
            elif registered.get("skipped"):
                reason = "the facts task was skipped"
            elif msg:
                reason = f"the facts module failed: {msg}"
        return parity.Unreachable(reason.splitlines()[0][:500])
