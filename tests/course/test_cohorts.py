"""Cohorts: enrolment by invite (valid, expired, used up, wrong domain), the schedule of lesson
unlocks, launch quotas (refused with which quota and when it frees, and nothing started), the
launch rate limit, and who may watch whose lab."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from unittest import mock

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from course import cohorts, verification
from course.models import Cohort, Course, Enrolment, Invite, LessonUnlock
from course.tasks import stop_labs_over_hours
from sandbox import lifecycle
from sandbox.models import Lab

pytestmark = pytest.mark.usefixtures("course_content")

LESSON = "load-balancing"
OTHER_LESSON = "cache-aside"


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def cohort(make_user) -> Cohort:  # noqa: ANN001
    teacher = make_user("teacher", instructor=True)
    cohort = Cohort.objects.create(name="Spring cohort", course=Course.objects.get())
    cohort.instructors.add(teacher)
    return cohort


def learner_in(cohort: Cohort, username: str, email: str = "") -> User:
    user = User.objects.create_user(username=username, password="pw", email=email)
    Enrolment.objects.create(cohort=cohort, learner=user)
    return user


def launch(user: User, lesson: str = LESSON):  # noqa: ANN201
    return logged_in(user).post(f"/api/lessons/{lesson}/lab")


def running_lab(owner: User, lesson: str = LESSON, **fields: object) -> Lab:
    now = timezone.now()
    defaults = {"state": Lab.State.READY, "ready_at": now, "expires_at": now + timedelta(minutes=60)}
    fields = {**defaults, **fields}
    return Lab.objects.create(owner=owner, lab_slug="scaling-load-balancer", lesson_slug=lesson, **fields)


# -- invites ----------------------------------------------------------------------------------


def test_an_invite_enrols_its_user_once(cohort: Cohort, learner: User) -> None:
    invite = cohorts.create_invite(cohort, max_uses=5)
    enrolment = cohorts.enrol_with_invite(learner, invite.code)
    assert (enrolment.cohort, enrolment.learner, enrolment.invite) == (cohort, learner, invite)
    assert cohorts.enrol_with_invite(learner, invite.code) == enrolment  # again: same, no use spent
    invite.refresh_from_db()
    assert invite.uses == 1
    assert len(invite.code) >= 12


def test_an_expired_invite_is_refused(cohort: Cohort, learner: User) -> None:
    invite = cohorts.create_invite(cohort, expires_at=timezone.now() - timedelta(minutes=1))
    with pytest.raises(cohorts.EnrolmentError, match="This invite expired on .*Ask your instructor for a new one"):
        cohorts.enrol_with_invite(learner, invite.code)
    assert not Enrolment.objects.exists()


def test_an_invite_used_up_is_refused_and_enrols_nobody_more(cohort: Cohort, make_user) -> None:  # noqa: ANN001
    invite = cohorts.create_invite(cohort, max_uses=2)
    first, second, third = (make_user(name) for name in ("ada", "grace", "linus"))
    cohorts.enrol_with_invite(first, invite.code)
    cohorts.enrol_with_invite(second, invite.code)
    with pytest.raises(cohorts.EnrolmentError, match="used as many times as it allows"):
        cohorts.enrol_with_invite(third, invite.code)
    assert set(Enrolment.objects.values_list("learner__username", flat=True)) == {"ada", "grace"}
    invite.refresh_from_db()
    assert invite.uses == 2


def test_an_invite_for_some_domains_checks_the_email(cohort: Cohort) -> None:
    invite = cohorts.create_invite(cohort, allowed_domains=["Uni.example", "@school.example"])
    assert invite.allowed_domains == ["school.example", "uni.example"]
    outsider = User.objects.create_user("out", email="out@gmail.example")
    with pytest.raises(cohorts.EnrolmentError, match="for e-mail addresses at @school.example, @uni.example"):
        cohorts.enrol_with_invite(outsider, invite.code)
    insider = User.objects.create_user("in", email="In@UNI.example")
    verification.mark_verified(insider)  # an unconfirmed address is refused: tests/course/test_verification.py
    assert cohorts.enrol_with_invite(insider, invite.code).cohort == cohort


@pytest.mark.parametrize("code", ["nope", ""])
def test_an_unknown_or_withdrawn_code_is_refused(cohort: Cohort, learner: User, code: str) -> None:
    with pytest.raises(cohorts.EnrolmentError, match="not valid"):
        cohorts.enrol_with_invite(learner, code)
    withdrawn = cohorts.create_invite(cohort)
    Invite.objects.filter(pk=withdrawn.pk).update(is_active=False)
    with pytest.raises(cohorts.EnrolmentError, match="not valid"):
        cohorts.enrol_with_invite(learner, withdrawn.code)


# -- schedule ---------------------------------------------------------------------------------


def test_a_scheduled_lesson_is_locked_until_its_date(cohort: Cohort, django_capture_on_commit_callbacks) -> None:  # noqa: ANN001
    ada = learner_in(cohort, "ada")
    opens = timezone.now() + timedelta(days=2)
    LessonUnlock.objects.create(cohort=cohort, lesson_slug=LESSON, unlocks_at=opens)
    client = logged_in(ada)
    index = client.get("/").content.decode()
    assert f'data-locked="{LESSON}"' in index and f'href="/lessons/{LESSON}/"' not in index
    page = client.get(f"/lessons/{LESSON}/")
    assert page.status_code == 403
    assert "This lesson opens on" in page.content.decode()
    with django_capture_on_commit_callbacks() as queued:
        refused = client.post(f"/api/lessons/{LESSON}/lab")
    assert refused.status_code == 403
    assert refused.json()["error"].startswith("This lesson opens on")
    assert not Lab.objects.exists() and queued == []


def test_a_lesson_opens_on_its_date(cohort: Cohort) -> None:
    ada = learner_in(cohort, "ada")
    LessonUnlock.objects.create(cohort=cohort, lesson_slug=LESSON, unlocks_at=timezone.now() - timedelta(minutes=1))
    assert logged_in(ada).get(f"/lessons/{LESSON}/").status_code == 200


def test_a_lesson_is_open_if_any_cohort_of_the_learner_has_no_date_for_it(cohort: Cohort) -> None:
    ada = learner_in(cohort, "ada")
    LessonUnlock.objects.create(cohort=cohort, lesson_slug=LESSON, unlocks_at=timezone.now() + timedelta(days=2))
    other = Cohort.objects.create(name="Self-paced", course=cohort.course)
    Enrolment.objects.create(cohort=other, learner=ada)
    assert cohorts.opens_at(ada, LESSON) is None


def test_instructors_see_scheduled_lessons(cohort: Cohort) -> None:
    LessonUnlock.objects.create(cohort=cohort, lesson_slug=LESSON, unlocks_at=timezone.now() + timedelta(days=2))
    teacher = cohort.instructors.get()
    assert logged_in(teacher).get(f"/lessons/{LESSON}/").status_code == 200


# -- quotas -----------------------------------------------------------------------------------


def test_a_second_lab_over_the_learner_quota_is_refused_and_nothing_starts(
    cohort: Cohort, django_capture_on_commit_callbacks
) -> None:  # noqa: ANN001
    ada = learner_in(cohort, "ada")
    first = running_lab(ada)
    with django_capture_on_commit_callbacks() as queued:
        refused = launch(ada, OTHER_LESSON)
    assert refused.status_code == 409
    body = refused.json()
    assert (body["quota"], body["cohort"]) == ("labs_per_learner", "Spring cohort")
    assert body["error"].startswith("You already have 1 lab(s) running, the most Spring cohort allows at once (1).")
    assert "One frees when you stop a lab, or at " in body["error"]
    assert list(Lab.objects.all()) == [first] and queued == []


def test_launching_the_same_lesson_again_returns_the_running_lab_even_at_the_quota(cohort: Cohort) -> None:
    ada = learner_in(cohort, "ada")
    lab = running_lab(ada)
    again = launch(ada)
    assert again.status_code == 200
    assert again.json()["id"] == str(lab.id)


def test_the_cohort_wide_quota_counts_every_learners_labs(cohort: Cohort, django_capture_on_commit_callbacks) -> None:  # noqa: ANN001
    Cohort.objects.filter(pk=cohort.pk).update(max_labs_running=2, max_labs_per_learner=3)
    ada, grace, linus = (learner_in(cohort, name) for name in ("ada", "grace", "linus"))
    running_lab(ada)
    running_lab(grace, expires_at=timezone.now() + timedelta(minutes=5))
    with django_capture_on_commit_callbacks() as queued:
        refused = launch(linus)
    assert refused.status_code == 409
    assert refused.json()["quota"] == "labs_running"
    assert "Spring cohort already has 2 labs running, as many as it allows at once (2)." in refused.json()["error"]
    assert "The next frees at " in refused.json()["error"]
    assert Lab.objects.filter(owner=linus).count() == 0 and queued == []


def test_lab_hours_used_up_refuse_a_launch(cohort: Cohort) -> None:
    Cohort.objects.filter(pk=cohort.pk).update(lab_hours_per_learner=Decimal("2.0"))
    ada = learner_in(cohort, "ada")
    now = timezone.now()
    Enrolment.objects.filter(learner=ada).update(joined_at=now - timedelta(days=1))
    running_lab(ada, state=Lab.State.STOPPED, ready_at=now - timedelta(hours=3), stopped_at=now - timedelta(hours=1))
    refused = launch(ada, OTHER_LESSON)
    assert refused.status_code == 409
    assert not Lab.objects.filter(owner=ada, lesson_slug=OTHER_LESSON).exists()
    assert refused.json()["quota"] == "lab_hours"
    assert refused.json()["error"] == (
        "You have used 2.0 of your 2.0 lab hours in Spring cohort. They do not renew: ask your instructor for more."
    )


def test_labs_before_joining_do_not_count_against_the_hours(cohort: Cohort, django_capture_on_commit_callbacks) -> None:  # noqa: ANN001
    Cohort.objects.filter(pk=cohort.pk).update(lab_hours_per_learner=Decimal("1.0"))
    ada = User.objects.create_user("ada")
    now = timezone.now()
    running_lab(ada, state=Lab.State.STOPPED, ready_at=now - timedelta(hours=5), stopped_at=now - timedelta(hours=1))
    Enrolment.objects.create(cohort=cohort, learner=ada)
    with django_capture_on_commit_callbacks(execute=False):
        assert launch(ada).status_code == 201


def test_a_learner_without_a_cohort_gets_the_installations_limit(
    learner: User, settings, django_capture_on_commit_callbacks
) -> None:  # noqa: ANN001
    settings.MAX_LABS_PER_LEARNER = 2
    running_lab(learner)
    with django_capture_on_commit_callbacks(execute=False) as queued:
        assert launch(learner, OTHER_LESSON).status_code == 201
    assert len(queued) == 1
    Lab.objects.filter(owner=learner).update(state=Lab.State.READY)
    running_lab(learner, lesson="another-lesson")
    Lab.objects.filter(owner=learner, lesson_slug=OTHER_LESSON).delete()
    with django_capture_on_commit_callbacks() as queued:
        refused = launch(learner, OTHER_LESSON)
    assert refused.status_code == 409
    assert refused.json()["quota"] == "labs_per_learner"
    assert "the most a learner outside a cohort may have at once (2)" in refused.json()["error"]
    assert queued == []


def test_the_installation_caps_running_labs_for_everyone(
    cohort: Cohort, make_user, settings, django_capture_on_commit_callbacks
) -> None:  # noqa: ANN001
    settings.MAX_LABS_RUNNING = 1
    running_lab(make_user("grace"), expires_at=timezone.now() + timedelta(minutes=7))
    ada = learner_in(cohort, "ada")
    with django_capture_on_commit_callbacks() as queued:
        refused = launch(ada)
    assert refused.status_code == 409
    assert refused.json()["quota"] == "site_labs_running"
    assert refused.json()["error"].startswith("Stacklab is running as many labs as it can at once (1).")
    assert "The next frees at " in refused.json()["error"]
    assert not Lab.objects.filter(owner=ada).exists() and queued == []


def test_a_cohort_that_allows_no_labs_says_so(cohort: Cohort) -> None:
    Cohort.objects.filter(pk=cohort.pk).update(max_labs_per_learner=0)
    refused = launch(learner_in(cohort, "ada"))
    assert refused.status_code == 409
    assert refused.json()["error"] == "Spring cohort allows no labs at the moment: ask your instructor."


def test_launches_are_rate_limited_per_user(learner: User, settings, django_capture_on_commit_callbacks) -> None:  # noqa: ANN001
    settings.LAUNCH_RATE_LIMIT = "2/m"
    client = logged_in(learner)
    with django_capture_on_commit_callbacks(execute=False):
        assert client.post(f"/api/lessons/{LESSON}/lab").status_code == 201
        assert client.post(f"/api/lessons/{LESSON}/lab").status_code == 200
        limited = client.post(f"/api/lessons/{LESSON}/lab")
    assert limited.status_code == 429
    assert limited.json() == {"error": "Too many launches in a short time: wait a minute and try again."}
    assert Lab.objects.count() == 1


# -- who may watch ----------------------------------------------------------------------------


def test_an_instructor_watches_only_the_labs_of_their_cohorts(cohort: Cohort, make_user) -> None:  # noqa: ANN001
    ada = learner_in(cohort, "ada")
    stranger = make_user("stranger")
    teacher = cohort.instructors.get()
    other_teacher = make_user("other-teacher", instructor=True, teaching=[stranger])
    staff = User.objects.create_user("root", is_staff=True)
    lab = running_lab(ada)
    assert logged_in(teacher).get(f"/api/labs/{lab.id}/").status_code == 200
    assert logged_in(other_teacher).get(f"/api/labs/{lab.id}/").status_code == 404
    assert logged_in(staff).get(f"/api/labs/{lab.id}/").status_code == 200
    assert logged_in(stranger).get(f"/api/labs/{lab.id}/").status_code == 404
    # Watching is read-only: the instructor cannot stop or break it through the learner's API.
    assert logged_in(teacher).post(f"/api/labs/{lab.id}/stop").status_code == 404


def test_a_reset_does_not_give_back_the_hours_a_lab_ran(cohort: Cohort, fake_engine) -> None:  # noqa: ANN001
    ada = learner_in(cohort, "ada")
    lab = running_lab(ada, ready_at=timezone.now() - timedelta(hours=3))
    lifecycle.reset_lab(str(lab.id), engine_factory=lambda: fake_engine)
    lab.refresh_from_db()
    assert lab.state == Lab.State.READY and lab.ready_at > timezone.now() - timedelta(minutes=1)
    assert cohorts.lab_hours(Lab.objects.filter(pk=lab.pk)) == Decimal("3.0")


def test_an_instructor_does_not_watch_labs_from_before_the_learner_joined(cohort: Cohort) -> None:
    ada = User.objects.create_user("ada")
    earlier = running_lab(ada)
    Enrolment.objects.create(cohort=cohort, learner=ada)
    later = running_lab(ada, lesson=OTHER_LESSON)
    teacher = logged_in(cohort.instructors.get())
    assert teacher.get(f"/api/labs/{earlier.id}/").status_code == 404
    assert teacher.get(f"/api/labs/{later.id}/").status_code == 200


def test_watching_instructors_and_staff_get_no_terminal(cohort: Cohort) -> None:
    # A shell writes to the lab: the dashboard's Watch view is read-only, and so is the server.
    from django.http import Http404

    from sandbox.terminals import terminal_lab

    ada = learner_in(cohort, "ada")
    Enrolment.objects.filter(learner=ada).update(joined_at=timezone.now() - timedelta(days=1))
    lab = running_lab(ada)
    assert terminal_lab(ada, str(lab.id), "lb") == lab
    for watcher in (cohort.instructors.get(), User.objects.create_user("root", is_staff=True)):
        with pytest.raises(Http404):
            terminal_lab(watcher, str(lab.id), "lb")


def test_a_running_lab_is_stopped_once_the_learners_hours_are_used_up(
    cohort: Cohort, django_capture_on_commit_callbacks
) -> None:  # noqa: ANN001
    Cohort.objects.filter(pk=cohort.pk).update(lab_hours_per_learner=Decimal("1.0"))
    ada, grace = learner_in(cohort, "ada"), learner_in(cohort, "grace")
    Enrolment.objects.update(joined_at=timezone.now() - timedelta(days=1))
    over = running_lab(ada, ready_at=timezone.now() - timedelta(hours=1, minutes=5))
    within = running_lab(grace, ready_at=timezone.now() - timedelta(minutes=30))
    with django_capture_on_commit_callbacks(execute=False) as queued:
        assert stop_labs_over_hours() == 1
    assert len(queued) == 1
    with mock.patch("sandbox.tasks.stop_lab.delay") as stop:
        queued[0]()
    reason = "Your 1.0 lab hours in Spring cohort are used up: ask your instructor for more."
    stop.assert_called_once_with(str(over.id), reason)
    assert within.state == Lab.State.READY
