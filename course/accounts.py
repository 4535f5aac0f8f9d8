"""Sign-up: Django's user creation form with a required, unique e-mail (password reset sends to
it), and the view that logs the new learner in and mails them a link to verify the address; the
page that sends the link again, and the link itself. Log-in, log-out and passwords are Django's
views; the rules of verification are in `course.verification`."""

from __future__ import annotations

import logging
from urllib.parse import quote

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.contrib.auth.models import AbstractBaseUser, User
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render, resolve_url
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_GET, require_http_methods
from django_ratelimit.decorators import ratelimit

from . import verification

logger = logging.getLogger(__name__)

RESEND_RATE = "3/h"


class SignupForm(UserCreationForm):
    email = forms.EmailField(
        label="E-mail",
        max_length=254,
        help_text="For resetting your password; never shown to others.",
        widget=forms.EmailInput(attrs={"autocomplete": "email"}),
    )

    class Meta(UserCreationForm.Meta):
        model = User
        fields = ("username", "email")

    def clean_email(self) -> str:
        # Case-insensitively, as the password reset form looks addresses up.
        email = User.objects.normalize_email(self.cleaned_data["email"])
        if User.objects.filter(email__iexact=email).exists():
            raise ValidationError("An account with this e-mail address already exists.", code="duplicate_email")
        return email


def safe_next(request: HttpRequest) -> str:
    """The `next` the request asks for if it stays on this site, else the empty string."""
    url = request.POST.get("next") or request.GET.get("next", "")
    if url_has_allowed_host_and_scheme(url, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return url
    return ""


@sensitive_post_parameters("password1", "password2")
@never_cache
def signup(request: HttpRequest) -> HttpResponse:
    next_url = safe_next(request)
    if request.user.is_authenticated:
        return redirect(next_url or resolve_url(settings.LOGIN_REDIRECT_URL))
    form = SignupForm(request.POST if request.method == "POST" else None)
    if form.is_valid():
        user = form.save()
        login(request, user)
        if _send_link(request, user, next_url):
            messages.info(request, f"Welcome! We sent a link to {user.email} to confirm your address.")
        return redirect(next_url or resolve_url(settings.LOGIN_REDIRECT_URL))
    return render(request, "registration/signup.html", {"form": form, "next": next_url})


def verify_url(next_url: str = "") -> str:
    """The page that says whether the address is verified, coming back to `next_url` (a path)."""
    return reverse("verify_email") + (f"?next={quote(next_url)}" if next_url else "")


def _send_link(request: HttpRequest, user: AbstractBaseUser, next_url: str) -> bool:
    """Mail the verification link; an SMTP failure is logged and told to the user, who can ask
    again from the verify page, rather than failing the request that created the account."""
    try:
        return verification.send_verification(request, user, next_url)
    except OSError:  # smtplib's errors are OSErrors too
        logger.exception("could not send the verification link to user %s", user.pk)
        messages.error(request, "We could not send the e-mail to confirm your address: try again in a while.")
        return False


@login_required
@require_http_methods(["GET", "POST"])
@ratelimit(key="user", rate=RESEND_RATE, method="POST", block=False)
@never_cache
def verify_email(request: HttpRequest) -> HttpResponse:
    """Whether the account's address is verified, with a button (POST) that mails the link again,
    a few times an hour at most."""
    next_url = safe_next(request)
    user = request.user
    is_verified = verification.is_verified(user)
    days = settings.EMAIL_VERIFICATION_DAYS
    context = {"email": user.email, "is_verified": is_verified, "next": next_url, "days": days}
    if request.method == "POST":
        if getattr(request, "limited", False):
            error = (
                "You have asked for the link several times this hour: open one of those e-mails, or try again later."
            )
            return render(request, "registration/verify_email.html", {**context, "error": error}, status=429)
        if is_verified:
            messages.info(request, f"{user.email} is already confirmed.")
        elif _send_link(request, user, next_url):
            messages.success(request, f"We sent a new link to {user.email}. It works for {days} days.")
        return redirect(verify_url(next_url))
    return render(request, "registration/verify_email.html", context)


@require_GET
@never_cache
def confirm_email(request: HttpRequest, uidb64: str, token: str) -> HttpResponse:
    """The link from the e-mail: verify the address, then go on to a safe `next` or the course.
    Anyone holding the link may follow it, logged in or not: it proves the mail arrived."""
    user = verification.confirm(uidb64, token)
    if user is None:
        return render(request, "registration/verify_email_invalid.html", status=400)
    messages.success(request, f"Thank you: your e-mail address {user.email} is confirmed.")
    return redirect(safe_next(request) or resolve_url(settings.LOGIN_REDIRECT_URL))
