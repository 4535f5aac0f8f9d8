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
from .models import LabEvent, ObjectiveResult
from .payloads import objective_payload
from .specs import ObjectiveSpec

logger = logging.getLogger(__name__)

REASON_LENGTH = ObjectiveResult._meta.get_field("reason").max_length or 300


def record_result(lab_id: Any, objective: ObjectiveSpec, status: str, reason: str, status_changed: bool) -> None:
    """Store a changed status and push every change (a new reason too) to the page."""
    reason = reason if len(reason) <= REASON_LENGTH else reason[: REASON_LENGTH - 1] + "…"
    results = ObjectiveResult.objects.filter(lab_id=lab_id, key=objective.key)
    if status_changed:
        fields: dict[str, Any] = {"status": status, "reason": reason, "updated_at": timezone.now()}
        if status == ObjectiveResult.Status.MET:
            fields["first_met_at"] = Coalesce(F("first_met_at"), Value(timezone.now(), output_field=DateTimeField()))
        results.update(**fields)
        logger.info("lab %s: objective %s %s: %s", str(lab_id)[:12], objective.key, status, reason)
        if status != ObjectiveResult.Status.PENDING:
            timeline.record(lab_id, LabEvent.Kind.OBJECTIVE, f"{objective.title}: {status} ({reason})")
    elif objective.is_question:
        # A question's reason is the learner's last answer: keep it, so a reload shows it.
        results.update(reason=reason, updated_at=timezone.now())
    result = results.first() or ObjectiveResult(key=objective.key)
    result.status, result.reason = status, reason
    publish(str(lab_id), objective_payload(result, objective))
