"""Course content for the page tests: the repository's own, loaded as after a deploy, or copies
of it in a temporary folder for tests that edit lessons and labs."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from course.content import ContentReport, load_content


@pytest.fixture
def course_content(db: None) -> ContentReport:
    """The repository's lessons and labs, loaded as `manage.py load_content` loads them."""
    report = load_content()
    assert report.is_valid, report.lines()
    return report


@dataclass(frozen=True)
class ContentDirs:
    lessons: Path
    labs: Path

    def edit(self, path: Path, old: str, new: str) -> None:
        text = path.read_text()
        assert old in text, f"{old!r} is not in {path}"
        path.write_text(text.replace(old, new, 1))

    @property
    def lesson(self) -> Path:
        """The first lesson, load-balancing, which launches the lab scaling-load-balancer."""
        return self.lessons / "scaling" / "load-balancing.md"

    @property
    def lab_spec(self) -> Path:
        return self.labs / "scaling-load-balancer" / "lab.yaml"


@pytest.fixture
def content_dirs(tmp_path: Path, settings) -> ContentDirs:  # noqa: ANN001 - pytest-django's settings fixture
    """Copies of the repository's lessons and labs that the settings point at, free to edit."""
    dirs = ContentDirs(lessons=tmp_path / "lessons", labs=tmp_path / "labs")
    shutil.copytree(settings.LESSONS_DIR, dirs.lessons)
    shutil.copytree(settings.LABS_DIR, dirs.labs)
    settings.LESSONS_DIR = dirs.lessons
    settings.LABS_DIR = dirs.labs
    return dirs
