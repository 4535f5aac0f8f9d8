"""E-mail verification: a signed, time-limited link mailed to the account's address, and the
record of the address it proved. Only invites limited to e-mail domains ask for it."""

from __future__ import annotations

import logging
from datetime import timedelta
from urllib.parse import quote

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core import signing
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.http import HttpRequest
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.encoding import force_bytes, force_str
from django.utils.http import urlsafe_base64_decode, urlsafe_base64_encode

from .models import VerifiedEmail

logger = logging.getLogger(__name__)

VERIFY_FIRST = "Confirm your e-mail address first: we sent you a link (or send it again at /accounts/verify/)."
SALT = "course.verification"


def _email_of(user: AbstractBaseUser) -> str:
    return (getattr(user, "email", "") or "").strip()


def _signer(email: str) -> signing.TimestampSigner:
    # The address is in the salt, not in the link: a link proves only the address it was sent
    # to, so it stops working once the account's address changes, and no address lands in logs.
    return signing.TimestampSigner(salt=f"{SALT}:{email.lower()}")


def make_token(user: AbstractBaseUser) -> tuple[str, str]:
    """The (uidb64, token) pair of a link that verifies the user's current address. The token is
    the timestamp and signature of `uidb64` signed with `_signer`; the uid itself is not repeated."""
    uidb64 = urlsafe_base64_encode(force_bytes(user.pk))
    return uidb64, _signer(_email_of(user)).sign(uidb64).removeprefix(f"{uidb64}:")


def is_verified(user: AbstractBaseUser | AnonymousUser) -> bool:
    """Whether the account's current address is the one it last verified (case-insensitively)."""
    email = _email_of(user)
    if not user.is_authenticated or not email:
        return False
    return VerifiedEmail.objects.filter(user=user, email__iexact=email).exists()


def mark_verified(user: AbstractBaseUser) -> None:
    """Record the user's current address as verified (a link was followed, or an admin vouches)."""
    VerifiedEmail.objects.update_or_create(
        user=user, defaults={"email": _email_of(user), "verified_at": timezone.now()}
    )


def send_verification(request: HttpRequest, user: AbstractBaseUser, next_url: str = "") -> bool:
    """Mail the user a link that verifies their address (and then goes on to `next_url`, a path
    on this site). False if the account has no address to send to. SMTP errors propagate."""
    email = _email_of(user)
    if not email:
        return False
    uidb64, token = make_token(user)
    link = reverse("verify_email_confirm", kwargs={"uidb64": uidb64, "token": token})
    if next_url:
        link += f"?next={quote(next_url)}"
    context = {
        "user": user,
        "email": email,
        "link": request.build_absolute_uri(link),
        "days": settings.EMAIL_VERIFICATION_DAYS,
    }
    subject = "".join(render_to_string("registration/verify_email_subject.txt", context).splitlines())
    body = render_to_string("registration/verify_email_email.txt", context)
    send_mail(subject, body, None, [email])
    logger.info("verification link sent to user %s", user.pk)
    return True


def confirm(uidb64: str, token: str) -> AbstractBaseUser | None:
    """The user whose address the link verifies, now marked verified; None if the link is not
    valid: tampered with, expired, or sent to an address the account no longer has."""
    try:
        user = get_user_model().objects.get(pk=force_str(urlsafe_base64_decode(uidb64)))
    except (ValueError, TypeError, OverflowError, ValidationError, get_user_model().DoesNotExist):
        return None
    email = _email_of(user)
    if not email:
        return None
    try:
        _signer(email).unsign(f"{uidb64}:{token}", max_age=timedelta(days=settings.EMAIL_VERIFICATION_DAYS))
    except signing.BadSignature:  # SignatureExpired is one
        return None
    mark_verified(user)
    return user
