"""Celery tasks of the course: thin wrappers over course.cohorts, run by beat."""

from __future__ import annotations

from celery import shared_task

from . import cohorts


@shared_task
def stop_labs_over_hours() -> int:
    return cohorts.stop_labs_over_hours()
