"""Live feedback: every message for a lab's page goes to its channel-layer group from here."""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.core.cache import cache

logger = logging.getLogger(__name__)


def lab_group(lab_id: str) -> str:
    """The channel-layer group of one lab (ASCII, well under 100 characters)."""
    return f"lab.{lab_id}"


METRICS_HISTORY = 300  # one figure a second: the five minutes the page's charts show
METRICS_KEEP_SECONDS = 3600


def _metrics_key(lab_id: str) -> str:
    return f"lab-metrics:{lab_id}"


def remember_metrics(lab_id: str, message: dict[str, Any]) -> None:
    """Keep the lab's recent traffic figures (only the watcher writes them, one lab per thread)."""
    # Like publishing, history for reloaded pages must never stop the watcher from judging.
    try:
        history = cache.get(_metrics_key(lab_id)) or []
        history.append(message)
        cache.set(_metrics_key(lab_id), history[-METRICS_HISTORY:], timeout=METRICS_KEEP_SECONDS)
    except Exception:
        logger.exception("lab %s: could not keep traffic figures", lab_id[:12])


def metrics_history(lab_id: str) -> list[dict[str, Any]]:
    return cache.get(_metrics_key(lab_id)) or []


def publish(lab_id: str, message: dict[str, Any]) -> None:
    """Send one message to every socket watching the lab. Callable from sync code only."""
    layer = get_channel_layer()
    if layer is None:
        return
    # Live updates are a view of state that is already saved: a channel-layer hiccup must not undo
    # the change being announced (a page catches up from its next snapshot).
    try:
        async_to_sync(layer.group_send)(lab_group(lab_id), {"type": "lab.message", "message": message})
    except Exception:
        logger.exception("lab %s: could not publish %s message", lab_id[:12], message.get("type"))
