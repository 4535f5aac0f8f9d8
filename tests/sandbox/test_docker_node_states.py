"""Node states follow the real engine, whatever happens behind the platform's back: a process
OOM-killed inside a node that serves on leaves it healthy, and a ready lab whose containers are
removed outside Stacklab (its network left behind) ends failed with its reason, and nothing of it
stays on the engine."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.test import Client

from sandbox import lifecycle
from sandbox.engine import Engine
from sandbox.models import Lab, LabEvent, Node
from sandbox.monitor import Monitor
from stacklab.asgi import application
from tests.sandbox.test_consumers import headers_for
from tests.sandbox.test_docker_lab import Message, in_thread, lab_objects

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.django_db(transaction=True)]

OOM_LINE = "A process in app-3 ran out of memory and was killed"
# How long the watcher may take from the `docker rm -f` of a lab's last container to the failed
# lab with nothing left on the engine. Measured: well under a second (see the printed figure);
# the bound leaves room for a loaded machine. Without the watcher, beat's reconcile does it
# within 60 s.
REMOVED_TO_FAILED_SECONDS = 10


@pytest.fixture
def monitor(engine: Engine) -> Iterator[Monitor]:
    watcher = Monitor(poll_seconds=0.5)
    thread = watcher.start_in_thread()
    yield watcher
    watcher.stop()
    thread.join(timeout=10)


def launch_ready_lab(user: User) -> Lab:
    lab, _ = lifecycle.request_lab(user, "scaling-load-balancer", "load-balancing")
    lifecycle.provision_lab(str(lab.id))
    lab.refresh_from_db()
    assert lab.state == Lab.State.READY, lab.reason
    return lab


def wait_for(condition, timeout: float, what: str) -> None:  # noqa: ANN001 - a callable returning bool
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:.0f}s")
        time.sleep(0.1)


async def test_an_oom_kill_inside_a_node_leaves_it_healthy_on_the_page_api_and_rows(
    engine: Engine, monitor: Monitor
) -> None:
    user = await database_sync_to_async(User.objects.create_user)(username="oom", password="pw")
    lab = await in_thread(launch_ready_lab, user)
    await in_thread(
        wait_for,
        lambda: Node.objects.get(lab=lab, name="app-3").state == Node.State.HEALTHY,
        20,
        "healthy app-3",
    )
    communicator = WebsocketCommunicator(
        application, f"/ws/labs/{lab.id}/", headers=await database_sync_to_async(headers_for)(user)
    )
    connected, _ = await communicator.connect()
    assert connected
    try:
        assert (await communicator.receive_json_from())["type"] == "snapshot"
        # A learner's process in app-3 allocates past the node's 96 MiB: the kernel's OOM killer
        # ends it, and the node's server (PID 1's child) serves on.
        hog = ["python3", "-c", "s = 'x' * (400 * 2**20)"]
        result = await in_thread(engine.exec, lab.short_id, "app-3", hog, "app")
        assert result.exit_code == 137, result.output  # SIGKILL
        seen: list[Message] = []
        deadline = time.monotonic() + 10

        def app_3_moved(m: Message) -> bool:
            return m.get("type") == "node" and m["name"] == "app-3"

        def oom_line(m: Message) -> bool:
            return m.get("type") == "event" and m["message"] == OOM_LINE

        while not any(oom_line(m) or app_3_moved(m) for m in seen):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"nothing about app-3 on the page within 10 s; saw {seen[-5:]}"
            try:
                seen.append(await communicator.receive_json_from(timeout=remaining))
            except TimeoutError:
                continue
        assert [m for m in seen if app_3_moved(m)] == []
    finally:
        await communicator.disconnect()

    def page_and_rows() -> tuple[list, list, list]:  # noqa: ANN202
        client = Client()
        client.force_login(user)
        snapshot = client.get(f"/api/labs/{lab.id}/").json()
        nodes = [(n["name"], n["state"]) for n in snapshot["nodes"] if n["name"] == "app-3"]
        timeline = [e["message"] for e in snapshot["timeline"] if e["kind"] == "node" and "app-3" in e["message"]]
        rows = list(Node.objects.filter(lab=lab, name="app-3").values_list("state", flat=True))
        return nodes, timeline, rows

    nodes, timeline, rows = await in_thread(page_and_rows)
    assert nodes == [("app-3", "healthy")]
    assert rows == ["healthy"]
    assert timeline == [OOM_LINE]
    containers, _ = await in_thread(lab_objects, engine, lab.short_id)
    assert {c.labels["stacklab.node"]: c.status for c in containers}["app-3"] == "running"
    await in_thread(lifecycle.stop_lab, str(lab.id))


def test_a_lab_whose_containers_are_removed_outside_the_platform_ends_failed(
    engine: Engine, monitor: Monitor, learner: User
) -> None:
    lab = launch_ready_lab(learner)
    containers, networks = lab_objects(engine, lab.short_id)
    assert len(containers) == 7 and len(networks) == 1
    removed = time.monotonic()
    subprocess.run(["docker", "rm", "-f", *[c.name for c in containers]], check=True, capture_output=True)
    after_rm = time.monotonic() - removed

    def ended() -> bool:
        return Lab.objects.get(pk=lab.pk).state != Lab.State.READY and lab_objects(engine, lab.short_id) == ([], [])

    wait_for(ended, REMOVED_TO_FAILED_SECONDS, "failed lab with nothing left on the engine")
    print(
        f"docker rm -f of 7 containers took {after_rm:.2f}s; "
        f"from its start to the failed lab with nothing left: {time.monotonic() - removed:.2f}s"
    )
    lab.refresh_from_db()
    assert lab.state == Lab.State.FAILED
    assert lab.reason == "The lab's containers were removed outside Stacklab; launch the lab again."
    assert LabEvent.objects.filter(lab=lab, message=f"Lab failed: {lab.reason}").exists()
    assert set(Node.objects.filter(lab=lab).values_list("state", flat=True)) == {Node.State.DOWN}
