"""A harmless task for test_broker_restart.py, which starts real workers with
`-I tests.sandbox.probe_tasks`: it marks that it started, holds its worker slot until the test
releases it, and marks that it is done."""

from __future__ import annotations

import time
from pathlib import Path

from celery import shared_task

HOLD_AT_MOST = 120  # seconds: a test that never releases it does not hold a worker forever


@shared_task(acks_late=True, reject_on_worker_lost=True)
def hold(marks: str, name: str) -> None:
    folder = Path(marks)
    (folder / f"{name}.started").touch()
    deadline = time.monotonic() + HOLD_AT_MOST
    while not (folder / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    (folder / f"{name}.done").touch()
