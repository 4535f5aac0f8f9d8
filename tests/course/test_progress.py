"""The learner's progress page (each lesson done, skipped, in progress, not started, locked or
reading; objectives passed and when; time in labs; cohorts with their quotas and hours), and the
progress API the instructor's dashboard renders (`course.progress`)."""

from __future__ import annotations

import html
import re
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.http import HttpResponse
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from course import progress
from course.content import load_content
from course.models import Cohort, Course, Enrolment, LessonUnlock
from sandbox.models import Lab, ObjectiveResult
from sandbox.specs import load_lab

from .conftest import ContentDirs

pytestmark = pytest.mark.usefixtures("course_content")

LB, LB_LAB = "load-balancing", "scaling-load-balancer"
CACHE, CACHE_LAB = "cache-aside", "cache-aside"


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def page_of(user: User) -> HttpResponse:
    response = logged_in(user).get("/progress/")
    assert response.status_code == 200
    return response


def statuses(response: HttpResponse) -> dict[str, str]:
    return dict(re.findall(r'data-lesson="([^"]+)" data-status="([^"]+)"', response.content.decode()))


def text_of(response: HttpResponse) -> str:
    """The page's text as a reader sees it: tags gone, entities decoded, spaces collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", response.content.decode())).split())


def objectives_of(lab_slug: str) -> list[str]:
    return [objective.key for objective in load_lab(lab_slug).spec.objectives]


def finished_lab(owner: User, lesson: str, lab_slug: str, *, hours: float = 1.0, skipped: bool = False) -> Lab:
    """A lab that ran `hours` and stopped ten minutes ago (after Skip, if `skipped`)."""
    stopped = timezone.now() - timedelta(minutes=10)
    ready = stopped - timedelta(hours=hours)
    return Lab.objects.create(
        owner=owner,
        lab_slug=lab_slug,
        lesson_slug=lesson,
        state=Lab.State.STOPPED,
        ready_at=ready,
        stopped_at=stopped,
        skipped_at=ready + timedelta(minutes=5) if skipped else None,
    )


def meet(lab: Lab, keys: list[str], at: datetime | None = None) -> None:
    """Objectives first met in `lab` (just before it stopped, after any Skip)."""
    assert lab.stopped_at is not None
    for key in keys:
        ObjectiveResult.objects.create(
            lab=lab,
            key=key,
            status=ObjectiveResult.Status.MET,
            first_met_at=at or lab.stopped_at - timedelta(minutes=1),
        )


# -- the page ---------------------------------------------------------------------------------


def test_progress_needs_a_login() -> None:
    response = Client().get("/progress/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_a_lesson_with_every_objective_met_on_your_own_is_done(learner: User) -> None:
    lab = finished_lab(learner, LB, LB_LAB)
    met_at = timezone.now() - timedelta(minutes=30)
    meet(lab, objectives_of(LB_LAB), at=met_at)
    page = page_of(learner)
    assert statuses(page) == {LB: "done", CACHE: "not_started"}
    text = text_of(page)
    assert "Done · 4/4" in text
    assert f"Requests succeed through the load balancer first met {timezone.localtime(met_at):%Y-%m-%d %H:%M}" in text
    assert "Not started" in text


def test_objectives_met_only_after_skip_make_the_lesson_skipped(learner: User) -> None:
    meet(finished_lab(learner, CACHE, CACHE_LAB, skipped=True), objectives_of(CACHE_LAB))
    page = page_of(learner)
    assert statuses(page)[CACHE] == "skipped"
    assert "met after Skip (solution run for you)" in text_of(page)


def test_a_lab_launched_with_some_objectives_met_is_in_progress(learner: User) -> None:
    meet(finished_lab(learner, LB, LB_LAB), ["traffic-flows"])
    Lab.objects.create(owner=learner, lab_slug=CACHE_LAB, lesson_slug=CACHE, state=Lab.State.READY)
    page = page_of(learner)
    assert statuses(page) == {LB: "in_progress", CACHE: "in_progress"}
    text = text_of(page)
    assert "In progress · 1/4" in text
    assert "No failed requests while a replica is down not yet met" in text


def test_an_objective_met_on_your_own_counts_even_after_a_later_skip(learner: User) -> None:
    keys = objectives_of(LB_LAB)
    meet(finished_lab(learner, LB, LB_LAB, hours=3), keys[:1])
    meet(finished_lab(learner, LB, LB_LAB, skipped=True), keys)
    cells = {cell.lesson.slug: cell for cell in progress.learner_progress(learner)}
    assert cells[LB].status == progress.Status.SKIPPED
    assert [objective.is_skipped for objective in cells[LB].objectives] == [False] + [True] * (len(keys) - 1)
    assert cells[LB].passed == 1


def test_a_lesson_the_schedule_has_not_opened_is_locked_with_its_date(learner: User) -> None:
    cohort = Cohort.objects.create(name="Spring cohort", course=Course.objects.get())
    Enrolment.objects.create(cohort=cohort, learner=learner)
    opens = timezone.now() + timedelta(days=3)
    LessonUnlock.objects.create(cohort=cohort, lesson_slug=CACHE, unlocks_at=opens)
    page = page_of(learner)
    assert statuses(page) == {LB: "not_started", CACHE: "locked"}
    assert 'href="/lessons/cache-aside/"' not in page.content.decode()
    assert "opens" in text_of(page)


def test_a_lesson_without_a_lab_is_reading(learner: User, content_dirs: ContentDirs) -> None:
    (content_dirs.lessons / "scaling" / "capacity.md").write_text(
        "---\ntitle: Capacity planning\nmodule: scaling\norder: 2\n---\n\nHow many replicas?\n"
    )
    assert load_content().is_valid
    page = page_of(learner)
    assert statuses(page)["capacity"] == "reading"
    assert "Capacity planning · Scaling Reading: no lab." in text_of(page)


def test_time_in_labs_and_the_hours_each_cohort_allows(learner: User) -> None:
    cohort = Cohort.objects.create(name="Spring cohort", course=Course.objects.get(), max_labs_running=None)
    Enrolment.objects.create(cohort=cohort, learner=learner)
    Enrolment.objects.filter(learner=learner).update(joined_at=timezone.now() - timedelta(hours=3))
    finished_lab(learner, LB, LB_LAB, hours=1.5)  # in the cohort's time
    old = finished_lab(learner, CACHE, CACHE_LAB, hours=1)  # before joining: counts in the total only
    Lab.objects.filter(pk=old.pk).update(
        ready_at=old.ready_at - timedelta(days=2), created_at=old.ready_at - timedelta(days=2)
    )
    Lab.objects.filter(pk=old.pk).update(stopped_at=old.ready_at - timedelta(days=2) + timedelta(hours=1))
    text = text_of(page_of(learner))
    assert "Time in labs: 2 h 30 min" in text
    # Cohort, joined, your labs at once, the cohort's labs at once, hours used of the quota, hours left.
    assert (
        f"Spring cohort {timezone.localdate(timezone.now() - timedelta(hours=3)):%Y-%m-%d} 1 no limit 1.5 of 20.0 18.5"
        in text
    )


def test_without_a_cohort_the_page_offers_to_join_one(learner: User) -> None:
    text = text_of(page_of(learner))
    assert "Time in labs: 0 h 00 min" in text
    assert "You are not in a cohort. Got an invite? Join a cohort" in text


def test_the_page_shows_only_your_own_progress(learner: User, make_user) -> None:  # noqa: ANN001
    other = make_user("grace")
    meet(finished_lab(other, LB, LB_LAB, hours=2), objectives_of(LB_LAB))
    page = page_of(learner)
    assert statuses(page) == {LB: "not_started", CACHE: "not_started"}
    assert "first met" not in text_of(page)
    assert "Time in labs: 0 h 00 min" in text_of(page)


# -- the API the dashboard renders ------------------------------------------------------------


def test_cohort_matrix_has_every_learner_by_every_lesson_in_a_fixed_number_of_queries(make_user) -> None:  # noqa: ANN001
    cohort = Cohort.objects.create(name="Spring cohort", course=Course.objects.get())
    ada, grace = make_user("ada"), make_user("grace")
    for user in (grace, ada):
        Enrolment.objects.create(cohort=cohort, learner=user)
    meet(finished_lab(ada, LB, LB_LAB), objectives_of(LB_LAB))
    LessonUnlock.objects.create(cohort=cohort, lesson_slug=CACHE, unlocks_at=timezone.now() + timedelta(days=1))
    stranger = make_user("stranger")
    meet(finished_lab(stranger, CACHE, CACHE_LAB), objectives_of(CACHE_LAB))

    with CaptureQueriesContext(connection) as two:
        matrix = progress.cohort_matrix(cohort)
    assert [lesson.slug for lesson in matrix.lessons] == [LB, CACHE]
    assert [row.learner.username for row in matrix.learners] == ["ada", "grace"]
    grid = [[cell.status.value for cell in row.lessons] for row in matrix.learners]
    assert grid == [["done", "locked"], ["not_started", "locked"]]
    assert matrix.learners[0].lessons[0].passed == len(objectives_of(LB_LAB))
    assert matrix.learners[0].lessons[1].opens_at is not None

    for name in ("linus", "barbara", "edsger"):
        learner = make_user(name)
        Enrolment.objects.create(cohort=cohort, learner=learner)
        meet(finished_lab(learner, LB, LB_LAB), ["traffic-flows"])
    with CaptureQueriesContext(connection) as five:
        assert len(progress.cohort_matrix(cohort).learners) == 5
    assert len(five) == len(two) <= 7


def test_learner_progress_never_locks_lessons_for_instructors(make_user) -> None:  # noqa: ANN001
    teacher = make_user("teacher", instructor=True)
    cohort = Cohort.objects.create(name="Spring cohort", course=Course.objects.get())
    Enrolment.objects.create(cohort=cohort, learner=teacher)
    LessonUnlock.objects.create(cohort=cohort, lesson_slug=CACHE, unlocks_at=timezone.now() + timedelta(days=1))
    cells = progress.learner_progress(teacher)
    assert [(cell.lesson.slug, cell.status.value, cell.opens_at) for cell in cells] == [
        (LB, "not_started", None),
        (CACHE, "not_started", None),
    ]


def test_lab_hours_left_is_never_negative(learner: User) -> None:
    cohort = Cohort.objects.create(
        name="Spring cohort", course=Course.objects.get(), lab_hours_per_learner=Decimal("1")
    )
    Enrolment.objects.create(cohort=cohort, learner=learner)
    Enrolment.objects.filter(learner=learner).update(joined_at=timezone.now() - timedelta(hours=5))
    finished_lab(learner, LB, LB_LAB, hours=2)
    text = text_of(page_of(learner))
    assert "2.0 of 1.0 0.0" in text
