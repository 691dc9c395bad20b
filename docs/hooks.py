"""MkDocs hook: a link from a page to a file of the repository outside docs/ (an example, a
benchmark, a script) works where the pages are read in the repository; the site has no such
file, so there the link becomes the path as code."""

from __future__ import annotations

import re

_OUTSIDE = re.compile(r"\[([^\]]+)\]\((\.\./[^)\s]+)\)")


def on_page_markdown(markdown: str, **_: object) -> str:
    def as_code(match: re.Match[str]) -> str:
        text, target = match.group(1), match.group(2)
        path = target.removeprefix("../")
        if text.strip("`") == path:
            return f"`{path}`"
        return f"{text} (`{path}`)"

    return _OUTSIDE.sub(as_code, markdown)
