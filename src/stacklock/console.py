"""Output helpers shared by the commands: one console on stderr for people, stdout for data."""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from collections.abc import Iterable
from typing import Any

from rich.console import Console, ConsoleRenderable, RenderHook
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from stacklock.errors import Problem


def _width(stream: object) -> int | None:
    """Rich's own width on a terminal; 160 columns in logs and CI (not 80)."""
    isatty = getattr(stream, "isatty", None)
    if callable(isatty) and isatty():
        return None
    return int(os.environ.get("COLUMNS", "160"))


err = Console(stderr=True, highlight=False, soft_wrap=True, width=_width(sys.stderr))
out = Console(highlight=False, soft_wrap=True, width=_width(sys.stdout))


# ----------------------------------------------------------------- hints name the manifest
#
# Every "next:" / "fix:" hint that names a stacklock command must act on the manifest the
# user gave: with `-m examples/lab.yaml`, `stacklock verify prod` pasted from a hint would
# otherwise act on ./stacklock.yaml. One place does it for every line printed on either
# console (problems, info lines, tables): `stacklock COMMAND` becomes
# `stacklock -m PATH COMMAND` while a manifest other than the default is in use.

_HINT: dict[str, Any] = {"pattern": None, "insert": ""}


def use_manifest(path: str | None, commands: Iterable[str] = ()) -> None:
    """The manifest this command runs on (None or the default: hints stay as they are) and
    the names of stacklock's commands (only `stacklock NAME` is rewritten)."""
    names = sorted(set(commands), key=len, reverse=True)
    if not path or not names:
        _HINT.update(pattern=None, insert="")
        return
    _HINT["pattern"] = re.compile(
        r"(?<![\w./-])stacklock (?=(?:" + "|".join(map(re.escape, names)) + r")\b)")
    _HINT["insert"] = f"-m {shlex.quote(path)} "


def with_manifest(text: str) -> str:
    """`text` with every `stacklock COMMAND` naming the manifest in use."""
    pattern = _HINT["pattern"]
    if pattern is None:
        return text
    return str(pattern.sub(lambda m: m.group(0) + _HINT["insert"], text))


def _text_with_manifest(text: Text) -> Text:
    pattern = _HINT["pattern"]
    if pattern is None:
        return text
    matches = list(pattern.finditer(text.plain))
    if not matches:
        return text
    result = Text(style=text.style, justify=text.justify, overflow=text.overflow,
                  no_wrap=text.no_wrap, end=text.end)
    at = 0
    for m in matches:
        result.append_text(text[at:m.end()])
        result.append(_HINT["insert"])
        at = m.end()
    result.append_text(text[at:])
    return result


def _renderable_with_manifest(r: Any) -> Any:
    if isinstance(r, str):
        return with_manifest(r)
    if isinstance(r, Text):
        return _text_with_manifest(r)
    if isinstance(r, Table):
        for column in r.columns:
            column._cells = [_renderable_with_manifest(c) for c in column._cells]
    return r


class _ManifestHints(RenderHook):
    def process_renderables(
            self, renderables: list[ConsoleRenderable]) -> list[ConsoleRenderable]:
        if _HINT["pattern"] is None:
            return renderables
        return [_renderable_with_manifest(r) for r in renderables]


err.push_render_hook(_ManifestHints())
out.push_render_hook(_ManifestHints())


def print_problems(problems: list[Problem]) -> None:
    for p in problems:
        label = "ERROR" if p.severity == "error" else "WARNING"
        style = "bold red" if p.severity == "error" else "yellow"
        err.print(f"[{style}]{label}[/] {escape(p.render())}", markup=True)
        if p.source:
            err.print(f"        source: {p.source}", markup=False)


def problem_json(p: Problem) -> dict[str, str]:
    """A problem for a JSON report: its hint names the manifest in use, like the text."""
    return {**p.as_dict(), "hint": with_manifest(p.hint)}


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def step(message: str) -> None:
    err.print(f"[bold cyan]==>[/] {message}", markup=True)


def info(message: str) -> None:
    err.print(message, markup=False)
