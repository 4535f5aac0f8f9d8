"""Content in git, state in the database: `manage.py load_content` validates every lesson and lab
package, loads them all or nothing, and reports what changed; while developing, the pages load an
edited file themselves."""

from __future__ import annotations

import shutil
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from course.content import Change, load_content
from course.lessons import lesson_paths
from course.models import Course, LabRecord, Lesson, Module
from sandbox import lifecycle
from sandbox.models import Lab, ObjectiveResult
from sandbox.specs import list_labs

from .conftest import ContentDirs

pytestmark = pytest.mark.django_db

# What the repository holds: the counts in the reports follow it as lessons and labs are added.
LESSONS = len(lesson_paths(Path(settings.LESSONS_DIR)))
LABS = len(list_labs())
MODULES = 6
EVERYTHING = 1 + MODULES + LESSONS + LABS  # the course, its modules, lessons and labs


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'s' if count != 1 else ''}"


def run_load_content(*args: str) -> list[str]:
    out = StringIO()
    call_command("load_content", *args, stdout=out)
    return out.getvalue().splitlines()


def failing_load_content(*args: str) -> tuple[CommandError, str]:
    err = StringIO()
    with pytest.raises(CommandError) as failure:
        call_command("load_content", *args, stdout=StringIO(), stderr=err)
    return failure.value, err.getvalue()


def logged_in(user) -> Client:  # noqa: ANN001
    client = Client()
    client.force_login(user)
    return client


def test_first_load_adds_the_course_its_modules_lessons_and_labs() -> None:
    lines = run_load_content()
    assert "course: added" in lines
    assert "module scaling: added" in lines
    assert "lesson load-balancing: added" in lines
    assert "lab scaling-load-balancer: added" in lines
    assert lines[-1] == f"{EVERYTHING} added, 0 changed, 0 removed, 0 unchanged"
    assert Course.objects.get().title == "Backend architecture, hands-on"
    assert list(Module.objects.values_list("slug", flat=True)) == [
        "scaling",
        "data",
        "automation",
        "monitoring",
        "security",
        "incidents",
    ]
    lesson = Lesson.objects.get(slug="load-balancing")
    assert (lesson.module.slug, lesson.lab_slug, lesson.minutes) == ("scaling", "scaling-load-balancer", 30)
    assert "<h2>The lab</h2>" in lesson.html
    assert LabRecord.objects.get(slug="scaling-load-balancer").title == "Load balancer with three replicas"


def test_second_load_reports_nothing_changed() -> None:
    run_load_content()
    counts = f"{MODULES} modules, {plural(LESSONS, 'lesson')}, {plural(LABS, 'lab')}"
    assert run_load_content() == [f"nothing changed ({counts})"]


def test_editing_a_lessons_title_and_body_reports_exactly_that(content_dirs: ContentDirs) -> None:
    load_content()
    content_dirs.edit(content_dirs.lesson, "title: Load balancing across replicas", "title: Spreading the load")
    content_dirs.edit(content_dirs.lesson, "## The lab", "## Your lab")
    report = load_content()
    assert report.changes == [Change("lesson", "load-balancing", "changed", ("title", "body"))]
    assert report.summary == f"0 added, 1 changed, 0 removed, {EVERYTHING - 1} unchanged"
    lesson = Lesson.objects.get(slug="load-balancing")
    assert lesson.title == "Spreading the load"
    assert "<h2>Your lab</h2>" in lesson.html


def test_editing_the_outline_reports_module_changes_and_removals(content_dirs: ContentDirs) -> None:
    load_content()
    outline = content_dirs.lessons / "course.yaml"
    content_dirs.edit(outline, "title: Data tiers", "title: Storing data")
    content_dirs.edit(outline, "  - slug: incidents\n", "  - slug: on-call\n")
    lines = run_load_content()
    assert lines == [
        "module data: changed (title)",
        "module on-call: added",
        "module incidents: removed",
        f"1 added, 1 changed, 1 removed, {EVERYTHING - 2} unchanged",
    ]
    assert Module.objects.get(slug="data").title == "Storing data"


def test_changing_any_file_of_a_lab_package_reports_the_lab_changed(content_dirs: ContentDirs) -> None:
    load_content()
    solution = content_dirs.labs / "scaling-load-balancer" / "solve.sh"
    solution.write_text(solution.read_text() + "\n# checked twice\n")
    assert run_load_content() == [
        "lab scaling-load-balancer: changed (files)",
        f"0 added, 1 changed, 0 removed, {EVERYTHING - 1} unchanged",
    ]


def test_removing_a_lesson_keeps_the_learners_labs_and_progress(content_dirs: ContentDirs, learner) -> None:  # noqa: ANN001
    load_content()
    lab, _ = lifecycle.request_lab(learner, "scaling-load-balancer", "load-balancing")
    ObjectiveResult.objects.create(lab=lab, key="traffic-flows", status="met")
    content_dirs.lesson.unlink()
    assert run_load_content() == [
        "lesson load-balancing: removed (learners' labs kept: 1)",
        f"0 added, 0 changed, 1 removed, {EVERYTHING - 1} unchanged",
    ]
    assert not Lesson.objects.filter(slug="load-balancing").exists()
    assert Lab.objects.get(pk=lab.pk).lesson_slug == "load-balancing"
    assert ObjectiveResult.objects.filter(lab=lab).count() == 1
    assert logged_in(learner).get("/lessons/load-balancing/").status_code == 404


def test_bad_front_matter_fails_naming_the_file_and_changes_nothing(content_dirs: ContentDirs) -> None:
    run_load_content()
    content_dirs.edit(content_dirs.lessons / "course.yaml", "title: Backend architecture", "title: Architecture")
    content_dirs.edit(content_dirs.lesson, "minutes: 30", "minutes: 30\ncolour: red")
    error, stderr = failing_load_content()
    assert error.returncode == 1
    assert str(error) == "1 problem in the content files: nothing was loaded"
    assert f"{content_dirs.lesson}: colour: Extra inputs are not permitted" in stderr
    assert Course.objects.get().title == "Backend architecture, hands-on"


def test_a_lab_spec_error_fails_naming_the_file_and_line(content_dirs: ContentDirs) -> None:
    run_load_content()
    content_dirs.edit(content_dirs.lab_spec, "break: kill-app-2", "break: kill-app-9")
    content_dirs.edit(content_dirs.lesson, "title: Load balancing across replicas", "title: Spreading the load")
    line = content_dirs.lab_spec.read_text().splitlines().index("break: kill-app-9") + 1
    error, stderr = failing_load_content()
    assert error.returncode == 1
    assert f"{content_dirs.lab_spec}:{line}: break: no fault with key 'kill-app-9'" in stderr
    assert Lesson.objects.get(slug="load-balancing").title == "Load balancing across replicas"


def test_a_lesson_naming_a_missing_lab_is_an_error(content_dirs: ContentDirs) -> None:
    content_dirs.edit(content_dirs.lesson, "lab: scaling-load-balancer", "lab: scaling-sharding")
    _, stderr = failing_load_content()
    assert f"{content_dirs.lesson}: lab: no lab package 'scaling-sharding'" in stderr
    assert not Lesson.objects.exists()


def test_every_problem_is_reported_at_once(content_dirs: ContentDirs) -> None:
    content_dirs.edit(content_dirs.lesson, "order: 1", "order: first")
    shutil.copy(content_dirs.lesson, content_dirs.lessons / "scaling" / "Caching.md")
    content_dirs.lab_spec.write_text(content_dirs.lab_spec.read_text() + "colour: red\n")
    error, stderr = failing_load_content()
    assert str(error) == "3 problems in the content files: nothing was loaded"
    assert f"{content_dirs.lesson}: order: Input should be a valid integer" in stderr
    assert "Caching.md: the file name is the lesson's slug" in stderr
    assert f"{content_dirs.lab_spec}: invalid lab spec (1 problem)" in stderr


def test_dry_run_reports_the_changes_but_writes_nothing(content_dirs: ContentDirs) -> None:
    lines = run_load_content("--dry-run")
    assert lines[-1] == f"{EVERYTHING} added, 0 changed, 0 removed, 0 unchanged (dry run: nothing was written)"
    assert not Course.objects.exists() and not Lesson.objects.exists() and not LabRecord.objects.exists()
    run_load_content()
    content_dirs.edit(content_dirs.lesson, "title: Load balancing across replicas", "title: Spreading the load")
    assert run_load_content("--dry-run")[0] == "lesson load-balancing: changed (title)"
    assert Lesson.objects.get(slug="load-balancing").title == "Load balancing across replicas"


def test_autoload_on_shows_an_edited_lesson_on_reload(content_dirs: ContentDirs, settings, learner) -> None:  # noqa: ANN001
    settings.CONTENT_AUTOLOAD = True
    client = logged_in(learner)
    assert "<h1>Load balancing across replicas</h1>" in client.get("/lessons/load-balancing/").content.decode()
    content_dirs.edit(content_dirs.lesson, "title: Load balancing across replicas", "title: Spreading the load")
    assert "<h1>Spreading the load</h1>" in client.get("/lessons/load-balancing/").content.decode()
    assert "Spreading the load" in client.get("/").content.decode()


def test_autoload_shows_the_problems_and_keeps_the_last_good_content(
    content_dirs: ContentDirs,
    settings,  # noqa: ANN001
    learner,  # noqa: ANN001
) -> None:
    settings.CONTENT_AUTOLOAD = True
    client = logged_in(learner)
    assert client.get("/lessons/load-balancing/").status_code == 200
    content_dirs.edit(content_dirs.lesson, "order: 1", "order: first")
    page = client.get("/lessons/load-balancing/")
    assert page.status_code == 503
    assert f"{content_dirs.lesson}" in page.content.decode()
    assert "order: Input should be a valid integer" in page.content.decode()
    launch = client.post("/api/lessons/load-balancing/lab")
    assert (launch.status_code, launch.json()) == (503, {"error": "1 problem in the content files: nothing was loaded"})
    assert Lesson.objects.get(slug="load-balancing").order == 1
    content_dirs.edit(content_dirs.lesson, "order: first", "order: 2")
    assert client.get("/lessons/load-balancing/").status_code == 200
    assert Lesson.objects.get(slug="load-balancing").order == 2


def test_autoload_off_shows_only_what_load_content_loaded(content_dirs: ContentDirs, settings, learner) -> None:  # noqa: ANN001
    settings.CONTENT_AUTOLOAD = False
    client = logged_in(learner)
    assert "No lessons are loaded yet" in client.get("/").content.decode()
    assert client.get("/lessons/load-balancing/").status_code == 404
    run_load_content()
    content_dirs.edit(content_dirs.lesson, "title: Load balancing across replicas", "title: Spreading the load")
    assert "<h1>Load balancing across replicas</h1>" in client.get("/lessons/load-balancing/").content.decode()
    run_load_content()
    assert "<h1>Spreading the load</h1>" in client.get("/lessons/load-balancing/").content.decode()


def test_launch_starts_the_lab_the_loaded_lesson_names(content_dirs: ContentDirs, settings, learner) -> None:  # noqa: ANN001
    settings.CONTENT_AUTOLOAD = False
    copy = content_dirs.labs / "scaling-replicas"
    shutil.copytree(content_dirs.labs / "scaling-load-balancer", copy)
    content_dirs.edit(copy / "lab.yaml", "slug: scaling-load-balancer", "slug: scaling-replicas")
    content_dirs.edit(content_dirs.lesson, "lab: scaling-load-balancer", "lab: scaling-replicas")
    assert "lab scaling-replicas: added" in run_load_content()
    launched = logged_in(learner).post("/api/lessons/load-balancing/lab")
    assert launched.status_code == 201
    assert Lab.objects.get(pk=launched.json()["id"]).lab_slug == "scaling-replicas"
