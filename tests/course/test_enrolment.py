"""Joining a cohort through the browser: by invite link or typed code, refused with the reason on
the page (and nothing changed) when the invite is expired, used up, for other e-mail domains or
unknown, and from a link followed by someone with no account yet."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.http import HttpResponse
from django.test import Client
from django.utils import timezone

from course import cohorts
from course.models import Cohort, Course, Enrolment, Invite

pytestmark = pytest.mark.usefixtures("course_content")

PASSWORD = "stapled-Lantern-42"


def logged_in(user: User, client: Client | None = None) -> Client:
    client = client or Client()
    client.force_login(user)
    return client


@pytest.fixture
def cohort(make_user: Callable[..., User]) -> Cohort:
    cohort = Cohort.objects.create(name="Spring cohort", course=Course.objects.get())
    cohort.instructors.add(make_user("teacher", instructor=True))
    return cohort


@pytest.fixture
def ada(db: None) -> User:
    return User.objects.create_user("ada", email="ada@uni.example", password=PASSWORD)


def text_of(response: HttpResponse) -> str:
    """The page's text as a reader sees it (entities decoded)."""
    return html.unescape(response.content.decode())


def uses_of(invite: Invite) -> int:
    invite.refresh_from_db()
    return invite.uses


def test_an_invite_link_shows_the_cohort_and_a_join_button(cohort: Cohort, ada: User) -> None:
    invite = cohorts.create_invite(cohort)
    page = logged_in(ada).get(f"/join/{invite.code}/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Join Spring cohort" in html
    assert f'<form method="post" action="/join/{invite.code}/">' in html
    assert "csrfmiddlewaretoken" in html
    assert not Enrolment.objects.exists()  # looking is not joining


def test_joining_by_link_enrols_and_goes_to_the_course_with_a_message(cohort: Cohort, ada: User) -> None:
    invite = cohorts.create_invite(cohort, max_uses=10)
    client = logged_in(ada)
    response = client.post(f"/join/{invite.code}/")
    assert response.status_code == 302
    assert response["Location"] == "/"
    assert Enrolment.objects.get(learner=ada).cohort == cohort
    assert uses_of(invite) == 1
    assert "You joined Spring cohort." in client.get("/").content.decode()


def test_joining_again_changes_nothing(cohort: Cohort, ada: User) -> None:
    invite = cohorts.create_invite(cohort, max_uses=10)
    client = logged_in(ada)
    client.post(f"/join/{invite.code}/")
    page = client.get(f"/join/{invite.code}/")
    assert "You are already in Spring cohort." in page.content.decode()
    again = client.post(f"/join/{invite.code}/", follow=True)
    assert "You are already in Spring cohort." in again.content.decode()
    assert Enrolment.objects.filter(learner=ada).count() == 1
    assert uses_of(invite) == 1


def test_a_typed_code_leads_to_its_invite_page(cohort: Cohort, ada: User) -> None:
    invite = cohorts.create_invite(cohort)
    client = logged_in(ada)
    form = client.get("/join/")
    assert form.status_code == 200
    assert 'name="code"' in form.content.decode()
    response = client.get("/join/", {"code": f"  {invite.code} "})
    assert response.status_code == 302
    assert response["Location"] == f"/join/{invite.code}/"


def test_a_typed_code_that_cannot_be_a_code_is_refused_on_the_form(ada: User) -> None:
    response = logged_in(ada).get("/join/", {"code": "no/such code"})
    assert response.status_code == 400
    assert "This invite code is not valid." in response.content.decode()


def expired(cohort: Cohort, ada: User) -> Invite:
    return cohorts.create_invite(cohort, expires_at=timezone.now() - timedelta(minutes=1))


def used_up(cohort: Cohort, ada: User) -> Invite:
    invite = cohorts.create_invite(cohort, max_uses=1)
    cohorts.enrol_with_invite(User.objects.create_user("grace"), invite.code)
    return invite


def for_another_domain(cohort: Cohort, ada: User) -> Invite:
    return cohorts.create_invite(cohort, allowed_domains=["school.example"])


@pytest.mark.parametrize(
    ("make_invite", "reason"),
    [
        (expired, "This invite expired on"),
        (used_up, "This invite has been used as many times as it allows."),
        (for_another_domain, "This invite is for e-mail addresses at @school.example; your account's is not."),
    ],
)
def test_a_refused_invite_says_why_and_changes_nothing(
    cohort: Cohort, ada: User, make_invite: Callable[[Cohort, User], Invite], reason: str
) -> None:
    invite = make_invite(cohort, ada)
    before = (uses_of(invite), list(Enrolment.objects.values_list("learner__username", flat=True)))
    client = logged_in(ada)
    page = client.get(f"/join/{invite.code}/")
    assert page.status_code == 400
    assert reason in text_of(page)
    assert "<button" not in page.content.decode().split("<main>")[1]  # no Join button to press
    refused = client.post(f"/join/{invite.code}/")
    assert refused.status_code == 400
    assert reason in text_of(refused)
    assert (uses_of(invite), list(Enrolment.objects.values_list("learner__username", flat=True))) == before
    assert not Enrolment.objects.filter(learner=ada).exists()


def test_an_unknown_or_withdrawn_code_is_not_found(cohort: Cohort, ada: User) -> None:
    withdrawn = cohorts.create_invite(cohort)
    cohorts.withdraw_invite(withdrawn)
    client = logged_in(ada)
    for code in ("no-such-code", withdrawn.code):
        for response in (client.get(f"/join/{code}/"), client.post(f"/join/{code}/")):
            assert response.status_code == 404
            assert "This invite code is not valid. Check it with your instructor." in response.content.decode()
            assert "Spring cohort" not in response.content.decode()
    assert not Enrolment.objects.exists()
    assert uses_of(withdrawn) == 0


def test_an_anonymous_visitor_signs_up_first_then_joins(cohort: Cohort) -> None:
    invite = cohorts.create_invite(cohort, allowed_domains=["uni.example"])
    client = Client()
    link = f"/join/{invite.code}/"
    response = client.get(link)
    assert response.status_code == 302
    assert response["Location"] == f"/accounts/signup/?next={link}"
    assert client.post(link).status_code == 302 and not Enrolment.objects.exists()

    signup = client.get(response["Location"]).content.decode()
    assert f'name="next" value="{link}"' in signup
    assert f'href="/accounts/login/?next={link}"' in signup  # or log in, with the same next

    data = {"username": "ada", "email": "ada@uni.example", "password1": PASSWORD, "password2": PASSWORD}
    signed_up = client.post(response["Location"], data)
    assert signed_up["Location"] == link
    confirm = re.search(r"http://testserver(/accounts/verify/\S+)", mail.outbox[0].body)
    assert confirm is not None and client.get(confirm.group(1))["Location"] == link  # the address is confirmed
    assert "Join Spring cohort" in client.get(link).content.decode()
    assert client.post(link)["Location"] == "/"
    assert Enrolment.objects.get().learner.username == "ada"


def test_joining_needs_a_csrf_token(cohort: Cohort, ada: User) -> None:
    invite = cohorts.create_invite(cohort)
    client = logged_in(ada, Client(enforce_csrf_checks=True))
    assert client.post(f"/join/{invite.code}/").status_code == 403
    assert not Enrolment.objects.exists()
    assert uses_of(invite) == 0
