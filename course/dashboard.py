"""The instructor's cohort dashboard: the progress matrix and the labs running now (followed live
by static/js/dashboard.js over course.consumers.DashboardConsumer), the progress export as CSV,
a read-only view of a learner's lab, and stopping it. Thin: access from course.cohorts, data from course.overview,
the stop from sandbox.lifecycle.

Anyone who does not teach the cohort (and is not staff) gets 404, as for a cohort that does not
exist; so does a lab whose owner is not enrolled in it.
"""

from __future__ import annotations

import csv

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.utils.text import slugify
from django.views.decorators.http import require_GET, require_POST

from sandbox import lifecycle, timeline
from sandbox.payloads import snapshot_payload
from sandbox.specs import LabSpecError, load_lab

from . import overview
from .cohorts import get_cohort_for_instructor
from .models import Lesson


@require_GET
@login_required
def dashboard(request: HttpRequest, cohort_id: int) -> HttpResponse:
    cohort = get_cohort_for_instructor(request.user, cohort_id)
    snapshot = overview.dashboard_snapshot(cohort)
    titles = {lesson["slug"]: lesson["title"] for lesson in snapshot["lessons"]}
    running = overview.running_labs(cohort)
    for lab in running:
        lab.lesson_title = titles.get(lab.lesson_slug, lab.lesson_slug)
    return render(request, "course/dashboard.html", {"cohort": cohort, "snapshot": snapshot, "running": running})


def spreadsheet_safe(value: object) -> object:
    """A cell a spreadsheet will not run as a formula: text starting with = + - @ (a crafted
    username or e-mail) gets a leading quote, as OWASP advises for CSV exports."""
    if isinstance(value, str) and value[:1] in {"=", "+", "-", "@", "\t", "\r"}:
        return "'" + value
    return value


@require_GET
@login_required
def progress_csv(request: HttpRequest, cohort_id: int) -> HttpResponse:
    cohort = get_cohort_for_instructor(request.user, cohort_id)
    name = f"{slugify(cohort.name) or 'cohort'}-progress-{timezone.localdate():%Y-%m-%d}.csv"
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    writer = csv.writer(response)
    writer.writerow(overview.PROGRESS_COLUMNS)
    writer.writerows([spreadsheet_safe(cell) for cell in row] for row in overview.progress_rows(cohort))
    return response


@require_GET
@login_required
def watch_lab(request: HttpRequest, cohort_id: int, lab_id: str) -> HttpResponse:
    """A learner's lab, read-only: the lab page's live panel without its controls."""
    cohort = get_cohort_for_instructor(request.user, cohort_id)
    lab = overview.get_cohort_lab(cohort, lab_id)
    try:
        lab_title = load_lab(lab.lab_slug).spec.title
    except LabSpecError:
        lab_title = lab.lab_slug  # the package went away under the lab: the rows still tell its story
    lesson = Lesson.objects.filter(slug=lab.lesson_slug).first()
    context = {
        "cohort": cohort,
        "lab": lab,
        "lab_title": lab_title,
        "lesson_title": lesson.title if lesson else lab.lesson_slug,
        "snapshot": snapshot_payload(lab),
        "timeline": list(reversed(timeline.recent(lab.pk))),
    }
    return render(request, "course/watch.html", context)


@require_POST
@login_required
def stop_lab(request: HttpRequest, cohort_id: int, lab_id: str) -> HttpResponse:
    cohort = get_cohort_for_instructor(request.user, cohort_id)
    lab = overview.get_cohort_lab(cohort, lab_id)
    who = lab.owner.get_username()
    try:
        lifecycle.request_stop(lab, reason=f"Stopped by your instructor ({request.user.get_username()}).")
    except lifecycle.LabError as error:
        messages.error(request, f"{who}'s lab was not stopped: {error}")
    else:
        messages.success(request, f"Stopping {who}'s lab ({lab.lesson_slug}).")
    if request.POST.get("then") == "watch":
        return HttpResponseRedirect(reverse("course:watch_lab", args=[cohort.pk, lab.pk]))
    return HttpResponseRedirect(reverse("course:dashboard", args=[cohort.pk]))
