# Copyright: stacklock contributors. Apache-2.0.
"""One gathering: the node, the module's options, the facts so far and the errors by section.

Every collector receives the same ``Run``. What several collectors need is read once and kept
here (``dpkg``: every package dpkg knows, read by ``apt.collect_dpkg`` before the others)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ansible.module_utils.stacklock_facts.common import CANNOT_LOOK, ProbeError
from ansible.module_utils.stacklock_facts.node import System


class Run:
    def __init__(self, opts: dict[str, Any], sy: System) -> None:
        self.opts = opts
        self.sy = sy
        self.facts: dict[str, Any] = {}
        #: section -> message; `could not look:` ones end up in `blocked` too
        self.errors: dict[str, str] = {}
        #: {name: {version, status, held}} of every package dpkg knows; None when unreadable
        self.dpkg: dict[str, dict[str, Any]] | None = None
        #: why dpkg could not be read (then `dpkg` is None)
        self.dpkg_error: str | None = None

    def section(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one probe; on failure return {"error": ...} and record it under `name`."""
        try:
            value = fn(*args)
        except ProbeError as exc:
            value = {"error": str(exc)}
        except Exception as exc:  # a bug in a probe must not hide the other sections
            value = {"error": f"{CANNOT_LOOK}the {name} probe crashed: {type(exc).__name__}: {exc}"}
        if isinstance(value, dict) and value.get("error"):
            self.errors[name] = value["error"]
        return value


#: a collector: reads its part of the node and writes its sections into `run.facts`
Collector = Callable[[Run], None]
