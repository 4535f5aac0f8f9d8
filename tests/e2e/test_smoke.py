"""`make run` as a newcomer runs it: it comes up at the printed URL, the demo learner logs in,
opens the first lesson, and a lab launched through the real web server, Celery worker and
watcher comes up with healthy nodes, then stops."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.conftest import launch_first_lab_until_ready, log_in_as_learner, stop_lab_until_stopped

pytestmark = [pytest.mark.smoke, pytest.mark.docker]


def test_newcomer_runs_stacklab_logs_in_and_launches_the_first_lab(stacklab: str) -> None:
    with httpx.Client(base_url=stacklab, follow_redirects=True, timeout=30) as client:
        assert "Backend architecture, hands-on" in log_in_as_learner(client)
        lesson = client.get("/lessons/load-balancing/")
        assert lesson.status_code == 200
        assert "<h1>Load balancing across replicas</h1>" in lesson.text

        lab_id, snapshot = launch_first_lab_until_ready(
            client, stacklab, "a ready lab with healthy nodes (worker + watcher)"
        )
        assert len(snapshot["nodes"]) == 7
        stop_lab_until_stopped(client, stacklab, lab_id)
