"""`make run` as a newcomer runs it: it comes up at the printed URL, the demo learner logs in,
opens the first lesson, and a lab launched through the real web server, Celery worker and
watcher comes up with healthy nodes, then stops."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.conftest import wait_for

pytestmark = [pytest.mark.smoke, pytest.mark.docker]


def test_newcomer_runs_stacklab_logs_in_and_launches_the_first_lab(stacklab: str) -> None:
    with httpx.Client(base_url=stacklab, follow_redirects=True, timeout=30) as client:
        login_page = client.get("/accounts/login/")
        token = login_page.text.split('name="csrfmiddlewaretoken" value="')[1].split('"')[0]
        home = client.post(
            "/accounts/login/", data={"username": "learner", "password": "stacklab-demo", "csrfmiddlewaretoken": token}
        )
        assert "Backend architecture, hands-on" in home.text
        lesson = client.get("/lessons/load-balancing/")
        assert lesson.status_code == 200
        assert "<h1>Load balancing across replicas</h1>" in lesson.text

        headers = {"X-CSRFToken": client.cookies["csrftoken"], "Referer": stacklab}
        launched = client.post("/api/lessons/load-balancing/lab", headers=headers)
        assert launched.status_code == 201, launched.text
        lab_id = launched.json()["id"]

        def ready_with_healthy_nodes() -> dict | None:
            snapshot = client.get(f"/api/labs/{lab_id}/").json()
            assert snapshot["lab"]["state"] != "failed", snapshot["lab"]["reason"]
            states = {node["state"] for node in snapshot["nodes"]}
            return snapshot if snapshot["lab"]["state"] == "ready" and states == {"healthy"} else None

        snapshot = wait_for(ready_with_healthy_nodes, 180, "a ready lab with healthy nodes (worker + watcher)")
        assert len(snapshot["nodes"]) == 7

        assert client.post(f"/api/labs/{lab_id}/stop", headers=headers).status_code == 202
        wait_for(lambda: client.get(f"/api/labs/{lab_id}/").json()["lab"]["state"] == "stopped", 60, "lab stopped")
