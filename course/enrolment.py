"""Joining a cohort: type an invite code (`/join/`) or follow an invite link (`/join/<code>/`),
then press Join. Someone with no account yet is sent to sign up first and comes back to the link.
The rules of invites are in `course.cohorts`."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.validators import RegexValidator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from . import accounts, cohorts, verification
from .models import Invite


class InviteCodeForm(forms.Form):
    code = forms.CharField(
        label="Invite code",
        max_length=Invite._meta.get_field("code").max_length,
        # The characters of `secrets.token_urlsafe`: anything else cannot be a code.
        validators=[RegexValidator(r"^[A-Za-z0-9_-]+$", cohorts.INVALID_CODE)],
        widget=forms.TextInput(attrs={"autocomplete": "off", "autofocus": True, "spellcheck": "false"}),
    )


@require_http_methods(["GET"])
def join(request: HttpRequest) -> HttpResponse:
    """The code form; a well-formed code goes on to its invite page, which says if it is valid."""
    form = InviteCodeForm(request.GET if "code" in request.GET else None)
    if form.is_valid():
        return redirect("course:join_invite", code=form.cleaned_data["code"])
    return render(request, "course/join.html", {"form": form}, status=400 if form.is_bound else 200)


@require_http_methods(["GET", "POST"])
def join_invite(request: HttpRequest, code: str) -> HttpResponse:
    """The invite's cohort and a Join button (POST). Refusals are shown on the page: an unknown
    or withdrawn code (404); expired, used up, for other e-mail domains, or for a domain the
    user's address is at but not confirmed yet, with a link to confirm it (400)."""
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path(), reverse("signup"))
    context: dict[str, object] = {}
    try:
        invite = cohorts.find_invite(code)
        context.update(invite=invite, cohort=invite.cohort)
        if cohorts.cohorts_of(request.user).filter(pk=invite.cohort_id).exists():
            if request.method == "POST":
                messages.info(request, f"You are already in {invite.cohort.name}.")
                return redirect("course:index")
            return render(request, "course/join_invite.html", {**context, "is_member": True})
        if request.method == "POST":
            enrolment = cohorts.enrol_with_invite(request.user, code)
            messages.success(request, f"You joined {enrolment.cohort.name}.")
            return redirect("course:index")
        cohorts.check_invite(request.user, invite)
    except cohorts.InviteNotFound as error:
        return render(request, "course/join_invite.html", {"error": str(error)}, status=404)
    except cohorts.EnrolmentError as error:
        if str(error) == verification.VERIFY_FIRST:
            context["verify_url"] = accounts.verify_url(request.path)
        return render(request, "course/join_invite.html", {**context, "error": str(error)}, status=400)
    return render(request, "course/join_invite.html", context)
