"""The lab's timeline: notable events are stored (so a reloaded page gets them back once) and
published live as `event` messages."""

from __future__ import annotations

from typing import Any

from .live import publish
from .models import LabEvent

TIMELINE_LENGTH = 200  # events a snapshot carries


def event_payload(event: LabEvent) -> dict[str, Any]:
    return {"type": "event", "id": event.id, "at": event.at.isoformat(), "kind": event.kind, "message": event.message}


def record(lab_id: Any, kind: str, message: str) -> LabEvent:
    event = LabEvent.objects.create(lab_id=lab_id, kind=kind, message=message[:300])
    publish(str(lab_id), event_payload(event))
    return event


def recent(lab_id: Any) -> list[dict[str, Any]]:
    events = LabEvent.objects.filter(lab_id=lab_id).order_by("-id")[:TIMELINE_LENGTH]
    return [event_payload(event) for event in reversed(events)]
