"""The instructor's cohort dashboard, through HTTP and its WebSocket: only the cohort's instructors
(and staff) reach the page, the CSV, a learner's lab and its stop; the export's rows; stopping
queues the stop of the cohort's learners' labs only; the socket's snapshot and its live relay of
the runtime's signals."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from course.models import Cohort, Lesson
from sandbox import lifecycle, tasks
from sandbox.models import Lab, ObjectiveResult
from sandbox.signals import announce, lab_state_changed
from stacklab.asgi import application
from tests.conftest import teach_cohort
from tests.sandbox.test_consumers import headers_for

pytestmark = pytest.mark.usefixtures("course_content")

RIGHT_ANSWER = "HAProxy kept sending app-2 its share, because nothing told it that app-2 was down"
LB_OBJECTIVES = ("traffic-flows", "survives-replica-loss", "health-checked", "why-it-failed")


@dataclass
class World:
    teacher: User  # teaches `cohort`: alice and bob
    alice: User
    bob: User
    cohort: Cohort
    other_teacher: User  # teaches `other`: carol
    carol: User
    other: Cohort


@pytest.fixture
def world(make_user: Callable[..., User]) -> World:
    alice, bob, carol = (make_user(name) for name in ("alice", "bob", "carol"))
    for user in (alice, bob, carol):
        user.email = f"{user.username}@example.edu"
        user.save(update_fields=["email"])
    teacher = make_user("teacher", instructor=True)
    cohort = teach_cohort(teacher, [alice, bob], name="Spring cohort")
    other_teacher = make_user("other-teacher", instructor=True)
    other = teach_cohort(other_teacher, [carol], name="Autumn cohort")
    return World(teacher, alice, bob, cohort, other_teacher, carol, other)


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def live_lab(owner: User, lesson: str = "load-balancing", lab: str = "scaling-load-balancer") -> Lab:
    now = timezone.now()
    return Lab.objects.create(
        owner=owner,
        lab_slug=lab,
        lesson_slug=lesson,
        state=Lab.State.READY,
        ready_at=now,
        expires_at=now + timedelta(hours=1),
    )


def dashboard_urls(world: World, lab: Lab) -> list[str]:
    base = f"/teaching/{world.cohort.pk}"
    return [f"{base}/dashboard/", f"{base}/progress.csv", f"{base}/labs/{lab.id}/"]


# -- who may see it ---------------------------------------------------------------------------


def test_the_cohorts_instructor_sees_learners_lessons_and_running_labs(world: World) -> None:
    lab = live_lab(world.alice)
    page = logged_in(world.teacher).get(f"/teaching/{world.cohort.pk}/dashboard/").content.decode()
    assert "<h1>Spring cohort</h1>" in page
    assert f'<tr data-learner="{world.alice.pk}">' in page and '<th scope="row">bob</th>' in page
    assert "carol" not in page  # another cohort's learner
    lesson_columns = [f'<th scope="col" data-lesson="{slug}">' for slug in ("load-balancing", "cache-aside")]
    assert all(column in page for column in lesson_columns)
    assert page.index(lesson_columns[0]) < page.index(lesson_columns[1])  # course order
    assert f'<tr data-lab="{lab.id}"' in page
    assert f'href="/teaching/{world.cohort.pk}/labs/{lab.id}/" data-watch>Watch</a>' in page
    assert f'action="/teaching/{world.cohort.pk}/labs/{lab.id}/stop"' in page
    assert f'href="/teaching/{world.cohort.pk}/progress.csv"' in page
    assert f'data-socket-path="/ws/cohorts/{world.cohort.pk}/"' in page


def test_a_cell_shows_its_status_and_lists_objectives_with_when_they_were_met(world: World) -> None:
    lab = live_lab(world.alice)
    met_at = timezone.now().replace(microsecond=0)
    ObjectiveResult.objects.create(lab=lab, key="traffic-flows", status="met", first_met_at=met_at)
    page = logged_in(world.teacher).get(f"/teaching/{world.cohort.pk}/dashboard/").content.decode()
    row = page[page.index(f'<tr data-learner="{world.alice.pk}">') :]
    cell = row[row.index('data-lesson="load-balancing"') : row.index("</td>")]
    assert 'data-status="in_progress"' in cell
    assert 'data-met="traffic-flows "' in cell
    assert f"✓ Requests succeed through the load balancer: met {met_at:%Y-%m-%d %H:%M}" in cell
    assert "○ No failed requests while a replica is down: not yet met" in cell
    assert '<span class="count">1/4</span>' in cell


def test_a_learner_gets_404_everywhere(world: World, django_capture_on_commit_callbacks) -> None:  # noqa: ANN001
    lab = live_lab(world.alice)
    client = logged_in(world.alice)
    for url in dashboard_urls(world, lab):
        assert client.get(url).status_code == 404, url
    with django_capture_on_commit_callbacks() as queued:
        assert client.post(f"/teaching/{world.cohort.pk}/labs/{lab.id}/stop").status_code == 404
    assert queued == []


def test_an_instructor_of_another_cohort_gets_404_everywhere(world: World, django_capture_on_commit_callbacks) -> None:  # noqa: ANN001, E501
    lab = live_lab(world.alice)
    client = logged_in(world.other_teacher)
    for url in dashboard_urls(world, lab):
        assert client.get(url).status_code == 404, url
    with django_capture_on_commit_callbacks() as queued:
        assert client.post(f"/teaching/{world.cohort.pk}/labs/{lab.id}/stop").status_code == 404
    assert queued == []


def test_anonymous_is_sent_to_log_in(world: World) -> None:
    response = Client().get(f"/teaching/{world.cohort.pk}/dashboard/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_staff_may_see_any_cohort(world: World, make_user: Callable[..., User]) -> None:
    admin = make_user("admin")
    admin.is_staff = True
    admin.save(update_fields=["is_staff"])
    lab = live_lab(world.alice)
    client = logged_in(admin)
    for url in dashboard_urls(world, lab):
        assert client.get(url).status_code == 200, url


def test_a_lab_outside_the_cohort_is_404_even_to_its_instructor(world: World) -> None:
    carols = live_lab(world.carol)
    client = logged_in(world.teacher)
    assert client.get(f"/teaching/{world.cohort.pk}/labs/{carols.id}/").status_code == 404
    assert client.get(f"/teaching/{world.cohort.pk}/labs/not-a-uuid/").status_code == 404
    # Carol's own instructor reaches it only through Carol's cohort.
    assert logged_in(world.other_teacher).get(f"/teaching/{world.other.pk}/labs/{carols.id}/").status_code == 200


# -- the read-only lab and stopping it ----------------------------------------------------------


def test_the_watch_view_is_read_only(world: World) -> None:
    lab = live_lab(world.alice)
    page = logged_in(world.teacher).get(f"/teaching/{world.cohort.pk}/labs/{lab.id}/").content.decode()
    assert 'data-read-only="true"' in page
    assert f'data-lab-id="{lab.id}"' in page
    assert "Requests succeed through the load balancer" in page  # the objectives, server-rendered
    assert 'id="lab-snapshot"' in page  # and the snapshot the panel draws before its socket opens
    for control in ('data-action="launch"', 'data-action="break"', "data-fault=", 'data-action="hint"', "terminal"):
        assert control not in page.lower(), control
    assert "Stop this lab" in page


def test_stop_queues_the_stop_of_a_cohort_learners_lab(
    world: World,
    django_capture_on_commit_callbacks,
    monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
) -> None:
    lab = live_lab(world.alice)
    stops: list[tuple[str, ...]] = []
    monkeypatch.setattr(tasks.stop_lab, "delay", lambda *args: stops.append(args))
    client = logged_in(world.teacher)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/teaching/{world.cohort.pk}/labs/{lab.id}/stop")
    assert response.status_code == 302 and response["Location"] == f"/teaching/{world.cohort.pk}/dashboard/"
    assert stops == [(str(lab.id), "Stopped by your instructor (teacher).")]
    page = client.get(response["Location"]).content.decode()
    assert "Stopping alice&#x27;s lab (load-balancing)." in page


def test_stop_refuses_a_lab_outside_the_cohort_and_queues_nothing(
    world: World,
    django_capture_on_commit_callbacks,  # noqa: ANN001
) -> None:
    carols = live_lab(world.carol)
    with django_capture_on_commit_callbacks() as queued:
        response = logged_in(world.teacher).post(f"/teaching/{world.cohort.pk}/labs/{carols.id}/stop")
    assert response.status_code == 404
    assert queued == []


def test_stopping_a_stopped_lab_says_so_and_queues_nothing(world: World, django_capture_on_commit_callbacks) -> None:  # noqa: ANN001, E501
    lab = live_lab(world.alice)
    Lab.objects.filter(pk=lab.pk).update(state=Lab.State.STOPPED, stopped_at=timezone.now())
    client = logged_in(world.teacher)
    with django_capture_on_commit_callbacks() as queued:
        response = client.post(f"/teaching/{world.cohort.pk}/labs/{lab.id}/stop", {"then": "watch"})
    assert queued == []
    assert response["Location"] == f"/teaching/{world.cohort.pk}/labs/{lab.id}/"
    assert "This lab is already stopped." in client.get(response["Location"]).content.decode()


def test_stop_needs_a_post(world: World) -> None:
    lab = live_lab(world.alice)
    assert logged_in(world.teacher).get(f"/teaching/{world.cohort.pk}/labs/{lab.id}/stop").status_code == 405


# -- the export ---------------------------------------------------------------------------------


def test_progress_csv_has_one_row_per_learner_and_lesson(world: World) -> None:
    start = timezone.now().replace(microsecond=0) - timedelta(hours=3)
    done = Lab.objects.create(
        owner=world.alice,
        lab_slug="scaling-load-balancer",
        lesson_slug="load-balancing",
        state=Lab.State.STOPPED,
        ready_at=start,
        stopped_at=start + timedelta(minutes=90),
    )
    for minutes, key in enumerate(LB_OBJECTIVES, start=10):
        ObjectiveResult.objects.create(lab=done, key=key, status="met", first_met_at=start + timedelta(minutes=minutes))
    Lab.objects.create(
        owner=world.bob,
        lab_slug="cache-aside",
        lesson_slug="cache-aside",
        state=Lab.State.STOPPED,
        ready_at=start,
        stopped_at=start + timedelta(minutes=15),
    )
    assert list(Lesson.objects.values_list("slug", flat=True)) == ["load-balancing", "cache-aside"]

    response = logged_in(world.teacher).get(f"/teaching/{world.cohort.pk}/progress.csv")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"].startswith('attachment; filename="spring-cohort-progress-')
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    completed = (start + timedelta(minutes=13)).isoformat()
    assert rows == [
        [
            "learner",
            "email",
            "lesson",
            "status",
            "objectives_met",
            "objectives_total",
            "first_completed_at",
            "time_in_labs_h",
        ],
        ["alice", "alice@example.edu", "load-balancing", "done", "4", "4", completed, "1.50"],
        ["alice", "alice@example.edu", "cache-aside", "not_started", "0", "4", "", "0.00"],
        ["bob", "bob@example.edu", "load-balancing", "not_started", "0", "4", "", "0.00"],
        ["bob", "bob@example.edu", "cache-aside", "in_progress", "0", "4", "", "0.25"],
    ]


# -- the socket ---------------------------------------------------------------------------------


async def open_dashboard(user: User | None, cohort_id: int) -> tuple[WebsocketCommunicator, bool, int | None]:
    headers = await database_sync_to_async(headers_for)(user)
    communicator = WebsocketCommunicator(application, f"/ws/cohorts/{cohort_id}/", headers=headers)
    connected, code = await communicator.connect()
    return communicator, connected, code


@pytest.mark.django_db(transaction=True)
async def test_socket_sends_a_snapshot_then_relays_a_met_objective(world: World) -> None:
    lab = await database_sync_to_async(live_lab)(world.alice)
    communicator, connected, _ = await open_dashboard(world.teacher, world.cohort.pk)
    try:
        assert connected
        snapshot = await communicator.receive_json_from()
        assert snapshot["type"] == "snapshot"
        assert [learner["username"] for learner in snapshot["learners"]] == ["alice", "bob"]
        assert [lesson["slug"] for lesson in snapshot["lessons"]] == ["load-balancing", "cache-aside"]
        assert [(lab_["lab_id"], lab_["username"], lab_["state"]) for lab_ in snapshot["labs"]] == [
            (str(lab.id), "alice", "ready")
        ]

        # The learner answers the lab's question right: the runtime's signal reaches the dashboard.
        await database_sync_to_async(lifecycle.answer_question)(lab, "why-it-failed", RIGHT_ANSWER)

        message = await communicator.receive_json_from(timeout=5)
        assert {key: message[key] for key in ("type", "lab_id", "learner", "lesson", "key", "status")} == {
            "type": "objective",
            "lab_id": str(lab.id),
            "learner": world.alice.pk,
            "lesson": "load-balancing",
            "key": "why-it-failed",
            "status": "met",
        }
        cell = message["cell"]
        assert cell["status"] == "in_progress" and cell["passed"] == 1 and cell["total"] == 4
        assert [o["key"] for o in cell["objectives"] if o["first_met_at"]] == ["why-it-failed"]
        assert "✓ Explain the failures: met" in cell["summary"]

        await communicator.send_json_to({"type": "snapshot"})
        again = await communicator.receive_json_from()
        assert again["type"] == "snapshot"
        alice = next(learner for learner in again["learners"] if learner["username"] == "alice")
        assert alice["cells"][0]["passed"] == 1
    finally:
        await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_socket_relays_lab_state_changes_of_the_cohorts_learners_only(world: World) -> None:
    alices = await database_sync_to_async(live_lab)(world.alice)
    carols = await database_sync_to_async(live_lab)(world.carol)
    communicator, connected, _ = await open_dashboard(world.teacher, world.cohort.pk)
    try:
        assert connected
        await communicator.receive_json_from()  # snapshot

        def stopped(lab: Lab) -> None:
            Lab.objects.filter(pk=lab.pk).update(state=Lab.State.STOPPED)
            announce(
                lab_state_changed,
                lab_id=str(lab.id),
                owner_id=lab.owner_id,
                lesson_slug=lab.lesson_slug,
                state="stopped",
            )

        await database_sync_to_async(stopped)(carols)  # another cohort's: not relayed here
        await database_sync_to_async(stopped)(alices)
        message = await communicator.receive_json_from(timeout=5)
        assert (message["type"], message["lab_id"], message["state"]) == ("lab", str(alices.id), "stopped")
        assert message["cell"]["status"] == "in_progress"
        assert await communicator.receive_nothing(timeout=0.2)
    finally:
        await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_socket_refuses_an_instructor_of_another_cohort_a_learner_and_anonymous(world: World) -> None:
    for user, code in ((world.other_teacher, 4404), (world.alice, 4404), (None, 4401)):
        communicator, connected, closed_with = await open_dashboard(user, world.cohort.pk)
        assert not connected
        assert closed_with == code
        await communicator.disconnect()
    communicator, connected, closed_with = await open_dashboard(world.teacher, 999_999)
    assert (connected, closed_with) == (False, 4404)
    await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_socket_lets_staff_in(world: World) -> None:
    @database_sync_to_async
    def make_staff() -> User:
        return User.objects.create_user(username="admin", password="pw", is_staff=True)

    communicator, connected, _ = await open_dashboard(await make_staff(), world.cohort.pk)
    try:
        assert connected
        assert (await communicator.receive_json_from())["type"] == "snapshot"
    finally:
        await communicator.disconnect()


def test_a_failing_relay_never_reaches_the_runtime(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from course import receivers

    def broken(*args: object) -> int:
        raise ConnectionError("channel layer is away")

    monkeypatch.setattr(receivers, "publish_to_cohorts", broken)
    lab = live_lab(world.alice)
    answered = lifecycle.answer_question(lab, "why-it-failed", RIGHT_ANSWER)
    assert answered["status"] == "met"
    assert ObjectiveResult.objects.get(lab=lab, key="why-it-failed").first_met_at is not None
    assert "could not tell the dashboards objective why-it-failed is met" in caplog.text
