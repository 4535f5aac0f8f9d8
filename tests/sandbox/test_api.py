"""The lab HTTP API: the owner acts, an instructor watches, anyone else is told nothing."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from sandbox import lifecycle
from sandbox.models import Lab


@pytest.fixture
def ready_lab(learner) -> Lab:  # noqa: ANN001
    lab, _ = lifecycle.request_lab(learner, "scaling-load-balancer", "load-balancing")
    now = timezone.now()
    Lab.objects.filter(pk=lab.pk).update(state=Lab.State.READY, ready_at=now, expires_at=now + timedelta(minutes=60))
    lab.refresh_from_db()
    return lab


def client_for(user) -> Client:  # noqa: ANN001
    client = Client()
    client.force_login(user)
    return client


def test_owner_sees_the_lab_snapshot(learner, ready_lab: Lab) -> None:  # noqa: ANN001
    response = client_for(learner).get(f"/api/labs/{ready_lab.id}/")
    assert response.status_code == 200
    body = response.json()
    assert body["type"] == "snapshot"
    assert body["lab"]["state"] == "ready"
    assert [o["key"] for o in body["objectives"]] == [
        "traffic-flows",
        "survives-replica-loss",
        "health-checked",
        "why-it-failed",
    ]


def test_another_learner_gets_not_found_everywhere(
    make_user, ready_lab: Lab, django_capture_on_commit_callbacks
) -> None:  # noqa: ANN001, E501
    other = client_for(make_user("mallory"))
    assert other.get(f"/api/labs/{ready_lab.id}/").status_code == 404
    with django_capture_on_commit_callbacks() as queued:
        for action in ("stop", "extend", "break"):
            assert other.post(f"/api/labs/{ready_lab.id}/{action}").status_code == 404
    assert queued == []  # nothing was sent to a worker
    expires_at = ready_lab.expires_at
    ready_lab.refresh_from_db()
    assert ready_lab.expires_at == expires_at


def test_anonymous_gets_401(ready_lab: Lab) -> None:
    response = Client().get(f"/api/labs/{ready_lab.id}/")
    assert response.status_code == 401
    assert response.json() == {"error": "Log in first."}


def test_instructor_can_watch_but_not_act(make_user, ready_lab: Lab, django_capture_on_commit_callbacks) -> None:  # noqa: ANN001, E501
    instructor = client_for(make_user("teacher", instructor=True, teaching=[ready_lab.owner]))
    assert instructor.get(f"/api/labs/{ready_lab.id}/").status_code == 200
    with django_capture_on_commit_callbacks() as queued:
        for action in ("stop", "extend", "break"):
            assert instructor.post(f"/api/labs/{ready_lab.id}/{action}").status_code == 404
    assert queued == []


def test_malformed_lab_id_is_not_found(learner) -> None:  # noqa: ANN001
    assert client_for(learner).get("/api/labs/not-a-uuid/").status_code == 404


def test_stop_queues_teardown(learner, ready_lab: Lab, django_capture_on_commit_callbacks) -> None:  # noqa: ANN001
    with django_capture_on_commit_callbacks() as callbacks:
        response = client_for(learner).post(f"/api/labs/{ready_lab.id}/stop")
    assert response.status_code == 202
    assert len(callbacks) == 1


def test_extend_moves_expiry_and_rejects_bad_minutes(learner, ready_lab: Lab) -> None:  # noqa: ANN001
    client = client_for(learner)
    response = client.post(f"/api/labs/{ready_lab.id}/extend", {"minutes": 15}, content_type="application/json")
    assert response.status_code == 200
    assert response.json()["expires_at"] == (ready_lab.expires_at + timedelta(minutes=15)).isoformat()
    bad = client.post(f"/api/labs/{ready_lab.id}/extend", {"minutes": "lots"}, content_type="application/json")
    assert bad.status_code == 409
    assert bad.json() == {"error": '"minutes" must be a whole number.'}
    garbage = client.post(f"/api/labs/{ready_lab.id}/extend", "{not json", content_type="application/json")
    assert garbage.status_code == 409


def test_break_before_ready_is_refused(learner) -> None:  # noqa: ANN001
    lab, _ = lifecycle.request_lab(learner, "scaling-load-balancer", "load-balancing")
    response = client_for(learner).post(f"/api/labs/{lab.id}/break")
    assert response.status_code == 409
    assert response.json()["error"] == "The lab can be broken once it is ready."


def test_snapshot_carries_faults_timeline_hints_solution_and_topology(learner, ready_lab: Lab) -> None:  # noqa: ANN001
    body = client_for(learner).get(f"/api/labs/{ready_lab.id}/").json()
    assert {"key": "kill-app-2", "title": "Kill replica app-2", "node": "app-2"}.items() <= body["faults"][0].items()
    assert body["hints"] == {"shown": [], "total": 3}
    assert "option httpchk" in body["solution"]
    assert ["traffic", "lb"] in body["topology"]["edges"]
    assert body["timeline"] == []


def test_fault_endpoint_queues_a_known_fault_and_404s_an_unknown_one(
    learner, ready_lab: Lab, django_capture_on_commit_callbacks
) -> None:  # noqa: ANN001, E501
    client = client_for(learner)
    with django_capture_on_commit_callbacks() as queued:
        assert client.post(f"/api/labs/{ready_lab.id}/faults/pause-app-3").status_code == 202
        assert client.post(f"/api/labs/{ready_lab.id}/faults/drop-tables").status_code == 404
        assert client.post(f"/api/labs/{ready_lab.id}/nodes/app-9/restart").status_code == 404
        assert client.post(f"/api/labs/{ready_lab.id}/nodes/app-1/restart").status_code == 202
        assert client.post(f"/api/labs/{ready_lab.id}/reset").status_code == 202
    assert len(queued) == 3


def test_hint_endpoint_reveals_hints_in_order(learner, ready_lab: Lab) -> None:  # noqa: ANN001
    client = client_for(learner)
    first = client.post(f"/api/labs/{ready_lab.id}/hints/next").json()
    assert (first["index"], first["total"]) == (1, 3)
    client.post(f"/api/labs/{ready_lab.id}/hints/next")
    client.post(f"/api/labs/{ready_lab.id}/hints/next")
    exhausted = client.post(f"/api/labs/{ready_lab.id}/hints/next")
    assert exhausted.status_code == 409
    snapshot = client.get(f"/api/labs/{ready_lab.id}/").json()
    assert len(snapshot["hints"]["shown"]) == 3
    assert [e["kind"] for e in snapshot["timeline"]] == ["hint", "hint", "hint"]


def test_controls_on_a_lab_that_is_not_running_are_refused(learner) -> None:  # noqa: ANN001
    lab, _ = lifecycle.request_lab(learner, "scaling-load-balancer", "load-balancing")
    client = client_for(learner)
    for path in ("faults/pause-app-3", "nodes/app-1/restart", "reset", "skip"):
        response = client.post(f"/api/labs/{lab.id}/{path}")
        assert response.status_code == 409
        assert response.json()["error"].startswith("The lab must be running to")


def test_still_here_moves_the_idle_stop_back(learner, make_user, ready_lab: Lab) -> None:  # noqa: ANN001
    Lab.objects.filter(pk=ready_lab.pk).update(last_active_at=timezone.now() - timedelta(minutes=25))
    assert client_for(learner).get(f"/api/labs/{ready_lab.id}/").json()["lab"]["idle_seconds_left"] <= 300
    response = client_for(learner).post(f"/api/labs/{ready_lab.id}/active")
    assert response.status_code == 200
    assert response.json()["idle_seconds_left"] > 29 * 60
    assert client_for(make_user("mallory")).post(f"/api/labs/{ready_lab.id}/active").status_code == 404


def test_state_changing_api_needs_csrf(learner, ready_lab: Lab) -> None:  # noqa: ANN001
    client = Client(enforce_csrf_checks=True)
    client.force_login(learner)
    assert client.post(f"/api/labs/{ready_lab.id}/stop").status_code == 403
