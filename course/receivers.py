"""The course's side of the runtime's announcements: a lab changed state, an objective was met
for the first time. Each becomes a small message to the groups of the cohorts the lab's owner is enrolled in,
which their instructors' dashboards follow (course.consumers.DashboardConsumer). It carries the
learner's matrix cell for that lesson as it is now, so a page never re-derives a lesson's status.

The runtime sends these from whichever process made the change (watcher, Celery worker, web), so
the channel layer is used synchronously; a failure here is logged and never reaches the runtime.
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model

from sandbox.models import Lab

from .models import Enrolment
from .overview import lab_message, learner_cell

logger = logging.getLogger(__name__)


def cohort_group(cohort_id: int) -> str:
    """The channel-layer group of one cohort's dashboards."""
    return f"cohort.{cohort_id}"


def cohorts_following(owner_id: int) -> list[int]:
    """The cohorts whose dashboards follow this learner's labs: those they are enrolled in."""
    return list(Enrolment.objects.filter(learner_id=owner_id).values_list("cohort_id", flat=True))


def publish_to_cohorts(cohort_ids: list[int], message: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    for cohort_id in cohort_ids:
        async_to_sync(layer.group_send)(cohort_group(cohort_id), {"type": "cohort.message", "message": message})


def on_lab_state_changed(sender: object, *, lab_id: str, owner_id: int, state: str, **fields: Any) -> None:
    try:
        cohort_ids = cohorts_following(owner_id)
        lab = Lab.objects.select_related("owner").filter(pk=lab_id).first() if cohort_ids else None
        if lab is None:
            return  # a learner in no cohort (or a lab deleted meanwhile): no dashboard to tell
        # The row may have moved on since the signal was sent: announce the state the signal names.
        message = {**lab_message(lab), "state": state, "cell": learner_cell(lab.owner, lab.lesson_slug)}
        publish_to_cohorts(cohort_ids, message)
    except Exception:
        logger.exception("lab %s: could not tell the cohort dashboards it is %s", str(lab_id)[:12], state)


def on_objective_first_met(
    sender: object, *, lab_id: str, owner_id: int, lesson_slug: str, key: str, **fields: Any
) -> None:
    try:
        cohort_ids = cohorts_following(owner_id)
        owner = get_user_model().objects.filter(pk=owner_id).first() if cohort_ids else None
        if owner is None:
            return
        message = {
            "type": "objective",
            "lab_id": str(lab_id),
            "learner": owner_id,
            "lesson": lesson_slug,
            "key": key,
            "status": "met",
            "cell": learner_cell(owner, lesson_slug),
        }
        publish_to_cohorts(cohort_ids, message)
    except Exception:
        logger.exception("lab %s: could not tell the dashboards objective %s is met", str(lab_id)[:12], key)


def connect() -> None:
    from sandbox.signals import lab_state_changed, objective_first_met

    lab_state_changed.connect(on_lab_state_changed, dispatch_uid="course.dashboard.lab")
    objective_first_met.connect(on_objective_first_met, dispatch_uid="course.dashboard.objective")
