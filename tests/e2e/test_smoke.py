"""`make run` as a newcomer runs it (no DATABASE_URL, no REDIS_URL): it comes up at the printed
URL, the demo learner logs in, opens the first lesson, and a lab launched through the real web
server, Celery worker and watcher comes up with healthy nodes, then stops."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sandbox.engine import Engine

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.smoke, pytest.mark.docker]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check, timeout: float, what: str):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"{what} not reached within {timeout:.0f}s (last: {last!r})")


@pytest.fixture
def stacklab(tmp_path_factory: pytest.TempPathFactory, engine) -> Iterator[str]:  # noqa: ANN001
    run_dir = Path("/tmp") / f"stacklab-smoke-{os.getpid()}"  # short: Unix socket paths are limited
    run_dir.mkdir(exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"}}
    env.update(STACKLAB_RUN_DIR=str(run_dir), STACKLAB_PORT=str(port), STACKLAB_INSTANCE=f"smoke-{os.getpid()}")
    log = (tmp_path_factory.mktemp("smoke") / "make-run.log").open("w+")
    process = subprocess.Popen(
        ["make", "run"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def printed_url() -> bool:
            log.seek(0)
            return f"starting at {url}/" in log.read()

        wait_for(printed_url, 300, "the printed URL")
        wait_for(lambda: httpx.get(f"{url}/accounts/login/").status_code == 200, 60, "the login page")
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.seek(0)
        print(log.read()[-5000:])
        leftovers = Engine(instance=env["STACKLAB_INSTANCE"], subnet_pool="10.213.0.0/16")
        for lab in leftovers.lab_ids():
            leftovers.remove_lab(lab)
        subprocess.run(["rm", "-rf", str(run_dir)], check=False)


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
