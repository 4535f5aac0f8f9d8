"""Network faults on the real engine: the lab's packet-loss fault makes requests to app-1 fail,
its heal fault brings them all back, and app-1 never holds a capability — the iptables rules are
written by a short-lived sidecar in app-1's network namespace, which is gone afterwards."""

from __future__ import annotations

import time

import pytest
from django.contrib.auth.models import User

from sandbox import lifecycle
from sandbox.engine import LABEL_LAB, LABEL_SIDECAR, Engine, Health, Network, NodeRun
from sandbox.models import Lab, LabEvent
from sandbox.nodestates import state_from_status
from sandbox.specs import load_lab

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True)]

LAB = "scaling-load-balancer"
REQUESTS = 100
# GET /healthz on app-1 REQUESTS times from another node, 0.3 s each; prints how many failed.
PROBE = f"""
import socket, urllib.request
address = socket.gethostbyname("app-1")
failed = 0
for _ in range({REQUESTS}):
    try:
        urllib.request.urlopen(f"http://{{address}}:8080/healthz", timeout=0.3).read()
    except Exception:  # a timeout, a reset, a truncated answer: all count
        failed += 1
print(failed)
"""
# Why "at least 5 of 100 fail" under 30 % loss cannot flake: every request opens a new connection,
# and the rule drops its SYN with probability 0.3, independently. A dropped SYN is sent again only
# after Linux's initial 1 s retransmission timeout, past the probe's 0.3 s, so that request fails
# (other dropped segments only add failures). Failures are thus at least Binomial(100, 0.3), mean
# 30, and P(Binomial(100, 0.3) < 5) is about 5e-11.
AT_LEAST_FAILED = 5


def start_app(engine: Engine, lab: Lab, network: Network, name: str, index: int) -> None:
    package = load_lab(LAB)
    app = package.spec.node("app")
    assert app.health is not None
    engine.start_node(
        NodeRun(
            lab=lab.short_id,
            owner=lab.owner_id,
            name=name,
            group="app",
            image=engine.ensure_image(package.build_context(app)),
            ip=network.address(index),
            env={"REPLICA_NAME": name},
            health=Health(command=app.health.command, interval=0.5, timeout=2, retries=2),
            memory_bytes=app.limits.memory_bytes,
            cpus=app.limits.cpus,
            pids=app.limits.pids,
            writable=app.writable_bytes,
        ),
        network,
    )


def wait_healthy(engine: Engine, lab: Lab, names: set[str], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        healthy = {s.name for s in engine.node_statuses(lab.short_id) if state_from_status(s) == "healthy"}
        if names <= healthy:
            return
        assert time.monotonic() < deadline, f"{sorted(names - healthy)} not healthy within {timeout:.0f}s"
        time.sleep(0.2)


def failed_requests(engine: Engine, lab: Lab) -> int:
    result = engine.exec(lab.short_id, "app-2", ["python3", "-c", PROBE])
    assert result.exit_code == 0, result.output
    return int(result.output.strip())


def last_event(lab: Lab) -> str:
    return LabEvent.objects.filter(lab=lab).order_by("pk").last().message


def test_packet_loss_fails_requests_to_app_1_and_heal_restores_them(engine: Engine, learner: User) -> None:
    lab = Lab.objects.create(owner=learner, lab_slug=LAB, lesson_slug="load-balancing", state=Lab.State.READY)
    try:
        network = engine.create_network(lab.short_id, lab.owner_id)
        start_app(engine, lab, network, "app-1", 10)
        start_app(engine, lab, network, "app-2", 11)
        wait_healthy(engine, lab, {"app-1", "app-2"})
        assert failed_requests(engine, lab) == 0

        started = time.monotonic()
        lifecycle.inject_fault(str(lab.id), "packet-loss-app-1")
        print(f"packet-loss fault injected in {time.monotonic() - started:.2f}s")
        assert last_event(lab) == "Fault: Lose 30% of packets to app-1"
        failed = failed_requests(engine, lab)
        print(f"under 30% packet loss: {failed} of {REQUESTS} requests failed")
        assert failed >= AT_LEAST_FAILED

        lifecycle.inject_fault(str(lab.id), "heal-network-app-1")
        assert last_event(lab) == "Fault: Heal app-1's network"
        assert failed_requests(engine, lab) == 0

        # app-1 never held a capability: not in its config, not in its processes.
        target = engine.client.containers.get(engine.container_name(lab.short_id, "app-1"))
        assert not target.attrs["HostConfig"]["CapAdd"]
        assert target.attrs["HostConfig"]["CapDrop"] == ["ALL"]
        capabilities = engine.exec(lab.short_id, "app-1", ["grep", "CapEff", "/proc/1/status"]).output
        assert capabilities.split() == ["CapEff:", "0000000000000000"]
        # Both sidecars are gone; only the two nodes are left.
        left = engine.client.containers.list(all=True, filters={"label": f"{LABEL_LAB}={lab.short_id}"})
        assert sorted(c.labels.get("stacklab.node") for c in left) == ["app-1", "app-2"]
        assert not [c for c in left if LABEL_SIDECAR in c.labels]
    finally:
        engine.remove_lab(lab.short_id)


def test_network_fault_on_a_stopped_node_fails_on_the_timeline(engine: Engine, learner: User) -> None:
    lab = Lab.objects.create(owner=learner, lab_slug=LAB, lesson_slug="load-balancing", state=Lab.State.READY)
    try:
        network = engine.create_network(lab.short_id, lab.owner_id)
        start_app(engine, lab, network, "app-1", 10)
        engine.act_on_node(lab.short_id, "app-1", "kill")
        lifecycle.inject_fault(str(lab.id), "packet-loss-app-1")
        assert last_event(lab) == (
            "Fault Lose 30% of packets to app-1 failed: Node app-1 is not running (exited): its network cannot be "
            "changed."
        )
        left = engine.client.containers.list(all=True, filters={"label": f"{LABEL_LAB}={lab.short_id}"})
        assert [c.labels.get("stacklab.node") for c in left] == ["app-1"]
    finally:
        engine.remove_lab(lab.short_id)
