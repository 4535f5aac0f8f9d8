"""Requests past Django's limits (a body over DATA_UPLOAD_MAX_MEMORY_SIZE, too many fields or
files, a malformed multipart body, a foreign Host) and whole numbers past what a column or a
timer holds: each answers 400 with a plain reason, and the log gets one warning line, never a
traceback."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from sandbox import lifecycle
from sandbox.models import Lab
from sandbox.terminals import initial_size

pytestmark = pytest.mark.django_db

OVER_MEMORY_LIMIT = settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 512 * 1024  # about 3 MB with Django's default


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def ready_lab(user: User) -> Lab:
    lab, _ = lifecycle.request_lab(user, "scaling-load-balancer", "load-balancing")
    now = timezone.now()
    Lab.objects.filter(pk=lab.pk).update(state=Lab.State.READY, ready_at=now, expires_at=now + timedelta(minutes=30))
    return lab


@contextmanager
def console_log() -> Iterator[io.StringIO]:
    """What the log handlers a Django record reaches (settings.LOGGING's `console`, and any on
    Django's own loggers) write meanwhile: the log as the server prints it, after the handlers'
    filters. pytest's caplog sees records beside those handlers, so it cannot tell what their
    filters changed."""
    handlers = [
        handler
        for logger in (
            logging.getLogger("django.security.DisallowedHost"),
            logging.getLogger("django"),
            logging.getLogger(),
        )
        for handler in logger.handlers
        if isinstance(handler, logging.StreamHandler)
    ]
    assert [handler.name for handler in handlers].count("console") >= 1
    text = io.StringIO()
    previous = [handler.setStream(text) for handler in handlers]
    try:
        yield text
    finally:
        for handler, stream in zip(handlers, previous, strict=True):
            handler.setStream(stream)


def assert_one_warning_line(log: str) -> None:
    assert "Traceback" not in log, log
    lines = [line for line in log.splitlines() if " WARNING " in line or " ERROR " in line]
    assert len(lines) == 1, log
    assert " WARNING " in lines[0], log


def multipart(files: int) -> tuple[bytes, str]:
    boundary = "stacklab-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="f{i}"; filename="f{i}.txt"\r\n'
        f"Content-Type: text/plain\r\n\r\nx\r\n"
        for i in range(files)
    ]
    return ("".join(parts) + f"--{boundary}--\r\n").encode(), f"multipart/form-data; boundary={boundary}"


REQUESTS: dict[str, Callable[[Client, Lab], object]] = {
    "a 3 MB form field": lambda client, lab: client.post("/accounts/login/", {"username": "x" * OVER_MEMORY_LIMIT}),
    "2,000 form fields": lambda client, lab: client.post(
        "/accounts/login/", "&".join(f"f{i}=1" for i in range(2000)), content_type="application/x-www-form-urlencoded"
    ),
    "a 3 MB JSON body": lambda client, lab: client.post(
        f"/api/labs/{lab.id}/extend", json.dumps({"minutes": 30, "pad": "x" * OVER_MEMORY_LIMIT}), "application/json"
    ),
    "200 uploaded files": lambda client, lab: client.generic("POST", "/accounts/login/", *multipart(200)),
    "a multipart body without its boundary": lambda client, lab: client.generic(
        "POST", "/accounts/login/", b"--x\r\n", "multipart/form-data"
    ),
    "a foreign Host header": lambda client, lab: client.get("/accounts/login/", headers={"host": "evil.example"}),
}


@pytest.mark.parametrize("case", REQUESTS)
def test_requests_past_djangos_limits_get_400_and_one_log_line_without_a_traceback(
    case: str, learner: User, caplog: pytest.LogCaptureFixture
) -> None:
    client = logged_in(learner)
    lab = ready_lab(learner)
    caplog.clear()
    with caplog.at_level(logging.INFO), console_log() as log:
        response = REQUESTS[case](client, lab)
    assert response.status_code == 400, case
    assert_one_warning_line(log.getvalue())
    assert not [record for record in caplog.records if record.exc_info], "a traceback was logged"
    warnings = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 1, [record.getMessage() for record in warnings]
    assert warnings[0].levelno == logging.WARNING


def test_a_foreign_host_gets_one_log_line_without_a_traceback_in_debug_too(learner: User, settings) -> None:  # noqa: ANN001
    settings.DEBUG = True  # Django's own console handler on its "django" logger writes only then
    with console_log() as log:
        response = Client().get("/accounts/login/", headers={"host": "evil.example"})
    assert response.status_code == 400
    assert_one_warning_line(log.getvalue())


@pytest.mark.parametrize("query", ["?password__startswith=p", "?_to_field=password"])
def test_admin_lookups_a_staff_user_may_not_make_get_400_and_one_log_line_without_a_traceback(
    query: str, make_user: Callable[..., User]
) -> None:
    staff = make_user("staff")
    User.objects.filter(pk=staff.pk).update(is_staff=True, is_superuser=True)
    client = logged_in(staff)
    with console_log() as log:
        response = client.get(f"/admin/auth/user/{query}")
    assert response.status_code == 400
    assert_one_warning_line(log.getvalue())


@pytest.mark.parametrize("minutes", [10**40, -(10**40), 2**31, 2**63, 1e308, "30", True, None])
def test_extend_refuses_any_minutes_outside_its_range_with_its_reason(
    minutes: object, learner: User, caplog: pytest.LogCaptureFixture
) -> None:
    lab = ready_lab(learner)
    response = logged_in(learner).post(f"/api/labs/{lab.id}/extend", {"minutes": minutes}, "application/json")
    # 409 is how the API refuses an action (docs/api.md), a bad body included.
    assert response.status_code == 409
    assert response.json()["error"] in {'"minutes" must be a whole number.', "Extend by 1 to 240 minutes."}
    assert not [record for record in caplog.records if record.exc_info]


def test_a_terminal_size_past_any_screen_takes_the_default() -> None:
    huge = str(10**40).encode()
    assert initial_size(b"cols=" + huge + b"&rows=" + huge) == (80, 24)
    assert initial_size(b"cols=-5&rows=1e3") == (80, 24)


@pytest.mark.parametrize(
    "path",
    [
        f"/teaching/{10**40}/",
        f"/teaching/{10**40}/dashboard/",
        f"/teaching/{10**40}/progress.csv",
        f"/teaching/1/invites/{10**40}/withdraw/",
        f"/teaching/{2**63}/quotas/",
    ],
)
def test_ids_past_any_column_in_teaching_urls_are_refused_cleanly(
    path: str, make_user: Callable[..., User], caplog: pytest.LogCaptureFixture
) -> None:
    teacher = make_user("teacher", instructor=True)
    client = logged_in(teacher)
    # 405 for a page that only takes the other method; never the 500 of an overflowing lookup.
    assert client.get(path).status_code in {404, 405}
    assert client.post(path).status_code in {404, 405}
    assert not [record for record in caplog.records if record.exc_info]
