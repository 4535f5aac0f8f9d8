"""Course pages (outline, lesson) and the launch endpoint. Thin: content from course.lessons,
labs from sandbox.lifecycle."""

from __future__ import annotations

from datetime import datetime

from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import AbstractBaseUser
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_POST

from sandbox import lifecycle
from sandbox.models import Lab, ObjectiveResult
from sandbox.payloads import lab_payload
from sandbox.specs import LabSpec, LabSpecError, load_lab
from sandbox.views import api_login_required

from .lessons import Lesson, find_lesson, load_course


def get_lesson_or_404(slug: str) -> Lesson:
    lesson = find_lesson(slug)
    if lesson is None:
        raise Http404("No such lesson")
    return lesson


@login_required
def course_index(request: HttpRequest) -> HttpResponse:
    course, modules = load_course()
    return render(request, "course/index.html", {"course": course, "modules": modules})


@login_required
def lesson_page(request: HttpRequest, slug: str) -> HttpResponse:
    lesson = get_lesson_or_404(slug)
    context: dict[str, object] = {"lesson": lesson, "lab": None, "lab_spec": None, "progress": []}
    if lesson.meta.lab:
        spec = load_lab(lesson.meta.lab).spec
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
def launch_lab(request: HttpRequest, slug: str) -> JsonResponse:
    """Launch (or return) the learner's lab for a lesson: 201 when new, 200 when already live."""
    lesson = get_lesson_or_404(slug)
    if not lesson.meta.lab:
        raise Http404("This lesson has no lab")
    try:
        lab, created = lifecycle.request_lab(request.user, lesson.meta.lab, lesson.slug)
    except LabSpecError as error:
        raise Http404(str(error)) from error
    return JsonResponse(lab_payload(lab), status=201 if created else 200)
