# Copyright: stacklock contributors. Apache-2.0.
"""Action plugin `stacklock_files_reference`: what the controller expects of a host's files.

Runs on the controller for each host (nothing runs on the node): from the host's rendered
variables it builds the files class's trees -- every locked wheel and pinned .deb read from the
controller's own copies (the mirror), the files the roles write -- keeps their lines in the
controller's reference store, and sets the fact `stacklock_files`: the facts module's `files`
option (tree hashes and managed directories). `stacklock verify --fast` computes the same
(stacklock.flows.integrity.files_option).

Ansible runs this in a worker forked per host: the trees are built once per distinct variables
for the whole run (stacklock.adapters.runmemo), and only that first worker imports the builders.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from ansible.plugins.action import ActionBase

try:
    from stacklock.adapters import runmemo
except ImportError:  # a checkout without `pip install -e .`: use its src/ directly
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
    from stacklock.adapters import runmemo
from stacklock.core import hostvars


def _option(values: dict[str, Any]) -> list[dict[str, Any]]:
    from stacklock.flows import integrity  # the builders: imported by the run's first worker

    return integrity.files_option(values)


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        hv = task_vars or {}
        # the variables the roles read (hostvars.VAR_PREFIXES: one list for the play and
        # verify --fast), never the run-time credentials or the endpoint's secrets
        values = self._templar.template({k: v for k, v in hv.items()
                                         if hostvars.read_by_roles(k)})
        if not values.get("stacklock_fingerprint"):
            option: list[dict[str, Any]] = []
        else:
            # the run is ansible-playbook, this worker's parent
            scope = runmemo.process_scope(os.getppid())
            option = (runmemo.once(_runs(), scope, hostvars.memo_key(values),
                                   lambda: _option(values)) if scope else _option(values))
        result.update(changed=False, ansible_facts={"stacklock_files": option})
        return result


def _runs() -> Path:
    """$STACKLOCK_CACHE_DIR/runs, else ~/.cache/stacklock/runs (beside the trees store)."""
    base = os.environ.get("STACKLOCK_CACHE_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "stacklock") / "runs"
