"""`manage.py build_lab_images`: build every lab's images now (cached: unchanged ones are skipped)."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from sandbox.engine import EngineError
from sandbox.lifecycle import connect_engine
from sandbox.specs import LabSpecError, list_labs, load_lab


class Command(BaseCommand):
    help = "Build the Docker images of every lab (or the named ones); unchanged images are skipped."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slugs", nargs="*", help="labs to build (default: all)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            engine = connect_engine()
            contexts = {}
            named: set[str] = set()
            for slug in options["slugs"] or list_labs():
                package = load_lab(slug)
                for node in package.spec.nodes:
                    if node.image is not None:
                        named.add(node.image)
                    else:
                        contexts[package.build_context(node)] = slug
                if package.spec.has_network_faults:
                    contexts[package.tools_context] = slug
            for name in sorted(named):
                self.stdout.write(f"{name} = {engine.ensure_pulled(name)[:19]}  (named in a spec)")
            for context in sorted(contexts):
                started = time.monotonic()
                tag = engine.ensure_image(context)
                self.stdout.write(f"{tag}  ({time.monotonic() - started:.1f}s)")
        except (EngineError, LabSpecError) as error:
            raise CommandError(str(error)) from error
