"""`manage.py build_lab_images`: build every lab's images now (cached: unchanged ones are skipped),
then remove the older builds of the same images that no container uses (and none built or tagged
in the last 30 minutes: engine.PRUNE_MIN_AGE)."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from sandbox.engine import EngineError
from sandbox.lifecycle import connect_engine
from sandbox.specs import LabSpecError, list_labs, load_lab


class Command(BaseCommand):
    help = (
        "Build the Docker images of every lab (or the named ones); unchanged images are skipped. "
        "After building every lab's, remove older tags of those images that no container uses and that "
        "are over 30 minutes old."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slugs", nargs="*", help="labs to build (default: all)")
        parser.add_argument("--no-prune", action="store_true", help="keep older builds")

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
            tags = []
            for context in sorted(contexts):
                started = time.monotonic()
                tag = engine.ensure_image(context)
                tags.append(tag)
                self.stdout.write(f"{tag}  ({time.monotonic() - started:.1f}s)")
            # Only with every lab built: the tags of the labs left out would look old.
            if not options["slugs"] and not options["no_prune"]:
                removed = engine.prune_images(tags)
                for tag in removed:
                    self.stdout.write(f"removed {tag}")
                self.stdout.write(f"pruned {len(removed)} older image tag(s)")
        except (EngineError, LabSpecError) as error:
            raise CommandError(str(error)) from error
