"""Course pages and the launch endpoint, as a learner's browser (or a tool) uses them."""

from __future__ import annotations

import pytest
from django.test import Client

from sandbox.models import Lab

pytestmark = pytest.mark.usefixtures("course_content")


def logged_in(user) -> Client:  # noqa: ANN001
    client = Client()
    client.force_login(user)
    return client


def test_course_needs_a_login() -> None:
    response = Client().get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_login_page_logs_the_demo_learner_in(learner) -> None:  # noqa: ANN001
    client = Client()
    response = client.post("/accounts/login/", {"username": "learner", "password": "pw-learner"})
    assert response.status_code == 302
    assert client.get("/").status_code == 200


def test_course_outline_lists_modules_and_the_first_lesson(learner) -> None:  # noqa: ANN001
    page = logged_in(learner).get("/").content.decode()
    for module in ("Scaling", "Data tiers", "Automation", "Monitoring", "Security", "Incident response"):
        assert module in page
    assert 'href="/lessons/load-balancing/"' in page


def test_lesson_page_renders_markdown_and_the_lab_panel(learner) -> None:  # noqa: ANN001
    page = logged_in(learner).get("/lessons/load-balancing/").content.decode()
    assert "<h1>Load balancing across replicas</h1>" in page
    assert "<h2>Break it</h2>" in page
    assert 'data-action="launch"' in page
    assert "No failed requests while a replica is down" in page
    assert 'data-launch-url="/api/lessons/load-balancing/lab"' in page


def test_unknown_lesson_is_404(learner) -> None:  # noqa: ANN001
    client = logged_in(learner)
    assert client.get("/lessons/no-such-lesson/").status_code == 404
    assert client.post("/api/lessons/no-such-lesson/lab").status_code == 404
    assert Lab.objects.count() == 0


def test_launch_creates_the_lab_once_and_queues_provisioning(learner, django_capture_on_commit_callbacks) -> None:  # noqa: ANN001
    client = logged_in(learner)
    with django_capture_on_commit_callbacks() as callbacks:
        first = client.post("/api/lessons/load-balancing/lab")
        second = client.post("/api/lessons/load-balancing/lab")
    assert first.status_code == 201
    assert second.status_code == 200
    assert first.json()["id"] == second.json()["id"]
    assert first.json()["state"] == "requested"
    assert len(callbacks) == 1
    page = client.get("/lessons/load-balancing/").content.decode()
    assert f'data-lab-id="{first.json()["id"]}"' in page


def test_launch_needs_post_and_login(learner) -> None:  # noqa: ANN001
    assert Client().post("/api/lessons/load-balancing/lab").status_code == 401
    assert logged_in(learner).get("/api/lessons/load-balancing/lab").status_code == 405


def test_progress_tells_passed_from_skipped(learner) -> None:  # noqa: ANN001
    from datetime import timedelta

    from django.utils import timezone

    from sandbox import lifecycle
    from sandbox.models import ObjectiveResult

    lab, _ = lifecycle.request_lab(learner, "scaling-load-balancer", "load-balancing")
    now = timezone.now()
    Lab.objects.filter(pk=lab.pk).update(state=Lab.State.STOPPED, skipped_at=now)
    ObjectiveResult.objects.create(lab=lab, key="traffic-flows", status="met", first_met_at=now - timedelta(minutes=5))
    ObjectiveResult.objects.create(
        lab=lab, key="survives-replica-loss", status="met", first_met_at=now + timedelta(seconds=40)
    )
    page = logged_in(learner).get("/lessons/load-balancing/").content.decode()
    assert "first met" in page
    assert "skipped (solution run for you)" in page
