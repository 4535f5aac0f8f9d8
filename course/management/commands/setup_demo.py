"""`manage.py setup_demo`: create the demo learner and instructor (once) and print how to log in."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group, User
from django.core.management.base import BaseCommand

from sandbox.access import INSTRUCTORS_GROUP


class Command(BaseCommand):
    help = "Create the demo learner and instructor accounts if missing, and print their logins."

    def handle(self, *args: Any, **options: Any) -> None:
        password = settings.DEMO_PASSWORD
        instructors, _ = Group.objects.get_or_create(name=INSTRUCTORS_GROUP)
        for username, is_instructor in (("learner", False), ("instructor", True)):
            user, created = User.objects.get_or_create(username=username)
            if created:
                user.set_password(password)
                user.save()
            if is_instructor:
                user.groups.add(instructors)
            state = "created" if created else "exists"
            self.stdout.write(f"demo {username:<10} login: {username} / {password}  ({state})")
