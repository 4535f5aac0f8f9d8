"""Staff in the Django admin: cohorts with their learners, invites and schedule; stopping a
cohort's labs; content shown but never edited there; invites never typed in by hand."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from course.models import Cohort, Course, Enrolment, Invite
from sandbox.models import Lab

pytestmark = pytest.mark.usefixtures("course_content")


@pytest.fixture
def staff() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    return client


@pytest.fixture
def cohort() -> Cohort:
    return Cohort.objects.create(name="Spring cohort", course=Course.objects.get())


def test_staff_see_every_course_model(staff: Client, cohort: Cohort) -> None:
    for path in ("cohort", "enrolment", "invite", "lesson", "module", "course", "labrecord"):
        assert staff.get(f"/admin/course/{path}/").status_code == 200, path
    assert staff.get("/admin/sandbox/lab/").status_code == 200
    assert staff.get(f"/admin/course/cohort/{cohort.pk}/change/").status_code == 200


def test_invites_are_made_by_the_action_never_typed_in(staff: Client, cohort: Cohort) -> None:
    assert staff.get("/admin/course/invite/add/").status_code == 403
    response = staff.post(
        "/admin/course/cohort/", {"action": "create_invite", "_selected_action": [cohort.pk]}, follow=True
    )
    invite = Invite.objects.get(cohort=cohort)
    assert len(invite.code) >= 12
    assert f"invite code {invite.code}" in response.content.decode()


def test_content_is_read_only_in_the_admin(staff: Client) -> None:
    assert staff.get("/admin/course/lesson/add/").status_code == 403
    lesson_id = staff.get("/admin/course/lesson/").context["cl"].result_list[0].pk
    assert staff.post(f"/admin/course/lesson/{lesson_id}/change/", {"title": "Changed"}).status_code == 403


def test_stopping_a_cohorts_labs_queues_only_theirs(
    staff: Client, cohort: Cohort, django_capture_on_commit_callbacks
) -> None:  # noqa: ANN001
    ada, outsider = User.objects.create_user("ada"), User.objects.create_user("outsider")
    Enrolment.objects.create(cohort=cohort, learner=ada)
    now = timezone.now()
    for owner in (ada, outsider):
        Lab.objects.create(
            owner=owner, lab_slug="scaling-load-balancer", lesson_slug="load-balancing", state=Lab.State.READY,
            ready_at=now, expires_at=now + timedelta(hours=1),
        )  # fmt: skip
    with django_capture_on_commit_callbacks() as queued:
        response = staff.post(
            "/admin/course/cohort/", {"action": "stop_running_labs", "_selected_action": [cohort.pk]}, follow=True
        )
    assert "Stopping 1 lab(s)." in response.content.decode()
    assert len(queued) == 1
