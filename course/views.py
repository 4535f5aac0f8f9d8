"""Course pages (outline, lesson) and the launch endpoint. Thin: content from course.lessons,
labs from sandbox.lifecycle."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.db.models import Min
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_POST

from sandbox import lifecycle
from sandbox.models import Lab, ObjectiveResult
from sandbox.payloads import lab_payload
from sandbox.specs import LabSpecError, load_lab
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
        context["lab_spec"] = load_lab(lesson.meta.lab).spec
        context["lab"] = Lab.objects.filter(owner=request.user, lesson_slug=slug, state__in=Lab.LIVE_STATES).first()
        met = dict(
            ObjectiveResult.objects.filter(lab__owner=request.user, lab__lesson_slug=slug)
            .exclude(first_met_at=None)
            .values_list("key")
            .annotate(first=Min("first_met_at"))
        )
        context["progress"] = [
            {"title": objective.title, "first_met_at": met.get(objective.key)}
            for objective in context["lab_spec"].objectives
        ]
    return render(request, "course/lesson.html", context)


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
