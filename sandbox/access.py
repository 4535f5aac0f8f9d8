"""The one way to reach a lab: its owner, or an instructor. Anyone else gets "not found"."""

from __future__ import annotations

import uuid

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.http import Http404

from .models import Lab

INSTRUCTORS_GROUP = "instructors"


def is_instructor(user: AbstractBaseUser | AnonymousUser) -> bool:
    if not user.is_authenticated:
        return False
    return bool(user.is_staff or user.groups.filter(name=INSTRUCTORS_GROUP).exists())


def get_lab_for_user(user: AbstractBaseUser | AnonymousUser, lab_id: str | uuid.UUID, *, write: bool = False) -> Lab:
    """The lab, if `user` may see it (owner or instructor) or act on it (`write`: owner only).

    Raises Http404 otherwise, never revealing that someone else's lab exists.
    """
    if not user.is_authenticated:
        raise Http404("No such lab")
    try:
        lab = Lab.objects.get(pk=uuid.UUID(str(lab_id)))
    except (ValueError, Lab.DoesNotExist) as exc:
        raise Http404("No such lab") from exc
    if lab.owner_id == user.pk:
        return lab
    if not write and is_instructor(user):
        return lab
    raise Http404("No such lab")
