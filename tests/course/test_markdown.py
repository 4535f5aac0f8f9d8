"""Lesson Markdown is rendered, and whatever HTML it carries is sanitised."""

from __future__ import annotations

import pytest

from course.markdown import render_markdown

XSS_VECTORS = [
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(1)">',
    '<a href="javascript:alert(1)">click</a>',
    '<svg onload="alert(1)"></svg>',
    '<iframe src="https://example.com"></iframe>',
    '<div style="background:url(javascript:alert(1))">x</div>',
    "[link](javascript:alert(1))",
    '<body onload="alert(1)">',
    '<form action="https://evil.example"><input name="password"></form>',
    '<object data="x.swf"></object>',
    '<IMG SRC="jav&#x09;ascript:alert(1);">',
    "<style>body{display:none}</style>",
]


@pytest.mark.parametrize("payload", XSS_VECTORS)
def test_script_vectors_are_removed(payload: str) -> None:
    html = render_markdown(f"Before\n\n{payload}\n\nAfter").lower()
    for dangerous in (
        "<script",
        "onerror",
        "onload",
        "javascript:",
        "<iframe",
        "<svg",
        "style=",
        "<form",
        "<object",
        "<style",
    ):
        assert dangerous not in html
    assert "before" in html and "after" in html


def test_markdown_features_render() -> None:
    html = render_markdown(
        "# Title\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n```sh\nls -l\n```\n\n[docs](https://example.com)"
    )
    assert "<h1>Title</h1>" in html
    assert "<table>" in html and "<td>1</td>" in html
    assert '<code class="language-sh">ls -l' in html
    assert 'href="https://example.com"' in html and 'rel="noopener noreferrer"' in html
