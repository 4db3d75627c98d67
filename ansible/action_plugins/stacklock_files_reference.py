# Copyright: stacklock contributors. Apache-2.0.
"""Action plugin `stacklock_files_reference`: what the controller expects of a host's files.

Runs on the controller for each host (nothing runs on the node): from the host's rendered
variables it builds the files class's trees -- every locked wheel and pinned .deb read from the
controller's own copies (the mirror), the files the roles write -- keeps their lines in the
controller's reference store, and sets the fact `stacklock_files`: the facts module's `files`
option (tree hashes and managed directories). `stacklock verify --fast` computes the same
(stacklock.flows.integrity.files_option).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ansible.plugins.action import ActionBase

try:
    from stacklock.flows import integrity
except ImportError:  # a checkout without `pip install -e .`: use its src/ directly
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
    from stacklock.flows import integrity


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        hv = task_vars or {}
        # the variables the roles read (integrity.VAR_PREFIXES: one list for the play and
        # verify --fast), never the run-time credentials or the endpoint's secrets
        keys = [k for k in hv if k.startswith(integrity.VAR_PREFIXES)
                and k not in integrity.SECRET_VARS and not k.startswith(integrity.SECRET_PREFIXES)]
        values = self._templar.template({k: hv[k] for k in keys if k != "stacklock_files"})
        result.update(changed=False,
                      ansible_facts={"stacklock_files": integrity.files_option(values)})
        return result
