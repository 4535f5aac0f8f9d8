"""Provisioning that went missing is over within a minute: a run holds a lease it renews while it
works, and the provision sweep fails a lab whose lease lapsed (its worker died) and queues a lost
`requested` lab again once, then fails it. Over a fake engine; test_broker_restart.py proves the
same with real worker processes, a real Redis and the real engine."""

from __future__ import annotations

import time
from datetime import timedelta
from unittest import mock

import pytest
from django.db import connection
from django.utils import timezone

from sandbox import lifecycle, tasks
from sandbox.engine import NodeRun
from sandbox.models import Lab
from tests.conftest import FakeEngine

LAB = "scaling-load-balancer"
LESSON = "load-balancing"


def launch(user) -> Lab:  # noqa: ANN001
    lab, _ = lifecycle.request_lab(user, LAB, LESSON)
    return lab


def provisioning(lab: Lab, lease_in_seconds: float) -> None:
    """Put the lab where a provisioning run put it, with a lease ending `lease_in_seconds` from now."""
    Lab.objects.filter(pk=lab.pk).update(
        state=Lab.State.PROVISIONING, lease_expires_at=timezone.now() + timedelta(seconds=lease_in_seconds)
    )


def waited(lab: Lab, seconds: float) -> None:
    """The lab has been in its state for `seconds`."""
    Lab.objects.filter(pk=lab.pk).update(updated_at=timezone.now() - timedelta(seconds=seconds))


def test_sweep_fails_a_provisioning_lab_whose_lease_lapsed_and_removes_it(learner, fake_engine: FakeEngine) -> None:  # noqa: ANN001, E501
    lab = launch(learner)
    provisioning(lab, lease_in_seconds=-1)
    fake_engine.networks.add(lab.short_id)  # half made when the worker died
    fake_engine.nodes[(lab.short_id, "app-1")] = "running"
    report = lifecycle.sweep_provisions(engine_factory=lambda: fake_engine)
    lab.refresh_from_db()
    assert report["interrupted"] == [lab.short_id]
    assert lab.state == Lab.State.FAILED
    assert lab.reason == "Setting up the lab was interrupted; launch it again."
    assert fake_engine.lab_ids() == set()


def test_sweep_leaves_a_provisioning_lab_whose_lease_is_live(learner, fake_engine: FakeEngine) -> None:  # noqa: ANN001
    lab = launch(learner)
    provisioning(lab, lease_in_seconds=10)
    waited(lab, 3600)  # long in provisioning is not the sweep's business while the run vouches for it
    fake_engine.networks.add(lab.short_id)
    report = lifecycle.sweep_provisions(engine_factory=lambda: fake_engine)
    assert report == {"interrupted": [], "requeued": [], "lost": []}
    assert Lab.objects.get(pk=lab.pk).state == Lab.State.PROVISIONING
    assert fake_engine.removed == []


def test_a_redelivered_provision_leaves_a_run_with_a_live_lease_at_work(learner, fake_engine: FakeEngine) -> None:  # noqa: ANN001, E501
    # After a Redis restart the broker hands the task out again while its first run still works.
    lab = launch(learner)
    provisioning(lab, lease_in_seconds=10)
    fake_engine.networks.add(lab.short_id)
    assert not lifecycle.abandon_interrupted_provision(str(lab.id), engine_factory=lambda: fake_engine)
    assert Lab.objects.get(pk=lab.pk).state == Lab.State.PROVISIONING
    assert fake_engine.removed == []


def test_the_sweep_never_removes_a_lab_that_reached_ready_as_its_lease_lapsed(learner, fake_engine: FakeEngine) -> None:  # noqa: ANN001, E501
    # The sweep listed the lab (lease lapsed), then the run moved it to ready before the sweep's
    # compare-and-set: the sweep must lose, and leave the ready lab's containers alone.
    lab = launch(learner)
    lifecycle.provision_lab(str(lab.id), engine_factory=lambda: fake_engine)
    Lab.objects.filter(pk=lab.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert not lifecycle.abandon_interrupted_provision(str(lab.id), engine_factory=lambda: fake_engine)
    assert Lab.objects.get(pk=lab.pk).state == Lab.State.READY
    assert fake_engine.removed == []


def test_a_run_whose_lab_the_sweep_failed_does_not_bring_it_back_to_ready(learner, fake_engine: FakeEngine) -> None:  # noqa: ANN001, E501
    # The other way round: the run was alive after all but missed its renewals, and the sweep won.
    lab = launch(learner)
    start_node = fake_engine.start_node

    def start_then_lose_the_lease(run: NodeRun, network):  # noqa: ANN001, ANN202
        if run.name == "app-1":
            Lab.objects.filter(pk=lab.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
            assert lifecycle.sweep_provisions(engine_factory=lambda: fake_engine)["interrupted"] == [lab.short_id]
        return start_node(run, network)

    fake_engine.start_node = start_then_lose_the_lease  # type: ignore[method-assign]
    lifecycle.provision_lab(str(lab.id), engine_factory=lambda: fake_engine)
    lab.refresh_from_db()
    assert lab.state == Lab.State.FAILED
    assert lab.reason == "Setting up the lab was interrupted; launch it again."
    # What the run made after the sweep is nobody's: its own failure, or the reaper's orphan
    # pass, removes it.
    lifecycle.remove_orphans(fake_engine)
    assert fake_engine.lab_ids() == set()


def test_a_requested_lab_whose_task_was_lost_is_queued_again_once_then_failed(
    learner,  # noqa: ANN001
    fake_engine: FakeEngine,
    settings,  # noqa: ANN001
    django_capture_on_commit_callbacks,  # noqa: ANN001
) -> None:
    lab = launch(learner)
    with django_capture_on_commit_callbacks() as queued:
        assert lifecycle.sweep_provisions(engine_factory=lambda: fake_engine)["requeued"] == []  # just requested
        waited(lab, settings.LAB_REQUEST_GRACE + 1)
        assert lifecycle.sweep_provisions(engine_factory=lambda: fake_engine)["requeued"] == [lab.short_id]
        # The grace period starts again from the requeue.
        assert lifecycle.sweep_provisions(engine_factory=lambda: fake_engine) == {
            "interrupted": [],
            "requeued": [],
            "lost": [],
        }
    assert len(queued) == 1
    assert Lab.objects.get(pk=lab.pk).state == Lab.State.REQUESTED

    waited(lab, settings.LAB_REQUEST_GRACE + 1)  # the requeued task was lost too
    report = lifecycle.sweep_provisions(engine_factory=lambda: fake_engine)
    lab.refresh_from_db()
    assert report["lost"] == [lab.short_id]
    assert lab.state == Lab.State.FAILED
    assert lab.reason == "The lab could not be started (its start request was lost); launch it again."


def test_the_requeued_task_provisions_the_lab(
    learner,  # noqa: ANN001
    fake_engine: FakeEngine,
    settings,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks,  # noqa: ANN001
) -> None:
    lab = launch(learner)
    waited(lab, settings.LAB_REQUEST_GRACE + 1)
    monkeypatch.setattr(lifecycle, "connect_engine", lambda: fake_engine)
    with mock.patch("sandbox.tasks.provision_lab.delay") as queue, django_capture_on_commit_callbacks(execute=True):
        lifecycle.sweep_provisions()
    queue.assert_called_once_with(str(lab.id))
    tasks.provision_lab.apply(args=[str(lab.id)])  # what the worker does with it
    assert Lab.objects.get(pk=lab.pk).state == Lab.State.READY


def test_a_lost_request_waits_rather_than_fails_while_workers_are_busy_provisioning(
    make_user,  # noqa: ANN001
    fake_engine: FakeEngine,
    settings,  # noqa: ANN001
    django_capture_on_commit_callbacks,  # noqa: ANN001
) -> None:
    busy = launch(make_user("busy"))
    provisioning(busy, lease_in_seconds=10)
    waiting = launch(make_user("waiting"))
    Lab.objects.filter(pk=waiting.pk).update(provision_requeues=1)
    waited(waiting, settings.LAB_REQUEST_GRACE + 1)
    with django_capture_on_commit_callbacks():
        report = lifecycle.sweep_provisions(engine_factory=lambda: fake_engine)
    assert report == {"interrupted": [], "requeued": [], "lost": []}
    assert Lab.objects.get(pk=waiting.pk).state == Lab.State.REQUESTED


def test_a_ready_lab_may_be_lost_again_after_a_reset(learner, fake_engine: FakeEngine, settings) -> None:  # noqa: ANN001
    # Requeued once on its first launch; its reset is a new request with its own requeue.
    lab = launch(learner)
    Lab.objects.filter(pk=lab.pk).update(provision_requeues=1)
    lifecycle.provision_lab(str(lab.id), engine_factory=lambda: fake_engine)
    assert Lab.objects.get(pk=lab.pk).provision_requeues == 0


@pytest.mark.django_db(transaction=True)
def test_a_provisioning_run_renews_its_lease_while_it_works(learner, fake_engine: FakeEngine, settings) -> None:  # noqa: ANN001, E501
    settings.LAB_PROVISION_LEASE = 0.3  # renewed every 0.1 s
    lab = launch(learner)
    leases: list[object] = []
    start_node = fake_engine.start_node

    def start_while_watching_the_lease(run: NodeRun, network):  # noqa: ANN001, ANN202
        if run.name == "lb":  # a late node: the run is well under way
            first = Lab.objects.get(pk=lab.pk).lease_expires_at
            deadline = time.monotonic() + 10
            while Lab.objects.get(pk=lab.pk).lease_expires_at == first:
                assert time.monotonic() < deadline, "the lease was never renewed"
                time.sleep(0.05)
            leases.append(first)
        return start_node(run, network)

    fake_engine.start_node = start_while_watching_the_lease  # type: ignore[method-assign]
    try:
        lifecycle.provision_lab(str(lab.id), engine_factory=lambda: fake_engine)
    finally:
        connection.close()
    lab.refresh_from_db()
    assert leases, "the last node was never started"
    assert lab.state == Lab.State.READY
    assert lab.lease_expires_at is None  # a ready lab is no provisioning run's to vouch for
