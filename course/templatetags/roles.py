"""`{{ user|role }}`: the user's role (learner, instructor, staff) for the page header."""

from __future__ import annotations

from django import template
from django.contrib.auth.models import AbstractUser, AnonymousUser

from course.roles import Role, role_of

register = template.Library()


@register.filter
def role(user: AbstractUser | AnonymousUser) -> Role:
    return role_of(user)
