"""The lab socket over the real Redis channel layer, configured as settings.py configures it, over
both URL forms (`redis://` and `unix://`): a quiet socket stays open, and a handshake while Redis
is down gets a clean close instead of a crash."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings

from sandbox import terminals
from sandbox.live import lab_group
from sandbox.models import Lab
from sandbox.sockets import CLOSE_UNAVAILABLE
from stacklab.asgi import application
from stacklab.settings import channel_layers
from tests.sandbox.test_consumers import headers_for, setup_lab

pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]

QUIET_SECONDS = 60


class PrivateRedis:
    """A redis-server of the test's own, on a Unix socket and a free TCP port of 127.0.0.1: it
    may be stopped without touching the machine's Redis."""

    def __init__(self) -> None:
        # Short: a Unix socket path must fit in 108 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="sl-redis-", dir="/tmp"))
        self.socket = self.dir / "redis.sock"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def unix_url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def tcp_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--unixsocket", str(self.socket),
             "--unixsocketperm", "700", "--save", "", "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(unix_socket_path=str(self.socket), socket_connect_timeout=1).ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is needed for this test")
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


@pytest.fixture(params=["redis://", "unix://"])
def layer_url(request: pytest.FixtureRequest, private_redis: PrivateRedis, settings) -> str:  # noqa: ANN001
    """The channel layer on Redis through one URL form: REDIS_URL when it is TCP (the machine's
    Redis), else the private server's port; the private server's socket for `unix://`."""
    if request.param == "unix://":
        url = private_redis.unix_url
    elif django_settings.REDIS_URL.startswith("redis://"):
        url = django_settings.REDIS_URL
    else:
        url = private_redis.tcp_url
    settings.CHANNEL_LAYERS = channel_layers(url, "stacklab-test")
    return url


async def connect_owner() -> tuple[WebsocketCommunicator, str]:
    user, lab = await setup_lab()
    headers = await database_sync_to_async(headers_for)(user)
    communicator = WebsocketCommunicator(application, f"/ws/labs/{lab.id}/", headers=headers)
    connected, code = await communicator.connect(timeout=10)
    assert connected, code
    return communicator, str(lab.id)


async def test_a_quiet_lab_socket_stays_open_and_gets_a_message_sent_after_a_minute(
    layer_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    communicator, lab_id = await connect_owner()
    try:
        assert (await communicator.receive_output(timeout=10))["type"] == "websocket.send"  # snapshot
        # Nothing is sent or published for a minute: the consumer waits on the channel layer.
        assert await communicator.receive_nothing(timeout=QUIET_SECONDS, interval=1)
        assert not communicator.future.done(), "the consumer ended during the quiet minute"
        message = {"type": "node", "name": "app-2", "state": "down"}
        await get_channel_layer().group_send(lab_group(lab_id), {"type": "lab.message", "message": message})
        assert await communicator.receive_json_from(timeout=10) == message
    finally:
        await communicator.disconnect()
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


async def test_a_handshake_while_redis_is_down_is_closed_with_4503_try_again_later(
    private_redis: PrivateRedis,
    settings,  # noqa: ANN001 - pytest-django's settings fixture
    caplog: pytest.LogCaptureFixture,
) -> None:
    user, lab = await setup_lab()
    headers = await database_sync_to_async(headers_for)(user)
    for url in (private_redis.unix_url, private_redis.tcp_url):
        settings.CHANNEL_LAYERS = channel_layers(url, "stacklab-test")
        private_redis.stop()
        caplog.clear()
        with caplog.at_level(logging.INFO):
            communicator = WebsocketCommunicator(application, f"/ws/labs/{lab.id}/", headers=headers)
            try:
                connected, code = await communicator.connect(timeout=30)
                # Accepted only to say why, as a close before accept reaches a browser as a bare 403.
                assert connected, code
                output = await communicator.receive_output(timeout=30)
                assert output == {"type": "websocket.close", "code": CLOSE_UNAVAILABLE}, output
            finally:
                await communicator.disconnect()
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
        outage_lines = [r for r in caplog.records if "channel layer" in r.getMessage()]
        assert len(outage_lines) == 1, [r.getMessage() for r in caplog.records]
        private_redis.start()


async def test_an_open_lab_socket_whose_redis_goes_away_is_closed_with_4503(
    private_redis: PrivateRedis,
    settings,  # noqa: ANN001 - pytest-django's settings fixture
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings.CHANNEL_LAYERS = channel_layers(private_redis.unix_url, "stacklab-test")
    communicator, _ = await connect_owner()
    try:
        assert (await communicator.receive_output(timeout=10))["type"] == "websocket.send"  # snapshot
        private_redis.stop()
        assert await communicator.receive_output(timeout=30) == {"type": "websocket.close", "code": CLOSE_UNAVAILABLE}
    finally:
        await communicator.disconnect()
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert len([r for r in caplog.records if "channel layer" in r.getMessage()]) == 1


class FakeTerminal:
    """A shell that never prints: `read` blocks until `close`, as the engine's does. It notes the
    threads that read and write it, so a test can see them end."""

    def __init__(self) -> None:
        self.closed = threading.Event()
        self.typed = b""
        self.threads: set[threading.Thread] = set()

    def read(self, size: int) -> bytes:
        self.threads.add(threading.current_thread())
        self.closed.wait()
        return b""

    def write(self, data: bytes) -> None:
        self.threads.add(threading.current_thread())
        self.typed += data

    def resize(self, cols: int, rows: int) -> None:
        pass

    def exit_code(self) -> int | None:
        return None

    def close(self) -> None:
        self.closed.set()


async def test_a_terminal_whose_redis_goes_away_is_closed_with_4503_and_its_shell_and_threads_end(
    private_redis: PrivateRedis,
    settings,  # noqa: ANN001 - pytest-django's settings fixture
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings.CHANNEL_LAYERS = channel_layers(private_redis.unix_url, "stacklab-test")
    terminal = FakeTerminal()
    monkeypatch.setattr(terminals, "open_terminal", lambda lab, node, cols, rows: terminal)
    user, lab = await setup_lab()
    await Lab.objects.filter(pk=lab.pk).aupdate(state=Lab.State.READY)
    headers = await database_sync_to_async(headers_for)(user)
    communicator = WebsocketCommunicator(application, f"/ws/labs/{lab.id}/terminals/lb/", headers=headers)
    try:
        connected, code = await communicator.connect(timeout=10)
        assert connected, code
        await communicator.send_to(bytes_data=b"ls\r")
        deadline = time.monotonic() + 10
        while len(terminal.threads) < 2:  # the output thread reads, the input thread writes
            assert time.monotonic() < deadline, f"the terminal's threads did not start: {terminal.threads}"
            await asyncio.sleep(0.05)
        private_redis.stop()
        assert await communicator.receive_output(timeout=30) == {"type": "websocket.close", "code": CLOSE_UNAVAILABLE}
        deadline = time.monotonic() + 10
        while not terminal.closed.is_set() or any(thread.is_alive() for thread in terminal.threads):
            assert time.monotonic() < deadline, (
                f"terminal closed: {terminal.closed.is_set()}, threads alive: "
                f"{[thread.name for thread in terminal.threads if thread.is_alive()]}"
            )
            await asyncio.sleep(0.05)
    finally:
        terminal.close()  # a leaked output thread ends with the test even when the consumer failed
        await communicator.disconnect()
    assert terminal.typed == b"ls\r"
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
