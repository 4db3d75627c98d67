# Copyright: stacklock contributors. Apache-2.0.
"""``gather(opts)``: run every collector on this node and return ``stacklock.facts/v1``.

To add a collector: a module of this package with a ``collect(run)`` function that writes its
sections into ``run.facts`` (through ``run.section``, so that a failure becomes that section's
``error`` and, when it could not look, ``blocked``), listed in ``COLLECTORS`` below; its
sections documented in docs/facts.md and compared in stacklock.core.parity."""

from __future__ import annotations

import time
from typing import Any

from ansible.module_utils.stacklock_facts import (
    apt,
    commands,
    container,
    cuda,
    docker,
    endpoint,
    files,
    gpu,
    java,
    osinfo,
    process,
    python,
    systemd,
    toolkit,
    torchserve,
)
from ansible.module_utils.stacklock_facts.common import CANNOT_LOOK
from ansible.module_utils.stacklock_facts.node import System
from ansible.module_utils.stacklock_facts.run import Collector, Run

SCHEMA = "stacklock.facts/v1"

#: every collector, in the order their sections appear in the facts. `apt.collect_dpkg` comes
#: before the collectors that look packages up in `run.dpkg`.
COLLECTORS: tuple[Collector, ...] = (
    osinfo.collect,          # os
    apt.collect_dpkg,        # os_packages (inventory: true); run.dpkg for the others
    gpu.collect,             # gpu, nvidia_driver
    cuda.collect,            # cuda
    docker.collect,          # docker
    toolkit.collect,         # nvidia_container_toolkit
    container.collect,       # container (container mode: the `container` option)
    java.collect,            # java
    python.collect,          # python
    torchserve.collect,      # torchserve (config, model_store, models, venv, smoke)
    systemd.collect,         # services
    systemd.collect_units,   # units, manager_environment (runtime class; `units` option)
    process.collect,         # processes (the units' main processes, from /proc)
    commands.collect,        # commands (what each command resolves to; `commands` option)
    apt.collect_protection,  # apt_protection
    apt.collect_packages,    # packages, holds, family_packages
    files.collect,           # files (trees, unowned)
    endpoint.collect,        # endpoint (the serving endpoint answers; `endpoint_url` option)
)


def gather(opts: dict[str, Any], sy: System | None = None) -> dict[str, Any]:
    """The `stacklock.facts/v1` dict for this node. `sy` replaces the node (tests)."""
    started = time.monotonic()
    run = Run(opts, sy or System(float(opts.get("probe_timeout") or 10)))
    run.facts["schema"] = SCHEMA
    for collector in COLLECTORS:
        collector(run)
    facts = run.facts
    facts["errors"] = run.errors
    # what could not be looked at: unknown, never "absent" or "different" (parity: exit 3)
    facts["blocked"] = {k: v for k, v in run.errors.items() if CANNOT_LOOK in str(v)}
    if opts.get("run_id"):
        facts["run_id"] = str(opts["run_id"])
    facts["seconds"] = round(time.monotonic() - started, 3)
    return facts
