"""The cohort dashboard's WebSocket: an instructor following their cohort live.

On connect it sends a `snapshot` (the progress matrix and the labs running now, so a reconnecting
page catches up), then every `lab` and `objective` message the course's receivers relay for the
cohort's learners. Clients may send `{"type": "snapshot"}` for a fresh one and `{"type": "ping"}`;
anything else gets an `error` frame and the socket stays open.
"""

from __future__ import annotations

from typing import Any

from django.http import Http404

from sandbox.consumers import LiveConsumer

from .cohorts import get_cohort_for_instructor
from .models import Cohort
from .overview import dashboard_snapshot
from .receivers import cohort_group


class DashboardConsumer(LiveConsumer):
    """One cohort, for its instructors and staff (`get_cohort_for_instructor`)."""

    url_key = "cohort_id"
    cohort_id: int

    def follow(self, user: Any, key: str) -> str:
        try:
            self.cohort_id = get_cohort_for_instructor(user, int(key)).pk
        except ValueError as exc:
            raise Http404("No such cohort") from exc
        return cohort_group(self.cohort_id)

    def snapshot(self) -> dict[str, Any]:
        return dashboard_snapshot(Cohort.objects.get(pk=self.cohort_id))

    # Messages the course's receivers send to the cohort's group have the type `cohort.message`.
    cohort_message = LiveConsumer.relay
