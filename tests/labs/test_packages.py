"""Every lab package and lesson in the repository loads, and they point at each other correctly."""

from __future__ import annotations

from pathlib import Path

import pytest

from course.content import read_content
from sandbox.specs import list_labs, load_lab

LABS = Path(__file__).resolve().parents[2] / "labs"


@pytest.mark.parametrize("slug", list_labs())
def test_lab_package_is_valid(slug: str) -> None:
    package = load_lab(slug)
    assert package.spec.slug == slug
    assert package.read_script(package.spec.solution.script).strip()


def test_the_course_loads_and_every_lesson_lab_exists() -> None:
    """What `manage.py load_content` checks: every lesson valid, and every lab it names there."""
    content, errors = read_content()
    assert not errors, "\n".join(map(str, errors))
    assert content is not None and content.lessons, "the course has no lessons"


@pytest.mark.parametrize("dockerfile", sorted(LABS.glob("**/Dockerfile")), ids=lambda p: p.parent.name)
def test_images_build_on_the_shared_base_offline(dockerfile: Path) -> None:
    """Seeded offline or pulled online, the base is debian:bookworm-slim; the legacy builder used
    without a registry cannot fetch BuildKit syntax images."""
    lines = dockerfile.read_text().splitlines()
    assert [line for line in lines if line.startswith("FROM ")] == ["FROM debian:bookworm-slim"]
    assert not any(line.lower().startswith("# syntax=") for line in lines)
