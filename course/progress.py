"""Learners' progress through the course, lesson by lesson: for a learner's own progress page, the
objectives on a lesson page, and a whole cohort at once for its instructors.

Progress is read from the runtime's rows (`sandbox.models.Lab`, `ObjectiveResult.first_met_at`)
and the lab specs' objectives; nothing here writes. Per lesson, its `Status` is decided by:

- `reading`: the lesson has no lab, so nothing to pass (the page shows no status for it);
- `done`: every objective of its lab first met by the learner on their own;
- `skipped`: every objective met, but at least one only after the learner pressed Skip (had the
  solution run for them);
- `in_progress`: the learner launched a lab for it, or met some objectives, but not all;
- `not_started`: no lab for it yet;
- `locked`: the learner's cohort schedule has not opened it yet and they have not worked on it
  (work done before a schedule was set stays visible under its own status).

An objective met on its own in any lab of the lesson counts, even if a later lab was skipped:
what the learner once did themselves is never taken away.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser
from django.db import models
from django.utils import timezone

from sandbox.models import Lab, ObjectiveResult
from sandbox.specs import LabSpec, ObjectiveSpec, load_lab

from . import cohorts
from .models import Cohort, Enrolment, Lesson


class Status(models.TextChoices):
    DONE = "done", "Done"
    SKIPPED = "skipped", "Skipped"
    IN_PROGRESS = "in_progress", "In progress"
    NOT_STARTED = "not_started", "Not started"
    LOCKED = "locked", "Locked"
    READING = "reading", "Reading"


@dataclass(frozen=True)
class ObjectiveProgress:
    """One objective of a lesson's lab, for one learner."""

    key: str
    title: str
    first_met_at: datetime | None  # first met on their own; None if not (yet)
    is_skipped: bool  # met only after Skip

    @property
    def is_met(self) -> bool:
        return self.first_met_at is not None or self.is_skipped


@dataclass(frozen=True)
class LessonProgress:
    """One lesson, for one learner: its status and its lab's objectives (none for reading)."""

    lesson: Lesson
    status: Status
    objectives: tuple[ObjectiveProgress, ...]
    opens_at: datetime | None  # when the schedule opens it to the learner; None: open

    @property
    def passed(self) -> int:
        """Objectives met on their own."""
        return sum(objective.first_met_at is not None for objective in self.objectives)


@dataclass(frozen=True)
class LearnerProgress:
    """One learner of a cohort and their progress in every lesson, in course order."""

    learner: AbstractBaseUser
    joined_at: datetime
    lessons: list[LessonProgress]


@dataclass(frozen=True)
class CohortMatrix:
    """A cohort's learners (by username) × the course's lessons (in course order)."""

    cohort: Cohort
    lessons: list[Lesson]
    learners: list[LearnerProgress]


# (key, first_met_at, skipped_at of its lab): one objective result met in one lab.
Met = tuple[str, datetime, datetime | None]


def objective_progress(objectives: Sequence[ObjectiveSpec], met: Iterable[Met]) -> tuple[ObjectiveProgress, ...]:
    """Per objective of a spec: when first met on their own, or whether only after Skip."""
    passed: dict[str, datetime] = {}
    skipped: set[str] = set()
    for key, first_met_at, skipped_at in met:
        if skipped_at is not None and first_met_at >= skipped_at:
            skipped.add(key)
        elif key not in passed or first_met_at < passed[key]:
            passed[key] = first_met_at
    return tuple(
        ObjectiveProgress(
            key=objective.key,
            title=objective.title,
            first_met_at=passed.get(objective.key),
            is_skipped=objective.key in skipped and objective.key not in passed,
        )
        for objective in objectives
    )


def lesson_status(
    lesson: Lesson, objectives: Sequence[ObjectiveProgress], *, has_lab: bool, opens_at: datetime | None
) -> Status:
    """The lesson's status from its objectives (see the module's docstring)."""
    if not lesson.lab_slug:
        return Status.LOCKED if opens_at is not None else Status.READING
    if objectives and all(objective.first_met_at is not None for objective in objectives):
        return Status.DONE
    if objectives and all(objective.is_met for objective in objectives):
        return Status.SKIPPED
    if has_lab or any(objective.is_met for objective in objectives):
        return Status.IN_PROGRESS
    return Status.LOCKED if opens_at is not None else Status.NOT_STARTED


def lesson_progress(user: AbstractBaseUser, slug: str, spec: LabSpec) -> tuple[ObjectiveProgress, ...]:
    """The objectives of one lesson's lab for `user` (the lesson page's list)."""
    met = ObjectiveResult.objects.filter(lab__owner=user, lab__lesson_slug=slug).exclude(first_met_at=None)
    return objective_progress(spec.objectives, met.values_list("key", "first_met_at", "lab__skipped_at"))


def learner_progress(user: AbstractBaseUser, now: datetime | None = None) -> list[LessonProgress]:
    """Every lesson of the course, in course order, with `user`'s status and objectives."""
    lessons = _lessons()
    return _progress_of([user.pk], lessons, now or timezone.now())[user.pk]


def cohort_matrix(cohort: Cohort, now: datetime | None = None) -> CohortMatrix:
    """Every learner of the cohort × every lesson, each cell a `LessonProgress`.

    A fixed number of queries whatever the cohort's size (its enrolments, the lessons, the
    learners' objective results, their labs, and their schedules); lab specs come from
    `load_lab`'s cache.
    """
    enrolments = list(Enrolment.objects.filter(cohort=cohort).select_related("learner").order_by("learner__username"))
    lessons = _lessons()
    by_learner = _progress_of([enrolment.learner_id for enrolment in enrolments], lessons, now or timezone.now())
    return CohortMatrix(
        cohort=cohort,
        lessons=lessons,
        learners=[
            LearnerProgress(
                learner=enrolment.learner, joined_at=enrolment.joined_at, lessons=by_learner[enrolment.learner_id]
            )
            for enrolment in enrolments
        ],
    )


def _lessons() -> list[Lesson]:
    return list(Lesson.objects.select_related("module").order_by("module__position", "order", "slug"))


def _progress_of(learner_ids: Collection[int], lessons: list[Lesson], now: datetime) -> dict[int, list[LessonProgress]]:
    specs = {lesson.slug: load_lab(lesson.lab_slug).spec.objectives for lesson in lessons if lesson.lab_slug}
    met: dict[tuple[int, str], list[Met]] = defaultdict(list)
    results = ObjectiveResult.objects.filter(lab__owner_id__in=learner_ids).exclude(first_met_at=None)
    for owner_id, slug, key, first_met_at, skipped_at in results.values_list(
        "lab__owner", "lab__lesson_slug", "key", "first_met_at", "lab__skipped_at"
    ):
        met[(owner_id, slug)].append((key, first_met_at, skipped_at))
    started = set(Lab.objects.filter(owner_id__in=learner_ids).values_list("owner_id", "lesson_slug").distinct())
    locked = cohorts.locked_lessons_of(learner_ids, now)
    progress: dict[int, list[LessonProgress]] = {}
    for learner_id in learner_ids:
        progress[learner_id] = []
        for lesson in lessons:
            objectives = objective_progress(specs.get(lesson.slug, ()), met.get((learner_id, lesson.slug), ()))
            opens_at = locked[learner_id].get(lesson.slug)
            status = lesson_status(lesson, objectives, has_lab=(learner_id, lesson.slug) in started, opens_at=opens_at)
            progress[learner_id].append(LessonProgress(lesson, status, objectives, opens_at))
    return progress
