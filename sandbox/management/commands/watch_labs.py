"""`manage.py watch_labs`: the live monitor, supervised beside the web server and the worker."""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand

from sandbox.monitor import Monitor


class Command(BaseCommand):
    help = "Follow Docker events and traffic figures of ready labs; push them to lab pages."

    def handle(self, *args: Any, **options: Any) -> None:
        monitor = Monitor()

        def shut_down(signum: int, frame: FrameType | None) -> None:
            self.stdout.write(f"watch_labs: signal {signum}, stopping")
            monitor.stop()

        signal.signal(signal.SIGTERM, shut_down)
        signal.signal(signal.SIGINT, shut_down)
        self.stdout.write("watch_labs: following labs")
        monitor.run()
