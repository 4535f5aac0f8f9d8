"""The watcher's handling of traffic reports and node events, fed by hand (no engine): objective
changes are stored as progress and published; node events move node rows."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from unittest import mock

import pytest
from django.utils import timezone

from sandbox import lifecycle
from sandbox.checks import Outcome
from sandbox.engine import EngineError, EngineUnavailable, NodeEvent
from sandbox.models import Lab, LabEvent, Node, ObjectiveResult
from sandbox.monitor import LabWatch, Monitor
from sandbox.payloads import snapshot_payload
from sandbox.specs import ObjectiveSpec, load_lab


@pytest.fixture
def watched(learner, fake_engine):  # noqa: ANN001, ANN201
    lab, _ = lifecycle.request_lab(learner, "scaling-load-balancer", "load-balancing")
    lifecycle.provision_lab(str(lab.id), engine_factory=lambda: fake_engine)
    lab.refresh_from_db()
    Node.objects.filter(lab=lab).update(state=Node.State.HEALTHY)
    states = dict(Node.objects.filter(lab=lab).values_list("name", "state"))
    watch = LabWatch(lab_id=str(lab.id), short_id=lab.short_id, package=load_lab(lab.lab_slug), node_states=states)
    return lab, watch


@contextmanager
def publishing() -> Iterator[mock.Mock]:
    """Catch every message the monitor sends to pages (node, metrics, objective, timeline)."""
    sent = mock.Mock()
    with (
        mock.patch("sandbox.monitor.publish", sent),
        mock.patch("sandbox.lifecycle.publish", sent),
        mock.patch("sandbox.results.publish", sent),
        mock.patch("sandbox.timeline.publish", sent),
    ):
        yield sent


def report(t: float, errors: int = 0) -> str:
    return json.dumps(
        {
            "type": "metrics",
            "t": t,
            "completed": 20,
            "errors": errors,
            "rps": 20.0,
            "p50_ms": 2.0,
            "p95_ms": 4.0,
            "error_rate": errors / 20,
            "replicas": {"app-1": 7, "app-2": 7, "app-3": 6},
        }
    )


def test_clean_traffic_meets_the_flow_objective_and_records_progress(watched) -> None:  # noqa: ANN001
    lab, watch = watched
    monitor = Monitor(engine_factory=lambda: None)
    with publishing() as publish:
        for second in range(10):
            monitor.handle_report(watch, report(1000.0 + second))
    result = ObjectiveResult.objects.get(lab=lab, key="traffic-flows")
    assert result.status == "met"
    assert result.first_met_at is not None
    sent = [call.args[1] for call in publish.call_args_list]
    assert sum(1 for m in sent if m["type"] == "metrics") == 10
    objectives = [m for m in sent if m["type"] == "objective" and m["key"] == "traffic-flows"]
    assert [m["status"] for m in objectives][-1] == "met"
    assert objectives[-1]["reason"] == "Error rate 0% over 10 s"


def test_recent_figures_come_back_in_the_snapshot_for_a_reloaded_page(watched) -> None:  # noqa: ANN001
    lab, watch = watched
    monitor = Monitor(engine_factory=lambda: None)
    with publishing():
        for second in range(400):
            monitor.handle_report(watch, report(1000.0 + second))
    history = snapshot_payload(lab)["metrics"]
    assert len(history) == 300  # the five minutes the charts show
    assert [m["t"] for m in history[:2]] == [1100.0, 1101.0]
    assert history[-1]["replicas"] == {"app-1": 7, "app-2": 7, "app-3": 6}


def test_first_met_at_survives_a_later_failure(watched) -> None:  # noqa: ANN001
    lab, watch = watched
    monitor = Monitor(engine_factory=lambda: None)
    with publishing():
        for second in range(10):
            monitor.handle_report(watch, report(1000.0 + second))
        first_met = ObjectiveResult.objects.get(lab=lab, key="traffic-flows").first_met_at
        monitor.handle_report(watch, report(1010.0, errors=10))
    result = ObjectiveResult.objects.get(lab=lab, key="traffic-flows")
    assert result.status == "failing"
    assert result.first_met_at == first_met


def test_node_event_moves_the_row_and_counts_as_down_for_objectives(watched) -> None:  # noqa: ANN001
    lab, watch = watched
    monitor = Monitor(engine_factory=lambda: None)
    monitor.watches[str(lab.id)] = watch
    with publishing() as publish:
        monitor.handle_event(NodeEvent(lab=lab.short_id, name="app-2", action="die", time=0.0))
        monitor.handle_event(NodeEvent(lab=lab.short_id, name="app-2", action="die", time=0.0))  # no change
        monitor.handle_event(NodeEvent(lab=lab.short_id, name="app-2", action="exec_start: sh", time=0.0))
    assert Node.objects.get(lab=lab, name="app-2").state == Node.State.DOWN
    assert [call.args[1]["type"] for call in publish.call_args_list] == ["node", "event"]
    assert publish.call_args_list[0].args[1]["state"] == "down"
    assert watch.not_serving() == frozenset({"app-2"})


def test_judge_follows_node_rows_fixed_by_a_resync(watched) -> None:  # noqa: ANN001
    lab, _ = watched
    monitor = Monitor(engine_factory=lambda: None)
    with mock.patch.object(Monitor, "_follow_traffic"):
        monitor.sync_watches()
        # An event was missed; reconcile (another process) corrects the row.
        Node.objects.filter(lab=lab, name="app-3").update(state=Node.State.DOWN)
        monitor.sync_watches()
    assert monitor.watches[str(lab.id)].not_serving() == frozenset({"app-3"})


def test_unpaused_node_takes_its_state_from_the_engine(watched, fake_engine) -> None:  # noqa: ANN001
    lab, watch = watched
    Node.objects.filter(lab=lab, name="app-1").update(state=Node.State.PAUSED)
    monitor = Monitor(engine_factory=lambda: fake_engine)
    with publishing():
        monitor.handle_event(NodeEvent(lab=lab.short_id, name="app-1", action="unpause", time=0.0), fake_engine)
    assert Node.objects.get(lab=lab, name="app-1").state == Node.State.HEALTHY


def test_oom_kill_of_a_process_leaves_a_running_node_as_the_engine_has_it(watched, fake_engine) -> None:  # noqa: ANN001
    lab, watch = watched
    monitor = Monitor(engine_factory=lambda: fake_engine)
    monitor.watches[str(lab.id)] = watch
    with publishing() as publish:
        # A learner's process in app-3 was OOM-killed; the container runs on, healthy.
        monitor.handle_event(NodeEvent(lab=lab.short_id, name="app-3", action="oom", time=0.0), fake_engine)
    assert Node.objects.get(lab=lab, name="app-3").state == Node.State.HEALTHY
    assert watch.not_serving() == frozenset()
    sent = [call.args[1] for call in publish.call_args_list]
    assert [m["type"] for m in sent] == ["event"]
    assert sent[0]["message"] == "A process in app-3 ran out of memory and was killed"


def test_oom_that_ended_the_node_sets_it_down(watched, fake_engine) -> None:  # noqa: ANN001
    lab, watch = watched
    fake_engine.nodes[(lab.short_id, "app-3")] = "exited"  # the OOM killer took its main process
    monitor = Monitor(engine_factory=lambda: fake_engine)
    with publishing():
        monitor.handle_event(NodeEvent(lab=lab.short_id, name="app-3", action="oom", time=0.0), fake_engine)
    assert Node.objects.get(lab=lab, name="app-3").state == Node.State.DOWN
    assert list(LabEvent.objects.filter(lab=lab, kind=LabEvent.Kind.NODE).values_list("message", flat=True)) == [
        "A process in app-3 ran out of memory and was killed",
        "app-3 is down",
    ]


def test_an_objective_is_not_met_on_a_node_state_the_engine_does_not_confirm(watched, fake_engine) -> None:  # noqa: ANN001
    lab, watch = watched
    # The row says app-3 is down, but the engine has it running (a wrong or stale state).
    Node.objects.filter(lab=lab, name="app-3").update(state=Node.State.DOWN)
    watch.node_states["app-3"] = Node.State.DOWN
    monitor = Monitor(engine_factory=lambda: fake_engine)
    with publishing():
        for second in range(40):
            monitor.handle_report(watch, report(1000.0 + second))
    result = ObjectiveResult.objects.get(lab=lab, key="survives-replica-loss")
    assert result.status != "met"
    assert result.first_met_at is None
    assert Node.objects.get(lab=lab, name="app-3").state == Node.State.HEALTHY
    assert LabEvent.objects.filter(lab=lab, message="app-3 is healthy (checked with the engine)").exists()


def test_an_objective_is_met_once_the_engine_confirms_the_node_is_down(watched, fake_engine) -> None:  # noqa: ANN001
    lab, watch = watched
    fake_engine.act_on_node(lab.short_id, "app-3", "kill")
    Node.objects.filter(lab=lab, name="app-3").update(state=Node.State.DOWN)
    watch.node_states["app-3"] = Node.State.DOWN
    monitor = Monitor(engine_factory=lambda: fake_engine)
    with publishing(), mock.patch.object(fake_engine, "node_statuses", wraps=fake_engine.node_statuses) as asked:
        for second in range(40):
            monitor.handle_report(watch, report(1000.0 + second))
    result = ObjectiveResult.objects.get(lab=lab, key="survives-replica-loss")
    assert (result.status, result.reason) == ("met", "Error rate 0% over 30 s while app-3 is down")
    assert asked.call_count == 1  # asked once, when it was about to be met; not every second


def test_resync_after_lost_events_puts_node_changes_on_the_timeline(watched, fake_engine) -> None:  # noqa: ANN001
    lab, _ = watched
    fake_engine.act_on_node(lab.short_id, "app-1", "kill")
    with publishing() as publish:
        Monitor(engine_factory=lambda: fake_engine)._resync(fake_engine)
    assert Node.objects.get(lab=lab, name="app-1").state == Node.State.DOWN
    sent = [call.args[1] for call in publish.call_args_list]
    assert [(m["type"], m.get("name"), m.get("message")) for m in sent] == [
        ("node", "app-1", None),
        ("event", None, "app-1 is down (checked with the engine)"),
    ]


def test_removing_every_node_of_a_ready_lab_fails_it_at_the_last_destroy(watched, fake_engine) -> None:  # noqa: ANN001
    lab, watch = watched
    monitor = Monitor(engine_factory=lambda: fake_engine)
    monitor.watches[str(lab.id)] = watch
    names = [name for (short_id, name) in list(fake_engine.nodes) if short_id == lab.short_id]
    with publishing():
        for name in names:  # `docker rm -f` of each container; the network stays
            del fake_engine.nodes[(lab.short_id, name)]
            monitor.handle_event(NodeEvent(lab=lab.short_id, name=name, action="destroy", time=0.0), fake_engine)
            if name != names[-1]:
                assert Lab.objects.get(pk=lab.pk).state == Lab.State.READY
    lab.refresh_from_db()
    assert lab.state == Lab.State.FAILED
    assert lab.reason == "The lab's containers were removed outside Stacklab; launch the lab again."
    assert fake_engine.lab_ids() == set()


def test_unreadable_report_is_ignored(watched) -> None:  # noqa: ANN001
    lab, watch = watched
    with publishing() as publish:
        Monitor(engine_factory=lambda: None).handle_report(watch, "{not json")
    assert publish.call_count == 0
    assert not watch.samples


def test_watcher_follows_only_ready_labs(watched) -> None:  # noqa: ANN001
    lab, _ = watched
    monitor = Monitor(engine_factory=lambda: None)
    with mock.patch.object(Monitor, "_follow_traffic"):
        monitor.sync_watches()
        assert list(monitor.watches) == [str(lab.id)]
        Lab.objects.filter(pk=lab.pk).update(state=Lab.State.STOPPED, expires_at=timezone.now() - timedelta(1))
        monitor.sync_watches()
    assert monitor.watches == {}


def with_check(objective: ObjectiveSpec, **changes: object) -> ObjectiveSpec:
    """A copy of the objective with its check changed (specs are frozen, and cached)."""
    return objective.model_copy(update={"check": objective.check.model_copy(update=changes)})


def test_a_command_check_is_met_after_its_passes_and_fails_at_once(watched) -> None:  # noqa: ANN001
    lab, watch = watched
    objective = with_check(watch.spec.objective("health-checked"), passes=2)
    monitor = Monitor(engine_factory=lambda: None)
    with publishing() as publish:
        monitor.handle_check(watch, objective, Outcome(True, "3 of 3 checked"))
        assert ObjectiveResult.objects.get(lab=lab, key="health-checked").status == "pending"
        monitor.handle_check(watch, objective, Outcome(True, "3 of 3 checked"))
        assert ObjectiveResult.objects.get(lab=lab, key="health-checked").status == "met"
        monitor.handle_check(watch, objective, Outcome(True, "3 of 3 checked"))  # no change: nothing sent
        monitor.handle_check(watch, objective, Outcome(False, "exited 1 (expected 0) no health check on: app-2"))
    result = ObjectiveResult.objects.get(lab=lab, key="health-checked")
    assert (result.status, result.reason) == ("failing", "exited 1 (expected 0) no health check on: app-2")
    assert result.first_met_at is not None
    sent = [(m["status"], m["reason"]) for m in (c.args[1] for c in publish.call_args_list) if m["type"] == "objective"]
    assert sent == [
        ("pending", "3 of 3 checked (passed 1 of 2 runs)"),
        ("met", "3 of 3 checked"),
        ("failing", "exited 1 (expected 0) no health check on: app-2"),
    ]


def test_checks_run_in_their_node_on_the_engine(watched, fake_engine) -> None:  # noqa: ANN001
    lab, watch = watched
    monitor = Monitor(engine_factory=lambda: fake_engine)
    due: dict[str, float] = {}
    with publishing():
        next_run = monitor.run_due_checks(watch, fake_engine, due)
        assert monitor.run_due_checks(watch, fake_engine, due) == next_run  # not due again yet
    assert len(fake_engine.execs) == 1
    node, command = fake_engine.execs[0]
    assert node == "lb"
    assert command[:4] == ["timeout", "-k", "1", "3"]  # the check's timeout, enforced in the node
    assert command[4:6] == ["sh", "-c"] and "show stat" in command[6]
    assert next_run == pytest.approx(time.monotonic() + 2, abs=0.5)  # its interval
    # The fake engine answers "ok", which is not "3 of 3 app servers health-checked".
    result = ObjectiveResult.objects.get(lab=lab, key="health-checked")
    assert result.status == "failing"
    assert "output does not contain /3 of 3 app servers health-checked/" in result.reason


def test_a_check_with_fails_rides_out_one_bad_run(watched) -> None:  # noqa: ANN001
    lab, watch = watched
    objective = with_check(watch.spec.objective("health-checked"), fails=2)
    monitor = Monitor(engine_factory=lambda: None)
    with publishing():
        monitor.handle_check(watch, objective, Outcome(True, "3 of 3 checked"))
        monitor.handle_check(watch, objective, Outcome(False, "exited 1"))
        result = ObjectiveResult.objects.get(lab=lab, key="health-checked")
        assert result.status == "met"  # one bad run: still met, and the page says what it saw
        assert watch.verdicts["health-checked"] == ("met", "exited 1 (failed 1 of 2 runs)")
        monitor.handle_check(watch, objective, Outcome(True, "3 of 3 checked"))
        monitor.handle_check(watch, objective, Outcome(False, "exited 1"))
        monitor.handle_check(watch, objective, Outcome(False, "exited 1"))
    assert ObjectiveResult.objects.get(lab=lab, key="health-checked").status == "failing"


@pytest.mark.parametrize("leaving", [Lab.State.STOPPING, Lab.State.REQUESTED])  # stopped; reset (remove, then rebuild)
def test_destroy_events_of_a_lab_the_platform_is_removing_leave_the_lab_alone(
    watched,  # noqa: ANN001
    fake_engine,  # noqa: ANN001
    leaving,  # noqa: ANN001
) -> None:
    lab, watch = watched
    monitor = Monitor(engine_factory=lambda: fake_engine)
    monitor.watches[str(lab.id)] = watch
    with publishing():
        # Seen while ready, so the monitor knows the lab's short id when the destroys come.
        monitor.handle_event(NodeEvent(lab=lab.short_id, name="app-1", action="start", time=0.0), fake_engine)
        Lab.objects.filter(pk=lab.pk).update(state=leaving, reason="Stopped by the learner.")
        names = [name for (short_id, name) in list(fake_engine.nodes) if short_id == lab.short_id]
        for name in names:
            del fake_engine.nodes[(lab.short_id, name)]
            monitor.handle_event(NodeEvent(lab=lab.short_id, name=name, action="destroy", time=1.0), fake_engine)
    lab.refresh_from_db()
    assert lab.state == leaving
    assert lab.reason == "Stopped by the learner."
    assert not LabEvent.objects.filter(lab=lab, message__contains="removed outside Stacklab").exists()


@pytest.mark.parametrize("error", [EngineUnavailable("Cannot reach the Docker engine"), EngineError("engine said 500")])
def test_an_objective_is_not_met_while_the_engine_cannot_confirm_the_node_is_down(
    watched,  # noqa: ANN001
    fake_engine,  # noqa: ANN001
    error,  # noqa: ANN001
) -> None:
    lab, watch = watched
    fake_engine.act_on_node(lab.short_id, "app-3", "kill")
    Node.objects.filter(lab=lab, name="app-3").update(state=Node.State.DOWN)
    watch.node_states["app-3"] = Node.State.DOWN
    monitor = Monitor(engine_factory=lambda: fake_engine)
    with publishing(), mock.patch.object(fake_engine, "node_statuses", side_effect=error) as asked:
        for second in range(40):
            monitor.handle_report(watch, report(1000.0 + second))
    result = ObjectiveResult.objects.get(lab=lab, key="survives-replica-loss")
    assert result.status != "met"
    assert result.first_met_at is None
    # The verdict of the last second before it would be met stands, every second after it.
    assert watch.verdicts["survives-replica-loss"] == ("pending", "Error rate 0% while app-3 is down: held 29 of 30 s")
    assert asked.call_count > 1  # asked again on each report while it would be met
    with publishing():
        monitor.handle_report(watch, report(1040.0))  # the engine answers again
    result.refresh_from_db()
    assert (result.status, result.reason) == ("met", "Error rate 0% over 30 s while app-3 is down")


def test_an_oom_the_engine_cannot_be_asked_about_is_on_the_timeline_once_when_handled_again(
    watched,  # noqa: ANN001
    fake_engine,  # noqa: ANN001
) -> None:
    lab, watch = watched
    monitor = Monitor(engine_factory=lambda: fake_engine)
    oom = NodeEvent(lab=lab.short_id, name="app-3", action="oom", time=1000.5)
    with publishing():
        with mock.patch.object(fake_engine, "node_statuses", side_effect=EngineUnavailable("Cannot reach the engine")):
            with pytest.raises(EngineError):
                monitor.handle_event(oom, fake_engine)
        monitor.handle_event(oom, fake_engine)  # replayed after the reconnect
    assert list(LabEvent.objects.filter(lab=lab, kind=LabEvent.Kind.NODE).values_list("message", flat=True)) == [
        "A process in app-3 ran out of memory and was killed"
    ]


class ReplayingEvents:
    """The engine's event stream as Docker serves it: a connection `since` a time replays every
    event from the start of that whole second. The first connection is lost after its events."""

    def __init__(self, monitor: Monitor, log: list[NodeEvent], first: int) -> None:
        self.monitor, self.log, self.first = monitor, log, first
        self.connections: list[float | None] = []

    def events(self, since: float | None = None, actions: object = None) -> ReplayingEvents.Stream:
        self.connections.append(since)
        if since is None:
            return self.Stream(self.log[: self.first], lost=True, monitor=self.monitor)
        return self.Stream([e for e in self.log if e.time >= int(since)], lost=False, monitor=self.monitor)

    class Stream:
        def __init__(self, events: list[NodeEvent], lost: bool, monitor: Monitor) -> None:
            self.events, self.lost, self.monitor = events, lost, monitor

        def __iter__(self) -> Iterator[NodeEvent]:
            yield from self.events
            if self.lost:
                raise EngineUnavailable("the engine's event stream ended")
            self.monitor.stopping.set()  # everything was delivered: the test is over

        def close(self) -> None:
            pass


def test_events_replayed_after_a_reconnect_are_handled_once(watched, fake_engine) -> None:  # noqa: ANN001
    lab, watch = watched
    monitor = Monitor(engine_factory=lambda: fake_engine)
    fake_engine.act_on_node(lab.short_id, "app-2", "kill")
    log = [
        NodeEvent(lab=lab.short_id, name="app-3", action="oom", time=1000.0),
        NodeEvent(lab=lab.short_id, name="app-2", action="die", time=1000.0),
        # Same second as the last one handled, delivered only after the reconnect: not a replay.
        NodeEvent(lab=lab.short_id, name="app-1", action="die", time=1000.0),
    ]
    stream = ReplayingEvents(monitor, log, first=2)
    fake_engine.events = stream.events
    with (
        publishing(),
        mock.patch("sandbox.monitor.RECONNECT_SECONDS", 0.0),
        mock.patch("sandbox.monitor.close_old_connections"),
        mock.patch("sandbox.monitor.connection"),  # the test's own connection stays open
    ):
        monitor._follow_events()
    assert stream.connections == [None, 1000.0]
    lines = list(LabEvent.objects.filter(lab=lab, kind=LabEvent.Kind.NODE).values_list("message", flat=True))
    assert lines.count("A process in app-3 ran out of memory and was killed") == 1
    assert Node.objects.get(lab=lab, name="app-2").state == Node.State.DOWN
    assert Node.objects.get(lab=lab, name="app-1").state == Node.State.DOWN
