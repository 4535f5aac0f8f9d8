"""Course pages (outline, lesson, the learner's progress) and the launch endpoint. Thin: content
from the database (as `course.content` loaded it), labs from sandbox.lifecycle, progress from
course.progress."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.db.models import Prefetch
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_POST
from django_ratelimit.decorators import ratelimit

from sandbox import lifecycle
from sandbox.models import Lab
from sandbox.payloads import lab_payload
from sandbox.specs import LabSpecError, load_lab
from sandbox.views import api_login_required

from . import cohorts, progress
from .content import ContentReport, load_content_if_changed
from .models import Course, Lesson, Module

View = Callable[..., HttpResponse]


def _autoloading(view: View, problems: Callable[[HttpRequest, ContentReport], HttpResponse]) -> View:
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if settings.CONTENT_AUTOLOAD:
            report = load_content_if_changed()
            if report is not None and not report.is_valid:
                return problems(request, report)
        return view(request, *args, **kwargs)

    return wrapper


def with_fresh_content(view: View) -> View:
    """With CONTENT_AUTOLOAD on, load the content files first if any changed; when they have
    problems, show the list (503) and leave the last good content in place."""
    return _autoloading(
        view, lambda request, report: render(request, "course/content_errors.html", {"report": report}, status=503)
    )


def with_fresh_content_json(view: View) -> View:
    """`with_fresh_content` for the API: the problems' summary as a JSON error (503)."""
    return _autoloading(view, lambda request, report: JsonResponse({"error": report.summary}, status=503))


def get_lesson_or_404(slug: str) -> Lesson:
    return get_object_or_404(Lesson.objects.select_related("module"), slug=slug)


@login_required
@with_fresh_content
def course_index(request: HttpRequest) -> HttpResponse:
    course = Course.objects.order_by("pk").first()
    modules = list(
        Module.objects.prefetch_related(Prefetch("lessons", queryset=Lesson.objects.order_by("order", "slug")))
    )
    locked = cohorts.locked_lessons(request.user)
    for module in modules:
        for lesson in module.lessons.all():
            lesson.opens_at = locked.get(lesson.slug)
    return render(request, "course/index.html", {"course": course, "modules": modules})


@login_required
@with_fresh_content
def lesson_page(request: HttpRequest, slug: str) -> HttpResponse:
    lesson = get_lesson_or_404(slug)
    opens_at = cohorts.opens_at(request.user, slug)
    if opens_at is not None:
        return render(request, "course/lesson_locked.html", {"lesson": lesson, "opens_at": opens_at}, status=403)
    context: dict[str, object] = {"lesson": lesson, "lab": None, "lab_spec": None, "progress": []}
    if lesson.lab_slug:
        spec = load_lab(lesson.lab_slug).spec
        context["lab_spec"] = spec
        context["break_fault"] = spec.fault(spec.break_)
        context["lab"] = Lab.objects.filter(owner=request.user, lesson_slug=slug, state__in=Lab.LIVE_STATES).first()
        context["progress"] = progress.lesson_progress(request.user, slug, spec)
    return render(request, "course/lesson.html", context)


@login_required
@with_fresh_content
def progress_page(request: HttpRequest) -> HttpResponse:
    """The learner's own progress: every lesson's status and objectives, time in labs, cohorts."""
    context = {
        "lessons": progress.learner_progress(request.user),
        "time_in_labs": _hours_and_minutes(cohorts.time_in_labs(request.user)),
        "allowances": cohorts.lab_allowances(request.user),
    }
    return render(request, "course/progress.html", context)


def _hours_and_minutes(duration: timedelta) -> str:
    minutes = round(duration.total_seconds() / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min"


@require_POST
@api_login_required
@with_fresh_content_json
@ratelimit(key="user", rate=lambda group, request: settings.LAUNCH_RATE_LIMIT, method="POST", block=False)
def launch_lab(request: HttpRequest, slug: str) -> JsonResponse:
    """Launch (or return) the learner's lab for a lesson: 201 when new, 200 when already live.

    Refused, with nothing started: too many launches in a short time (429), a lesson the cohort's
    schedule has not opened yet (403), a launch over one of the cohort's quotas (409, naming it).
    """
    if getattr(request, "limited", False):
        return JsonResponse({"error": "Too many launches in a short time: wait a minute and try again."}, status=429)
    lesson = get_lesson_or_404(slug)
    if not lesson.lab_slug:
        raise Http404("This lesson has no lab")
    try:
        cohorts.require_open(request.user, lesson.slug)
    except cohorts.LessonLocked as locked:
        return JsonResponse({"error": str(locked)}, status=403)
    live = Lab.objects.filter(owner=request.user, lesson_slug=lesson.slug, state__in=Lab.LIVE_STATES)
    try:
        with transaction.atomic():
            cohorts.lock_cohorts(request.user)
            # The running lab, if any, before the quotas and under the lock: of a double click,
            # the second gets the first's lab (not a quota refusal for the lab it just launched).
            existing = live.first()
            if existing is not None:
                return JsonResponse(lab_payload(existing), status=200)
            cohorts.check_launch_quotas(request.user)
            lab, created = lifecycle.request_lab(request.user, lesson.lab_slug, lesson.slug)
    except cohorts.QuotaExceeded as refused:
        return JsonResponse({"error": str(refused), "quota": refused.quota, "cohort": refused.cohort}, status=409)
    except LabSpecError as error:
        raise Http404(str(error)) from error
    return JsonResponse(lab_payload(lab), status=201 if created else 200)
