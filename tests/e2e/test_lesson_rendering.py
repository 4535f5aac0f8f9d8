"""A lesson's text in a real browser (Debian's Chromium, driven by Playwright): its Mermaid diagram
is drawn as an SVG, its code is coloured by the highlighter's stylesheet, and its callouts show.
No lab is launched."""

from __future__ import annotations

import pytest

# The `stacklab` fixture (a `make run` for the session) needs the Docker engine and lab images.
pytestmark = [pytest.mark.browser, pytest.mark.docker]


@pytest.fixture
def page(browser, stacklab: str):  # noqa: ANN001, ANN201
    context = browser.new_context(viewport={"width": 1440, "height": 1000}, base_url=stacklab)
    page = context.new_page()
    # Uncaught exceptions and console errors (diagrams.js reports a diagram it could not draw).
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    def console(message) -> None:  # noqa: ANN001
        if message.type == "error":
            errors.append(f"{message.text} ({message.location.get('url')})")

    page.on("console", console)
    yield page
    context.close()
    assert errors == [], "the lesson page logged errors"


def color(locator) -> str:  # noqa: ANN001
    return locator.evaluate("element => getComputedStyle(element).color")


def test_a_lesson_shows_its_diagram_highlighted_code_and_callouts(page) -> None:  # noqa: ANN001
    from playwright.sync_api import expect

    page.goto("/accounts/login/")
    page.fill("#id_username", "learner")
    page.fill("#id_password", "stacklab-demo")
    page.click("button[type=submit]")
    page.goto("/lessons/load-balancing/")

    # The topology diagram: traffic, lb, three replicas, cache and db, drawn by mermaid.
    diagram = page.locator(".lesson pre.mermaid")
    expect(diagram.locator("svg g.node")).to_have_count(7, timeout=15_000)
    labels = diagram.locator("svg").text_content() or ""
    assert all(name in labels for name in ("traffic", "lb", "app-1", "app-2", "app-3", "cache", "db"))
    assert "flowchart LR" not in diagram.inner_text(), "the diagram's source is still shown"

    # The HAProxy configuration: tokens coloured by highlight.css, the lines to add marked.
    code = page.locator(".lesson .highlight pre").first
    keyword = code.locator("span.nb").first
    assert keyword.inner_text() == "backend"
    assert color(keyword) != color(code)
    added = code.locator("span.hll")
    assert added.count() == 4
    assert added.first.evaluate("e => getComputedStyle(e).backgroundColor") != "rgba(0, 0, 0, 0)"

    # Callouts: visible, titled, and told apart by colour.
    tip = page.locator(".lesson .admonition.tip")
    note = page.locator(".lesson .admonition.note")
    assert tip.is_visible() and note.is_visible()
    assert tip.locator(".admonition-title").inner_text() == "A typo cannot take the load balancer down"
    assert note.locator(".admonition-title").inner_text() == "Why a third?"
    border = "e => getComputedStyle(e).borderLeftColor"
    assert tip.evaluate(border) != note.evaluate(border)
