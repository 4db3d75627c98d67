"""collect: the one list of collectors, what gather() adds around them, and that every
collector module is listed (adding one is one line there)."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
from ansible.module_utils import stacklock_facts
from ansible.module_utils.stacklock_facts import collect
from ansible.module_utils.stacklock_facts.run import Run
from fakenode import LAB_PACKAGES, gather, lab_node

pytestmark = pytest.mark.unit


def test_every_collector_function_is_listed_once() -> None:
    """Every `collect` / `collect_*` function of the package's modules is in COLLECTORS."""
    found = set()
    for info in pkgutil.iter_modules(stacklock_facts.__path__):
        module = importlib.import_module(f"{stacklock_facts.__name__}.{info.name}")
        for name, value in vars(module).items():
            if (name == "collect" or name.startswith("collect_")) and callable(value) \
                    and value.__module__ == module.__name__:
                found.add(value)
    assert found == set(collect.COLLECTORS)
    assert len(found) == len(collect.COLLECTORS)  # none listed twice


def test_the_sections_in_their_order() -> None:
    facts = gather(lab_node(), packages=LAB_PACKAGES, package_families=["nvidia-*"],
                   inventory=True, run_id="5")
    assert list(facts) == [
        "schema", "os", "os_packages", "gpu", "nvidia_driver", "cuda", "docker",
        "nvidia_container_toolkit", "java", "python", "torchserve", "services",
        "apt_protection", "packages", "holds", "family_packages", "errors", "blocked",
        "run_id", "seconds"]


def test_a_collector_is_one_function_of_run(monkeypatch: pytest.MonkeyPatch) -> None:
    def extra(run: Run) -> None:
        run.facts["extra"] = run.section("extra", lambda: {"error": "could not look: no"})

    monkeypatch.setattr(collect, "COLLECTORS", (*collect.COLLECTORS, extra))
    facts = gather(lab_node())
    assert facts["extra"] == {"error": "could not look: no"}
    assert facts["blocked"] == {"extra": "could not look: no"}
