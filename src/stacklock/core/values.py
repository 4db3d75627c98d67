"""How the comparison writes a value: one function for parity, the runtime class and the
container class, so that `true`, `false` and a missing value read the same everywhere."""

from __future__ import annotations

from typing import Any


def text(value: Any) -> str | None:
    """None stays None (nothing read); a bool is `true` / `false`; anything else its str()."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


__all__ = ["text"]
