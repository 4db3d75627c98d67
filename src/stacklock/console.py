"""Output helpers shared by the commands: one console on stderr for people, stdout for data."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape

from stacklock.errors import Problem


def _width(stream: object) -> int | None:
    """Rich's own width on a terminal; 160 columns in logs and CI (not 80)."""
    isatty = getattr(stream, "isatty", None)
    if callable(isatty) and isatty():
        return None
    return int(os.environ.get("COLUMNS", "160"))


err = Console(stderr=True, highlight=False, soft_wrap=True, width=_width(sys.stderr))
out = Console(highlight=False, soft_wrap=True, width=_width(sys.stdout))


def print_problems(problems: list[Problem]) -> None:
    for p in problems:
        label = "ERROR" if p.severity == "error" else "WARNING"
        style = "bold red" if p.severity == "error" else "yellow"
        err.print(f"[{style}]{label}[/] {escape(p.render())}", markup=True)
        if p.source:
            err.print(f"        source: {p.source}", markup=False)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def step(message: str) -> None:
    err.print(f"[bold cyan]==>[/] {message}", markup=True)


def info(message: str) -> None:
    err.print(message, markup=False)
