"""Lessons are Markdown files with YAML front matter under LESSONS_DIR; this is their loader.

Content lives in git and is read from disk (re-read when a file changes), so editing a lesson
while `make run` is going shows on reload.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml
from django.conf import settings
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .markdown import render_markdown

FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*\n(.*)\Z", re.DOTALL)
COURSE_FILE = "course.yaml"


class LessonError(Exception):
    """A lesson file is malformed; the message names the file and the key."""


class ModuleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    slug: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    title: str
    summary: str = ""


class CourseSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    title: str
    modules: list[ModuleSpec]


class FrontMatter(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    title: str
    module: str
    order: int = Field(ge=0)
    minutes: int = Field(default=20, ge=1)
    goals: list[str] = []
    lab: str | None = None


@dataclass(frozen=True)
class Lesson:
    slug: str
    meta: FrontMatter
    html: str

    @property
    def title(self) -> str:
        return self.meta.title


@dataclass(frozen=True)
class Module:
    spec: ModuleSpec
    lessons: list[Lesson]


def _errors(path: Path, error: ValidationError) -> str:
    parts = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()]
    return f"{path}: " + "; ".join(parts)


@cache
def _parse_lesson(path: Path, mtime: float) -> Lesson:
    match = FRONT_MATTER.match(path.read_text())
    if not match:
        raise LessonError(f"{path}: a lesson starts with front matter between two '---' lines")
    try:
        data = yaml.safe_load(match.group(1))
        meta = FrontMatter.model_validate(data)
    except yaml.YAMLError as exc:
        raise LessonError(f"{path}: front matter is not valid YAML: {exc}") from exc
    except ValidationError as exc:
        raise LessonError(_errors(path, exc)) from exc
    return Lesson(slug=path.stem, meta=meta, html=render_markdown(match.group(2)))


def _lesson_paths() -> list[Path]:
    return sorted(Path(settings.LESSONS_DIR).glob("*/*.md"))


def load_course() -> tuple[CourseSpec, list[Module]]:
    """The course outline: modules in course.yaml order, each with its lessons in order."""
    course_path = Path(settings.LESSONS_DIR) / COURSE_FILE
    try:
        course = CourseSpec.model_validate(yaml.safe_load(course_path.read_text()))
    except ValidationError as exc:
        raise LessonError(_errors(course_path, exc)) from exc
    lessons = [_parse_lesson(path, path.stat().st_mtime) for path in _lesson_paths()]
    modules = []
    known = {module.slug for module in course.modules}
    for lesson in lessons:
        if lesson.meta.module not in known:
            raise LessonError(f"lesson {lesson.slug}: module {lesson.meta.module!r} is not in {COURSE_FILE}")
    for module in course.modules:
        members = sorted((l for l in lessons if l.meta.module == module.slug), key=lambda l: l.meta.order)
        modules.append(Module(spec=module, lessons=members))
    return course, modules


def find_lesson(slug: str) -> Lesson | None:
    for path in _lesson_paths():
        if path.stem == slug:
            return _parse_lesson(path, path.stat().st_mtime)
    return None
