"""Course content as `manage.py load_content` last loaded it from the files in git.

These rows are a copy of the content, never edited here: the files are the source, and the
loader adds, changes and removes rows to match them. Learners' progress lives in `sandbox` and
refers to lessons by slug, so removing a lesson row never removes anyone's labs.
"""

from __future__ import annotations

from functools import cached_property

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
