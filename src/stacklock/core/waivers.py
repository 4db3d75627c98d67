"""Waivers: known, accepted deviations, each with a reason and an expiry date. Pure.

A waiver (`parity.waivers` in the manifest, rendered into the group_vars as
`stacklock_parity_waivers`) names one exact item -- a component of the report
(`unit.torchserve.environment.FOO`, `unit.docker.drop_in./etc/systemd/system/docker.service.d/x.conf`,
`file:/etc/apt/sources.list.d/x.list`) -- optionally one node and one environment. A deviation it
names shows as WAIVED (table and JSON) and does not fail verify. A waiver past its expiry
waives nothing, and is itself a finding (exit 1) naming it; `validate` warns about it.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_DROP_IN = re.compile(r"^unit\.[^.]+(?:\.[^.]+)*?\.drop_in\.(/.+)$")


def subject(component: str) -> str:
    """What a component is about: one file is one item whichever class names it (a unit's
    drop-in `unit.U.drop_in.PATH` is the file `file:PATH` the files class names), so one
    waiver covers both; anything else is itself."""
    m = _DROP_IN.match(component)
    if m:
        return f"file:{m.group(1)}"
    return component


@dataclass(frozen=True)
class Waiver:
    item: str
    reason: str
    expires: _dt.date
    node: str | None = None
    environment: str | None = None

    def expired(self, today: _dt.date) -> bool:
        """Valid through its expiry day; expired the day after."""
        return today > self.expires

    def matches(self, environment: str, node: str, component: str) -> bool:
        return (subject(component) == subject(self.item)
                and (self.node is None or self.node == node)
                and (self.environment is None or self.environment == environment))

    def where(self) -> str:
        scope = "/".join(x for x in (self.environment, self.node) if x)
        return f"{self.item}" + (f" on {scope}" if scope else "")

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"item": self.item, "reason": self.reason,
                               "expires": self.expires.isoformat()}
        if self.node is not None:
            out["node"] = self.node
        if self.environment is not None:
            out["environment"] = self.environment
        return out


def _date(value: Any) -> _dt.date:
    if isinstance(value, _dt.datetime):
        return value.date()
    if isinstance(value, _dt.date):
        return value
    return _dt.date.fromisoformat(str(value))


def parse(entries: Iterable[Mapping[str, Any]] | None) -> list[Waiver]:
    """Waivers from their plain form (the manifest's, already validated, or the group_vars'
    rendered from it). ValueError naming the entry for one that is not well formed."""
    out = []
    for i, e in enumerate(entries or []):
        if not isinstance(e, Mapping):
            raise ValueError(f"waivers[{i}]: not a mapping")
        try:
            out.append(Waiver(item=str(e["item"]), reason=str(e["reason"]),
                              expires=_date(e["expires"]),
                              node=None if e.get("node") in (None, "") else str(e["node"]),
                              environment=None if e.get("environment") in (None, "")
                              else str(e["environment"])))
        except KeyError as exc:
            raise ValueError(f"waivers[{i}]: {exc.args[0]} is required") from None
        except ValueError as exc:
            raise ValueError(f"waivers[{i}].expires: {exc}") from None
    return out


def expired(waivers: Sequence[Waiver], today: _dt.date) -> list[Waiver]:
    return [w for w in waivers if w.expired(today)]


def in_force(waivers: Sequence[Waiver], today: _dt.date) -> list[Waiver]:
    return [w for w in waivers if not w.expired(today)]


def find(waivers: Sequence[Waiver], environment: str, node: str, component: str
         ) -> Waiver | None:
    """The first waiver naming this check."""
    return next((w for w in waivers if w.matches(environment, node, component)), None)


def describe_expired(w: Waiver) -> str:
    return (f"the waiver of {w.where()} expired on {w.expires.isoformat()} ({w.reason}): fix "
            "the deviation, or renew the waiver with a new expiry date in parity.waivers")
