"""The lab page in a real browser (Debian's Chromium, driven by Playwright), as a learner uses
it: log in, open the first lesson, launch the lab, kill a replica from the fault panel, watch the
node go down and the errors rise, open a terminal on the load balancer, type the fix, and watch
the objective turn green. Screenshots of each step go to artifacts/browser/."""

from __future__ import annotations

import re
import shutil

import pytest

from tests.e2e.conftest import ROOT

pytestmark = [pytest.mark.browser, pytest.mark.docker]

SHOTS = ROOT / "artifacts" / "browser"
# What a learner types in the load balancer's terminal: turn on HTTP health checks (and retry a
# request caught on a dying replica elsewhere), then reload HAProxy.
FIX = (
    r"sed -i 's/^    balance roundrobin$/    balance roundrobin\n    option httpchk GET \/healthz\n"
    r"    default-server check inter 500ms fall 1 rise 2\n    option redispatch\n    retries 2/' "
    r"/etc/haproxy/haproxy.cfg && haproxy-reload"
)


@pytest.fixture
def page(browser, stacklab: str):  # noqa: ANN001, ANN201
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    context = browser.new_context(viewport={"width": 1440, "height": 1000}, base_url=stacklab)
    page = context.new_page()
    page.clock.install()  # real time flows; a test may jump it forward
    yield page
    context.close()


def shot(page, name: str) -> None:  # noqa: ANN001
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def error_rate(page) -> float:  # noqa: ANN001
    text = page.locator("[data-metric=error_rate]").inner_text()
    match = re.search(r"[\d.]+", text)
    return float(match.group()) if match else 0.0


def test_learner_kills_a_replica_and_fixes_the_load_balancer_in_the_browser(page) -> None:  # noqa: ANN001
    # The instructor demo account is also a learner; the smoke test uses the learner account.
    page.goto("/accounts/login/")
    page.fill("#id_username", "instructor")
    page.fill("#id_password", "stacklab-demo")
    page.click("button[type=submit]")
    page.goto("/lessons/load-balancing/")
    shot(page, "01-lesson")

    page.click("[data-action=launch]")
    page.wait_for_function(
        "document.querySelector('[data-field=state]').textContent.trim() === 'ready'", timeout=180_000
    )
    page.wait_for_selector("[data-objective=traffic-flows].met", timeout=60_000)
    shot(page, "02-ready")

    # 26 minutes without touching anything: the page warns of the idle stop; "still here" clears it.
    page.clock.fast_forward("26:00")
    page.wait_for_selector("[data-idle-warning]:not([hidden])", timeout=5_000)
    assert "this lab stops in" in page.locator("[data-idle-left]").inner_text()
    shot(page, "02b-idle-warning")
    page.click("[data-action=still-here]")
    page.wait_for_selector("[data-idle-warning][hidden]", state="attached", timeout=5_000)

    page.click("[data-fault=kill-app-2]")
    page.wait_for_selector("tr[data-node=app-2].state-down", timeout=15_000)
    page.wait_for_selector("#topology [data-node=app-2][data-state=down]", timeout=5_000)
    page.wait_for_function(
        "parseFloat(document.querySelector('[data-metric=error_rate]').textContent) > 10", timeout=15_000
    )
    page.wait_for_selector("[data-objective=survives-replica-loss].failing", timeout=20_000)
    page.wait_for_selector("[data-timeline] li:has-text('Kill replica app-2')", timeout=5_000)
    assert error_rate(page) > 10
    shot(page, "03-replica-down")

    page.click("[data-terminal-open=lb]")
    terminal = page.locator(".terminal[data-node=lb]")
    terminal.locator(".xterm").wait_for(timeout=15_000)
    terminal.locator(".xterm").click()
    page.wait_for_function(
        "document.querySelector('.terminal[data-node=lb] .xterm-rows').textContent.includes('$')", timeout=15_000
    )
    page.keyboard.type(FIX)
    page.keyboard.press("Enter")
    page.wait_for_function(
        "document.querySelector('.terminal[data-node=lb] .xterm-rows').textContent.includes('configuration valid')",
        timeout=15_000,
    )
    shot(page, "04-fix-typed")

    page.wait_for_selector("[data-objective=survives-replica-loss].met", timeout=90_000)
    page.wait_for_selector("[data-objective=health-checked].met", timeout=10_000)
    assert error_rate(page) < 1
    shot(page, "05-objective-met")

    # The question: a wrong pick is refused (try again), the right one is met and explained.
    question = page.locator("[data-objective=why-it-failed]")
    question.get_by_label("PostgreSQL refused new connections once a replica was gone").check()
    question.get_by_role("button", name="Answer").click()
    page.wait_for_selector("[data-objective=why-it-failed].failing", timeout=10_000)
    assert "Not quite" in question.locator(".reason").inner_text()
    question.get_by_label(re.compile("^HAProxy kept sending app-2 its share")).check()
    question.get_by_role("button", name="Answer").click()
    page.wait_for_selector("[data-objective=why-it-failed].met", timeout=10_000)
    assert "Round robin gives every server its turn" in question.locator(".explanation").inner_text()
    shot(page, "05b-question-answered")

    # A reload catches up from the lab's current state: same timeline (no duplicates), app-2 still
    # down, the objective still met, and the charts redrawn from the recent figures.
    ids_before = page.eval_on_selector_all("[data-timeline] li", "items => items.map(li => li.dataset.id)")
    page.reload()
    page.wait_for_function(
        "document.querySelector('[data-field=state]').textContent.trim() === 'ready'", timeout=15_000
    )
    page.wait_for_selector("[data-objective=survives-replica-loss].met", timeout=10_000)
    page.wait_for_selector("[data-objective=why-it-failed].met .explanation:not([hidden])", timeout=10_000)
    page.wait_for_selector("tr[data-node=app-2].state-down", timeout=10_000)
    page.wait_for_function(
        f"document.querySelectorAll('[data-timeline] li').length >= {len(ids_before)}", timeout=10_000
    )
    ids_after = page.eval_on_selector_all("[data-timeline] li", "items => items.map(li => li.dataset.id)")
    assert set(ids_before) <= set(ids_after)
    assert len(ids_after) == len(set(ids_after)), "a timeline entry is shown twice"
    assert page.locator("[data-charts] canvas").count() >= 4, "charts not redrawn from the snapshot"
    shot(page, "05b-reloaded")
    # Terminals do not survive a reload; open the load balancer's again.
    page.click("[data-terminal-open=lb]")
    page.locator(".terminal[data-node=lb] .xterm").wait_for(timeout=15_000)

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("[data-action=stop]")
    page.wait_for_function(
        "document.querySelector('[data-field=state]').textContent.trim() === 'stopped'", timeout=60_000
    )
    page.wait_for_selector(".terminal[data-node=lb] >> text=/lab is stopped/i", timeout=10_000)
    shot(page, "06-stopped")
