# Copyright: stacklock contributors. Apache-2.0.
"""What every collector shares: the probe errors and version helpers."""

from __future__ import annotations

import re
from typing import Any

#: every message of a probe that could not look starts with this (the parity comparison
#: reports such a component as "could not look", exit 3, never as a deviation)
CANNOT_LOOK = "could not look: "


class ProbeError(Exception):
    """A probe could not produce its value; the message is recorded as the section's error."""


class ApiError(ProbeError):
    """The service answered, but not with what was asked for (HTTP 500, not JSON)."""


class CannotLook(ProbeError):
    """The probe could not look (permission denied, timeout, authentication refused, a crash):
    the value is unknown, which is not the same as absent or different."""

    def __init__(self, message: str) -> None:
        super().__init__(message if message.startswith(CANNOT_LOOK) else CANNOT_LOOK + message)


def upstream_version(debian_version: str | None) -> str | None:
    """`5:27.3.1-1~debian.12` -> `27.3.1`; `20.10.24+dfsg1-1+deb12u1+b6` -> `20.10.24`."""
    if not debian_version:
        return None
    m = re.match(r"^(?:\d+:)?(\d+(?:\.\d+)*)", debian_version)
    return m.group(1) if m else None


def major_minor(version: str | None) -> str | None:
    if not version:
        return None
    m = re.match(r"^(\d+)\.(\d+)", version)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def first_line(text: str | None) -> str:
    """The last non-empty line of a command's output (where its error usually is)."""
    text = (text or "").strip()
    return text.splitlines()[-1] if text else ""


def cmd_error(argv: list[str], res: Any) -> str:
    tail = first_line(res.stderr or res.stdout)
    return f"{' '.join(argv)} exited {res.rc}: {tail}"
