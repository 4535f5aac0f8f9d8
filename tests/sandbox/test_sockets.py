"""WebSocket paths where no socket lives, and node names that are not nodes: each is refused
with 4404 (docs/api.md), and nothing is logged with a traceback."""

from __future__ import annotations

import logging

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from sandbox.models import Lab
from stacklab.asgi import application
from tests.sandbox.test_consumers import headers_for, setup_lab

pytestmark = pytest.mark.django_db(transaction=True)

CLOSE_NOT_FOUND = 4404


@database_sync_to_async
def make_ready(lab: Lab) -> None:
    # Ready, so that a terminal on a bad node is refused for its node, not for the lab's state.
    Lab.objects.filter(pk=lab.pk).update(state=Lab.State.READY)


async def refused_code(path: str, headers: list[tuple[bytes, bytes]]) -> int | None:
    communicator = WebsocketCommunicator(application, path, headers=headers)
    try:
        connected, code = await communicator.connect(timeout=5)
        assert not connected, f"{path} was accepted"
        return code
    finally:
        await communicator.disconnect()


async def test_paths_without_a_socket_and_bad_node_names_are_refused_with_4404_and_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    user, lab = await setup_lab()
    await make_ready(lab)
    headers = await database_sync_to_async(headers_for)(user)
    paths = [
        "/ws/nothing-here/",
        "/ws/",
        "/",
        f"/ws/labs/{lab.id}",  # the lab socket without its trailing slash
        f"/ws/labs/{lab.id}/extra/",
        f"/ws/labs/{lab.id}/terminals/lb",  # a terminal without its trailing slash
        f"/ws/labs/{lab.id}/terminals/..%2Flb/",  # decoded to ../lb/, as daphne does
        f"/ws/labs/{lab.id}/terminals/../lb/",
        f"/ws/labs/{lab.id}/terminals/../",
        f"/ws/labs/{lab.id}/terminals/./",
        f"/ws/labs/{lab.id}/terminals/lb%00/",
        f"/ws/labs/{lab.id}/terminals/{'a' * 5000}/",
        "/ws/labs/../../etc/passwd/",
        "/ws/cohorts/1",
        "/ws/cohorts/99999999999999999999999999999999999999999/",  # past any integer column
        "/ws/cohorts/-1/",
    ]
    with caplog.at_level(logging.DEBUG):
        for path in paths:
            assert await refused_code(path, headers) == CLOSE_NOT_FOUND, path
    assert not [record for record in caplog.records if record.exc_info], "a traceback was logged"


async def test_an_unknown_path_is_refused_before_login_too() -> None:
    assert await refused_code("/ws/nothing-here/", [(b"origin", b"http://testserver")]) == CLOSE_NOT_FOUND


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/14", "unix:///tmp/stacklab/redis.sock", "redis://h:1/0?db=2"])
def test_the_channel_layer_waits_longer_on_a_read_than_redis_blocks_for_a_message(url: str) -> None:
    """A quiet socket must never see its own blocking wait time out (the proof against a real
    Redis is tests/sandbox/test_live_redis.py); this checks the configuration for each URL form."""
    from channels_redis.core import RedisChannelLayer

    from stacklab.settings import channel_layers

    config = channel_layers(url, "stacklab-test")["default"]["CONFIG"]
    connection = RedisChannelLayer(**config).create_pool(0).make_connection()  # not connected yet
    assert connection.socket_timeout > RedisChannelLayer.brpop_timeout
