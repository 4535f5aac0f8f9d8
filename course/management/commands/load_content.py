"""`manage.py load_content [--dry-run]`: load lessons and lab packages from the files into the
database, and print what changed. Run it after each deploy."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from course.content import load_content


class Command(BaseCommand):
    help = (
        "Validate every lesson, course.yaml and lab package, then add, change and remove the content "
        "rows to match (all or nothing), printing one line per change."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="Validate and report, but write nothing.")

    def handle(self, *args: Any, dry_run: bool = False, **options: Any) -> None:
        report = load_content(dry_run=dry_run)
        if not report.is_valid:
            for problem in report.errors:
                self.stderr.write(str(problem))
            raise CommandError(report.summary)
        for change in report.changes:
            self.stdout.write(str(change))
        self.stdout.write(self.style.SUCCESS(report.summary))
