"""The full inventory of every node: the verify play's facts task with `inventory: true`
(`ansible/playbooks/inventory.yml`), read back per host. Shared by `sbom`, `diff` and the
audit's `diff` kind."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from stacklock.console import step
from stacklock.core.parity import FACTS_SCHEMA, Unreachable
from stacklock.flows.run import Run, Target, inventories, names_of


def env_hosts(inventory_dir: Path, env: str) -> list[str]:
    """The hosts of `env` in its rendered `hosts.yml`."""
    doc = yaml.safe_load((inventory_dir / "hosts.yml").read_text("utf-8")) or {}
    group = ((doc.get("all") or {}).get("children") or {}).get(env) or {}
    return sorted((group.get("hosts") or {}).keys())


def facts_of(path: Path) -> dict[str, Any] | Unreachable:
    """One host's facts from the file the play wrote, or why there are none."""
    if not path.is_file():
        return Unreachable("no facts: the host was not queried (the play ended before it)")
    try:
        doc = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        return Unreachable(f"unreadable facts file {path}: {exc}")
    result = doc.get("result") if isinstance(doc, dict) else None
    if not isinstance(result, dict):
        return Unreachable("no facts: the facts task did not run")
    msg = str(result.get("msg") or "").strip().splitlines()
    if result.get("unreachable"):
        return Unreachable(f"unreachable: {msg[0] if msg else 'no reason given'}"[:500])
    facts = (result.get("ansible_facts") or {}).get("stacklock_stack")
    if not isinstance(facts, dict) or facts.get("schema") != FACTS_SCHEMA:
        why = f"the facts module failed: {msg[0]}" if msg else "no facts"
        return Unreachable(why[:500])
    if str(facts.get("run_id")) != str(doc.get("run_id")):
        return Unreachable("stale facts (another run's): the node was not queried now")
    return facts


def collect_inventory(run: Run, targets: Sequence[Target], *,
                      quiet: bool = False) -> dict[str, dict[str, Any]]:
    """env -> node -> facts (with `os_packages`) or `Unreachable`, in `envs` order."""
    from stacklock.adapters import ansible

    envs = names_of(targets)
    invs = inventories(targets)
    out_dir = run.log_file("inventory")
    out_dir.mkdir(mode=0o700, exist_ok=True)
    if not quiet:
        step(f"inventory {', '.join(envs)}: every OS package and Python distribution of "
             "every node")
    ansible.run_playbook(
        "inventory.yml", invs, log_file=run.log_file("inventory.log"),
        extra_vars={"stacklock_inventory_dir": str(out_dir)},
        ok_codes=(0, 2, 4), quiet=quiet)
    return {env: {host: facts_of(out_dir / f"{host}.json")
                  for host in env_hosts(inv, env)}
            for env, inv in zip(envs, invs, strict=True)}
