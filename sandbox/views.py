"""The lab HTTP API: status, stop, extend, break. Thin: parse, check access, call the lifecycle."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET, require_POST

from . import lifecycle
from .access import get_lab_for_user
from .models import Lab
from .payloads import lab_payload, snapshot_payload
from .specs import LabNotFound, LabSpecError

View = Callable[..., HttpResponse]


def api_login_required(view: View) -> View:
    """Like login_required, but answers a tool with 401 JSON instead of a login page redirect."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return JsonResponse({"error": "Log in first."}, status=401)
        return view(request, *args, **kwargs)

    return wrapper


def json_body(request: HttpRequest) -> dict[str, Any]:
    if not request.body:
        return {}
    try:
        body = json.loads(request.body)
    except (ValueError, RecursionError) as exc:
        raise lifecycle.LabError("The request body must be JSON.") from exc
    if not isinstance(body, dict):
        raise lifecycle.LabError("The request body must be a JSON object.")
    return body


def refused(error: lifecycle.LabError) -> JsonResponse:
    return JsonResponse({"error": str(error)}, status=409)


@require_GET
@api_login_required
def lab_status(request: HttpRequest, lab_id: str) -> JsonResponse:
    lab = get_lab_for_user(request.user, lab_id)
    return JsonResponse(snapshot_payload(lab))


def queue_for_owner(request: HttpRequest, lab_id: str, request_action: Callable[[Lab], None]) -> JsonResponse:
    """Queue an action on the owner's lab: 202 with the lab as it is now, or 409 with why not."""
    lab = get_lab_for_user(request.user, lab_id, write=True)
    try:
        request_action(lab)
    except LabNotFound as error:
        raise Http404(str(error)) from error
    except lifecycle.LabError as error:
        return refused(error)
    lifecycle.mark_active(lab.pk)
    return JsonResponse(lab_payload(lab), status=202)


@require_POST
@api_login_required
def stop_lab(request: HttpRequest, lab_id: str) -> JsonResponse:
    return queue_for_owner(request, lab_id, lifecycle.request_stop)


@require_POST
@api_login_required
def extend_lab(request: HttpRequest, lab_id: str) -> JsonResponse:
    lab = get_lab_for_user(request.user, lab_id, write=True)
    try:
        minutes = json_body(request).get("minutes", 30)
        if not isinstance(minutes, int) or isinstance(minutes, bool):
            raise lifecycle.LabError('"minutes" must be a whole number.')
        lab = lifecycle.extend_lab(lab, minutes)
    except lifecycle.LabError as error:
        return refused(error)
    lifecycle.mark_active(lab.pk)
    return JsonResponse(lab_payload(lab))


@require_POST
@api_login_required
def break_lab(request: HttpRequest, lab_id: str) -> JsonResponse:
    return queue_for_owner(request, lab_id, lifecycle.request_break)


@require_POST
@api_login_required
def inject_fault(request: HttpRequest, lab_id: str, key: str) -> JsonResponse:
    return queue_for_owner(request, lab_id, lambda lab: lifecycle.request_fault(lab, key))


@require_POST
@api_login_required
def restart_node(request: HttpRequest, lab_id: str, node: str) -> JsonResponse:
    return queue_for_owner(request, lab_id, lambda lab: lifecycle.request_restart(lab, node))


@require_POST
@api_login_required
def reset_lab(request: HttpRequest, lab_id: str) -> JsonResponse:
    return queue_for_owner(request, lab_id, lifecycle.request_reset)


@require_POST
@api_login_required
def skip_lab(request: HttpRequest, lab_id: str) -> JsonResponse:
    return queue_for_owner(request, lab_id, lifecycle.request_skip)


@require_POST
@api_login_required
def still_here(request: HttpRequest, lab_id: str) -> JsonResponse:
    """The learner says they are still working: the idle stop moves back."""
    lab = get_lab_for_user(request.user, lab_id, write=True)
    if lab.state != Lab.State.READY:
        return refused(lifecycle.LabError(f"This lab is {lab.state}."))
    lifecycle.mark_active(lab.pk)
    lab.refresh_from_db()
    return JsonResponse(lab_payload(lab))


@require_POST
@api_login_required
def next_hint(request: HttpRequest, lab_id: str) -> JsonResponse:
    lab = get_lab_for_user(request.user, lab_id, write=True)
    try:
        index, total, hint = lifecycle.next_hint(lab)
    except lifecycle.LabError as error:
        return refused(error)
    lifecycle.mark_active(lab.pk)
    return JsonResponse({"index": index, "total": total, "hint": hint})


@require_POST
@api_login_required
def answer_question(request: HttpRequest, lab_id: str, key: str) -> JsonResponse:
    """The learner answers a question objective: `{"answer": "..."}` -> the objective."""
    lab = get_lab_for_user(request.user, lab_id, write=True)
    try:
        answer = json_body(request).get("answer")
    except lifecycle.LabError as error:  # not JSON, or not an object
        return JsonResponse({"error": str(error)}, status=400)
    try:
        if not isinstance(answer, str):
            raise lifecycle.InvalidAnswer('Send the answer as a string: {"answer": "..."}.')
        objective = lifecycle.answer_question(lab, key, answer)
    except lifecycle.NoSuchQuestion as error:
        raise Http404(str(error)) from error
    except lifecycle.InvalidAnswer as error:
        return JsonResponse({"error": str(error)}, status=400)
    except lifecycle.LabError as error:
        return refused(error)
    except LabSpecError as error:
        return refused(lifecycle.LabError(f"This lab's package cannot be read: {error}"))
    lifecycle.mark_active(lab.pk)
    return JsonResponse(objective)
