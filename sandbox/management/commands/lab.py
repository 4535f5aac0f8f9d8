"""`manage.py lab validate [slug ...]` and `manage.py lab test [slug ... | --all]`: the
instructor's tools for lab packages."""

from __future__ import annotations

import logging
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, connection
from django.db.migrations.executor import MigrationExecutor
from django.test.utils import override_settings

from sandbox.labtest import StepResult, run_lab_test
from sandbox.specs import LabSpecError, list_labs, load_lab

# A headless test has no page watching it: live messages and chart history stay in this process.
HEADLESS = {
    "CHANNEL_LAYERS": {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}},
    "CACHES": {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
}


class Command(BaseCommand):
    help = "Validate lab packages, or test them end to end on the Docker engine."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        validate = actions.add_parser("validate", help="check lab specs and the files they name")
        validate.add_argument("slugs", nargs="*", help="labs to check (default: all)")
        test = actions.add_parser("test", help="provision, break, solve and tear down each lab")
        test.add_argument("slugs", nargs="*", help="labs to test")
        test.add_argument("--all", action="store_true", help="every lab in the repository")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["action"] == "validate":
            self.validate(options["slugs"] or list_labs())
        else:
            if options["all"] == bool(options["slugs"]):
                raise CommandError("name the labs to test, or pass --all")
            # The runtime's INFO lines (every step of provisioning) would bury the report; -v 2 shows them.
            runtime = logging.getLogger("sandbox")
            level = runtime.level
            if options["verbosity"] < 2:
                runtime.setLevel(logging.WARNING)
            try:
                self.test(list_labs() if options["all"] else options["slugs"])
            finally:
                runtime.setLevel(level)

    def validate(self, slugs: list[str]) -> None:
        failed = 0
        for slug in slugs:
            try:
                load_lab(slug)
            except LabSpecError as error:
                failed += 1
                self.stderr.write(str(error))
            else:
                self.stdout.write(f"ok   {slug}")
        if failed:
            raise CommandError(f"{failed} of {len(slugs)} lab(s) invalid")

    def test(self, slugs: list[str]) -> None:
        for slug in slugs:  # every lab is valid before any container starts
            try:
                load_lab(slug)
            except LabSpecError as error:
                raise CommandError(str(error)) from error
        require_migrated_database()
        failed = []
        with override_settings(**HEADLESS):
            for slug in slugs:
                self.stdout.write(f"lab test {slug}")
                started = time.monotonic()
                passed = run_lab_test(slug, self.report)
                verdict = "PASS" if passed else "FAIL"
                self.stdout.write(f"{verdict} {slug} ({time.monotonic() - started:.1f} s)")
                if not passed:
                    failed.append(slug)
        if failed:
            raise CommandError(f"lab test failed: {', '.join(failed)}")

    def report(self, step: StepResult) -> None:
        mark = "ok  " if step.ok else "FAIL"
        line = f"  {step.name:<10} {mark} {step.seconds:6.1f} s  {step.detail}"
        self.stdout.write(line) if step.ok else self.stderr.write(line)


def require_migrated_database() -> None:
    """A lab test writes a learner and a lab as the platform does: say so plainly when the
    database is not there or not set up, rather than fail mid-way with a traceback."""
    try:
        executor = MigrationExecutor(connection)
        pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
    except DatabaseError as exc:
        raise CommandError(f"lab test needs Stacklab's database, which does not answer: {exc}") from None
    if pending:
        raise CommandError("lab test needs a migrated database: run `manage.py migrate` first (`make run` does it)")
