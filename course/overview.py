"""What an instructor sees of a cohort, as data: the progress matrix (from course.progress) and
the labs running now, in the JSON shapes the dashboard socket sends and the page renders, and the
progress export's rows. Plain functions; the dashboard views, consumer and receivers call these.

Shapes (see docs/api.md, "Cohort dashboard WebSocket"):

- a *cell* (one learner × one lesson): `{"learner", "lesson", "status", "label", "passed",
  "total", "summary", "objectives": [{"key", "title", "first_met_at", "is_skipped"}]}`, where
  `summary` is the hover text (one line per objective, with when it was first met);
- a *lab*: `{"type": "lab", "lab_id", "learner", "username", "lesson", "state", "since",
  "expires_at"}`;
- the *snapshot*: `{"type": "snapshot", "cohort", "lessons", "learners": [{"id", "username",
  "cells"}], "labs"}`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import F
from django.http import Http404
from django.utils import timezone
from django.utils.formats import date_format

from sandbox.models import Lab

from .cohorts import lab_hours
from .models import Cohort
from .progress import CohortMatrix, LessonProgress, Status, cohort_matrix, learner_progress

PROGRESS_COLUMNS = (
    "learner",
    "email",
    "lesson",
    "status",
    "objectives_met",
    "objectives_total",
    "first_completed_at",
    "time_in_labs_h",
)


def get_cohort_lab(cohort: Cohort, lab_id: str | uuid.UUID) -> Lab:
    """A lab a learner of `cohort` launched since joining it (as `cohorts.may_watch` has it);
    Http404 for any other lab."""
    try:
        pk = uuid.UUID(str(lab_id))
    except ValueError as exc:
        raise Http404("No such lab") from exc
    lab = (
        Lab.objects.select_related("owner")
        .filter(pk=pk, owner__enrolments__cohort=cohort, created_at__gte=F("owner__enrolments__joined_at"))
        .first()
    )
    if lab is None:
        raise Http404("No such lab")
    return lab


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _when(moment: datetime) -> str:
    return date_format(timezone.localtime(moment), "Y-m-d H:i T")


# -- labs -------------------------------------------------------------------------------------


def lab_message(lab: Lab) -> dict[str, Any]:
    """A learner's lab as the dashboard's "Running now" list shows it (also its live `lab` message)."""
    return {
        "type": "lab",
        "lab_id": str(lab.id),
        "learner": lab.owner_id,
        "username": lab.owner.get_username(),
        "lesson": lab.lesson_slug,
        "state": lab.state,
        "since": _iso(lab.ready_at or lab.created_at),
        "expires_at": _iso(lab.expires_at),
    }


def running_labs(cohort: Cohort) -> list[Lab]:
    """The live labs the cohort's learners launched since joining it, oldest first."""
    return list(
        Lab.objects.filter(
            owner__enrolments__cohort=cohort,
            created_at__gte=F("owner__enrolments__joined_at"),
            state__in=Lab.LIVE_STATES,
        )
        .select_related("owner")
        .order_by("created_at")
    )


# -- progress ---------------------------------------------------------------------------------


def _summary(cell: LessonProgress) -> str:
    if cell.status == Status.READING:
        return f"{cell.lesson.title}: reading only, no lab"
    lines = [f"{cell.lesson.title}: {cell.status.label}"]
    if cell.opens_at is not None:
        lines.append(f"Opens {_when(cell.opens_at)}")
    for objective in cell.objectives:
        if objective.first_met_at is not None:
            lines.append(f"✓ {objective.title}: met {_when(objective.first_met_at)}")
        elif objective.is_skipped:
            lines.append(f"↷ {objective.title}: met after Skip")
        else:
            lines.append(f"○ {objective.title}: not yet met")
    return "\n".join(lines)


def cell_payload(learner_id: int, cell: LessonProgress) -> dict[str, Any]:
    return {
        "learner": learner_id,
        "lesson": cell.lesson.slug,
        "status": cell.status.value,
        "label": cell.status.label,
        "passed": cell.passed,
        "total": len(cell.objectives),
        "summary": _summary(cell),
        "objectives": [
            {
                "key": objective.key,
                "title": objective.title,
                "first_met_at": _iso(objective.first_met_at),
                "is_skipped": objective.is_skipped,
            }
            for objective in cell.objectives
        ],
    }


def learner_cell(learner: AbstractBaseUser, lesson_slug: str) -> dict[str, Any] | None:
    """One learner's cell for one lesson, as it is now (None for a lesson not in the course)."""
    for cell in learner_progress(learner):
        if cell.lesson.slug == lesson_slug:
            return cell_payload(learner.pk, cell)
    return None


def dashboard_snapshot(cohort: Cohort, matrix: CohortMatrix | None = None) -> dict[str, Any]:
    """Everything the dashboard shows, at once: sent when its socket (re)connects, and rendered
    into the page."""
    matrix = matrix or cohort_matrix(cohort)
    return {
        "type": "snapshot",
        "cohort": {"id": cohort.pk, "name": cohort.name},
        "lessons": [
            {"slug": lesson.slug, "title": lesson.title, "has_lab": bool(lesson.lab_slug)} for lesson in matrix.lessons
        ],
        "learners": [
            {
                "id": row.learner.pk,
                "username": row.learner.get_username(),
                "cells": [cell_payload(row.learner.pk, cell) for cell in row.lessons],
            }
            for row in matrix.learners
        ],
        "labs": [lab_message(lab) for lab in running_labs(cohort)],
    }


def _first_completed_at(cell: LessonProgress) -> datetime | None:
    """When the learner met the last of the lesson's objectives on their own (done lessons only)."""
    if cell.status != Status.DONE:
        return None
    return max(objective.first_met_at for objective in cell.objectives if objective.first_met_at is not None)


def progress_rows(cohort: Cohort) -> Iterator[tuple[str, ...]]:
    """The export: one row per learner × lesson, in the matrix's order, under PROGRESS_COLUMNS.
    `objectives_met` counts those met on their own (not after Skip); `time_in_labs_h` is the
    hours the learner's labs for the lesson ran (ready to stopped, or now)."""
    matrix = cohort_matrix(cohort)
    now = timezone.now()
    for row in matrix.learners:
        learner = row.learner
        for cell in row.lessons:
            labs = Lab.objects.filter(owner=learner, lesson_slug=cell.lesson.slug)
            hours = lab_hours(labs, now) if cell.lesson.lab_slug else 0
            completed = _first_completed_at(cell)
            yield (
                learner.get_username(),
                getattr(learner, "email", "") or "",
                cell.lesson.slug,
                cell.status.value,
                str(cell.passed),
                str(len(cell.objectives)),
                completed.isoformat() if completed else "",
                f"{hours:.2f}",
            )
