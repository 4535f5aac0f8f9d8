"""The cohort dashboard in a real browser, beside a learner at work: the demo instructor follows
the Demo cohort while the demo learner, in another browser context, launches the first lesson's
lab (it shows up under "Running now") and answers its question (the matrix cell turns, without a
reload); then the instructor watches the lab read-only and stops it, and the learner's page shows
it stopped. Screenshots go to artifacts/dashboard/."""

from __future__ import annotations

import re
import shutil

import pytest

from tests.e2e.conftest import ROOT

pytestmark = [pytest.mark.browser, pytest.mark.docker]

SHOTS = ROOT / "artifacts" / "dashboard"
PASSWORD = "stacklab-demo"
READY_WITHIN = 90_000  # ms: provisioning the lab
LIVE_WITHIN = 10_000  # ms: a change on the learner's side showing on the instructor's page


@pytest.fixture
def contexts(browser, stacklab: str):  # noqa: ANN001, ANN201
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    opened = [browser.new_context(viewport={"width": 1440, "height": 1000}, base_url=stacklab) for _ in range(2)]
    yield opened
    for context in opened:
        context.close()


def log_in(context, username: str):  # noqa: ANN001, ANN201
    page = context.new_page()
    page.goto("/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/$"), timeout=10_000)
    return page


def shot(page, name: str) -> None:  # noqa: ANN001
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def state_is(page, state: str, timeout: int) -> None:  # noqa: ANN001
    page.wait_for_function(
        f"document.querySelector('[data-field=state]').textContent.trim() === '{state}'", timeout=timeout
    )


def test_instructor_follows_a_learner_live_watches_the_lab_and_stops_it(contexts) -> None:  # noqa: ANN001
    instructor_context, learner_context = contexts
    teacher = log_in(instructor_context, "instructor")
    teacher.goto("/teaching/")
    cohort_id = teacher.locator("tr[data-cohort]", has_text="Demo cohort").get_attribute("data-cohort")
    dashboard = f"/teaching/{cohort_id}/dashboard/"
    teacher.goto(dashboard)
    teacher.wait_for_function("document.querySelector('[data-connection]').textContent === 'live'", timeout=5_000)
    teacher.evaluate("window.notReloaded = true")  # gone if anything below reloads the page
    cell = teacher.locator("tr[data-learner]", has_text="learner").locator("td[data-lesson=load-balancing]")
    assert "why-it-failed" not in (cell.get_attribute("data-met") or "")
    shot(teacher, "01-dashboard")

    learner = log_in(learner_context, "learner")
    learner.goto("/lessons/load-balancing/")
    learner.click("[data-action=launch]")

    running = teacher.locator("[data-running] tr[data-lab]", has_text="learner")
    running.wait_for(timeout=LIVE_WITHIN)
    assert "Load balancing" in running.inner_text()
    teacher.wait_for_selector(
        "tr[data-learner] td[data-lesson=load-balancing][data-status=in_progress]", timeout=LIVE_WITHIN
    )
    shot(teacher, "02-lab-running")

    state_is(learner, "ready", READY_WITHIN)
    teacher.wait_for_selector("[data-running] tr[data-lab] td.state-ready", timeout=LIVE_WITHIN)
    question = learner.locator("[data-objective=why-it-failed]")
    question.get_by_label(re.compile("^HAProxy kept sending app-2 its share")).check()
    question.get_by_role("button", name="Answer").click()
    learner.wait_for_selector("[data-objective=why-it-failed].met", timeout=LIVE_WITHIN)

    teacher.wait_for_selector("td[data-lesson=load-balancing][data-met~=why-it-failed]", timeout=LIVE_WITHIN)
    assert re.search(r"✓ Explain the failures: met \d{4}-\d\d-\d\d \d\d:\d\d", cell.get_attribute("title"))
    assert teacher.evaluate("window.notReloaded === true"), "the dashboard reloaded instead of updating live"
    shot(teacher, "03-objective-met")

    # Watch: the learner's lab, live and read-only.
    running.get_by_role("link", name="Watch").click()
    teacher.wait_for_selector("#lab-panel[data-read-only=true][data-live=true]", timeout=LIVE_WITHIN)
    state_is(teacher, "ready", LIVE_WITHIN)
    teacher.wait_for_selector("#topology [data-node=lb]", timeout=LIVE_WITHIN)
    teacher.wait_for_selector("[data-objective=why-it-failed].met", timeout=LIVE_WITHIN)
    teacher.wait_for_selector("[data-timeline] li", timeout=LIVE_WITHIN)
    for control in ("[data-action=launch]", "[data-action=break]", "[data-fault]", "[data-action=hint]"):
        assert teacher.locator(control).count() == 0, control
    assert teacher.locator("[data-terminal-open]").count() == 0
    assert teacher.locator("[data-objective=why-it-failed] form").count() == 0  # no answering for them
    shot(teacher, "04-watching")

    # Stop it from the dashboard; the learner's page follows.
    teacher.goto(dashboard)
    teacher.once("dialog", lambda dialog: dialog.accept())
    teacher.locator("[data-running] tr[data-lab]", has_text="learner").get_by_role("button", name="Stop").click()
    teacher.wait_for_selector(".messages >> text=Stopping learner's lab", timeout=LIVE_WITHIN)
    state_is(learner, "stopped", 60_000)
    learner.wait_for_selector("[data-timeline] li:has-text('Stopped by your instructor (instructor).')", timeout=5_000)
    teacher.wait_for_selector("[data-running] tr.empty", timeout=LIVE_WITHIN)
    shot(teacher, "05-stopped")
    shot(learner, "05-learner-stopped")
