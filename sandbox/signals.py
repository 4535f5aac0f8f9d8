"""What the runtime announces to the rest of the project: a lab changed state, an objective was
met for the first time (the learner's progress). The course follows them (its dashboards)
without the runtime knowing the course.

Sent with `send_robust` after the change is saved: a receiver that fails is logged and never
undoes or stops the runtime's work. Keyword arguments: `lab_id` (str), `owner_id`,
`lesson_slug`, and `state` or `key`.
"""

from __future__ import annotations

import logging
from typing import Any

from django.dispatch import Signal

logger = logging.getLogger(__name__)

lab_state_changed = Signal()
objective_first_met = Signal()


def announce(signal: Signal, **fields: Any) -> None:
    for receiver, outcome in signal.send_robust(sender=None, **fields):
        if isinstance(outcome, Exception):
            logger.error("lab %s: %s failed: %r", str(fields.get("lab_id", ""))[:12], receiver, outcome)
