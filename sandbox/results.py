"""Objective results: storing a verdict (the learner's progress), noting it on the timeline and
pushing it to the lab's page. One path for every check kind: the monitor's metric and probe
checks, and the learner's answers to questions."""

from __future__ import annotations

import logging
from typing import Any

from django.db.models import DateTimeField, F, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from . import timeline
from .live import publish
from .models import Lab, LabEvent, ObjectiveResult
from .payloads import objective_payload
from .signals import announce, objective_first_met
from .specs import ObjectiveSpec

logger = logging.getLogger(__name__)

REASON_LENGTH = ObjectiveResult._meta.get_field("reason").max_length or 300


def record_result(
    lab_id: Any, objective: ObjectiveSpec, status: str, reason: str, status_changed: bool, unless_met: bool = False
) -> bool:
    """Store a changed status and push every change (a new reason too) to the page. Returns
    whether it was stored.

    Only while the lab is ready: a check that finishes as its lab stops or resets must not mark
    the lab (or the fresh one after the reset) failing. With `unless_met` (a question), a result
    already met is left alone, so of two answers sent at once a wrong one cannot undo a right one.
    The row is made if missing (an objective added to the spec while the lab runs).
    """
    reason = reason if len(reason) <= REASON_LENGTH else reason[: REASON_LENGTH - 1] + "…"
    if status_changed:
        ObjectiveResult.objects.get_or_create(lab_id=lab_id, key=objective.key)
    results = ObjectiveResult.objects.filter(lab_id=lab_id, key=objective.key, lab__state=Lab.State.READY)
    if unless_met:
        results = results.exclude(status=ObjectiveResult.Status.MET)
    if status_changed:
        fields: dict[str, Any] = {"status": status, "reason": reason, "updated_at": timezone.now()}
        first_met = False
        if status == ObjectiveResult.Status.MET:
            fields["first_met_at"] = Coalesce(F("first_met_at"), Value(timezone.now(), output_field=DateTimeField()))
            first_met = results.filter(first_met_at__isnull=True).exists()
        if not results.update(**fields):
            return False
        logger.info("lab %s: objective %s %s: %s", str(lab_id)[:12], objective.key, status, reason)
        if status != ObjectiveResult.Status.PENDING:
            timeline.record(lab_id, LabEvent.Kind.OBJECTIVE, f"{objective.title}: {status} ({reason})")
        # Progress changes only when an objective is met for the first time: a check flapping
        # between met and failing tells the dashboards nothing new, and sends nothing.
        owner = Lab.objects.filter(pk=lab_id).values_list("owner_id", "lesson_slug").first() if first_met else None
        if owner is not None:
            announce(
                objective_first_met,
                lab_id=str(lab_id),
                owner_id=owner[0],
                lesson_slug=owner[1],
                key=objective.key,
            )
    elif objective.is_question:
        # A question's reason is the learner's last answer: kept, so a reload shows it.
        if not results.update(reason=reason, updated_at=timezone.now()):
            return False
    result = results.first() if not status_changed else ObjectiveResult.objects.get(lab_id=lab_id, key=objective.key)
    if result is None:
        return False  # the reason of a lab that is no longer ready (or of no row): nothing to show
    result.status, result.reason = status, reason
    publish(str(lab_id), objective_payload(result, objective))
    return True
