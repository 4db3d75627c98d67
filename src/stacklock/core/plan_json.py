"""Terraform plan JSON, read (pure): resource changes, drift, outputs.

Shared by the Terraform adapter and the audit core; nothing here runs Terraform.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stacklock.errors import ToolFailed


@dataclass(frozen=True)
class ResourceChange:
    """One planned change read from plan JSON (`resource_changes` or `resource_drift`)."""

    address: str
    actions: tuple[str, ...]
    changed: tuple[str, ...]

    @property
    def is_replace(self) -> bool:
        return set(self.actions) == {"delete", "create"}


def _changed_attributes(change: Mapping[str, Any]) -> tuple[str, ...]:
    before = change.get("before")
    after = change.get("after")
    before_map: Mapping[str, Any] = before if isinstance(before, Mapping) else {}
    after_map: Mapping[str, Any] = after if isinstance(after, Mapping) else {}
    unknown = change.get("after_unknown")
    unknown_map: Mapping[str, Any] = unknown if isinstance(unknown, Mapping) else {}
    names: set[str] = set()
    for key in set(before_map) | set(after_map):
        if before_map.get(key) != after_map.get(key):
            names.add(key)
    for key, value in unknown_map.items():
        # after_unknown marks values known only after apply (True, or a structure holding
        # True): such a value is recomputed by the change, so it counts as changed.
        if contains_true(value):
            names.add(key)
    return tuple(sorted(names))


def contains_true(value: Any) -> bool:
    if value is True:
        return True
    if isinstance(value, Mapping):
        return any(contains_true(v) for v in value.values())
    if isinstance(value, list):
        return any(contains_true(v) for v in value)
    return False


def _parse_changes(entries: Any, include_noop: bool) -> list[ResourceChange]:
    result: list[ResourceChange] = []
    if not isinstance(entries, list):
        return result
    for entry in entries:
        if not isinstance(entry, Mapping):
            continue
        change = entry.get("change")
        if not isinstance(change, Mapping):
            continue
        actions = tuple(str(a) for a in change.get("actions", []))
        if not include_noop and actions in (("no-op",), ("read",)):
            continue
        result.append(
            ResourceChange(
                address=str(entry.get("address", "")),
                actions=actions,
                changed=_changed_attributes(change),
            )
        )
    return sorted(result, key=lambda rc: rc.address)


def resource_changes(plan_json: Mapping[str, Any], *, include_noop: bool = False) -> list[ResourceChange]:
    """Planned resource changes, sorted by address: (address, actions, changed attributes)."""
    return _parse_changes(plan_json.get("resource_changes"), include_noop)


def resource_drift(plan_json: Mapping[str, Any]) -> list[ResourceChange]:
    """Changes made outside Terraform that the plan's refresh detected (`resource_drift`)."""
    return _parse_changes(plan_json.get("resource_drift"), include_noop=False)


def unwrap_outputs(raw: Mapping[str, Any]) -> dict[str, Any]:
    """`output -json` gives {name: {value, type, sensitive}}; return {name: value}."""
    result: dict[str, Any] = {}
    for name, item in raw.items():
        if isinstance(item, Mapping) and "value" in item:
            result[name] = item["value"]
        else:
            raise ToolFailed(f"terraform output -json: unexpected entry for output {name!r}")
    return result


def plan_has_changes(plan_json: Mapping[str, Any], *, refresh_only: bool = False) -> bool:
    """Whether plan JSON holds any change (resources, outputs, or drift for refresh-only)."""
    if refresh_only and resource_drift(plan_json):
        return True
    if resource_changes(plan_json):
        return True
    outputs = plan_json.get("output_changes")
    if isinstance(outputs, Mapping):
        for change in outputs.values():
            if isinstance(change, Mapping) and tuple(change.get("actions", [])) != ("no-op",):
                return True
    return False
