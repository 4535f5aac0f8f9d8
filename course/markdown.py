"""Lesson text: Markdown rendered to HTML, then sanitised, so lesson files can never inject
scripts, event handlers or styles into a learner's page."""

from __future__ import annotations

import markdown as md
import nh3

EXTENSIONS = ["fenced_code", "tables", "sane_lists", "attr_list"]
ALLOWED_ATTRIBUTES = {
    **{tag: set(attrs) for tag, attrs in nh3.ALLOWED_ATTRIBUTES.items()},
    "a": {"href", "title"},
    "img": {"src", "alt", "title", "width", "height"},
    "code": {"class"},
    "pre": {"class"},
    "div": {"class"},
    "span": {"class"},
}


def render_markdown(text: str) -> str:
    """Markdown to safe HTML: scripts, event handlers, `javascript:` links and raw styles go."""
    html = md.markdown(text, extensions=EXTENSIONS, output_format="html")
    return nh3.clean(
        html,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer",
    )
