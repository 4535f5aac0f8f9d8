"""Lessons are Markdown files with YAML front matter under LESSONS_DIR; this is their parser.

It turns files into typed objects and nothing more: `course.content` loads them into the
database, and the pages read them from there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .markdown import render_markdown

FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*\n(.*)\Z", re.DOTALL)
COURSE_FILE = "course.yaml"
# A lesson's slug is its file name, and it is part of the lesson's URL.
SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,127}$")


class LessonError(Exception):
    """A lesson file (or course.yaml) is malformed; `path` is the file, the message names the key."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class ModuleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    slug: str = Field(pattern=r"^[a-z][a-z0-9-]*$", max_length=64)
    title: str = Field(max_length=200)
    summary: str = ""


class CourseSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    title: str = Field(max_length=200)
    modules: list[ModuleSpec]


class FrontMatter(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    title: str = Field(max_length=200)
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


def _validation_message(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}" for e in error.errors())


def _yaml_message(error: yaml.YAMLError, first_line: int) -> str:
    mark = getattr(error, "problem_mark", None)
    where = f"line {mark.line + first_line}: " if mark else ""
    return f"{where}not valid YAML: {getattr(error, 'problem', None) or error}"


def course_path(lessons_dir: Path) -> Path:
    return lessons_dir / COURSE_FILE


def lesson_paths(lessons_dir: Path) -> list[Path]:
    """Every lesson file: `<module folder>/<slug>.md`."""
    return sorted(lessons_dir.glob("*/*.md"))


def parse_course(path: Path) -> CourseSpec:
    """The outline in course.yaml: the course title and its modules, in order."""
    try:
        return CourseSpec.model_validate(yaml.safe_load(path.read_text()))
    except FileNotFoundError as exc:
        raise LessonError(path, "no such file: the course outline is missing") from exc
    except yaml.YAMLError as exc:
        raise LessonError(path, _yaml_message(exc, first_line=1)) from exc
    except ValidationError as exc:
        raise LessonError(path, _validation_message(exc)) from exc


def parse_lesson(path: Path) -> Lesson:
    """One lesson file: its front matter validated, its Markdown body rendered to safe HTML."""
    if not SLUG.match(path.stem):
        raise LessonError(path, "the file name is the lesson's slug: lowercase letters, digits and '-'")
    match = FRONT_MATTER.match(path.read_text())
    if not match:
        raise LessonError(path, "a lesson starts with front matter between two '---' lines")
    try:
        meta = FrontMatter.model_validate(yaml.safe_load(match.group(1)))
    except yaml.YAMLError as exc:
        # The front matter starts on the file's second line, after the opening '---'.
        raise LessonError(path, "front matter " + _yaml_message(exc, first_line=2)) from exc
    except ValidationError as exc:
        raise LessonError(path, _validation_message(exc)) from exc
    return Lesson(slug=path.stem, meta=meta, html=render_markdown(match.group(2)))
