"""Instructors manage their cohorts through the browser: create one, share and withdraw invite
links, set the schedule and the quotas. Only the cohort's instructors and staff get in (anyone
else: 404, and nothing changes), every change needs a CSRF token, and bad input is refused with
the reason on the page."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.http import HttpResponse
from django.test import Client
from django.utils import timezone

from course import cohorts, verification
from course.models import Cohort, Course, Enrolment, Invite, LessonUnlock

pytestmark = pytest.mark.usefixtures("course_content")

LESSON = "load-balancing"


def logged_in(user: User, client: Client | None = None) -> Client:
    client = client or Client()
    client.force_login(user)
    return client


def text_of(response: HttpResponse) -> str:
    """The page's text as a reader sees it: tags gone, entities decoded, spaces collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", response.content.decode())).split())


def local_input(moment: datetime) -> str:
    """A moment as a datetime-local field sends it."""
    return f"{timezone.localtime(moment):%Y-%m-%dT%H:%M}"


@pytest.fixture
def teacher(make_user: Callable[..., User]) -> User:
    return make_user("teacher", instructor=True)


@pytest.fixture
def cohort(teacher: User) -> Cohort:
    cohort = Cohort.objects.create(name="Spring cohort", course=Course.objects.get(), created_by=teacher)
    cohort.instructors.add(teacher)
    return cohort


@pytest.fixture
def other_cohort(make_user: Callable[..., User]) -> Cohort:
    """Someone else's cohort, with a learner and an invite."""
    other_teacher = make_user("other-teacher", instructor=True)
    cohort = Cohort.objects.create(name="Autumn cohort", course=Course.objects.get())
    cohort.instructors.add(other_teacher)
    Enrolment.objects.create(cohort=cohort, learner=User.objects.create_user("zed", email="zed@secret.example"))
    cohorts.create_invite(cohort)
    return cohort


@pytest.fixture
def staff(db: None) -> User:
    return User.objects.create_user("root", is_staff=True)


def state_of(cohort: Cohort) -> tuple[object, ...]:
    """Everything the cohort's pages can change."""
    cohort.refresh_from_db()
    return (
        cohort.name,
        cohort.max_labs_per_learner,
        cohort.max_labs_running,
        cohort.lab_hours_per_learner,
        sorted(cohort.invites.values_list("code", "is_active", "max_uses", "expires_at")),
        sorted(cohort.unlocks.values_list("lesson_slug", "unlocks_at")),
        sorted(cohort.enrolments.values_list("learner_id", flat=True)),
    )


def changes(cohort: Cohort) -> dict[str, tuple[str, dict[str, str]]]:
    """One valid POST per kind of change the cohort's page offers."""
    invite = cohort.invites.first()
    assert invite is not None
    return {
        "invite": (f"/teaching/{cohort.pk}/invites/", {"max_uses": "3"}),
        "withdraw": (f"/teaching/{cohort.pk}/invites/{invite.pk}/withdraw/", {}),
        "schedule": (
            f"/teaching/{cohort.pk}/schedule/",
            {f"opens-{LESSON}": local_input(timezone.now() + timedelta(days=2))},
        ),
        "quotas": (
            f"/teaching/{cohort.pk}/quotas/",
            {"max_labs_per_learner": "2", "max_labs_running": "5", "lab_hours_per_learner": "7.5"},
        ),
    }


# -- who gets in ------------------------------------------------------------------------------


def test_teaching_pages_need_a_login(cohort: Cohort) -> None:
    for url in ("/teaching/", f"/teaching/{cohort.pk}/"):
        response = Client().get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/")


def test_a_learner_gets_404_on_every_teaching_page_and_changes_nothing(cohort: Cohort, learner: User) -> None:
    cohorts.create_invite(cohort)
    Enrolment.objects.create(cohort=cohort, learner=learner)
    before = state_of(cohort)
    client = logged_in(learner)
    assert client.get("/teaching/").status_code == 404
    assert client.post("/teaching/", {"name": "Mine"}).status_code == 404
    assert client.get(f"/teaching/{cohort.pk}/").status_code == 404
    for url, data in changes(cohort).values():
        assert client.post(url, data).status_code == 404
    assert state_of(cohort) == before
    assert Cohort.objects.count() == 1


def test_an_instructor_lists_only_the_cohorts_they_teach(cohort: Cohort, other_cohort: Cohort, teacher: User) -> None:
    page = logged_in(teacher).get("/teaching/")
    assert page.status_code == 200
    assert f'href="/teaching/{cohort.pk}/"' in page.content.decode()
    assert "Autumn cohort" not in page.content.decode()


def test_an_instructor_of_another_cohort_gets_404_and_changes_nothing(
    cohort: Cohort, other_cohort: Cohort, teacher: User
) -> None:
    before = state_of(other_cohort)
    client = logged_in(teacher)
    page = client.get(f"/teaching/{other_cohort.pk}/")
    assert page.status_code == 404
    assert "zed@secret.example" not in page.content.decode()
    for url, data in changes(other_cohort).values():
        assert client.post(url, data).status_code == 404
    assert state_of(other_cohort) == before


def test_an_invite_of_another_cohort_cannot_be_withdrawn_through_your_own(
    cohort: Cohort, other_cohort: Cohort, teacher: User
) -> None:
    theirs = other_cohort.invites.get()
    response = logged_in(teacher).post(f"/teaching/{cohort.pk}/invites/{theirs.pk}/withdraw/")
    assert response.status_code == 404
    theirs.refresh_from_db()
    assert theirs.is_active


def test_staff_see_and_change_every_cohort(cohort: Cohort, other_cohort: Cohort, staff: User) -> None:
    client = logged_in(staff)
    listing = client.get("/teaching/").content.decode()
    assert "Spring cohort" in listing and "Autumn cohort" in listing
    assert "zed@secret.example" in client.get(f"/teaching/{other_cohort.pk}/").content.decode()
    for url, data in changes(other_cohort).values():
        assert client.post(url, data).status_code == 302
    other_cohort.refresh_from_db()
    assert other_cohort.max_labs_running == 5
    assert other_cohort.invites.filter(max_uses=3, is_active=True).exists()
    assert other_cohort.unlocks.filter(lesson_slug=LESSON).exists()


@pytest.mark.parametrize("change", ["invite", "withdraw", "schedule", "quotas"])
def test_every_change_needs_a_csrf_token(cohort: Cohort, teacher: User, change: str) -> None:
    cohorts.create_invite(cohort)
    before = state_of(cohort)
    url, data = changes(cohort)[change]
    client = logged_in(teacher, Client(enforce_csrf_checks=True))
    assert client.post(url, data).status_code == 403
    assert state_of(cohort) == before


def test_creating_a_cohort_needs_a_csrf_token(teacher: User) -> None:
    client = logged_in(teacher, Client(enforce_csrf_checks=True))
    assert client.post("/teaching/", {"name": "Summer cohort"}).status_code == 403
    assert not Cohort.objects.exists()


def test_the_header_offers_teaching_to_instructors_and_staff_only(teacher: User, staff: User, learner: User) -> None:
    def header(user: User) -> str:
        page = logged_in(user).get("/")
        match = re.search(r"<header.*?</header>", page.content.decode(), re.S)
        assert match is not None
        return match.group()

    for user in (teacher, staff):
        assert 'href="/teaching/">Teaching</a>' in header(user)
    learner_header = header(learner)
    assert "Teaching" not in learner_header
    assert 'href="/progress/">Progress</a>' in learner_header
    assert 'href="/join/">Join a cohort</a>' in learner_header


# -- cohorts ----------------------------------------------------------------------------------


def test_an_instructor_creates_a_cohort_and_teaches_it(teacher: User) -> None:
    client = logged_in(teacher)
    assert "New cohort" in client.get("/teaching/").content.decode()
    response = client.post("/teaching/", {"name": "Summer cohort"})
    cohort = Cohort.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/teaching/{cohort.pk}/"
    assert (cohort.name, cohort.course, cohort.created_by) == ("Summer cohort", Course.objects.get(), teacher)
    assert list(cohort.instructors.all()) == [teacher]
    page = client.get(response["Location"])
    assert "Cohort Summer cohort created" in text_of(page)


def test_a_cohort_without_a_name_is_refused(teacher: User) -> None:
    response = logged_in(teacher).post("/teaching/", {"name": "  "})
    assert response.status_code == 400
    assert "This field is required." in response.content.decode()
    assert not Cohort.objects.exists()


def test_the_cohort_page_lists_learners_invites_and_the_dashboard_link(cohort: Cohort, teacher: User) -> None:
    ada = User.objects.create_user("ada", email="ada@uni.example")
    Enrolment.objects.create(cohort=cohort, learner=ada)
    invite = cohorts.create_invite(cohort, max_uses=30, allowed_domains=["uni.example"])
    page = logged_in(teacher).get(f"/teaching/{cohort.pk}/")
    assert page.status_code == 200
    text = text_of(page)
    assert "ada ada@uni.example" in text
    assert f"http://testserver/join/{invite.code}/ 0/30 never @uni.example active Withdraw" in text
    assert f'href="/teaching/{cohort.pk}/dashboard/"' in page.content.decode()


# -- invites ----------------------------------------------------------------------------------


def test_an_instructor_creates_an_invite_that_enrols_learners(cohort: Cohort, teacher: User) -> None:
    expires = timezone.now() + timedelta(days=7)
    response = logged_in(teacher).post(
        f"/teaching/{cohort.pk}/invites/",
        {"expires_at": local_input(expires), "max_uses": "25", "allowed_domains": "Uni.example, @school.example"},
    )
    assert response.status_code == 302
    invite = Invite.objects.get(cohort=cohort)
    assert (invite.max_uses, invite.allowed_domains, invite.created_by) == (
        25,
        ["school.example", "uni.example"],
        teacher,
    )
    assert invite.expires_at == timezone.localtime(expires).replace(second=0, microsecond=0)
    ada = User.objects.create_user("ada", email="ada@school.example")
    verification.mark_verified(ada)
    assert logged_in(ada).post(f"/join/{invite.code}/").status_code == 302
    assert Enrolment.objects.get(learner=ada).cohort == cohort


def test_an_invite_with_every_field_empty_never_expires_and_has_no_limit(cohort: Cohort, teacher: User) -> None:
    response = logged_in(teacher).post(f"/teaching/{cohort.pk}/invites/", {})
    assert response.status_code == 302
    invite = Invite.objects.get(cohort=cohort)
    assert (invite.expires_at, invite.max_uses, invite.allowed_domains, invite.is_active) == (None, None, [], True)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"expires_at": "2001-01-01T09:00"}, "Pick a time in the future"),
        ({"expires_at": "next tuesday"}, "Enter a valid date/time."),
        ({"max_uses": "0"}, "Ensure this value is greater than or equal to 1."),
        # More than the column holds (2**31 - 1 on PostgreSQL): a form error, never a 500.
        ({"max_uses": str(10**40)}, "Ensure this value is less than or equal to 2147483647."),
        ({"max_uses": "2147483648"}, "Ensure this value is less than or equal to 2147483647."),
        ({"allowed_domains": "uni.example, not a domain"}, "Not a domain name: not a domain."),
    ],
)
def test_a_bad_invite_is_refused_with_the_reason(cohort: Cohort, teacher: User, data: dict, error: str) -> None:
    response = logged_in(teacher).post(f"/teaching/{cohort.pk}/invites/", data)
    assert response.status_code == 400
    assert error in text_of(response)
    assert not Invite.objects.exists()


def test_a_withdrawn_invite_no_longer_enrols(cohort: Cohort, teacher: User, learner: User) -> None:
    invite = cohorts.create_invite(cohort)
    client = logged_in(teacher)
    response = client.post(f"/teaching/{cohort.pk}/invites/{invite.pk}/withdraw/")
    assert response.status_code == 302
    invite.refresh_from_db()
    assert not invite.is_active
    page = text_of(client.get(f"/teaching/{cohort.pk}/"))
    assert f"http://testserver/join/{invite.code}/ 0/∞ never any withdrawn New invite" in page  # no button
    assert logged_in(learner).post(f"/join/{invite.code}/").status_code == 404
    assert not Enrolment.objects.exists()


# -- schedule ---------------------------------------------------------------------------------


def test_a_schedule_set_on_the_page_locks_the_lesson_for_the_cohorts_learners(
    cohort: Cohort, teacher: User, learner: User
) -> None:
    Enrolment.objects.create(cohort=cohort, learner=learner)
    client = logged_in(teacher)
    opens = timezone.now() + timedelta(days=2)
    response = client.post(f"/teaching/{cohort.pk}/schedule/", {f"opens-{LESSON}": local_input(opens)})
    assert response.status_code == 302
    assert logged_in(learner).get(f"/lessons/{LESSON}/").status_code == 403
    page = client.get(f"/teaching/{cohort.pk}/").content.decode()
    assert f'name="opens-{LESSON}" value="{local_input(opens)}"' in page

    assert client.post(f"/teaching/{cohort.pk}/schedule/", {f"opens-{LESSON}": ""}).status_code == 302
    assert not LessonUnlock.objects.exists()
    assert logged_in(learner).get(f"/lessons/{LESSON}/").status_code == 200


def test_saving_the_schedule_keeps_the_other_lessons_dates(cohort: Cohort, teacher: User) -> None:
    cache_opens = timezone.now().replace(second=0, microsecond=0) + timedelta(days=9)
    client = logged_in(teacher)
    client.post(f"/teaching/{cohort.pk}/schedule/", {"opens-cache-aside": local_input(cache_opens)})
    client.post(
        f"/teaching/{cohort.pk}/schedule/",
        {"opens-cache-aside": local_input(cache_opens), f"opens-{LESSON}": local_input(cache_opens)},
    )
    assert sorted(cohort.unlocks.values_list("lesson_slug", "unlocks_at")) == [
        ("cache-aside", cache_opens),
        (LESSON, cache_opens),
    ]


def test_a_bad_date_in_the_schedule_changes_nothing(cohort: Cohort, teacher: User) -> None:
    LessonUnlock.objects.create(cohort=cohort, lesson_slug="cache-aside", unlocks_at=timezone.now())
    before = state_of(cohort)
    response = logged_in(teacher).post(
        f"/teaching/{cohort.pk}/schedule/", {f"opens-{LESSON}": "soon", "opens-cache-aside": ""}
    )
    assert response.status_code == 400
    assert "Enter a valid date/time." in text_of(response)
    assert state_of(cohort) == before


# -- quotas -----------------------------------------------------------------------------------


def test_quotas_set_on_the_page_are_saved_and_empty_means_no_limit(cohort: Cohort, teacher: User) -> None:
    client = logged_in(teacher)
    data = {"max_labs_per_learner": "2", "max_labs_running": "", "lab_hours_per_learner": "7.5"}
    response = client.post(f"/teaching/{cohort.pk}/quotas/", data)
    assert response.status_code == 302
    cohort.refresh_from_db()
    assert (cohort.max_labs_per_learner, cohort.max_labs_running, cohort.lab_hours_per_learner) == (
        2,
        None,
        Decimal("7.5"),
    )
    assert "Quotas saved." in text_of(client.get(response["Location"]))


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"max_labs_per_learner": "-1"}, "Ensure this value is greater than or equal to 0."),
        ({"lab_hours_per_learner": "-3"}, "Ensure this value is greater than or equal to 0."),
        ({"lab_hours_per_learner": "2.25"}, "Ensure that there are no more than 1 decimal place."),
        ({"max_labs_running": "many"}, "Enter a whole number."),
        ({"max_labs_running": str(10**40)}, "Ensure this value is less than or equal to 2147483647."),
        ({"max_labs_per_learner": "2147483648"}, "Ensure this value is less than or equal to 2147483647."),
        ({"lab_hours_per_learner": "1e40"}, "Ensure that there are no more than 6 digits in total."),
        ({"lab_hours_per_learner": "Infinity"}, "Enter a number."),
    ],
)
def test_bad_quotas_are_refused_and_change_nothing(cohort: Cohort, teacher: User, data: dict, error: str) -> None:
    before = state_of(cohort)
    full = {"max_labs_per_learner": "1", "max_labs_running": "30", "lab_hours_per_learner": "20", **data}
    response = logged_in(teacher).post(f"/teaching/{cohort.pk}/quotas/", full)
    assert response.status_code == 400
    assert error in text_of(response)
    assert state_of(cohort) == before
