"""Every relative link of README.md and of the documentation site (docs/**/*.md) points to a
file that exists, and every #anchor into a Markdown file to one of its headings.

`mkdocs build --strict` (scripts/static.sh) checks the links between pages of the site; this
test also covers README.md, which the site does not build, and runs with plain `pytest`.
Anchors are computed the way each file is rendered: README.md by GitHub, docs/ by MkDocs
(Python-Markdown's toc extension). The last tests show that a broken link and a broken anchor
fail it."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
DOCS = ROOT / "docs"

_FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.S)
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
_EXPLICIT_ID = re.compile(r"\s*\{[^}]*#([\w-]+)[^}]*\}\s*$")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _strip_code(text: str) -> str:
    """The text without fenced code blocks and code spans (links there are not links)."""
    text = _FENCE.sub("", text)
    return _CODE_SPAN.sub("", text)


def _heading_text(raw: str) -> str:
    """A heading's visible text: links become their text, code and emphasis lose their marks."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", raw)
    text = re.sub(r"<[^>]+>", "", text)
    text = text.replace("`", "")
    return re.sub(r"(\*\*|__|\*)", "", text)


def slug_mkdocs(text: str) -> str:
    """Python-Markdown's toc slugify (the default of MkDocs and Material)."""
    value = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    value = re.sub(r"[^\w\s-]", "", value).strip().lower()
    return re.sub(r"[-\s]+", "-", value)


def slug_github(text: str) -> str:
    """GitHub's heading anchors: lower case, punctuation dropped, each space a hyphen."""
    value = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return value.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings, as its renderer makes them (duplicates get
    suffixes: `_1` in MkDocs, `-1` on GitHub)."""
    github = path.resolve() == (ROOT / "README.md").resolve()
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for m in _HEADING.finditer(text):
        raw = m.group(2)
        explicit = _EXPLICIT_ID.search(raw)
        if explicit:
            found.add(explicit.group(1))
            continue
        base = (slug_github if github else slug_mkdocs)(_heading_text(raw))
        slug, n = base, 0
        while slug in found:
            n += 1
            slug = f"{base}-{n}" if github else f"{base}_{n}"
        found.add(slug)
    return found


def broken_links(path: Path) -> list[str]:
    """Each relative link of `path` that points nowhere, as `FILE: TARGET (why)`."""
    problems: list[str] = []
    rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    for m in _LINK.finditer(_strip_code(path.read_text(encoding="utf-8"))):
        target = m.group(1)
        if not target or _SCHEME.match(target) or target.startswith("//"):
            continue
        file_part, _, fragment = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path.resolve()
        if not dest.exists():
            problems.append(f"{rel}: {target} (no such file)")
            continue
        if fragment and dest.is_file() and dest.suffix == ".md" and fragment not in anchors(dest):
            problems.append(f"{rel}: {target} (no heading #{fragment} in {dest.name})")
    return problems


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


@pytest.mark.parametrize("path", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    assert broken_links(path) == []


def test_readme_links_into_the_docs() -> None:
    targets = {m.group(1).partition("#")[0] for m in _LINK.finditer(
        _strip_code((ROOT / "README.md").read_text(encoding="utf-8")))}
    assert "docs/index.md" in targets
    assert {"docs/onprem.md", "docs/commands.md", "docs/exit-codes.md"} <= targets


def test_slugs_match_the_renderers() -> None:
    heading = "Walkthrough: dev → staging → prod, and a `rollback` (the lab)"
    assert slug_mkdocs(_heading_text(heading)) == \
        "walkthrough-dev-staging-prod-and-a-rollback-the-lab"
    assert slug_github(_heading_text(heading)) == \
        "walkthrough-dev--staging--prod-and-a-rollback-the-lab"
    assert slug_mkdocs(_heading_text("`group_vars/ENV/stacklock.yml` — vars")) == \
        "group_varsenvstacklockyml-vars"


def test_a_broken_link_and_a_broken_anchor_fail(tmp_path: Path) -> None:
    (tmp_path / "target.md").write_text("# Target\n\n## Files and packages\n\ntext\n",
                                        encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[fine](target.md#files-and-packages) [fine too](#page) [web](https://example.org/x)\n"
        "[gone](missing.md) [no heading](target.md#runtime-state) [self](#nowhere)\n"
        "`[in code](missing-in-code.md)`\n\n"
        "```md\n[in a fence](missing-in-fence.md)\n```\n",
        encoding="utf-8")
    assert broken_links(page) == [
        f"{page}: missing.md (no such file)",
        f"{page}: target.md#runtime-state (no heading #runtime-state in target.md)",
        f"{page}: #nowhere (no heading #nowhere in page.md)",
    ]
