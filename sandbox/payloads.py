"""The JSON shapes of labs, nodes and objectives, shared by the HTTP API and the WebSocket."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from . import timeline
from .live import metrics_history
from .models import Lab, Node, ObjectiveResult
from .specs import LabSpec, LabSpecError, ObjectiveSpec, QuestionCheck, load_lab


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def lab_idle_minutes(lab: Lab) -> int:
    """The spec's idle_minutes; the default if the package has gone from under a live lab."""
    try:
        return load_lab(lab.lab_slug).spec.idle_minutes
    except LabSpecError:
        return LabSpec.model_fields["idle_minutes"].default


def idle_deadline(lab: Lab) -> datetime | None:
    """When a ready lab is stopped for inactivity: shown by the page, enforced by the reaper."""
    if lab.last_active_at is None or lab.state != Lab.State.READY:
        return None
    return lab.last_active_at + timedelta(minutes=lab_idle_minutes(lab))


def node_payload(node: Node) -> dict[str, Any]:
    return {
        "type": "node",
        "name": node.name,
        "group": node.group,
        "role": node.role,
        "state": node.state,
        "container": node.container,
    }


def objective_payload(result: ObjectiveResult, objective: ObjectiveSpec) -> dict[str, Any]:
    """An objective's live state. A question carries what the page needs to ask it (never its
    answer); its explanation only once it is answered right."""
    payload: dict[str, Any] = {
        "type": "objective",
        "key": result.key,
        "title": objective.title,
        "kind": objective.check.kind,
        "status": result.status,
        "reason": result.reason,
        "first_met_at": _iso(result.first_met_at),
    }
    if isinstance(objective.check, QuestionCheck):
        is_met = result.status == ObjectiveResult.Status.MET
        payload["question"] = {
            "prompt": objective.check.prompt,
            "choices": objective.check.choices,
            "explanation": objective.check.explanation if is_met else "",
        }
    return payload


def lab_payload(lab: Lab) -> dict[str, Any]:
    """The lab's state as one message: what a page needs to draw itself from scratch."""
    seconds_left = idle_seconds_left = None
    if lab.expires_at and lab.is_live:
        seconds_left = max(0, int((lab.expires_at - timezone.now()).total_seconds()))
    idle_limit = idle_deadline(lab)
    if idle_limit is not None:
        idle_seconds_left = max(0, int((idle_limit - timezone.now()).total_seconds()))
    return {
        "type": "lab",
        "id": str(lab.id),
        "lab": lab.lab_slug,
        "lesson": lab.lesson_slug,
        "state": lab.state,
        "reason": lab.reason,
        "created_at": _iso(lab.created_at),
        "ready_at": _iso(lab.ready_at),
        "broken_at": _iso(lab.broken_at),
        "skipped_at": _iso(lab.skipped_at),
        "expires_at": _iso(lab.expires_at),
        "seconds_left": seconds_left,
        "idle_seconds_left": idle_seconds_left,
    }


def snapshot_payload(lab: Lab) -> dict[str, Any]:
    """Everything about a lab at once, sent when a socket (re)connects so the page catches up."""
    try:
        spec: LabSpec | None = load_lab(lab.lab_slug).spec
    except LabSpecError:
        spec = None  # the package went away under a live lab: show what the rows know
    results = {result.key: result for result in lab.objective_results.all()}
    objectives = [
        objective_payload(results.get(objective.key) or ObjectiveResult(key=objective.key), objective)
        for objective in (spec.objectives if spec else [])
    ]
    return {
        "type": "snapshot",
        "lab": lab_payload(lab),
        "steps": lab.steps,
        "nodes": [node_payload(node) for node in lab.nodes.all()],
        "objectives": objectives,
        "timeline": timeline.recent(lab.pk),
        "metrics": metrics_history(str(lab.pk)),
        "faults": [
            {"key": fault.key, "title": fault.title, "description": fault.description, "node": fault.node}
            for fault in (spec.faults if spec else [])
        ],
        "hints": {"shown": spec.hints[: lab.hints_shown] if spec else [], "total": len(spec.hints) if spec else 0},
        "solution": _solution_text(lab) if spec and spec.solution.reveal else None,
        "topology": {"edges": [list(edge) for edge in spec.edges()] if spec else []},
    }


def _solution_text(lab: Lab) -> str:
    package = load_lab(lab.lab_slug)
    return package.read_script(package.spec.solution.script)
