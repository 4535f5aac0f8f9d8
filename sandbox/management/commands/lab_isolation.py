"""`manage.py lab_isolation [--check | --remove-stale]`: put the host's lab isolation rules in place
(or only look), print each rule as present, missing, misplaced, stale or other, and exit non-zero
while labs are not isolated. Rules of another pool ("other": a second install on this host, an old
LAB_SUBNET_POOL, or the first format, which named no pool) are kept unless --remove-stale."""

from __future__ import annotations

import shlex
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from sandbox import isolation


class Command(BaseCommand):
    help = (
        "Apply the firewall rules that keep labs off this host and off other networks (with --check, only "
        "report them). Exits non-zero when they are not all in place."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--check", action="store_true", help="report the rules without changing anything")
        parser.add_argument(
            "--remove-stale",
            action="store_true",
            help="also remove our rules for other pools and of the first format; another install on this host "
            "loses its isolation until it applies its own again",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        pool = settings.LAB_SUBNET_POOL
        if not settings.LAB_ISOLATION:
            self.stdout.write(
                "lab isolation is off (STACKLAB_LAB_ISOLATION=false): nothing applied or checked. The engine's "
                f"host must keep {pool} off its services and off other networks itself; these are the rules:"
            )
            for rule in isolation.desired_rules(pool):
                self.stdout.write("  " + shlex.join([rule.command, "-I", rule.chain, "1", *rule.spec]))
            return
        if options["check"] and options["remove_stale"]:
            raise CommandError("--check changes nothing; --remove-stale removes rules: choose one")
        if options["check"]:
            report = isolation.check_isolation(pool)
        else:
            report = isolation.apply_isolation(pool, remove_stale=options["remove_stale"])
        for state in report.rules:
            self.stdout.write(f"{state.state:<9} {state.rule.line}")
            if state.rule.purpose:
                self.stdout.write(f"{'':<9}   {state.rule.purpose}")
        if not report.docker_user_reached and report.problem is None:
            self.stdout.write(
                "missing   -A FORWARD -j DOCKER-USER (Docker's own jump: is dockerd running, iptables on?)"
            )
        if not report.is_enforced:
            remedy = isolation.remedy(report)
            raise CommandError(f"lab isolation {report.summary()}. {remedy[0].upper()}{remedy[1:]}.")
        self.stdout.write(f"lab isolation {report.summary()}")
