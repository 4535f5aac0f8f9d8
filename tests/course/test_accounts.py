"""Accounts, as a visitor's browser uses them: sign up, log in and out, reset and change the
password, the header, and roles. E-mail settings are checked in a fresh process, as deployed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.core import mail
from django.http import HttpResponse
from django.test import Client
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from course.roles import role_of

PASSWORD = "stapled-Lantern-42"
NEW_PASSWORD = "quiet-Harbour-77"


def sign_up(client: Client, next_url: str | None = None, **fields: str) -> HttpResponse:
    data = {"username": "ada", "email": "ada@example.com", "password1": PASSWORD, "password2": PASSWORD}
    data.update(fields)
    url = "/accounts/signup/" + (f"?next={next_url}" if next_url else "")
    return client.post(url, data)


def header_text(response: HttpResponse) -> str:
    """The page header as a reader sees it: tags gone, spaces collapsed."""
    header = re.search(r"<header.*?</header>", response.content.decode(), re.S)
    assert header is not None
    return " ".join(re.sub(r"<[^>]+>", " ", header.group()).split())


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def is_logged_in_as(client: Client, username: str) -> bool:
    response = client.get("/accounts/password_change/")
    return response.status_code == 200 and f"{username} ·" in header_text(response)


def with_email(user: User, email: str) -> User:
    user.email = email
    user.save(update_fields=["email"])
    return user


# --- Sign up ---


def test_signup_creates_a_learner_logs_them_in_and_goes_to_the_course(db: None) -> None:
    client = Client()
    response = sign_up(client)
    assert response.status_code == 302
    assert response["Location"] == "/"
    user = User.objects.get(username="ada")
    assert user.email == "ada@example.com"
    assert user.check_password(PASSWORD)
    assert role_of(user) == "learner"
    assert not user.groups.exists()
    assert is_logged_in_as(client, "ada")


def test_signup_goes_to_a_safe_next(db: None) -> None:
    client = Client()
    page = client.get("/accounts/signup/?next=/lessons/load-balancing/")
    assert 'name="next" value="/lessons/load-balancing/"' in page.content.decode()
    response = sign_up(client, next_url="/lessons/load-balancing/")
    assert response["Location"] == "/lessons/load-balancing/"


def test_signup_ignores_a_next_on_another_site(db: None) -> None:
    client = Client()
    page = client.get("/accounts/signup/?next=https://evil.example/")
    assert "evil.example" not in page.content.decode()
    response = sign_up(client, next_url="https://evil.example/")
    assert response.status_code == 302
    assert response["Location"] == "/"
    assert User.objects.filter(username="ada").exists()


def test_signup_refuses_a_username_taken_in_another_case(make_user: Callable[..., User]) -> None:
    make_user("ada")
    response = sign_up(Client(), username="ADA", email="other@example.com")
    assert response.status_code == 200
    assert "A user with that username already exists." in response.content.decode()
    assert User.objects.count() == 1


def test_signup_refuses_an_email_taken_in_another_case(make_user: Callable[..., User]) -> None:
    with_email(make_user("grace"), "ada@example.com")
    client = Client()
    response = sign_up(client, email="ADA@Example.COM")
    assert response.status_code == 200
    assert "An account with this e-mail address already exists." in response.content.decode()
    assert not User.objects.filter(username="ada").exists()
    assert not is_logged_in_as(client, "ada")


def test_signup_needs_an_email(db: None) -> None:
    response = sign_up(Client(), email="")
    assert response.status_code == 200
    assert "This field is required." in response.content.decode()
    assert not User.objects.exists()


@pytest.mark.parametrize(
    ("password1", "password2", "message"),
    [
        ("password", "password", "This password is too common."),
        ("short1", "short1", "This password is too short."),
        ("8405729316", "8405729316", "This password is entirely numeric."),
        (PASSWORD, PASSWORD + "x", "The two password fields didn’t match."),
    ],
)
def test_signup_refuses_weak_or_mismatched_passwords(db: None, password1: str, password2: str, message: str) -> None:
    response = sign_up(Client(), password1=password1, password2=password2)
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not User.objects.exists()


def test_signup_sends_a_logged_in_user_on(learner: User) -> None:
    client = logged_in(learner)
    assert client.get("/accounts/signup/")["Location"] == "/"
    assert client.get("/accounts/signup/?next=/lessons/load-balancing/")["Location"] == "/lessons/load-balancing/"
    assert client.get("/accounts/signup/?next=https://evil.example/")["Location"] == "/"
    assert User.objects.count() == 1


# --- Log in and out ---


def test_login_page_links_to_signup_and_password_reset(db: None) -> None:
    page = Client().get("/accounts/login/?next=/lessons/load-balancing/").content.decode()
    assert 'href="/accounts/password_reset/"' in page
    assert 'href="/accounts/signup/?next=/lessons/load-balancing/"' in page


def test_logout_is_a_post_and_ends_the_session(learner: User) -> None:
    client = logged_in(learner)
    assert client.get("/accounts/logout/").status_code == 405
    assert is_logged_in_as(client, "learner")
    response = client.post("/accounts/logout/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/"
    assert not is_logged_in_as(client, "learner")


# --- Header and roles ---


def test_header_offers_log_in_and_sign_up_to_anonymous_visitors(db: None) -> None:
    response = Client().get("/accounts/login/")
    header = header_text(response)
    assert "Log in" in header
    assert "Sign up" in header
    assert "Log out" not in header
    assert "Change password" not in header
    page = response.content.decode()
    assert 'href="/accounts/signup/"' in page


@pytest.mark.parametrize(
    ("instructor", "is_staff", "role"),
    [(False, False, "learner"), (True, False, "instructor"), (False, True, "staff"), (True, True, "staff")],
)
def test_header_shows_the_username_and_role(
    make_user: Callable[..., User], instructor: bool, is_staff: bool, role: str
) -> None:
    user = make_user("ada", instructor=instructor)
    user.is_staff = is_staff
    user.save(update_fields=["is_staff"])
    response = logged_in(user).get("/accounts/password_change/")
    header = header_text(response)
    assert f"ada · {role}" in header
    assert "Change password" in header
    assert "Log out" in header
    assert "Sign up" not in header
    assert role_of(user) == role


def test_anonymous_visitors_have_no_more_than_a_learner() -> None:
    assert role_of(AnonymousUser()) == "learner"


# --- Password reset ---


def reset_link(message: mail.EmailMessage) -> str:
    found = re.search(r"http://testserver(/accounts/reset/\S+/)", message.body)
    assert found is not None, message.body
    return found.group(1)


def test_password_reset_mails_a_link_that_sets_a_new_password(make_user: Callable[..., User]) -> None:
    with_email(make_user("ada"), "ada@example.com")
    client = Client()
    response = client.post("/accounts/password_reset/", {"email": "ADA@example.com"})
    assert response["Location"] == "/accounts/password_reset/done/"
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["ada@example.com"]
    assert message.subject == "Reset your Stacklab password"
    assert message.from_email == settings.DEFAULT_FROM_EMAIL

    form_page = client.get(reset_link(message), follow=True)
    assert "Choose a new password" in form_page.content.decode()
    set_password_url = form_page.redirect_chain[-1][0]
    done = client.post(set_password_url, {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD})
    assert done["Location"] == "/accounts/reset/done/"
    assert "Password set" in client.get(done["Location"]).content.decode()

    fresh = Client()
    assert fresh.post("/accounts/login/", {"username": "ada", "password": "pw-ada"}).status_code == 200
    assert fresh.post("/accounts/login/", {"username": "ada", "password": NEW_PASSWORD}).status_code == 302
    assert is_logged_in_as(fresh, "ada")

    again = Client().get(reset_link(message), follow=True).content.decode()
    assert "This link no longer works" in again


def test_password_reset_for_an_unknown_email_looks_the_same_and_sends_nothing(learner: User) -> None:
    client = Client()
    response = client.post("/accounts/password_reset/", {"email": "nobody@example.com"})
    assert response["Location"] == "/accounts/password_reset/done/"
    assert "Check your e-mail" in client.get(response["Location"]).content.decode()
    assert mail.outbox == []


def test_a_reset_link_cannot_set_another_users_password(make_user: Callable[..., User]) -> None:
    with_email(make_user("ada"), "ada@example.com")
    bob = make_user("bob")
    Client().post("/accounts/password_reset/", {"email": "ada@example.com"})
    token = reset_link(mail.outbox[0]).rstrip("/").rsplit("/", 1)[1]
    bob_uid = urlsafe_base64_encode(force_bytes(bob.pk))
    forged = f"/accounts/reset/{bob_uid}/{token}/"
    client = Client()
    assert "This link no longer works" in client.get(forged, follow=True).content.decode()
    refused = client.post(forged, {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD}, follow=True)
    assert "This link no longer works" in refused.content.decode()
    bob.refresh_from_db()
    assert bob.check_password("pw-bob")


# --- Password change ---


def test_password_change_needs_a_login(db: None) -> None:
    response = Client().get("/accounts/password_change/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/accounts/password_change/"


def test_password_change_refuses_a_wrong_old_password(learner: User) -> None:
    response = logged_in(learner).post(
        "/accounts/password_change/",
        {"old_password": "not-it", "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
    )
    assert response.status_code == 200
    assert "Your old password was entered incorrectly." in response.content.decode()
    learner.refresh_from_db()
    assert learner.check_password("pw-learner")


def test_password_change_with_the_old_password_keeps_the_user_logged_in(learner: User) -> None:
    client = logged_in(learner)
    response = client.post(
        "/accounts/password_change/",
        {"old_password": "pw-learner", "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
    )
    assert response["Location"] == "/accounts/password_change/done/"
    assert "Password changed" in client.get(response["Location"]).content.decode()
    learner.refresh_from_db()
    assert learner.check_password(NEW_PASSWORD)
    assert is_logged_in_as(client, "learner")


# --- E-mail settings, read from the environment by a fresh process ---


def run_django(tmp_path: Path, code_or_args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("EMAIL_")}
    clean.update(DJANGO_SETTINGS_MODULE="stacklab.settings", STACKLAB_RUN_DIR=str(tmp_path), **env)
    return subprocess.run(
        [sys.executable, *code_or_args], cwd=settings.BASE_DIR, env=clean, capture_output=True, text=True, timeout=60
    )


PRINT_EMAIL = (
    "from django.conf import settings as s; "
    "print(s.EMAIL_BACKEND, s.EMAIL_HOST, s.EMAIL_PORT, s.EMAIL_USE_TLS, s.EMAIL_USE_SSL, s.EMAIL_TIMEOUT)"
)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "django.core.mail.backends.console.EmailBackend localhost 587 True False 10"),
        (
            {"EMAIL_HOST": "smtp.example.com"},
            "django.core.mail.backends.smtp.EmailBackend smtp.example.com 587 True False 10",
        ),
        (
            {"EMAIL_HOST": "smtp.example.com", "EMAIL_PORT": "465", "EMAIL_USE_SSL": "true", "EMAIL_TIMEOUT": "5"},
            "django.core.mail.backends.smtp.EmailBackend smtp.example.com 465 False True 5",
        ),
        (
            {"EMAIL_HOST": "smtp.example.com", "EMAIL_BACKEND": "django.core.mail.backends.dummy.EmailBackend"},
            "django.core.mail.backends.dummy.EmailBackend smtp.example.com 587 True False 10",
        ),
    ],
)
def test_email_settings_come_from_the_environment(tmp_path: Path, env: dict[str, str], expected: str) -> None:
    result = run_django(tmp_path, ["-c", PRINT_EMAIL], **env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_email_tls_and_ssl_together_are_refused_at_start(tmp_path: Path) -> None:
    result = run_django(tmp_path, ["-c", PRINT_EMAIL], EMAIL_USE_TLS="true", EMAIL_USE_SSL="true")
    assert result.returncode != 0
    assert "EMAIL_USE_TLS and EMAIL_USE_SSL exclude each other" in result.stderr


def test_a_newcomers_email_is_printed_on_the_console(tmp_path: Path) -> None:
    result = run_django(tmp_path, ["manage.py", "sendtestemail", "ada@example.com"])
    assert result.returncode == 0, result.stderr
    assert "To: ada@example.com" in result.stdout
    assert "From: Stacklab <noreply@localhost>" in result.stdout
