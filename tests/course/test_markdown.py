"""Lesson Markdown is rendered (highlighted code, callouts, diagrams), and whatever HTML it carries
is sanitised, wherever in the lesson it is written."""

from __future__ import annotations

import re
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

import pytest

from course.markdown import HIGHLIGHT_CSS_COMMAND, highlight_css, render_markdown

ROOT = Path(__file__).resolve().parents[2]

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
    '"><script>alert(1)</script>',
    "</pre><script>alert(1)</script><pre>",
    '<details open ontoggle="alert(1)">',
    '<a href="data:text/html,<script>alert(1)</script>">x</a>',
]

# Where a payload can sit in a lesson: plain text, a callout's title or body, a diagram, a code
# block, a code fence's info string.
PLACEMENTS: dict[str, Callable[[str], str]] = {
    "text": lambda payload: f"Before\n\n{payload}\n\nAfter",
    "callout title": lambda payload: f'!!! warning "{payload}"\n    Body',
    "callout body": lambda payload: f"!!! tip\n    {payload}",
    "mermaid block": lambda payload: f"```mermaid\ngraph LR\n    a[{payload}] --> b\n```",
    "code block": lambda payload: f"```html\n{payload}\n```",
    "fence info string": lambda payload: f"```{payload}\nx = 1\n```",
}

# attr_list lets an author put attributes on elements: handlers and URLs must not get through it.
ATTRIBUTE_INJECTIONS = [
    'A paragraph\n{: onclick="alert(1)" }',
    '# A heading {: onmouseover="alert(1)" }',
    '[docs](https://example.com){: onclick="alert(1)" href="javascript:alert(1)" }',
    '```{.python onclick="alert(1)" style="color:red"}\nx = 1\n```',
]

DANGEROUS_TAGS = {"script", "style", "iframe", "object", "embed", "svg", "math", "form", "input", "body", "link"}
SAFE_SCHEMES = ("http:", "https:", "mailto:")


class Elements(HTMLParser):
    """Every element of an HTML fragment, as a browser would parse it: (tag, attributes)."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, {name: value or "" for name, value in attrs}))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def live_markup(html: str) -> list[str]:
    """What in `html` could run script or restyle the page: dangerous elements, event handlers,
    inline styles, and URLs with a scheme other than http, https or mailto. Text is harmless."""
    problems = []
    for tag, attrs in Elements(html).found:
        if tag in DANGEROUS_TAGS:
            problems.append(f"<{tag}>")
        for name, value in attrs.items():
            if name.startswith("on") or name in {"style", "srcdoc", "formaction"}:
                problems.append(f"<{tag} {name}=>")
            # Browsers ignore tabs, newlines and leading spaces in a URL's scheme.
            url = re.sub(r"[\x00-\x20]", "", value).lower()
            if name in {"href", "src", "action", "data"} and ":" in url and not url.startswith(SAFE_SCHEMES):
                problems.append(f"<{tag} {name}={value!r}>")
    return problems


def text_of(html: str) -> str:
    return "".join(Elements(html).text)


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


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("payload", XSS_VECTORS)
def test_script_vectors_are_inert_wherever_they_are_written(placement: str, payload: str) -> None:
    html = render_markdown(PLACEMENTS[placement](payload))
    assert live_markup(html) == []


@pytest.mark.parametrize("source", ATTRIBUTE_INJECTIONS)
def test_attribute_lists_cannot_add_handlers_styles_or_script_urls(source: str) -> None:
    html = render_markdown(source)
    assert live_markup(html) == []
    assert "alert" not in html


def test_a_callout_kind_cannot_carry_attributes() -> None:
    html = render_markdown('!!! note" onclick="alert(1)\n    Body')
    assert live_markup(html) == []
    assert "admonition" not in html


def test_the_inertness_check_itself_catches_live_markup() -> None:
    assert live_markup('<p onclick="x">a</p><script>x</script><a href=" java\tscript:x">y</a>') == [
        "<p onclick=>",
        "<script>",
        "<a href=' java\\tscript:x'>",
    ]
    assert live_markup("<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>") == []


def test_markdown_features_render() -> None:
    html = render_markdown("# Title\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n[docs](https://example.com)")
    assert "<h1>Title</h1>" in html
    assert "<table>" in html and "<td>1</td>" in html
    assert 'href="https://example.com"' in html and 'rel="noopener noreferrer"' in html


def test_code_blocks_are_highlighted_with_token_classes() -> None:
    html = render_markdown("```python\ndef area(r):\n    return 3.14 * r ** 2  # in m²\n```")
    assert html.startswith('<div class="highlight"><pre>')
    assert '<span class="k">def</span>' in html
    assert '<span class="nf">area</span>' in html
    assert '<span class="c1"># in m²</span>' in html
    assert "style=" not in html


def test_highlighted_lines_are_marked() -> None:
    html = render_markdown('```python hl_lines="2"\nx = 1\ny = 2\n```')
    assert re.search(r'<span class="hll">.*y</span>', html)
    assert html.count('class="hll"') == 1


def test_code_without_a_known_language_is_plain_text() -> None:
    html = render_markdown("```\n<b>bold?</b> & more\n```\n\n```no-such-language\nplain\n```")
    assert "<b>" not in html
    assert "<b>bold?</b> & more" in text_of(html)
    assert "plain" in text_of(html)


def test_a_code_block_shows_html_as_text() -> None:
    html = render_markdown('```html\n<script>alert("hi")</script>\n```')
    assert '<script>alert("hi")</script>' in text_of(html)
    assert live_markup(html) == []


@pytest.mark.parametrize("kind", ["note", "warning", "tip"])
def test_each_callout_kind_renders_with_its_class_and_title(kind: str) -> None:
    html = render_markdown(f'!!! {kind} "Mind the *gap*"\n    Stand **behind** the line.')
    assert f'<div class="admonition {kind}">' in html
    assert '<p class="admonition-title">Mind the <em>gap</em></p>' in html
    assert "<p>Stand <strong>behind</strong> the line.</p>" in html


def test_a_callout_without_a_title_is_titled_by_its_kind() -> None:
    html = render_markdown("!!! tip\n    Use the hints.")
    assert '<p class="admonition-title">Tip</p>' in html


def test_an_unknown_callout_kind_renders_as_a_plain_callout() -> None:
    html = render_markdown("!!! danger\n    Careful.")
    assert '<div class="admonition">' in html
    assert "danger" not in html.split(">", 1)[0]


def test_a_mermaid_block_is_kept_as_escaped_source_for_the_browser() -> None:
    html = render_markdown('```mermaid\ngraph LR\n    a["x & <y>"] --> b\n```')
    assert html == '<pre class="mermaid">graph LR\n    a["x &amp; &lt;y&gt;"] --&gt; b</pre>'


def test_author_classes_are_dropped() -> None:
    """Only the classes the features produce survive: an attribute list cannot make a paragraph
    look like a diagram, a callout or highlighted code."""
    html = render_markdown("A paragraph\n{: .mermaid .admonition .highlight .btn }\n\n<span class='k btn'>x</span>")
    assert "mermaid" not in html and "admonition" not in html and "highlight" not in html and "btn" not in html
    assert '<span class="k">x</span>' in html


def test_every_token_class_the_stylesheet_colours_survives_sanitising() -> None:
    css = (ROOT / "static/css/highlight.css").read_text()
    classes = set(re.findall(r"^\.highlight \.([\w-]+) \{", css, re.MULTILINE))
    assert {"k", "nf", "s", "c1", "hll"} <= classes
    for name in classes:
        assert f'<span class="{name}">' in render_markdown(f'<span class="{name}">x</span>'), name


def test_the_committed_highlight_stylesheet_is_what_pygments_generates() -> None:
    committed = (ROOT / "static/css/highlight.css").read_text()
    assert committed == highlight_css(), f"static/css/highlight.css is stale; regenerate it: {HIGHLIGHT_CSS_COMMAND}"
