"""Celery tasks: thin wrappers that hand a lab id to the lifecycle. Bodies stay a line or two."""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task
from celery.signals import worker_init

from . import isolation, lifecycle
from .engine import EngineError, EngineUnavailable

# Engine work is idempotent (compare-and-set on the lab state), so it is safe to redeliver a task
# whose worker died (acks_late + reject_on_worker_lost) and to retry on engine errors.
ENGINE_TASK = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "soft_time_limit": 300,
    "time_limit": 360,
}


PROVISION_RETRIES = 3


@worker_init.connect
def isolate_labs_at_start(**kwargs: Any) -> None:
    # The worker starts labs: it puts the host's isolation rules in place before taking any task.
    isolation.install_at_start("worker")


@shared_task(bind=True, **ENGINE_TASK)
def provision_lab(self: Task, lab_id: str) -> None:
    if (self.request.delivery_info or {}).get("redelivered"):
        # Its worker died mid-way (acks_late brought it back), or lost Redis while still at
        # work: only a run whose lease lapsed is abandoned.
        lifecycle.abandon_interrupted_provision(lab_id)
    try:
        lifecycle.provision_lab(lab_id)
    except EngineUnavailable as exc:
        if self.request.retries < PROVISION_RETRIES:
            raise self.retry(exc=exc, countdown=2**self.request.retries) from exc
        lifecycle.fail_lab(lab_id, str(exc))


@shared_task(autoretry_for=(EngineError,), retry_backoff=2, max_retries=5, **ENGINE_TASK)
def stop_lab(lab_id: str, reason: str = "") -> None:
    lifecycle.stop_lab(lab_id, reason=reason)


@shared_task(autoretry_for=(EngineError,), retry_backoff=1, max_retries=3, **ENGINE_TASK)
def inject_fault(lab_id: str, key: str) -> None:
    lifecycle.inject_fault(lab_id, key)


@shared_task(autoretry_for=(EngineError,), retry_backoff=1, max_retries=3, **ENGINE_TASK)
def restart_node(lab_id: str, node: str) -> None:
    lifecycle.restart_node(lab_id, node)


@shared_task(**ENGINE_TASK)
def reset_lab(lab_id: str) -> None:
    lifecycle.reset_lab(lab_id)


@shared_task(autoretry_for=(EngineUnavailable,), retry_backoff=1, max_retries=3, **ENGINE_TASK)
def skip_lab(lab_id: str) -> None:
    lifecycle.skip_lab(lab_id)


@shared_task(**ENGINE_TASK)
def reap_labs() -> dict[str, list[str]]:
    return lifecycle.reap_labs()


@shared_task(**ENGINE_TASK)
def sweep_provisions() -> dict[str, list[str]]:
    return lifecycle.sweep_provisions()


@shared_task(**ENGINE_TASK)
def reconcile_labs() -> dict[str, list[str]]:
    return lifecycle.reconcile_labs()


@shared_task
def keep_lab_isolation() -> None:
    isolation.keep_lab_isolation()
