"""MkDocs hook: `\\|` inside a code span of a table row renders as `|`.

GitHub needs a pipe inside a table's code span escaped (`ENV…\\|--all`), Python-Markdown keeps
the backslash there (it already treats a pipe in a code span as text). So the pages stay
correct on GitHub, and the site drops the backslash before Markdown sees the row."""

from __future__ import annotations

import re
from typing import Any

_CODE_SPAN = re.compile(r"(`+)(?!`)(.*?)(?<!`)\1(?!`)")


def _unescape(match: re.Match[str]) -> str:
    return match.group(1) + match.group(2).replace("\\|", "|") + match.group(1)


def on_page_markdown(markdown: str, **_: Any) -> str:
    lines = markdown.split("\n")
    for i, line in enumerate(lines):
        if line.lstrip().startswith("|") and "\\|" in line:
            lines[i] = _CODE_SPAN.sub(_unescape, line)
    return "\n".join(lines)
