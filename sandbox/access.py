"""The one way to reach a lab: its owner, or someone allowed to watch it. Anyone else gets "not
found".

Who may watch another person's lab is a policy the course sets (its cohorts: an instructor
watches the labs of their own cohorts' learners), registered at start-up with
`set_watch_policy`, so this module never imports the course. Without one, only staff may."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.http import Http404

from .models import Lab

INSTRUCTORS_GROUP = "instructors"


def is_instructor(user: AbstractBaseUser | AnonymousUser) -> bool:
    if not user.is_authenticated:
        return False
    return bool(user.is_staff or user.groups.filter(name=INSTRUCTORS_GROUP).exists())


WatchPolicy = Callable[[AbstractBaseUser | AnonymousUser, Lab], bool]


def _staff_only(user: AbstractBaseUser | AnonymousUser, lab: Lab) -> bool:
    return bool(user.is_authenticated and user.is_staff)


_watch_policy: WatchPolicy = _staff_only


def set_watch_policy(policy: WatchPolicy) -> None:
    """Decide who, besides its owner, may watch a lab (read-only)."""
    global _watch_policy
    _watch_policy = policy


def get_lab_for_user(user: AbstractBaseUser | AnonymousUser, lab_id: str | uuid.UUID, *, write: bool = False) -> Lab:
    """The lab, if `user` may see it (its owner, or a watcher by the policy) or act on it
    (`write`: owner only).

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
    if not write and _watch_policy(user, lab):
        return lab
    raise Http404("No such lab")
