"""The lab state machine over a fake engine: launch is idempotent, provisioning cleans up after
itself, stop/reap/reconcile leave rows and engine agreeing. (test_docker_lab.py proves the same
against the real engine.)"""

from __future__ import annotations

import threading
from datetime import timedelta
from unittest import mock

import pytest
from django.db import connection
from django.utils import timezone

from sandbox import lifecycle, tasks
from sandbox.engine import Engine, EngineError, EngineUnavailable, ExecResult
from sandbox.models import Lab, LabEvent, Node, ObjectiveResult
from sandbox.specs import LabNotFound
from tests.conftest import FakeEngine

LAB = "scaling-load-balancer"
LESSON = "load-balancing"


def launch(user) -> Lab:  # noqa: ANN001
    lab, _ = lifecycle.request_lab(user, LAB, LESSON)
    return lab


def test_second_launch_returns_the_same_lab(learner, django_capture_on_commit_callbacks) -> None:  # noqa: ANN001
    with django_capture_on_commit_callbacks() as callbacks:
        first, created_first = lifecycle.request_lab(learner, LAB, LESSON)
        second, created_second = lifecycle.request_lab(learner, LAB, LESSON)
    assert (created_first, created_second) == (True, False)
    assert first.pk == second.pk
    assert len(callbacks) == 1  # provisioning queued once
    assert Lab.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_launches_make_one_lab(make_user) -> None:  # noqa: ANN001
    user = make_user("racer")
    results: list[str] = []
    barrier = threading.Barrier(4)

    def click() -> None:
        barrier.wait()
        try:
            lab, _ = lifecycle.request_lab(user, LAB, LESSON)
            results.append(str(lab.pk))
        finally:
            connection.close()

    threads = [threading.Thread(target=click) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4
    assert len(set(results)) == 1
    assert Lab.objects.filter(owner=user).count() == 1


def test_unknown_lab_writes_nothing(learner) -> None:  # noqa: ANN001
    with pytest.raises(LabNotFound):
        lifecycle.request_lab(learner, "no-such-lab", LESSON)
    assert Lab.objects.count() == 0


def test_provision_brings_every_node_up_then_ready(learner, fake_engine: FakeEngine) -> None:  # noqa: ANN001
    lab = launch(learner)
    lifecycle.provision_lab(str(lab.id), engine_factory=lambda: fake_engine)
    lab.refresh_from_db()
    assert lab.state == Lab.State.READY
    assert lab.expires_at - lab.ready_at == timedelta(minutes=60)
    assert sorted(name for _, name in fake_engine.nodes) == ["app-1", "app-2", "app-3", "cache", "db", "lb", "traffic"]
    assert Node.objects.filter(lab=lab).count() == 7
    assert set(ObjectiveResult.objects.filter(lab=lab).values_list("key", flat=True)) == {
        "traffic-flows",
        "survives-replica-loss",
        "health-checked",
        "why-it-failed",
    }
    assert [step["message"] for step in lab.steps][-1] == "All nodes healthy"


def test_provisioning_twice_is_harmless(learner, fake_engine: FakeEngine) -> None:  # noqa: ANN001
    lab = launch(learner)
    lifecycle.provision_lab(str(lab.id), engine_factory=lambda: fake_engine)
    started = dict(fake_engine.nodes)
    lifecycle.provision_lab(str(lab.id), engine_factory=lambda: fake_engine)  # a redelivered task
    assert fake_engine.nodes == started
    assert Node.objects.filter(lab=lab).count() == 7


def test_failed_provision_removes_what_it_made_and_says_why(learner, fake_engine: FakeEngine) -> None:  # noqa: ANN001
    fake_engine.fail_on_start = "app-2"
    lab = launch(learner)
    lifecycle.provision_lab(str(lab.id), engine_factory=lambda: fake_engine)
    lab.refresh_from_db()
    assert lab.state == Lab.State.FAILED
    assert lab.reason == "Could not start node app-2: no space left on device"
    assert fake_engine.lab_ids() == set()
    assert fake_engine.removed == [lab.short_id]


def test_a_node_that_exits_while_starting_fails_the_lab_with_its_last_lines(
    learner,  # noqa: ANN001
    fake_engine: FakeEngine,
) -> None:
    fake_engine.exit_on_start = {
        "db": "\n".join(f"line {n}" for n in range(1, 8)) + "\nstacklab: could not fill /var/lib/postgresql"
    }
    lab = launch(learner)
    lifecycle.provision_lab(str(lab.id), engine_factory=lambda: fake_engine)
    lab.refresh_from_db()
    assert lab.state == Lab.State.FAILED
    assert lab.reason == (
        "Node db stopped while starting: line 4\nline 5\nline 6\nline 7\nstacklab: could not fill /var/lib/postgresql"
    )


def test_launch_with_engine_down_is_retried_then_fails_with_the_reason(learner) -> None:  # noqa: ANN001
    attempts = []

    def no_engine():  # noqa: ANN202
        attempts.append(1)
        raise EngineUnavailable("The Docker engine is not reachable (connection refused).")

    lab = launch(learner)
    with mock.patch.object(lifecycle, "connect_engine", no_engine):
        tasks.provision_lab.apply(args=[str(lab.id)])  # this call only runs eagerly, retries included
    lab.refresh_from_db()
    assert len(attempts) == 1 + tasks.PROVISION_RETRIES
    assert lab.state == Lab.State.FAILED
    assert lab.reason == "The Docker engine is not reachable (connection refused)."
    assert not Node.objects.filter(lab=lab).exists()
    # A failed lab is not live: the learner can launch again.
    assert launch(learner).pk != lab.pk


def test_engine_back_within_the_retries_still_provisions(learner, fake_engine: FakeEngine) -> None:  # noqa: ANN001
    answers = iter([EngineUnavailable("engine restarting"), fake_engine])

    def flaky():  # noqa: ANN202
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    lab = launch(learner)
    with mock.patch.object(lifecycle, "connect_engine", flaky):
        tasks.provision_lab.apply(args=[str(lab.id)])
    lab.refresh_from_db()
    assert lab.state == Lab.State.READY


def engine_module_connect() -> Engine:
    """The real connection code (what `lifecycle.connect_engine` does), bypassing the guard."""
    return Engine(instance="test", subnet_pool="10.213.0.0/16")


def test_launch_with_no_engine_at_docker_host_fails_cleanly(learner, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    monkeypatch.setattr(lifecycle, "connect_engine", engine_module_connect)
    lab = launch(learner)
    tasks.provision_lab.apply(args=[str(lab.id)])  # the real Engine, pointed at nothing
    lab.refresh_from_db()
    assert lab.state == Lab.State.FAILED
    assert lab.reason.startswith("The Docker engine is not reachable")
    assert lab.steps == []


def ready_lab(user, engine: FakeEngine) -> Lab:  # noqa: ANN001
    lab = launch(user)
    lifecycle.provision_lab(str(lab.id), engine_factory=lambda: engine)
    lab.refresh_from_db()
    return lab


def test_stop_removes_everything_and_is_idempotent(learner, fake_engine: FakeEngine) -> None:  # noqa: ANN001
    lab = ready_lab(learner, fake_engine)
    lifecycle.stop_lab(str(lab.id), engine_factory=lambda: fake_engine)
    lifecycle.stop_lab(str(lab.id), engine_factory=lambda: fake_engine)
    lab.refresh_from_db()
    assert lab.state == Lab.State.STOPPED
    assert lab.stopped_at is not None
    assert fake_engine.lab_ids() == set()
    assert fake_engine.removed == [lab.short_id]


def test_request_stop_of_an_ended_lab_is_refused(learner, fake_engine: FakeEngine) -> None:  # noqa: ANN001
    lab = ready_lab(learner, fake_engine)
    lifecycle.stop_lab(str(lab.id), engine_factory=lambda: fake_engine)
    lab.refresh_from_db()
    with pytest.raises(lifecycle.LabError, match="already stopped"):
        lifecycle.request_stop(lab)


def test_extend_pushes_expiry_up_to_the_maximum(learner, fake_engine: FakeEngine) -> None:  # noqa: ANN001
    lab = ready_lab(learner, fake_engine)
    before = lab.expires_at
    lab = lifecycle.extend_lab(lab, 30)
    assert lab.expires_at == before + timedelta(minutes=30)
    lab = lifecycle.extend_lab(lab, 240)
    assert lab.expires_at == lab.ready_at + timedelta(minutes=180)
    with pytest.raises(lifecycle.LabError, match="cannot run longer than 180 minutes"):
        lifecycle.extend_lab(lab, 10)


def test_reaper_stops_expired_labs_and_removes_orphans(learner, fake_engine: FakeEngine) -> None:  # noqa: ANN001
    lab = ready_lab(learner, fake_engine)
    Lab.objects.filter(pk=lab.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    fake_engine.networks.add("0123456789ab")  # left behind by a crash, no row owns it
    report = lifecycle.reap_labs(engine_factory=lambda: fake_engine)
    lab.refresh_from_db()
    assert lab.state == Lab.State.STOPPED
    assert lab.reason == "The lab reached the end of its time."
    assert report["expired"] == [lab.short_id]
    assert report["orphans"] == ["0123456789ab"]
    assert fake_engine.lab_ids() == set()


def test_one_lab_the_engine_cannot_remove_does_not_stop_the_reaper(make_user, fake_engine: FakeEngine) -> None:  # noqa: ANN001, E501
    stubborn = ready_lab(make_user("a"), fake_engine)
    other = ready_lab(make_user("b"), fake_engine)
    Lab.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    real_remove = fake_engine.remove_lab

    def remove(lab: str) -> int:
        if lab == stubborn.short_id:
            raise EngineError("device or resource busy")
        return real_remove(lab)

    fake_engine.remove_lab = remove  # type: ignore[method-assign]
    report = lifecycle.reap_labs(engine_factory=lambda: fake_engine)
    assert report["expired"] == [other.short_id]
    assert Lab.objects.get(pk=other.pk).state == Lab.State.STOPPED
    assert Lab.objects.get(pk=stubborn.pk).state == Lab.State.STOPPING  # retried on the next pass


def test_interrupted_provision_is_cleaned_up_and_failed(learner, fake_engine: FakeEngine) -> None:  # noqa: ANN001
    lab = launch(learner)
    Lab.objects.filter(pk=lab.pk).update(state=Lab.State.PROVISIONING)
    fake_engine.networks.add(lab.short_id)  # half made when the worker died
    lifecycle.abandon_interrupted_provision(str(lab.id), engine_factory=lambda: fake_engine)
    lab.refresh_from_db()
    assert lab.state == Lab.State.FAILED
    assert lab.reason == "Setting up the lab was interrupted; launch it again."
    assert fake_engine.lab_ids() == set()


def test_reaper_fails_labs_stuck_in_provisioning(learner, settings) -> None:  # noqa: ANN001
    lab = launch(learner)
    Lab.objects.filter(pk=lab.pk).update(updated_at=timezone.now() - timedelta(hours=1))
    report = lifecycle.reap_labs(engine_factory=FakeEngine)
    lab.refresh_from_db()
    assert lab.state == Lab.State.FAILED
    assert report["stuck"] == [lab.short_id]


def test_reconcile_fails_a_ready_lab_whose_containers_vanished(learner, fake_engine: FakeEngine) -> None:  # noqa: ANN001
    lab = ready_lab(learner, fake_engine)
    fake_engine.nodes.clear()
    fake_engine.networks.clear()
    report = lifecycle.reconcile_labs(engine_factory=lambda: fake_engine)
    lab.refresh_from_db()
    assert lab.state == Lab.State.FAILED
    assert lab.reason == "The lab's containers were removed outside Stacklab; launch the lab again."
    assert report["vanished"] == [lab.short_id]


def test_reconcile_fails_a_ready_lab_whose_containers_were_removed_while_its_network_remains(
    learner,  # noqa: ANN001
    fake_engine: FakeEngine,
) -> None:
    lab = ready_lab(learner, fake_engine)
    Node.objects.filter(lab=lab).update(state=Node.State.HEALTHY)
    fake_engine.nodes.clear()  # `docker rm -f` of every container; the network stays
    report = lifecycle.reconcile_labs(engine_factory=lambda: fake_engine)
    lab.refresh_from_db()
    assert lab.state == Lab.State.FAILED
    assert lab.reason == "The lab's containers were removed outside Stacklab; launch the lab again."
    assert report["vanished"] == [lab.short_id]
    assert fake_engine.lab_ids() == set()  # the leftover network went too
    assert set(Node.objects.filter(lab=lab).values_list("state", flat=True)) == {Node.State.DOWN}
    assert LabEvent.objects.filter(lab=lab).last().message == f"Lab failed: {lab.reason}"


def test_reconcile_puts_the_node_changes_it_finds_on_the_timeline(learner, fake_engine: FakeEngine) -> None:  # noqa: ANN001
    lab = ready_lab(learner, fake_engine)
    Node.objects.filter(lab=lab).update(state=Node.State.HEALTHY)
    fake_engine.act_on_node(lab.short_id, "app-3", "kill")  # its events were missed
    with mock.patch("sandbox.lifecycle.publish") as publish:
        lifecycle.reconcile_labs(engine_factory=lambda: fake_engine)
    assert LabEvent.objects.filter(lab=lab, kind=LabEvent.Kind.NODE).last().message == (
        "app-3 is down (checked with the engine)"
    )
    nodes = [call.args[1] for call in publish.call_args_list if call.args[1]["type"] == "node"]
    assert [(m["name"], m["state"]) for m in nodes] == [("app-3", "down")]


def test_reconcile_marks_nodes_the_engine_lost(learner, fake_engine: FakeEngine) -> None:  # noqa: ANN001
    lab = ready_lab(learner, fake_engine)
    Node.objects.filter(lab=lab).update(state=Node.State.HEALTHY)
    fake_engine.act_on_node(lab.short_id, "app-3", "kill")
    report = lifecycle.reconcile_labs(engine_factory=lambda: fake_engine)
    assert report["resynced"] == [lab.short_id]
    assert Node.objects.get(lab=lab, name="app-3").state == Node.State.DOWN
    assert Node.objects.get(lab=lab, name="app-1").state == Node.State.HEALTHY


def test_break_kills_the_scripted_node(learner, fake_engine: FakeEngine) -> None:  # noqa: ANN001
    lab = ready_lab(learner, fake_engine)
    lifecycle.inject_fault(str(lab.id), "kill-app-2", engine_factory=lambda: fake_engine)
    lab.refresh_from_db()
    assert fake_engine.nodes[(lab.short_id, "app-2")] == "exited"
    assert lab.broken_at is not None
    assert LabEvent.objects.filter(lab=lab).last().message == "Fault: Kill replica app-2"


def test_exec_fault_runs_its_command_in_its_node(learner, fake_engine: FakeEngine) -> None:  # noqa: ANN001
    lab = ready_lab(learner, fake_engine)
    lifecycle.inject_fault(str(lab.id), "slow-app-1", engine_factory=lambda: fake_engine)
    assert fake_engine.execs == [("app-1", ["app-fault", "slow", "800"])]
    lab.refresh_from_db()
    assert lab.broken_at is None  # not the lesson's break


def test_fault_the_engine_refuses_is_told_on_the_timeline(learner, fake_engine: FakeEngine) -> None:  # noqa: ANN001
    lab = ready_lab(learner, fake_engine)
    fake_engine.exec = lambda *args, **kwargs: ExecResult(exit_code=1, output="sed: can't read cfg\n")
    lifecycle.inject_fault(str(lab.id), "bad-lb-config", engine_factory=lambda: fake_engine)
    assert LabEvent.objects.filter(lab=lab).last().message == (
        "Fault Push a bad load balancer config failed: sed: can't read cfg"
    )


def test_network_fault_runs_in_a_sidecar_with_net_admin(learner, fake_engine: FakeEngine) -> None:  # noqa: ANN001
    lab = ready_lab(learner, fake_engine)
    assert fake_engine.images[-1].name == "tools"  # built while provisioning, so injecting is quick
    lifecycle.inject_fault(str(lab.id), "packet-loss-app-1", engine_factory=lambda: fake_engine)
    [(node, image, command, cap_add)] = fake_engine.sidecars
    assert (node, image, cap_add) == ("app-1", "fake/tools:1", ["NET_ADMIN"])
    assert command[:2] == ["iptables", "-A"] and "0.3" in command
    assert fake_engine.execs == []  # nothing ran inside the node itself
    assert LabEvent.objects.filter(lab=lab).last().message == "Fault: Lose 30% of packets to app-1"


def test_network_fault_on_a_dead_node_is_told_on_the_timeline(learner, fake_engine: FakeEngine) -> None:  # noqa: ANN001
    lab = ready_lab(learner, fake_engine)
    fake_engine.act_on_node(lab.short_id, "app-1", "kill")
    lifecycle.inject_fault(str(lab.id), "packet-loss-app-1", engine_factory=lambda: fake_engine)
    assert fake_engine.sidecars == []
    assert LabEvent.objects.filter(lab=lab).last().message == (
        "Fault Lose 30% of packets to app-1 failed: Node app-1 is not running: its network cannot be changed."
    )


def test_request_of_an_unknown_fault_is_not_found(learner, fake_engine: FakeEngine) -> None:  # noqa: ANN001
    lab = ready_lab(learner, fake_engine)
    with pytest.raises(LabNotFound):
        lifecycle.request_fault(lab, "rm-rf")


def test_restart_node_restarts_it(learner, fake_engine: FakeEngine) -> None:  # noqa: ANN001
    lab = ready_lab(learner, fake_engine)
    lifecycle.restart_node(str(lab.id), "app-3", engine_factory=lambda: fake_engine)
    assert fake_engine.actions == [("app-3", "restart")]
    assert LabEvent.objects.filter(lab=lab).last().message == "Restarted app-3"


def test_reset_rebuilds_the_lab_and_keeps_progress(learner, fake_engine: FakeEngine) -> None:  # noqa: ANN001
    lab = ready_lab(learner, fake_engine)
    met_at = timezone.now()
    ObjectiveResult.objects.filter(lab=lab, key="traffic-flows").update(status="met", first_met_at=met_at)
    lifecycle.inject_fault(str(lab.id), "kill-app-2", engine_factory=lambda: fake_engine)
    lifecycle.reset_lab(str(lab.id), engine_factory=lambda: fake_engine)
    lab.refresh_from_db()
    assert lab.state == Lab.State.READY
    assert lab.broken_at is None
    assert fake_engine.nodes[(lab.short_id, "app-2")] == "running"
    assert fake_engine.removed == [lab.short_id]
    result = ObjectiveResult.objects.get(lab=lab, key="traffic-flows")
    assert (result.status, result.first_met_at) == ("pending", met_at)
    assert Node.objects.filter(lab=lab).count() == 7


def test_hints_come_one_at_a_time_until_none_are_left(learner, fake_engine: FakeEngine) -> None:  # noqa: ANN001
    lab = ready_lab(learner, fake_engine)
    total = len(lifecycle.load_lab(LAB).spec.hints)
    seen = [lifecycle.next_hint(lab) for _ in range(total)]
    assert [index for index, _, _ in seen] == list(range(1, total + 1))
    assert seen[0][2].startswith("Look at the figures per replica")
    with pytest.raises(lifecycle.LabError, match=f"No more hints: this lab has {total}."):
        lifecycle.next_hint(lab)


def test_skip_runs_the_solution_and_is_recorded(
    learner, fake_engine: FakeEngine, django_capture_on_commit_callbacks
) -> None:  # noqa: ANN001, E501
    lab = ready_lab(learner, fake_engine)
    with django_capture_on_commit_callbacks() as queued:
        lifecycle.request_skip(lab)
    lab.refresh_from_db()
    assert lab.skipped_at is not None
    assert len(queued) == 1
    lifecycle.skip_lab(str(lab.id), engine_factory=lambda: fake_engine)
    assert fake_engine.execs[0][0] == "lb"
    assert fake_engine.execs[0][1][:2] == ["sh", "-c"]
    assert LabEvent.objects.filter(lab=lab).last().message == "The solution ran"


def test_idle_lab_is_stopped_and_activity_keeps_it(make_user, fake_engine: FakeEngine) -> None:  # noqa: ANN001
    idle = ready_lab(make_user("dozing"), fake_engine)
    busy = ready_lab(make_user("typing"), fake_engine)
    long_ago = timezone.now() - timedelta(minutes=31)
    Lab.objects.update(last_active_at=long_ago)
    assert lifecycle.mark_active(busy.pk)
    assert not lifecycle.mark_active(busy.pk)  # written at most every 30 s
    report = lifecycle.reap_labs(engine_factory=lambda: fake_engine)
    assert report["idle"] == [idle.short_id]
    idle.refresh_from_db()
    assert idle.state == Lab.State.STOPPED
    assert idle.reason == "Stopped after 30 minutes without activity."
    assert Lab.objects.get(pk=busy.pk).state == Lab.State.READY


def test_reaper_still_stops_an_idle_lab_whose_package_is_gone(learner, fake_engine: FakeEngine) -> None:  # noqa: ANN001
    lab = ready_lab(learner, fake_engine)
    Lab.objects.filter(pk=lab.pk).update(lab_slug="removed-lab", last_active_at=timezone.now() - timedelta(hours=1))
    report = lifecycle.reap_labs(engine_factory=lambda: fake_engine)
    assert report["idle"] == [lab.short_id]
    assert Lab.objects.get(pk=lab.pk).reason == "Stopped after 30 minutes without activity."


def _resync_directly(lab: Lab, engine: FakeEngine) -> None:
    lifecycle.sync_nodes(lab, engine)  # the monitor's resync and its while_down confirmation


def _reconcile(lab: Lab, engine: FakeEngine) -> None:
    lifecycle.reconcile_labs(engine_factory=lambda: engine)  # beat's reconcile


@pytest.mark.parametrize("resync", [_resync_directly, _reconcile])
def test_a_node_event_written_while_the_engine_is_asked_is_not_undone_by_the_older_reading(
    learner,  # noqa: ANN001
    fake_engine: FakeEngine,
    resync,  # noqa: ANN001
) -> None:
    lab = ready_lab(learner, fake_engine)
    Node.objects.filter(lab=lab).update(state=Node.State.HEALTHY)
    read_engine = fake_engine.node_statuses
    killed = []

    def learner_kills_app_3_meanwhile(short_id: str | None = None) -> list:
        statuses = read_engine(short_id)  # the engine still had app-3 running when it answered...
        if not killed:  # ...then the learner killed it, and the events thread wrote its `die`
            killed.append(True)
            fake_engine.act_on_node(lab.short_id, "app-3", "kill")
            lifecycle.set_node_state(lab.pk, "app-3", Node.State.DOWN)
        return statuses

    with mock.patch.object(fake_engine, "node_statuses", side_effect=learner_kills_app_3_meanwhile):
        resync(lab, fake_engine)
    assert killed
    assert Node.objects.get(lab=lab, name="app-3").state == Node.State.DOWN
    assert not LabEvent.objects.filter(lab=lab, message="app-3 is healthy (checked with the engine)").exists()


def test_reconcile_sets_down_a_pending_node_of_a_ready_lab_that_the_engine_lost(
    learner,  # noqa: ANN001
    fake_engine: FakeEngine,
) -> None:
    lab = ready_lab(learner, fake_engine)
    Node.objects.filter(lab=lab).update(state=Node.State.HEALTHY)
    Node.objects.filter(lab=lab, name="app-3").update(state=Node.State.PENDING)  # its events never came
    del fake_engine.nodes[(lab.short_id, "app-3")]
    report = lifecycle.reconcile_labs(engine_factory=lambda: fake_engine)
    assert report["resynced"] == [lab.short_id]
    assert Node.objects.get(lab=lab, name="app-3").state == Node.State.DOWN


def test_a_provisioning_lab_keeps_its_pending_nodes_that_are_not_started_yet(
    learner,  # noqa: ANN001
    fake_engine: FakeEngine,
) -> None:
    lab = ready_lab(learner, fake_engine)
    Lab.objects.filter(pk=lab.pk).update(state=Lab.State.PROVISIONING)
    lab.refresh_from_db()
    Node.objects.filter(lab=lab, name="app-3").update(state=Node.State.PENDING)
    del fake_engine.nodes[(lab.short_id, "app-3")]
    lifecycle.sync_nodes(lab, fake_engine)
    assert Node.objects.get(lab=lab, name="app-3").state == Node.State.PENDING


def test_a_node_state_set_off_the_timeline_is_published_but_not_recorded(
    learner,  # noqa: ANN001
    fake_engine: FakeEngine,
) -> None:
    lab = ready_lab(learner, fake_engine)
    Node.objects.filter(lab=lab).update(state=Node.State.HEALTHY)
    lines = LabEvent.objects.filter(lab=lab).count()
    with mock.patch("sandbox.lifecycle.publish") as publish:
        assert lifecycle.set_node_state(lab.pk, "app-3", Node.State.DOWN, on_timeline=False)
    assert Node.objects.get(lab=lab, name="app-3").state == Node.State.DOWN
    assert [(m["type"], m["name"], m["state"]) for m in (c.args[1] for c in publish.call_args_list)] == [
        ("node", "app-3", "down")
    ]
    assert LabEvent.objects.filter(lab=lab).count() == lines
