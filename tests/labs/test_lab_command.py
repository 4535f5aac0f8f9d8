"""`manage.py lab validate` and `manage.py lab test`: every lab in the repository proves itself
breakable and fixable on the real engine, and a lab whose solution does not fix it fails."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

LABS = Path(__file__).resolve().parents[2] / "labs"


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("lab", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def copy_of_first_lab(tmp_path: Path) -> Path:
    shutil.copytree(LABS / "images", tmp_path / "images")
    shutil.copytree(LABS / "scaling-load-balancer", tmp_path / "scaling-load-balancer")
    return tmp_path / "scaling-load-balancer"


def test_validate_reports_every_lab_ok() -> None:
    out, _ = run("validate")
    assert "ok   scaling-load-balancer" in out


def test_validate_names_the_problem_and_fails(tmp_path: Path, settings) -> None:  # noqa: ANN001
    lab = copy_of_first_lab(tmp_path)
    spec = lab / "lab.yaml"
    spec.write_text(spec.read_text().replace("break: kill-app-2", "break: kill-app-9"))
    settings.LABS_DIR = tmp_path
    with pytest.raises(CommandError, match="1 of 1 lab"):
        out, err = io.StringIO(), io.StringIO()
        try:
            call_command("lab", "validate", "scaling-load-balancer", stdout=out, stderr=err)
        finally:
            assert "break: no fault with key 'kill-app-9'" in err.getvalue()


def test_lab_test_needs_labs_or_all() -> None:
    with pytest.raises(CommandError, match="name the labs to test, or pass --all"):
        run("test")


@pytest.mark.docker
@pytest.mark.django_db(transaction=True)
def test_every_lab_in_the_repository_passes_lab_test(engine) -> None:  # noqa: ANN001
    out, err = run("test", "--all")
    for step in ("provision", "start", "break", "solve", "teardown"):
        assert f"  {step:<10} ok" in out, out + err
    assert "PASS scaling-load-balancer" in out


@pytest.mark.docker
@pytest.mark.django_db(transaction=True)
def test_a_lab_whose_solution_does_not_fix_it_fails(engine, tmp_path: Path, settings) -> None:  # noqa: ANN001
    lab = copy_of_first_lab(tmp_path)
    (lab / "solve.sh").write_text("#!/bin/sh\n# Reloads, but changes nothing: the lab stays broken.\nhaproxy-reload\n")
    settings.LABS_DIR = tmp_path
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError, match="lab test failed: scaling-load-balancer"):
        call_command("lab", "test", "scaling-load-balancer", stdout=out, stderr=err)
    assert "  break      ok" in out.getvalue()
    assert "  solve      FAIL" in err.getvalue()
    assert "every objective should be met" in err.getvalue()
    assert "  teardown   ok" in out.getvalue()
    assert "FAIL scaling-load-balancer" in out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_lab_test_on_a_database_not_migrated_says_to_migrate_and_starts_nothing() -> None:
    call_command("migrate", "sandbox", "0004", verbosity=0)
    try:
        with pytest.raises(CommandError, match=r"needs a migrated database: run `manage.py migrate` first"):
            run("test", "scaling-load-balancer")
    finally:
        call_command("migrate", verbosity=0)
