"""Every relative link and image in README.md and docs/**/*.md points at a file that exists.

Links to the web (http, https), mailto links and pure #anchors are not checked; for `path#anchor` the
path is. Links inside code (fenced blocks, inline code spans) are not links and are ignored.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,}).*?^(?P=indent)(?P=fence)[ \t]*$", re.M | re.S)
INLINE_CODE = re.compile(r"(`+)(?!`).+?(?<!`)\1", re.S)
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+[\"'(].*?[\"')])?\s*\)", re.S)
REFERENCE_DEFINITION = re.compile(r"^[ ]{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.M)
HTML_TARGET = re.compile(r"<(?:img|a|source)\b[^>]*?\b(?:src|href)\s*=\s*[\"']([^\"']+)[\"']", re.I)
IGNORED = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//|#)", re.I)  # http:, https:, mailto:, //host, #anchor


def link_targets(markdown: str) -> list[str]:
    """The link and image targets of a markdown text, code left out."""
    text = INLINE_CODE.sub("", FENCE.sub("", markdown))
    targets = [match.group(1) for pattern in (INLINE_LINK, REFERENCE_DEFINITION, HTML_TARGET)
               for match in pattern.finditer(text)]
    return [target[1:-1] if target.startswith("<") and target.endswith(">") else target for target in targets]


def broken_links(page: Path) -> list[str]:
    """Targets of `page` that are relative and do not resolve to an existing file or folder."""
    broken = []
    for target in link_targets(page.read_text(encoding="utf-8")):
        if IGNORED.match(target):
            continue
        path = unquote(target.split("#", 1)[0].split("?", 1)[0])
        resolved = ROOT / path.lstrip("/") if path.startswith("/") else page.parent / path
        if not resolved.exists():
            broken.append(target)
    return broken


def test_the_pages_are_found():
    assert ROOT / "README.md" in PAGES
    assert ROOT / "docs" / "index.md" in PAGES
    assert ROOT / "docs" / "experiments" / "README.md" in PAGES


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_and_image_resolves(page: Path):
    broken = broken_links(page)
    assert not broken, f"{page.relative_to(ROOT)} links to missing files: {broken}"


def test_a_broken_link_or_image_is_reported(tmp_path: Path):
    (tmp_path / "there.md").write_text("x\n")
    (tmp_path / "img.png").write_bytes(b"")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md) [ok with anchor](there.md#a-section) ![ok](img.png) [web](https://example.com/x.md)\n"
        "[mail](mailto:someone@example.com) [anchor](#top) `[in code](gone-inline.md)`\n"
        "```bash\n[in a fence](gone-fenced.md)\n```\n"
        "[missing](gone.md) ![missing image](gone.png \"a title\") [missing with anchor](gone-too.md#x)\n"
        "[ref]: gone-ref.md\n<img src=\"gone-html.png\">\n",
        encoding="utf-8",
    )
    assert broken_links(page) == ["gone.md", "gone.png", "gone-too.md#x", "gone-ref.md", "gone-html.png"]
