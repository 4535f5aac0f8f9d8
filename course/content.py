"""Loading course content from the files in git into the database, with a report of what changed.

`manage.py load_content` runs `load_content` after each deploy; with CONTENT_AUTOLOAD on (the
default while developing) the pages run `load_content_if_changed` first, so an edited lesson or
lab shows on reload. Lessons are parsed by `course.lessons`, lab packages by `sandbox.specs`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from sandbox.models import Lab
from sandbox.specs import SPEC_FILE, LabSpecError, list_labs, parse_lab

from . import markdown
from .lessons import CourseSpec, LessonError, course_path, lesson_paths, parse_course, parse_lesson
from .models import Course, LabRecord, Lesson, Module

logger = logging.getLogger(__name__)

Kind = Literal["course", "module", "lesson", "lab"]
Action = Literal["added", "changed", "removed"]
KINDS: tuple[Kind, ...] = ("course", "module", "lesson", "lab")
# Row fields as the report names them; a lesson's `source` alone changes with, say, a YAML comment.
FIELD_NAMES = {"html": "body", "lab_slug": "lab", "digest": "files", "source_digest": "source"}


@dataclass(frozen=True)
class ContentProblem:
    """Why a content file cannot be loaded, written for its author."""

    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True)
class Change:
    kind: Kind
    slug: str
    action: Action
    fields: tuple[str, ...] = ()
    note: str = ""

    def __str__(self) -> str:
        name = self.kind if self.kind == "course" else f"{self.kind} {self.slug}"
        details = ", ".join(filter(None, [", ".join(self.fields), self.note]))
        return f"{name}: {self.action}" + (f" ({details})" if details else "")


@dataclass
class ContentReport:
    dry_run: bool = False
    errors: list[ContentProblem] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    unchanged: Counter[Kind] = field(default_factory=Counter)

    @property
    def is_valid(self) -> bool:
        return not self.errors

    @property
    def has_changes(self) -> bool:
        return bool(self.changes)

    def of(self, action: Action) -> list[Change]:
        return [change for change in self.changes if change.action == action]

    @property
    def summary(self) -> str:
        if self.errors:
            count = f"{len(self.errors)} problem{'s' if len(self.errors) != 1 else ''}"
            return f"{count} in the content files: nothing was loaded"
        if not self.changes:
            counts = ", ".join(_count(self.unchanged[kind], kind) for kind in KINDS if kind != "course")
            return f"nothing changed ({counts})"
        counts = [f"{len(self.of(action))} {action}" for action in ("added", "changed", "removed")]
        counts.append(f"{sum(self.unchanged.values())} unchanged")
        return ", ".join(counts) + (" (dry run: nothing was written)" if self.dry_run else "")

    def lines(self) -> list[str]:
        """The report as a person reads it: one line per problem or change, then the summary."""
        return [str(item) for item in (self.errors or self.changes)] + [self.summary]


def _count(number: int, kind: str) -> str:
    return f"{number} {kind}{'s' if number != 1 else ''}"


@dataclass(frozen=True)
class Content:
    """Every content file, parsed and validated: what the rows should say, by kind and slug."""

    title: str
    modules: dict[str, dict[str, Any]]
    lessons: dict[str, dict[str, Any]]
    labs: dict[str, dict[str, Any]]


def load_content(dry_run: bool = False) -> ContentReport:
    """Make the content rows match the files, all or nothing, and report what changed.

    1. Fingerprint the files first, so an edit made while loading is seen by the next check.
    2. Parse and validate every file (course.yaml, lessons, lab packages), collecting every
       problem; with any problem, change nothing and report them all.
    3. In one transaction, compare with the rows and add, change or remove rows to match; a dry
       run compares and reports without writing.
    """
    fingerprint = files_fingerprint()
    content, errors = read_content()
    if content is None:
        return ContentReport(dry_run=dry_run, errors=errors)
    with transaction.atomic():
        report = _sync(content, dry_run)
        if not dry_run:
            Course.objects.update(files_fingerprint=fingerprint, loaded_at=timezone.now())
    return report


_autoload_lock = threading.Lock()
# The files of the last autoload that found problems, and its report: until one of them changes,
# a reload shows the same problems without parsing (or logging) everything again.
_last_failure: tuple[str, ContentReport] | None = None


def load_content_if_changed() -> ContentReport | None:
    """Load the content when a file was added, removed or edited since the last load: None when
    the files are as last loaded, else the report (which may list problems)."""
    global _last_failure
    fingerprint = files_fingerprint()
    if Course.objects.filter(files_fingerprint=fingerprint).exists():
        return None
    with _autoload_lock:  # one load at a time; the others then find the files loaded
        if Course.objects.filter(files_fingerprint=fingerprint).exists():
            return None
        if _last_failure is not None and _last_failure[0] == fingerprint:
            return _last_failure[1]
        report = load_content()
        _last_failure = None if report.is_valid else (fingerprint, report)
    for line in report.lines():
        (logger.info if report.is_valid else logger.warning)("content autoload: %s", line)
    return report


def read_content() -> tuple[Content | None, list[ContentProblem]]:
    """Every content file parsed and cross-checked: the content, or None and every problem."""
    errors: list[ContentProblem] = []
    lessons_dir = Path(settings.LESSONS_DIR)
    course: CourseSpec | None = None
    try:
        course = parse_course(course_path(lessons_dir))
    except LessonError as error:
        errors.append(ContentProblem(error.path, error.message))
    modules: dict[str, dict[str, Any]] = {}
    for position, module in enumerate(course.modules if course else []):
        if module.slug in modules:
            errors.append(ContentProblem(course_path(lessons_dir), f"modules.{position}: two modules share a slug"))
        modules[module.slug] = {"title": module.title, "summary": module.summary, "position": position}

    labs = _read_labs(errors)
    lab_slugs = set(list_labs())
    lessons: dict[str, dict[str, Any]] = {}
    seen: dict[str, Path] = {}
    for path in lesson_paths(lessons_dir):
        try:
            lesson = parse_lesson(path)
        except LessonError as error:
            errors.append(ContentProblem(error.path, error.message))
            continue
        meta = lesson.meta
        if lesson.slug in seen:
            errors.append(ContentProblem(path, f"another lesson has the slug {lesson.slug!r}: {seen[lesson.slug]}"))
        seen[lesson.slug] = path
        if course and meta.module not in modules:
            errors.append(ContentProblem(path, f"module: {meta.module!r} is not a module in course.yaml"))
        if meta.lab and meta.lab not in lab_slugs:
            errors.append(ContentProblem(path, f"lab: no lab package {meta.lab!r} in {settings.LABS_DIR}"))
        lessons[lesson.slug] = {
            "title": meta.title,
            "html": lesson.html,
            "module": meta.module,
            "order": meta.order,
            "minutes": meta.minutes,
            "goals": meta.goals,
            "lab_slug": meta.lab or "",
            "source_digest": _digest([path]),
        }
    if errors or course is None:
        return None, errors
    return Content(title=course.title, modules=modules, lessons=lessons, labs=labs), []


def _read_labs(errors: list[ContentProblem]) -> dict[str, dict[str, Any]]:
    labs: dict[str, dict[str, Any]] = {}
    for slug in list_labs():
        path = Path(settings.LABS_DIR) / slug / SPEC_FILE
        try:
            package = parse_lab(path)
        except LabSpecError as error:
            errors.append(ContentProblem(path, str(error).removeprefix(f"{path}: ")))
            continue
        labs[slug] = {"title": package.spec.title, "digest": _digest(_package_files(slug))}
    return labs


def _package_files(slug: str) -> list[Path]:
    """Every file of a lab package folder, leaving out hidden files and editors' backups."""
    root = Path(settings.LABS_DIR) / slug
    return sorted(
        path
        for path in root.rglob("*")
        if path.is_file()
        and not any(part.startswith(".") or part == "__pycache__" for part in path.relative_to(root).parts)
        and not path.name.endswith("~")
    )


def _content_files() -> list[Path]:
    lessons_dir = Path(settings.LESSONS_DIR)
    # The renderer too: a change to how Markdown becomes HTML re-renders every lesson on reload.
    files = [Path(markdown.__file__), course_path(lessons_dir), *lesson_paths(lessons_dir)]
    for slug in list_labs():
        files += _package_files(slug)
    return files


def _digest(paths: Iterable[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def files_fingerprint() -> str:
    """Which content files there are, with their sizes and modification times: cheap (a stat per
    file), and different as soon as a file is added, removed or saved."""
    digest = hashlib.sha256()
    for path in _content_files():
        try:
            stat = path.stat()
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except FileNotFoundError:
            digest.update(f"{path}\0missing\n".encode())
    return digest.hexdigest()


def _sync(content: Content, dry_run: bool) -> ContentReport:
    """Compare the rows with `content` and, unless `dry_run`, write the differences."""
    report = ContentReport(dry_run=dry_run)
    course = Course.objects.select_for_update().order_by("pk").first()
    if course is None:
        report.changes.append(Change("course", "", "added"))
    elif course.title != content.title:
        report.changes.append(Change("course", "", "changed", ("title",)))
    else:
        report.unchanged["course"] += 1
    modules = _compare(report, "module", content.modules, Module.objects.all())
    lessons = _compare(report, "lesson", content.lessons, Lesson.objects.select_related("module"))
    labs = _compare(report, "lab", content.labs, LabRecord.objects.all())
    if dry_run:
        return report

    if course is None:
        Course.objects.create(title=content.title)
    else:
        Course.objects.filter(pk=course.pk).update(title=content.title)
    # Modules first (lessons point at them), lessons next, and modules go only once no lesson
    # points at them any more.
    _upsert(Module, modules, content.modules)
    _delete(Lesson, lessons)
    module_rows = {row.slug: row for row in Module.objects.all()}
    values = {slug: {**fields, "module": module_rows[fields["module"]]} for slug, fields in content.lessons.items()}
    _upsert(Lesson, lessons, values)
    _delete(Module, modules)
    _upsert(LabRecord, labs, content.labs)
    _delete(LabRecord, labs)
    return report


def _row_values(kind: Kind, row: Any) -> dict[str, Any]:
    if kind == "lesson":
        return {
            "title": row.title,
            "html": row.html,
            "module": row.module.slug,
            "order": row.order,
            "minutes": row.minutes,
            "goals": row.goals,
            "lab_slug": row.lab_slug,
            "source_digest": row.source_digest,
        }
    if kind == "module":
        return {"title": row.title, "summary": row.summary, "position": row.position}
    return {"title": row.title, "digest": row.digest}


def _compare(report: ContentReport, kind: Kind, wanted: dict[str, dict[str, Any]], rows: Iterable[Any]) -> list[Change]:
    """The changes that turn `rows` into `wanted`, also added to `report`."""
    current = {row.slug: _row_values(kind, row) for row in rows}
    changes = []
    for slug, values in wanted.items():
        if slug not in current:
            changes.append(Change(kind, slug, "added"))
            continue
        differing = [FIELD_NAMES.get(name, name) for name in values if values[name] != current[slug][name]]
        if len(differing) > 1 and "source" in differing:
            differing.remove("source")  # the file changed: what changed in it is the news
        if differing:
            changes.append(Change(kind, slug, "changed", tuple(differing)))
        else:
            report.unchanged[kind] += 1
    for slug in sorted(current.keys() - wanted.keys()):
        kept = Lab.objects.filter(lesson_slug=slug).count() if kind == "lesson" else 0
        changes.append(Change(kind, slug, "removed", note=f"learners' labs kept: {kept}" if kept else ""))
    report.changes += changes
    return changes


def _upsert(model: type[Module | Lesson | LabRecord], changes: list[Change], values: dict[str, dict[str, Any]]) -> None:
    for change in changes:
        if change.action != "removed":
            model.objects.update_or_create(slug=change.slug, defaults=values[change.slug])


def _delete(model: type[Module | Lesson | LabRecord], changes: list[Change]) -> None:
    model.objects.filter(slug__in=[change.slug for change in changes if change.action == "removed"]).delete()
