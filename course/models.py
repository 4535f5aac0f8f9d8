"""The course in the database: its content as `manage.py load_content` last loaded it from the
files in git, and the cohorts that take it.

Content rows are a copy, never edited here: the files are the source, and the loader adds,
changes and removes rows to match them. Learners' progress lives in `sandbox` and refers to
lessons by slug, so removing a lesson row never removes anyone's labs (nor a cohort's schedule).
"""

from __future__ import annotations

from decimal import Decimal
from functools import cached_property

from django.conf import settings
from django.db import models

from .lessons import FrontMatter


class Course(models.Model):
    """The one course: its title from course.yaml, and what the last load read."""

    title = models.CharField(max_length=200)
    files_fingerprint = models.CharField(
        max_length=64, blank=True, help_text="Names, sizes and times of the content files at the last load."
    )
    loaded_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return self.title


class Module(models.Model):
    slug = models.SlugField(max_length=64, unique=True)
    title = models.CharField(max_length=200)
    summary = models.TextField(blank=True)
    position = models.PositiveIntegerField(help_text="Place in course.yaml, from 0.")
    loaded_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["position"]

    def __str__(self) -> str:
        return self.title


class Lesson(models.Model):
    slug = models.SlugField(max_length=128, unique=True)
    module = models.ForeignKey(Module, on_delete=models.PROTECT, related_name="lessons")
    order = models.PositiveIntegerField()
    title = models.CharField(max_length=200)
    minutes = models.PositiveIntegerField()
    goals = models.JSONField(default=list)
    lab_slug = models.CharField(max_length=64, blank=True, help_text="The lab this lesson launches, if any.")
    html = models.TextField(help_text="The Markdown body, rendered and sanitised.")
    source_digest = models.CharField(max_length=64, help_text="sha256 of the lesson file.")
    loaded_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["module__position", "order", "slug"]

    def __str__(self) -> str:
        return self.title

    @cached_property
    def meta(self) -> FrontMatter:
        """The front matter this row was loaded from, as the file parser's Lesson has it."""
        return FrontMatter(
            title=self.title,
            module=self.module.slug,
            order=self.order,
            minutes=self.minutes,
            goals=self.goals,
            lab=self.lab_slug or None,
        )


class LabRecord(models.Model):
    """A lab package (`labs/<slug>/`) as last loaded, so the load report covers labs too. The
    runtime reads the package itself through `sandbox.specs`."""

    slug = models.SlugField(max_length=64, unique=True)
    title = models.TextField()
    digest = models.CharField(max_length=64, help_text="sha256 over every file of the package folder.")
    loaded_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


# -- cohorts: who learns together, who teaches them, and their limits -------------------------


class Cohort(models.Model):
    """A group of learners taking the course together, with its instructors, its schedule of
    lesson unlocks and its lab quotas (empty quota: no limit)."""

    name = models.CharField(max_length=200)
    course = models.ForeignKey(Course, on_delete=models.PROTECT, related_name="cohorts")
    instructors = models.ManyToManyField(settings.AUTH_USER_MODEL, related_name="teaching_cohorts", blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    max_labs_per_learner = models.PositiveIntegerField(
        null=True, blank=True, default=1, help_text="Labs a learner may have running at once."
    )
    max_labs_running = models.PositiveIntegerField(
        null=True, blank=True, default=30, help_text="Labs the whole cohort may have running at once."
    )
    lab_hours_per_learner = models.DecimalField(
        max_digits=6,
        decimal_places=1,
        null=True,
        blank=True,
        default=Decimal("20.0"),
        help_text="Hours of running labs each learner may use in this cohort, in all.",
    )

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name


class Enrolment(models.Model):
    """A learner in a cohort (from the invite they used, if any)."""

    cohort = models.ForeignKey(Cohort, on_delete=models.CASCADE, related_name="enrolments")
    learner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="enrolments")
    invite = models.ForeignKey("Invite", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    joined_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["joined_at"]
        constraints = [models.UniqueConstraint(fields=["cohort", "learner"], name="one_enrolment_per_cohort")]

    def __str__(self) -> str:
        return f"{self.learner} in {self.cohort}"


class Invite(models.Model):
    """A link or code that enrols whoever uses it in a cohort, within its limits."""

    cohort = models.ForeignKey(Cohort, on_delete=models.CASCADE, related_name="invites")
    code = models.CharField(max_length=32, unique=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty: never expires.")
    max_uses = models.PositiveIntegerField(null=True, blank=True, help_text="Empty: no limit.")
    uses = models.PositiveIntegerField(default=0)
    allowed_domains = models.JSONField(
        default=list, blank=True, help_text='E-mail domains allowed to use it, e.g. ["example.edu"]; empty: any.'
    )
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.code} ({self.cohort})"


class LessonUnlock(models.Model):
    """The cohort's schedule: a lesson opens to its learners at `unlocks_at`. Lessons are named by
    slug, like learners' labs, so reloading content never deletes a schedule."""

    cohort = models.ForeignKey(Cohort, on_delete=models.CASCADE, related_name="unlocks")
    lesson_slug = models.CharField(max_length=128)
    unlocks_at = models.DateTimeField()

    class Meta:
        ordering = ["unlocks_at"]
        constraints = [models.UniqueConstraint(fields=["cohort", "lesson_slug"], name="one_unlock_per_lesson")]

    def __str__(self) -> str:
        return f"{self.lesson_slug} opens {self.unlocks_at:%Y-%m-%d %H:%M} for {self.cohort}"


# -- accounts ---------------------------------------------------------------------------------


class VerifiedEmail(models.Model):
    """The last address the user proved to read, by following the link mailed to it. It counts
    only while it is still the account's address (`course.verification.is_verified`)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="verified_email")
    email = models.EmailField(max_length=254)
    verified_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.email} verified {self.verified_at:%Y-%m-%d %H:%M}"
