"""Course pages (outline, lesson) and the launch endpoint. Thin: content from the database (as
`course.content` loaded it), labs from sandbox.lifecycle."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Prefetch
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_POST

from sandbox import lifecycle
from sandbox.models import Lab, ObjectiveResult
from sandbox.payloads import lab_payload
from sandbox.specs import LabSpec, LabSpecError, load_lab
from sandbox.views import api_login_required

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
    modules = Module.objects.prefetch_related(Prefetch("lessons", queryset=Lesson.objects.order_by("order", "slug")))
    return render(request, "course/index.html", {"course": course, "modules": modules})


@login_required
@with_fresh_content
def lesson_page(request: HttpRequest, slug: str) -> HttpResponse:
    lesson = get_lesson_or_404(slug)
    context: dict[str, object] = {"lesson": lesson, "lab": None, "lab_spec": None, "progress": []}
    if lesson.lab_slug:
        spec = load_lab(lesson.lab_slug).spec
        context["lab_spec"] = spec
        context["break_fault"] = spec.fault(spec.break_)
        context["lab"] = Lab.objects.filter(owner=request.user, lesson_slug=slug, state__in=Lab.LIVE_STATES).first()
        context["progress"] = lesson_progress(request.user, slug, spec)
    return render(request, "course/lesson.html", context)


def lesson_progress(user: AbstractBaseUser, slug: str, spec: LabSpec) -> list[dict[str, object]]:
    """Per objective: when the learner first met it on their own, or that it was only met after
    they had the solution run for them (Skip)."""
    passed: dict[str, datetime] = {}
    skipped: set[str] = set()
    results = ObjectiveResult.objects.filter(lab__owner=user, lab__lesson_slug=slug).exclude(first_met_at=None)
    for result in results.select_related("lab"):
        assert result.first_met_at is not None
        if result.lab.skipped_at is not None and result.first_met_at >= result.lab.skipped_at:
            skipped.add(result.key)
        elif result.key not in passed or result.first_met_at < passed[result.key]:
            passed[result.key] = result.first_met_at
    return [
        {
            "title": objective.title,
            "first_met_at": passed.get(objective.key),
            "is_skipped": objective.key in skipped and objective.key not in passed,
        }
        for objective in spec.objectives
    ]


@require_POST
@api_login_required
@with_fresh_content_json
def launch_lab(request: HttpRequest, slug: str) -> JsonResponse:
    """Launch (or return) the learner's lab for a lesson: 201 when new, 200 when already live."""
    lesson = get_lesson_or_404(slug)
    if not lesson.lab_slug:
        raise Http404("This lesson has no lab")
    try:
        lab, created = lifecycle.request_lab(request.user, lesson.lab_slug, lesson.slug)
    except LabSpecError as error:
        raise Http404(str(error)) from error
    return JsonResponse(lab_payload(lab), status=201 if created else 200)
