"""Each role's meta/argument_specs.yml documents exactly its defaults, with the same values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = [pytest.mark.unit]

ROLES_DIR = Path(__file__).resolve().parents[3] / "ansible" / "roles"
ROLES = sorted(p.name for p in ROLES_DIR.iterdir() if (p / "tasks" / "main.yml").exists())
PUBLIC_ROLES = [r for r in ROLES if r != "stacklock_packages"]


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _options(role: str) -> dict[str, dict[str, Any]]:
    spec = _load(ROLES_DIR / role / "meta" / "argument_specs.yml")
    options: dict[str, dict[str, Any]] = spec["argument_specs"]["main"]["options"]
    return options


def test_all_roles_are_here() -> None:
    assert set(ROLES) >= {
        "nvidia_driver",
        "cuda",
        "docker",
        "nvidia_container_toolkit",
        "torchserve",
        "stacklock_packages",
    }


@pytest.mark.parametrize("role", ROLES)
def test_specs_cover_every_default_with_its_value(role: str) -> None:
    defaults = _load(ROLES_DIR / role / "defaults" / "main.yml") or {}
    options = _options(role)
    assert sorted(defaults) == sorted(options), (
        f"{role}: only in defaults {sorted(set(defaults) - set(options))}, "
        f"only in argument_specs {sorted(set(options) - set(defaults))}"
    )
    for name, value in defaults.items():
        spec = options[name]
        assert "default" in spec, f"{role}: {name} has no default in argument_specs"
        assert spec["default"] == value, f"{role}: {name} default differs"
        assert spec.get("description"), f"{role}: {name} is not described"
        assert spec.get("type"), f"{role}: {name} has no type"
        if "choices" in spec:
            assert value in spec["choices"], f"{role}: {name} default not among its choices"


@pytest.mark.parametrize("role", ROLES)
def test_variables_are_prefixed_with_the_role(role: str) -> None:
    defaults = _load(ROLES_DIR / role / "defaults" / "main.yml") or {}
    assert [k for k in defaults if not k.startswith(f"{role}_")] == []
    internal = (
        _load(ROLES_DIR / role / "vars" / "main.yml")
        if (ROLES_DIR / role / "vars" / "main.yml").exists()
        else {}
    )
    assert [k for k in internal or {} if not k.startswith(f"_{role}_")] == []


@pytest.mark.parametrize("role", PUBLIC_ROLES)
def test_phases_are_tagged(role: str) -> None:
    main = _load(ROLES_DIR / role / "tasks" / "main.yml")
    tags = {t for task in main for t in task.get("tags", [])}
    for phase in ("install", "configure"):
        assert f"{role}_{phase}" in tags, f"{role}: no {role}_{phase} tag"
    first = main[0]
    assert first["name"] == "Preflight"
    preflight = _load(ROLES_DIR / role / "tasks" / "preflight.yml")
    # preflight only asserts inputs (plus read-only probes that never change the host)
    for task in preflight:
        modules = {k for k in task if k.startswith("ansible.builtin.")}
        assert modules <= {
            "ansible.builtin.assert",
            "ansible.builtin.find",
            "ansible.builtin.slurp",
            "ansible.builtin.stat",
        }, f"{role}: preflight task {task['name']!r} uses {modules}"


def test_torchserve_config_template_renders_sorted_key_value_lines() -> None:
    jinja2 = pytest.importorskip("jinja2")
    env = jinja2.Environment(trim_blocks=True, keep_trailing_newline=True)
    text = (ROLES_DIR / "torchserve" / "templates" / "config.properties.j2").read_text()
    rendered = env.from_string(text).render(
        torchserve_config={
            "job_queue_size": 50,
            "enable_model_api": False,
            "allowed_urls": ["file:///a/.*", "file:///b/.*"],
            "Zeta": "x",
            "inference_address": "http://127.0.0.1:8080",
        }
    )
    assert rendered == (
        "Zeta=x\n"
        "allowed_urls=file:///a/.*,file:///b/.*\n"
        "enable_model_api=false\n"
        "inference_address=http://127.0.0.1:8080\n"
        "job_queue_size=50\n"
    )

