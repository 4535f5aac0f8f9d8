"""Confirming an e-mail address, as a learner's browser and mailbox see it: sign-up mails a link
that confirms the address, the link expires and cannot be forged, a changed address needs a new
confirmation, the link can be sent again (a few times an hour), and invites limited to e-mail
domains ask for a confirmed address while other invites do not."""

from __future__ import annotations

import html
import io
import re
import time
from collections.abc import Callable
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.core import mail, signing
from django.core.mail.backends.base import BaseEmailBackend
from django.core.management import call_command
from django.http import HttpResponse
from django.test import Client

from course import cohorts, verification
from course.models import Cohort, Enrolment, Invite
from tests.conftest import teach_cohort

PASSWORD = "stapled-Lantern-42"
VERIFY_FIRST = "Confirm your e-mail address first: we sent you a link (or send it again at /accounts/verify/)."


def logged_in(user: User, client: Client | None = None) -> Client:
    client = client or Client()
    client.force_login(user)
    return client


def text_of(response: HttpResponse) -> str:
    """The page's text as a reader sees it: tags gone, entities decoded, spaces collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", response.content.decode())).split())


def link_in(message: mail.EmailMessage) -> str:
    """The path (and query) of the confirmation link in a mailed message."""
    found = re.search(r"http://testserver(/accounts/verify/[^/\s]+/[^/\s]+/\S*)", message.body)
    assert found is not None, message.body
    return found.group(1)


def sign_up(client: Client, next_url: str = "", **fields: str) -> HttpResponse:
    data = {"username": "ada", "email": "ada@uni.example", "password1": PASSWORD, "password2": PASSWORD}
    data.update(fields)
    return client.post("/accounts/signup/" + (f"?next={next_url}" if next_url else ""), data)


def status_page(user: User) -> str:
    return text_of(logged_in(user).get("/accounts/verify/"))


def is_confirmed(user: User) -> bool:
    """What the verify page says about the user's address."""
    text = status_page(user)
    assert ("is confirmed" in text) != ("is not confirmed yet" in text), text
    return "is confirmed" in text


def mail_link(user: User) -> str:
    """Ask for a link from the verify page, as the user does, and return the one mailed."""
    sent = len(mail.outbox)
    logged_in(user).post("/accounts/verify/")
    assert len(mail.outbox) == sent + 1
    return link_in(mail.outbox[-1])


@pytest.fixture
def ada(db: None) -> User:
    return User.objects.create_user("ada", email="ada@uni.example", password=PASSWORD)


@pytest.fixture
def cohort(make_user: Callable[..., User]) -> Cohort:
    return teach_cohort(make_user("teacher", instructor=True), [], name="Spring cohort")


def uses_of(invite: Invite) -> int:
    invite.refresh_from_db()
    return invite.uses


# -- sign-up and the link -----------------------------------------------------------------------


def test_signup_mails_one_link_that_confirms_the_address(db: None, settings) -> None:  # noqa: ANN001
    settings.EMAIL_VERIFICATION_DAYS = 3
    client = Client()
    assert sign_up(client)["Location"] == "/"
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["ada@uni.example"]
    assert message.subject == "Confirm your e-mail address for Stacklab"
    assert "works for 3 days" in message.body
    ada = User.objects.get(username="ada")
    assert "ada@uni.example is not confirmed yet" in text_of(client.get("/accounts/verify/"))

    # Opened anywhere (the mail may be read on another device): no login needed.
    confirmed = Client().get(link_in(message))
    assert confirmed.status_code == 302
    assert confirmed["Location"] == "/"
    assert "ada@uni.example is confirmed" in text_of(client.get("/accounts/verify/"))
    assert verification.is_verified(ada)


def test_the_link_goes_back_to_a_safe_next_with_a_message(db: None) -> None:
    client = Client()
    sign_up(client, next_url="/progress/")
    link = link_in(mail.outbox[0])
    assert link.endswith("/?next=/progress/")
    confirmed = client.get(link)
    assert confirmed["Location"] == "/progress/"
    assert "Thank you: your e-mail address ada@uni.example is confirmed." in text_of(client.get("/accounts/verify/"))

    unsafe = link.split("?")[0] + "?next=https://evil.example/"
    assert client.get(unsafe)["Location"] == "/"


def test_a_link_works_for_the_configured_days_then_no_more(
    ada: User,
    monkeypatch: pytest.MonkeyPatch,
    settings,  # noqa: ANN001 - pytest-django's settings fixture
) -> None:
    def mailed_days_ago(days: float) -> str:
        with monkeypatch.context() as past:
            then = int(time.time() - timedelta(days=days).total_seconds())
            past.setattr(signing.TimestampSigner, "timestamp", lambda self: signing.b62_encode(then))
            return mail_link(ada)

    two_days_old, four_days_old = mailed_days_ago(2), mailed_days_ago(4)
    expired = Client().get(four_days_old)
    assert expired.status_code == 400
    assert "This link no longer works" in text_of(expired)
    assert not is_confirmed(ada)

    settings.EMAIL_VERIFICATION_DAYS = 1
    assert Client().get(two_days_old).status_code == 400
    assert not is_confirmed(ada)
    settings.EMAIL_VERIFICATION_DAYS = 3
    assert Client().get(two_days_old).status_code == 302
    assert is_confirmed(ada)


def test_a_tampered_or_forged_link_confirms_nothing(ada: User, make_user: Callable[..., User]) -> None:
    bob = make_user("bob")
    bob.email = "bob@uni.example"
    bob.save()
    link = mail_link(ada)
    _, _, _, uidb64, token, _ = link.split("/", 5)
    bob_uid = verification.make_token(bob)[0]
    forged = [
        f"/accounts/verify/{uidb64}/{token[:-1]}{'A' if token[-1] != 'A' else 'B'}/",  # signature changed
        f"/accounts/verify/{uidb64}/{token.split(':')[1]}/",  # signature only, no timestamp
        f"/accounts/verify/{bob_uid}/{token}/",  # ada's token on bob's account
        f"/accounts/verify/bm9ib2R5/{token}/",  # no such user
        f"/accounts/verify/!!/{token}/",  # not base64
    ]
    for url in forged:
        response = Client().get(url)
        assert response.status_code == 400, url
        assert "This link no longer works" in text_of(response)
    assert not is_confirmed(ada)
    assert not is_confirmed(bob)


def test_changing_the_address_after_confirming_needs_a_new_confirmation(ada: User) -> None:
    first_link = mail_link(ada)
    assert Client().get(first_link).status_code == 302
    assert is_confirmed(ada)

    ada.email = "ADA@Uni.Example"  # the same address, written differently
    ada.save()
    assert is_confirmed(ada)

    ada.email = "ada@school.example"
    ada.save()
    assert not is_confirmed(ada)
    assert "ada@school.example is not confirmed yet" in status_page(ada)
    assert Client().get(first_link).status_code == 400  # a link proves only the address it went to
    assert not is_confirmed(ada)

    new_link = mail_link(ada)
    assert mail.outbox[-1].to == ["ada@school.example"]
    assert Client().get(new_link).status_code == 302
    assert is_confirmed(ada)


def test_signup_still_works_when_the_mail_cannot_be_sent(db: None, settings) -> None:  # noqa: ANN001
    settings.EMAIL_BACKEND = f"{__name__}.RefusingBackend"
    client = Client()
    response = sign_up(client)
    assert response["Location"] == "/"
    page = text_of(client.get("/accounts/verify/"))
    assert "We could not send the e-mail to confirm your address: try again in a while." in page
    assert "ada@uni.example is not confirmed yet" in page


class RefusingBackend(BaseEmailBackend):
    """An SMTP server that is down."""

    def send_messages(self, email_messages: object) -> int:
        raise ConnectionRefusedError("SMTP server down")


# -- sending the link again ---------------------------------------------------------------------


def test_the_verify_page_needs_a_login(db: None) -> None:
    for response in (Client().get("/accounts/verify/"), Client().post("/accounts/verify/")):
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/?next=/accounts/verify/")
    assert mail.outbox == []


def test_only_a_post_sends_the_link_again(ada: User) -> None:
    client = logged_in(ada)
    page = client.get("/accounts/verify/")
    assert page.status_code == 200
    assert '<form method="post" action="/accounts/verify/"' in page.content.decode()
    assert "Send the link again" in text_of(page)
    assert client.put("/accounts/verify/").status_code == 405
    assert mail.outbox == []

    sent = client.post("/accounts/verify/", {"next": "/join/abc/"})
    assert sent["Location"] == "/accounts/verify/?next=/join/abc/"
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["ada@uni.example"]
    assert "We sent a new link to ada@uni.example." in text_of(client.get(sent["Location"]))
    assert client.get(link_in(mail.outbox[0]))["Location"] == "/join/abc/"


def test_sending_the_link_again_needs_a_csrf_token(ada: User) -> None:
    client = logged_in(ada, Client(enforce_csrf_checks=True))
    assert client.post("/accounts/verify/").status_code == 403
    assert mail.outbox == []


def test_sending_the_link_again_is_limited_to_three_an_hour_per_user(ada: User, make_user: Callable[..., User]) -> None:
    client = logged_in(ada)
    for _ in range(3):
        assert client.post("/accounts/verify/").status_code == 302
    assert len(mail.outbox) == 3
    limited = client.post("/accounts/verify/")
    assert limited.status_code == 429
    assert "You have asked for the link several times this hour" in text_of(limited)
    assert len(mail.outbox) == 3

    grace = make_user("grace")
    grace.email = "grace@uni.example"
    grace.save()
    assert logged_in(grace).post("/accounts/verify/").status_code == 302  # counted per user
    assert len(mail.outbox) == 4


def test_a_confirmed_address_is_not_sent_a_link_again(ada: User) -> None:
    assert Client().get(mail_link(ada)).status_code == 302
    client = logged_in(ada)
    page = client.get("/accounts/verify/")
    assert "Send the link again" not in text_of(page)
    response = client.post("/accounts/verify/")
    assert "ada@uni.example is already confirmed." in text_of(client.get(response["Location"]))
    assert len(mail.outbox) == 1


# -- invites limited to e-mail domains ----------------------------------------------------------


def test_an_invite_for_a_domain_refuses_an_unconfirmed_address_and_changes_nothing(cohort: Cohort, ada: User) -> None:
    invite = cohorts.create_invite(cohort, allowed_domains=["uni.example"])
    client = logged_in(ada)
    link = f"/join/{invite.code}/"
    for response in (client.get(link), client.post(link)):
        assert response.status_code == 400
        assert VERIFY_FIRST in text_of(response)
        assert f'<a href="/accounts/verify/?next=/join/{invite.code}/">' in response.content.decode()
        assert "<button" not in response.content.decode().split("<main>")[1]
    assert not Enrolment.objects.exists()
    assert uses_of(invite) == 0


def test_a_new_learner_confirms_the_address_from_the_join_page_then_joins(cohort: Cohort) -> None:
    invite = cohorts.create_invite(cohort, allowed_domains=["uni.example"])
    join_link = f"/join/{invite.code}/"
    client = Client()
    signup_url = client.get(join_link)["Location"]
    assert signup_url == f"/accounts/signup/?next={join_link}"
    assert sign_up(client, next_url=join_link)["Location"] == join_link
    assert VERIFY_FIRST in text_of(client.get(join_link))

    # The learner lost the first mail and asks again from the join page's link.
    verify_page = f"/accounts/verify/?next={join_link}"
    assert f'name="next" value="{join_link}"' in client.get(verify_page).content.decode()
    assert client.post(verify_page, {"next": join_link})["Location"] == verify_page
    assert len(mail.outbox) == 2
    back = client.get(link_in(mail.outbox[-1]))
    assert back["Location"] == join_link

    page = client.get(join_link)
    assert page.status_code == 200
    assert "Join Spring cohort" in text_of(page)
    assert client.post(join_link)["Location"] == "/"
    assert Enrolment.objects.get(cohort=cohort).learner.username == "ada"
    assert uses_of(invite) == 1


def test_an_address_at_another_domain_is_told_so_even_when_confirmed(cohort: Cohort, ada: User) -> None:
    assert Client().get(mail_link(ada)).status_code == 302
    invite = cohorts.create_invite(cohort, allowed_domains=["school.example"])
    refused = logged_in(ada).post(f"/join/{invite.code}/")
    assert refused.status_code == 400
    assert "This invite is for e-mail addresses at @school.example; your account's is not." in text_of(refused)
    assert "/accounts/verify/" not in refused.content.decode()
    assert not Enrolment.objects.exists()


def test_an_invite_for_any_address_needs_no_confirmation(cohort: Cohort, ada: User) -> None:
    invite = cohorts.create_invite(cohort)
    assert logged_in(ada).post(f"/join/{invite.code}/")["Location"] == "/"
    assert Enrolment.objects.get().learner == ada
    assert not is_confirmed(ada)


# -- the demo -----------------------------------------------------------------------------------


def test_the_demo_accounts_have_confirmed_addresses(db: None) -> None:
    call_command("setup_demo", stdout=io.StringIO())
    for username in ("learner", "instructor"):
        user = User.objects.get(username=username)
        assert user.email == f"{username}@example.com"
        assert is_confirmed(user)
