"""Fixtures for every test: the Python closures of the committed locks, known to the resolver.

`stacklock lock` reuses a closure already resolved for the same inputs (requirements, Python,
platform, package sources): from the existing lock, else from the user's closure cache. Tests
lock many copies of the example manifests; this seeds the cache from the committed locks (what
`stacklock lock --check` does too), so those copies never need an index.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ("stacklock.yaml", "examples/static.yaml", "examples/lab.yaml",
             "examples/onprem/stacklock.yaml", "tests/golden/static-lab/manifest.yaml")


@pytest.fixture(scope="session", autouse=True)
def _committed_closures_are_known() -> None:
    from stacklock.core import lock as lockmod
    from stacklock.core.manifest import load_manifest
    from stacklock.errors import StacklockError

    for rel in COMMITTED:
        path = ROOT / rel
        if not path.is_file():
            continue
        try:
            loaded = load_manifest(path)
            lockmod.closures_from_lock(lockmod.read_lock(loaded.lock_path), loaded)
        except StacklockError:
            continue  # a broken example is reported by its own tests


@pytest.fixture(scope="session", autouse=True)
def _private_signing_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Ledger signing keys made by the tests (a lab manifest makes and trusts one on first use)
    go to a folder of this session's, never to the user's ~/.config (XDG_CONFIG_HOME, which
    every stacklock the tests start inherits)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("xdg-config")))
        mp.delenv("STACKLOCK_SIGNING_KEY", raising=False)
        yield


# --------------------------------------------------------------------------- where time goes

_MODULE_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    module = report.nodeid.split("::", 1)[0]
    _MODULE_SECONDS[module] = _MODULE_SECONDS.get(module, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Seconds per test module (setup, call and teardown together), slowest first: where the
    suite's time goes, the figure that decides which modules share lab nodes."""
    if not _MODULE_SECONDS:
        return
    total = sum(_MODULE_SECONDS.values())
    terminalreporter.section("seconds per module")
    for module, seconds in sorted(_MODULE_SECONDS.items(), key=lambda kv: -kv[1])[:15]:
        terminalreporter.write_line(f"{seconds:8.1f} s {100 * seconds / total:5.1f}%  {module}")
    unit = sum(s for m, s in _MODULE_SECONDS.items() if m.startswith("tests/unit/"))
    terminalreporter.write_line(f"{unit:8.1f} s in tests/unit, {total:.1f} s in all")


# --------------------------------------------------------------------------- two lanes

#: Test modules that share one lab node (tests/integration/conftest.py's `integrity_lab`):
#: one lane runs all of them, so the node is provisioned once.
SHARED_NODE = ("tests/integration/test_integrity_files.py",
               "tests/integration/test_integrity_runtime.py",
               "tests/integration/test_endpoint.py",
               # last: it switches the node to container mode and back
               "tests/integration/test_container_serving.py")

#: The modules that take longest (the seconds-per-module figures), longest first. `make test`
#: runs the suite in two lanes (pytest-xdist, `--dist loadgroup`); each lane takes the next
#: module in this order when it is done with its own, so the longest start first and the
#: lanes end at about the same time.
LONGEST_FIRST = ("tests/integration/test_lab_e2e.py", "tests/integration/test_roles.py",
                 *SHARED_NODE, "tests/integration/test_onprem_e2e.py",
                 "tests/integration/test_interrupt.py",
                 "tests/integration/test_install.py", "tests/integration/test_host_keys.py")


def _module(item: pytest.Item) -> str:
    return item.nodeid.split("::", 1)[0]


def lane_unit(nodeid: str) -> str:
    """The unit of work a lane takes whole: the test's module, or the shared node's modules."""
    module = nodeid.split("::", 1)[0]
    return "shared-node" if module in SHARED_NODE else module


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """With pytest-xdist (`make test`, `make check`), a lane takes one unit (`lane_unit`) at a
    time and runs its tests in file order, as a module-scoped lab needs; units go out in
    collection order (run with --no-loadscope-reorder)."""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleLanes(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return lane_unit(nodeid)

    return ModuleLanes(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest modules first (each module's tests stay in file order)."""
    rank = {module: i for i, module in enumerate(LONGEST_FIRST)}
    order = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (rank.get(_module(item), len(rank)), order[id(item)]))
