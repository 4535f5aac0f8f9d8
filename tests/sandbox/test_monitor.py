"""The watcher's handling of traffic reports and node events, fed by hand (no engine): objective
changes are stored as progress and published; node events move node rows."""

from __future__ import annotations

import json
from datetime import timedelta
from unittest import mock

import pytest
from django.utils import timezone

from sandbox import lifecycle
from sandbox.engine import NodeEvent
from sandbox.models import Lab, Node, ObjectiveResult
from sandbox.monitor import LabWatch, Monitor
from sandbox.payloads import snapshot_payload
from sandbox.specs import load_lab


@pytest.fixture
def watched(learner, fake_engine):  # noqa: ANN001, ANN201
    lab, _ = lifecycle.request_lab(learner, "scaling-load-balancer", "load-balancing")
    lifecycle.provision_lab(str(lab.id), engine_factory=lambda: fake_engine)
    lab.refresh_from_db()
    Node.objects.filter(lab=lab).update(state=Node.State.HEALTHY)
    states = dict(Node.objects.filter(lab=lab).values_list("name", "state"))
    watch = LabWatch(lab_id=str(lab.id), short_id=lab.short_id, spec=load_lab(lab.lab_slug).spec, node_states=states)
    return lab, watch


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
    with mock.patch("sandbox.monitor.publish") as publish:
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
    with mock.patch("sandbox.monitor.publish"):
        for second in range(400):
            monitor.handle_report(watch, report(1000.0 + second))
    history = snapshot_payload(lab)["metrics"]
    assert len(history) == 300  # the five minutes the charts show
    assert [m["t"] for m in history[:2]] == [1100.0, 1101.0]
    assert history[-1]["replicas"] == {"app-1": 7, "app-2": 7, "app-3": 6}


def test_first_met_at_survives_a_later_failure(watched) -> None:  # noqa: ANN001
    lab, watch = watched
    monitor = Monitor(engine_factory=lambda: None)
    with mock.patch("sandbox.monitor.publish"):
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
    with mock.patch("sandbox.monitor.publish") as publish:
        monitor.handle_event(NodeEvent(lab=lab.short_id, name="app-2", action="die", time=0.0))
        monitor.handle_event(NodeEvent(lab=lab.short_id, name="app-2", action="die", time=0.0))  # no change
        monitor.handle_event(NodeEvent(lab=lab.short_id, name="app-2", action="exec_start: sh", time=0.0))
    assert Node.objects.get(lab=lab, name="app-2").state == Node.State.DOWN
    assert publish.call_count == 1
    assert publish.call_args.args[1]["state"] == "down"
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
    with mock.patch("sandbox.monitor.publish"):
        monitor.handle_event(NodeEvent(lab=lab.short_id, name="app-1", action="unpause", time=0.0), fake_engine)
    assert Node.objects.get(lab=lab, name="app-1").state == Node.State.HEALTHY


def test_unreadable_report_is_ignored(watched) -> None:  # noqa: ANN001
    lab, watch = watched
    with mock.patch("sandbox.monitor.publish") as publish:
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
