"""`manage.py setup_demo`: create the demo learner and instructor (once), with confirmed e-mail
addresses, a demo cohort the instructor teaches with the learner in it, and print how to log in
and the cohort's invite code."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group, User
from django.core.management.base import BaseCommand

from course import cohorts, verification
from course.models import Cohort, Course, Enrolment
from sandbox.access import INSTRUCTORS_GROUP

DEMO_COHORT = "Demo cohort"


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
            if not user.email:
                user.email = f"{username}@example.com"
                user.save(update_fields=["email"])
            if not verification.is_verified(user):
                verification.mark_verified(user)
            if is_instructor:
                user.groups.add(instructors)
            state = "created" if created else "exists"
            self.stdout.write(f"demo {username:<10} login: {username} / {password}  ({state})")
        course = Course.objects.order_by("pk").first()
        if course is None:
            self.stdout.write("demo cohort: skipped, no content loaded yet (run manage.py load_content)")
            return
        cohort, created = Cohort.objects.get_or_create(name=DEMO_COHORT, defaults={"course": course})
        cohort.instructors.add(User.objects.get(username="instructor"))
        Enrolment.objects.get_or_create(cohort=cohort, learner=User.objects.get(username="learner"))
        invite = cohort.invites.filter(is_active=True).first() or cohorts.create_invite(cohort)
        state = "created" if created else "exists"
        line = f"demo cohort '{cohort.name}': invite code {invite.code}, link /join/{invite.code}"
        self.stdout.write(f"{line}  ({state})")
