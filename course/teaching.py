"""Instructors manage their cohorts: create one, share invite links (and withdraw them), set the
schedule of lesson unlocks and the lab quotas. Thin views over `course.cohorts`.

Only the cohort's instructors and staff reach a cohort's pages; anyone else gets 404, as if it
did not exist (`cohorts.get_cohort_for_instructor`), and learners get 404 on every page here.
Every change is a POST with a CSRF token, validated by a form: bad input is shown on the page
(400) and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from functools import wraps
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.validators import DomainNameValidator
from django.db.models import Count
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from sandbox.access import is_instructor

from . import cohorts
from .models import Cohort, Course, Lesson

View = Callable[..., HttpResponse]


def _datetime_input() -> forms.DateTimeInput:
    return forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M")


class CohortForm(forms.ModelForm):
    class Meta:
        model = Cohort
        fields = ["name"]
        labels = {"name": "Name"}


# The most a PositiveIntegerField holds on every database Stacklab runs on (PostgreSQL's
# `integer`); forms bound their whole numbers by it, so a larger one is a form error, not a 500.
COLUMN_MAX = 2**31 - 1


class InviteForm(forms.Form):
    expires_at = forms.DateTimeField(
        required=False, label="Expires", widget=_datetime_input(), help_text="Empty: never expires."
    )
    max_uses = forms.IntegerField(
        required=False, min_value=1, max_value=COLUMN_MAX, label="Uses allowed", help_text="Empty: no limit."
    )
    allowed_domains = forms.CharField(
        required=False,
        max_length=500,
        label="E-mail domains",
        help_text="Comma-separated, e.g. uni.example, school.example. Empty: any address.",
    )

    def clean_expires_at(self) -> datetime | None:
        expires_at: datetime | None = self.cleaned_data["expires_at"]
        if expires_at is not None and expires_at <= timezone.now():
            raise ValidationError("Pick a time in the future, or leave it empty for an invite that never expires.")
        return expires_at

    def clean_allowed_domains(self) -> list[str]:
        domains = [part.strip().lower().lstrip("@") for part in self.cleaned_data["allowed_domains"].split(",")]
        domains = [domain for domain in domains if domain]
        validate = DomainNameValidator(accept_idna=False)
        bad = []
        for domain in domains:
            try:
                validate(domain)
            except ValidationError:
                bad.append(domain)
        if bad:
            raise ValidationError(f"Not a domain name: {', '.join(bad)}. Write domains like uni.example.")
        return domains


class ScheduleForm(forms.Form):
    """One optional date per lesson of the course, in course order: when it opens to the cohort."""

    def __init__(self, lessons: list[Lesson], unlocks: dict[str, datetime], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lessons = lessons
        for lesson in lessons:
            self.fields[self.field_name(lesson)] = forms.DateTimeField(
                required=False,
                label=lesson.title,
                help_text=lesson.module.title,
                initial=unlocks.get(lesson.slug),
                widget=_datetime_input(),
            )

    @staticmethod
    def field_name(lesson: Lesson) -> str:
        return f"opens-{lesson.slug}"

    def unlocks(self) -> dict[str, datetime | None]:
        return {lesson.slug: self.cleaned_data[self.field_name(lesson)] for lesson in self.lessons}


class QuotaForm(forms.ModelForm):
    max_labs_per_learner = forms.IntegerField(
        required=False,
        min_value=0,
        max_value=COLUMN_MAX,
        label="Labs per learner at once",
        help_text="Empty: no limit.",
    )
    max_labs_running = forms.IntegerField(
        required=False,
        min_value=0,
        max_value=COLUMN_MAX,
        label="Labs in the cohort at once",
        help_text="All its learners' running labs together. Empty: no limit.",
    )
    lab_hours_per_learner = forms.DecimalField(
        required=False,
        min_value=Decimal("0"),
        max_digits=6,
        decimal_places=1,
        label="Lab hours per learner",
        help_text="Hours of running labs each learner may use in this cohort, in all. Empty: no limit.",
    )

    class Meta:
        model = Cohort
        fields = ["max_labs_per_learner", "max_labs_running", "lab_hours_per_learner"]


def teacher_required(view: View) -> View:
    """Logged in (else the log-in page), and an instructor or staff (else 404)."""

    @login_required
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not is_instructor(request.user):
            raise Http404("No such page")
        return view(request, *args, **kwargs)

    return wrapper


@teacher_required
@require_http_methods(["GET", "POST"])
def teaching_index(request: HttpRequest) -> HttpResponse:
    """The cohorts the user teaches (all, for staff), and a form to create one (POST)."""
    form = CohortForm(request.POST if request.method == "POST" else None)
    if form.is_valid():
        try:
            cohort = cohorts.create_cohort(form.cleaned_data["name"], request.user)
        except Course.DoesNotExist as error:
            form.add_error(None, str(error))
        else:
            messages.success(request, f"Cohort {cohort.name} created: invite your learners below.")
            return redirect("course:cohort", cohort_id=cohort.pk)
    taught = cohorts.cohorts_taught_by(request.user).annotate(learner_count=Count("enrolments"))
    return render(
        request, "course/teaching/index.html", {"cohorts": taught, "form": form}, status=400 if form.errors else 200
    )


@teacher_required
@require_http_methods(["GET"])
def cohort_page(request: HttpRequest, cohort_id: int) -> HttpResponse:
    return _render_cohort(request, cohorts.get_cohort_for_instructor(request.user, cohort_id))


@teacher_required
@require_POST
def create_invite(request: HttpRequest, cohort_id: int) -> HttpResponse:
    cohort = cohorts.get_cohort_for_instructor(request.user, cohort_id)
    form = InviteForm(request.POST)
    if not form.is_valid():
        return _render_cohort(request, cohort, invite_form=form)
    invite = cohorts.create_invite(cohort, request.user, **form.cleaned_data)
    messages.success(request, f"Invite created: share {_invite_link(request, invite.code)}")
    return redirect(reverse("course:cohort", args=[cohort.pk]) + "#invites")


@teacher_required
@require_POST
def withdraw_invite(request: HttpRequest, cohort_id: int, invite_id: int) -> HttpResponse:
    cohort = cohorts.get_cohort_for_instructor(request.user, cohort_id)
    invite = get_object_or_404(cohort.invites, pk=invite_id)
    cohorts.withdraw_invite(invite)
    messages.success(request, f"Invite {invite.code} withdrawn: nobody else can join with it.")
    return redirect(reverse("course:cohort", args=[cohort.pk]) + "#invites")


@teacher_required
@require_POST
def edit_schedule(request: HttpRequest, cohort_id: int) -> HttpResponse:
    cohort = cohorts.get_cohort_for_instructor(request.user, cohort_id)
    form = _schedule_form(cohort, request.POST)
    if not form.is_valid():
        return _render_cohort(request, cohort, schedule_form=form)
    cohorts.set_schedule(cohort, form.unlocks())
    messages.success(request, "Schedule saved.")
    return redirect(reverse("course:cohort", args=[cohort.pk]) + "#schedule")


@teacher_required
@require_POST
def edit_quotas(request: HttpRequest, cohort_id: int) -> HttpResponse:
    cohort = cohorts.get_cohort_for_instructor(request.user, cohort_id)
    # The form validates a copy: a refused one must not leave its values on the page's cohort.
    form = QuotaForm(request.POST, instance=Cohort.objects.get(pk=cohort.pk))
    if not form.is_valid():
        return _render_cohort(request, cohort, quota_form=form)
    form.save(commit=False).save(update_fields=QuotaForm.Meta.fields)
    messages.success(request, "Quotas saved.")
    return redirect(reverse("course:cohort", args=[cohort.pk]) + "#quotas")


def _invite_link(request: HttpRequest, code: str) -> str:
    return request.build_absolute_uri(reverse("course:join_invite", args=[code]))


def _schedule_form(cohort: Cohort, data: Any = None) -> ScheduleForm:
    lessons = list(Lesson.objects.select_related("module").order_by("module__position", "order", "slug"))
    unlocks = dict(cohort.unlocks.values_list("lesson_slug", "unlocks_at"))
    return ScheduleForm(lessons, unlocks, data)


def _render_cohort(request: HttpRequest, cohort: Cohort, **refused: forms.Form) -> HttpResponse:
    """The cohort's page; with a refused form (bound, with its errors) in place of its blank one."""
    now = timezone.now()
    context = {
        "cohort": cohort,
        "enrolments": cohort.enrolments.select_related("learner").order_by("learner__username"),
        "invites": [
            (invite, _invite_link(request, invite.code), cohorts.invite_state(invite, now))
            for invite in cohort.invites.all()
        ],
        "invite_form": refused.get("invite_form") or InviteForm(),
        "schedule_form": refused.get("schedule_form") or _schedule_form(cohort),
        "quota_form": refused.get("quota_form") or QuotaForm(instance=cohort),
    }
    return render(request, "course/teaching/cohort.html", context, status=400 if refused else 200)
