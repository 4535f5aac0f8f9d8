"""Who someone is in the course: staff, an instructor (the instructors group) or a learner.

Staff and instructors are made in the Django admin; everyone who signs up is a learner."""

from __future__ import annotations

from typing import Literal

from django.contrib.auth.models import AbstractUser, AnonymousUser

from sandbox.access import is_instructor

Role = Literal["learner", "instructor", "staff"]


def role_of(user: AbstractUser | AnonymousUser) -> Role:
    """Staff wins over the instructors group; anyone else (even anonymous) has a learner's rights."""
    if user.is_staff:
        return "staff"
    if is_instructor(user):
        return "instructor"
    return "learner"
