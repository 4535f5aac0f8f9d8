"""The Celery app: lab provisioning and teardown run here, driven by the web and by beat."""

import os
from queue import Empty
from typing import Any

from celery import Celery
from kombu.transport import redis as kombu_redis

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "stacklab.settings")


def _close_past_a_lost_brpop(original: Any) -> Any:
    """kombu 5.7.0's Redis channel, closed while its BRPOP waits on a broker that just went away,
    raises from reading that BRPOP and stays open. The worker's reconnect then closes the
    connection's transport (Connection.collect) with the channel still open, and closes the
    channel again: that second close restores the unacked task through the closed transport,
    `'NoneType' object has no attribute 'hostname'` in `Channel._connparams`, which Celery's
    ignore_errors does not catch -- "Unrecoverable error", and the worker exits on a Redis
    restart while a task runs (both URL forms). The read on close came with celery/kombu#1733
    (so a warm shutdown does not lose a popped task); the AttributeError on a closed transport
    is the one of celery/kombu#582 and #970. A lost BRPOP has no reply to read, so go on
    closing: the first close then completes while the transport is still there, and the second
    is a no-op. Drop this once kombu closes past it (checked against kombu 5.7.0)."""

    def close(channel: Any) -> None:
        if channel._in_poll:
            try:
                channel._brpop_read()
            except Empty:
                pass
            except channel.connection_errors:
                pass  # _brpop_read has dropped the dead socket and cleared _in_poll
        original(channel)

    close.patched_for_lost_brpop = True  # type: ignore[attr-defined]
    return close


if not getattr(kombu_redis.Channel.close, "patched_for_lost_brpop", False):
    kombu_redis.Channel.close = _close_past_a_lost_brpop(kombu_redis.Channel.close)

app = Celery("stacklab")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
