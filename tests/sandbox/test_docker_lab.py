"""The first lab on the real Docker engine, driven as a learner would: launch to ready, watch it
over the WebSocket, `docker kill` a replica, see the node go down and the objective go red, apply
the documented fix, see it go green, stop, and find nothing left on the engine. Plus the reaper
and reconciliation against real engine objects."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.db import connection
from django.utils import timezone

from sandbox import lifecycle
from sandbox.checks import run_check
from sandbox.engine import LABEL_LAB, Engine, NodeRun
from sandbox.models import Lab, Node, ObjectiveResult
from sandbox.monitor import Monitor
from sandbox.specs import CommandCheck, HttpCheck, load_lab
from stacklab.asgi import application
from tests.sandbox.test_consumers import headers_for

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.django_db(transaction=True)]

Message = dict[str, Any]


async def receive_until(
    communicator: WebsocketCommunicator, wanted: Callable[[Message], bool], timeout: float, what: str
) -> Message:
    """The first message that satisfies `wanted`, failing with what was seen if none comes."""
    deadline = time.monotonic() + timeout
    seen: list[Message] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no {what} within {timeout:.0f}s; last messages: {seen[-5:]}")
        try:
            message = await communicator.receive_json_from(timeout=remaining)
        except TimeoutError:
            continue
        if wanted(message):
            return message
        seen.append(message)


async def in_thread(function: Callable[..., Any], *args: Any) -> Any:
    """Run blocking code (the lifecycle, the engine) off the event loop, closing the database
    connection that thread opened so the test database can be dropped afterwards."""

    def call() -> Any:
        try:
            return function(*args)
        finally:
            connection.close()

    return await asyncio.to_thread(call)


def objective_is(key: str, status: str) -> Callable[[Message], bool]:
    return lambda m: m.get("type") == "objective" and m["key"] == key and m["status"] == status


def lab_objects(engine: Engine, short_id: str) -> tuple[list[Any], list[Any]]:
    filters = {"label": [f"{LABEL_LAB}={short_id}"]}
    return engine.client.containers.list(all=True, filters=filters), engine.client.networks.list(filters=filters)


@pytest.fixture
def monitor(engine: Engine):  # noqa: ANN201
    watcher = Monitor(poll_seconds=0.5)
    thread = watcher.start_in_thread()
    yield watcher
    watcher.stop()
    thread.join(timeout=10)


def assert_hardened(engine: Engine, lab: Lab) -> None:
    containers, networks = lab_objects(engine, lab.short_id)
    assert sorted(c.labels["stacklab.node"] for c in containers) == [
        "app-1",
        "app-2",
        "app-3",
        "cache",
        "db",
        "lb",
        "traffic",
    ]
    assert len(networks) == 1 and networks[0].attrs["Internal"] is True
    for container in containers:
        host = container.attrs["HostConfig"]
        assert container.labels["stacklab.owner"] == str(lab.owner_id)
        assert host["Privileged"] is False
        assert host["CapDrop"] == ["ALL"]
        assert host["SecurityOpt"] == ["no-new-privileges:true"]
        assert host["Memory"] > 0 and host["Memory"] == host["MemorySwap"]
        assert host["PidsLimit"] > 0 and host["CpuQuota"] > 0
        assert not host.get("PortBindings")
        assert not any("docker.sock" in mount.get("Source", "") for mount in container.attrs["Mounts"])


async def test_learner_breaks_and_fixes_the_first_lab(engine: Engine, monitor: Monitor) -> None:
    user = await database_sync_to_async(User.objects.create_user)(username="ada", password="pw")
    lab, created = await database_sync_to_async(lifecycle.request_lab)(user, "scaling-load-balancer", "load-balancing")
    assert created
    communicator = WebsocketCommunicator(
        application, f"/ws/labs/{lab.id}/", headers=await database_sync_to_async(headers_for)(user)
    )
    connected, _ = await communicator.connect()
    assert connected
    try:
        assert (await communicator.receive_json_from())["type"] == "snapshot"
        started = time.monotonic()
        await in_thread(lifecycle.provision_lab, str(lab.id))
        await receive_until(
            communicator,
            lambda m: m.get("type") == "step" and m["message"] == "Started app-2",
            5,
            "provisioning step for app-2",
        )
        ready = await receive_until(
            communicator,
            lambda m: m.get("type") == "lab" and m["state"] != "provisioning",
            5,
            "lab state after provisioning",
        )
        assert ready["state"] == "ready", ready["reason"]
        print(f"launch to ready: {time.monotonic() - started:.1f}s")
        await database_sync_to_async(lab.refresh_from_db)()
        await in_thread(assert_hardened, engine, lab)

        # Steady traffic through the load balancer, spread over the three replicas.
        metrics = await receive_until(
            communicator,
            lambda m: m.get("type") == "metrics" and len(m["replicas"]) == 3 and m["completed"] > 0,
            20,
            "metrics over three replicas",
        )
        assert metrics["error_rate"] == 0
        await receive_until(communicator, objective_is("traffic-flows", "met"), 30, "traffic-flows met")

        # Checks run in the nodes: an HTTP request from the traffic node through the balancer,
        # one that gets a 404, and a command that outlives its timeout (stopped in the node).
        package = load_lab(lab.lab_slug)
        through_lb = HttpCheck(kind="http", node="traffic", url="http://lb:8080/", headers={"X-Replica": "^app-[123]$"})
        outcome = await in_thread(run_check, engine, lab.short_id, through_lb, package)
        assert outcome.passed, outcome.reason
        missing = HttpCheck(kind="http", node="traffic", url="http://lb:8080/data/nothing-here", body="never")
        outcome = await in_thread(run_check, engine, lab.short_id, missing, package)
        assert not outcome.passed
        assert outcome.reason.startswith(
            "GET http://lb:8080/data/nothing-here from traffic: answered 404 (expected 200)"
        )
        slow = CommandCheck(kind="command", node="lb", command=["sleep", "30"], timeout=1)
        waited = time.monotonic()
        outcome = await in_thread(run_check, engine, lab.short_id, slow, package)
        assert not outcome.passed and outcome.reason == "sleep 30 in lb: still running after 1 s (stopped)"
        assert time.monotonic() - waited < 5

        # A replica dies: the page hears about it within a second, then sees errors.
        killed = time.monotonic()
        subprocess.run(["docker", "kill", f"stacklab-{lab.short_id}-app-2"], check=True, capture_output=True)
        down = await receive_until(
            communicator, lambda m: m.get("type") == "node" and m["name"] == "app-2", 5, "node message for app-2"
        )
        assert down["state"] == "down"
        print(f"docker kill to node-down message: {(time.monotonic() - killed) * 1000:.0f} ms")
        await receive_until(
            communicator, lambda m: m.get("type") == "metrics" and m["error_rate"] > 0.1, 10, "error rate rising"
        )
        failing = await receive_until(
            communicator, objective_is("survives-replica-loss", "failing"), 15, "survives-replica-loss failing"
        )
        assert "while app-2 is down" in failing["reason"]

        # The documented fix, applied inside the load balancer: health checks on. HAProxy's own
        # view (the command check) turns green within a few seconds.
        result = await in_thread(lifecycle.run_solution, lab)
        assert result.exit_code == 0, result.output
        checked = await receive_until(communicator, objective_is("health-checked", "met"), 15, "health-checked met")
        assert checked["reason"] == "health-checked.sh in lb: exit 0"
        met = await receive_until(
            communicator, objective_is("survives-replica-loss", "met"), 90, "survives-replica-loss met"
        )
        assert met["first_met_at"] is not None
        assert met["reason"].startswith("Error rate ")
        assert met["reason"].endswith("over 30 s while app-2 is down")
        progress = await database_sync_to_async(ObjectiveResult.objects.get)(lab=lab, key="survives-replica-loss")
        assert progress.first_met_at is not None

        # A declared fault from the panel, run inside a replica: half of app-1's answers fail.
        await in_thread(lifecycle.inject_fault, str(lab.id), "errors-app-1")
        await receive_until(
            communicator,
            lambda m: m.get("type") == "event" and m["message"] == "Fault: app-1 fails half its requests",
            10,
            "the fault on the timeline",
        )
        await receive_until(
            communicator, lambda m: m.get("type") == "metrics" and m["error_rate"] > 0.05, 10, "errors from app-1"
        )

        # Stop: nothing of the lab is left on the engine.
        await in_thread(lifecycle.stop_lab, str(lab.id))
        stopped = await receive_until(
            communicator, lambda m: m.get("type") == "lab" and m["state"] == "stopped", 10, "lab stopped"
        )
        assert stopped["id"] == str(lab.id)
        containers, networks = await in_thread(lab_objects, engine, lab.short_id)
        assert containers == [] and networks == []
    finally:
        await communicator.disconnect()
        await in_thread(engine.remove_lab, lab.short_id)


def start_orphan(engine: Engine, short_id: str) -> None:
    """Engine objects labelled as a lab of this instance, with no row behind them."""
    network = engine.create_network(short_id, owner=0)
    package = load_lab("scaling-load-balancer")
    image = engine.ensure_image(package.build_context(package.spec.node("cache")))
    engine.start_node(
        NodeRun(lab=short_id, owner=0, name="cache", group="cache", image=image, ip=network.address(10)), network
    )


def test_reaper_removes_orphans(engine: Engine) -> None:
    start_orphan(engine, "0rphan000001")
    assert "0rphan000001" in engine.lab_ids()
    report = lifecycle.reap_labs()
    assert "0rphan000001" in report["orphans"]
    assert lab_objects(engine, "0rphan000001") == ([], [])


def test_reconcile_after_a_restart_agrees_both_ways(engine: Engine, learner: User) -> None:
    # The state a crash leaves: a row that says ready with nothing on the engine, and engine
    # objects no row owns. The monitor reconciles when it starts.
    lab, _ = lifecycle.request_lab(learner, "scaling-load-balancer", "load-balancing")
    Lab.objects.filter(pk=lab.pk).update(state=Lab.State.READY, ready_at=timezone.now(), expires_at=timezone.now())
    Node.objects.create(lab=lab, name="lb", group="lb", role="lb", state=Node.State.HEALTHY)
    start_orphan(engine, "0rphan000002")
    watcher = Monitor(poll_seconds=0.5)
    thread = watcher.start_in_thread()
    try:
        deadline = time.monotonic() + 20
        while Lab.objects.get(pk=lab.pk).state == Lab.State.READY and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        watcher.stop()
        thread.join(timeout=10)
    lab.refresh_from_db()
    assert lab.state == Lab.State.FAILED
    assert lab.reason == "The lab's containers were removed outside Stacklab; launch the lab again."
    assert lab_objects(engine, "0rphan000002") == ([], [])
