"""The `web` process as the Procfile starts it (`python -m stacklab.server`, daphne underneath),
spoken to with a raw WebSocket client: frames the server itself refuses (over 1 MiB, text that is
not UTF-8) close the socket with their standard code instead of dropping it, and nothing is
logged with a traceback."""

from __future__ import annotations

import base64
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client

from sandbox import lifecycle
from tests.e2e.conftest import free_port
from tests.sandbox.test_live_redis import PrivateRedis, private_redis  # noqa: F401 - a fixture

pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
TEXT, BINARY, CONTINUATION, CLOSE = 0x1, 0x2, 0x0, 0x8


def database_url() -> str:
    """The test database, for the server process to share (it sees the rows the test commits)."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    return f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


@pytest.fixture
def web_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """The port of a web process on 127.0.0.1 (on REDIS_URL), and its log."""
    with running_web(tmp_path) as server:
        yield server


@contextmanager
def running_web(tmp_path: Path, redis_url: str | None = None) -> Iterator[tuple[int, Path]]:
    port = free_port()
    log_path = tmp_path / "web.log"
    env = {**os.environ, "DATABASE_URL": database_url(), "DJANGO_SETTINGS_MODULE": "stacklab.settings"}
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    command = [sys.executable, "-m", "stacklab.server", "-b", "127.0.0.1", "-p", str(port)]
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [*command, "stacklab.asgi:application"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "the web process did not listen within 30 s"
                time.sleep(0.1)
        yield port, log_path
    finally:
        process.terminate()
        process.wait(timeout=15)


def session_cookie(user: User) -> str:
    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


class RawWebSocket:
    """Just enough of RFC 6455 to send any frame, valid or not, and see how the server ends."""

    def __init__(self, port: int, path: str, cookie: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1:{port}\r\n"
                f"Cookie: {cookie}\r\n\r\n"
            ).encode()
        )
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        self.status = int(head.split(b" ", 2)[1])

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionResetError("the server dropped the connection")
        return data

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self.buffer += self._recv()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def send_frame(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        mask = os.urandom(4)
        length = len(payload)
        if length < 126:
            header = struct.pack("!BB", (0x80 if fin else 0) | opcode, 0x80 | length)
        elif length < 1 << 16:
            header = struct.pack("!BBH", (0x80 if fin else 0) | opcode, 0x80 | 126, length)
        else:
            header = struct.pack("!BBQ", (0x80 if fin else 0) | opcode, 0x80 | 127, length)
        repeated = (mask * (length // 4 + 1))[:length]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(length, "big")
        try:
            self.sock.sendall(header + mask + masked)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may fail the socket before the whole frame is in; its answer is read next

    def close_code(self) -> int | None:
        """Read frames until the server's close frame: its code (None if it had none)."""
        while True:
            first, second = self._read(2)
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", self._read(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", self._read(8))
            payload = self._read(length)
            if first & 0x0F == CLOSE:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


CASES = {
    "a text frame of 1 MiB + 1 byte": ([(TEXT, b"x" * (MiB + 1), True)], 1009),
    "a binary frame of 2 MiB": ([(BINARY, b"\0" * (2 * MiB), True)], 1009),
    "a message of three 512 KiB fragments": (
        [(TEXT, b"x" * (MiB // 2), False), (CONTINUATION, b"x" * (MiB // 2), False), (CONTINUATION, b"x", True)],
        1009,
    ),
    "a text frame that is not UTF-8": ([(TEXT, b'{"type": "ping\xff\xfe"}', True)], 1007),
    "a text frame cut inside a UTF-8 character": ([(TEXT, "é".encode()[:1], True)], 1007),
}


@pytest.mark.parametrize("case", CASES)
def test_frames_the_server_refuses_close_the_lab_socket_with_their_code(
    case: str, web_server: tuple[int, Path]
) -> None:
    port, log = web_server
    user = User.objects.create_user(username="learner", password="pw")
    lab, _ = lifecycle.request_lab(user, "scaling-load-balancer", "load-balancing")
    client = RawWebSocket(port, f"/ws/labs/{lab.id}/", session_cookie(user))
    assert client.status == 101
    frames, code = CASES[case]
    for opcode, payload, fin in frames:
        client.send_frame(opcode, payload, fin)
    assert client.close_code() == code
    client.sock.close()
    assert "Traceback" not in log.read_text()


def test_the_socket_stays_usable_up_to_the_limit(web_server: tuple[int, Path]) -> None:
    port, log = web_server
    user = User.objects.create_user(username="learner", password="pw")
    lab, _ = lifecycle.request_lab(user, "scaling-load-balancer", "load-balancing")
    client = RawWebSocket(port, f"/ws/labs/{lab.id}/", session_cookie(user))
    assert client.status == 101
    # A frame of exactly 1 MiB is within the limit: the consumer answers it (an error frame: it is
    # not JSON) and the socket stays open; then the client closes normally.
    client.send_frame(TEXT, b"x" * MiB)
    client.send_frame(TEXT, b'{"type": "ping"}')
    client.send_frame(CLOSE, struct.pack("!H", 1000))
    assert client.close_code() == 1000
    client.sock.close()
    assert "Traceback" not in log.read_text()


def test_a_path_without_a_socket_is_a_403_handshake_without_a_traceback(web_server: tuple[int, Path]) -> None:
    port, log = web_server
    user = User.objects.create_user(username="learner", password="pw")
    lab, _ = lifecycle.request_lab(user, "scaling-load-balancer", "load-balancing")
    for path in ["/ws/nothing-here/", f"/ws/labs/{lab.id}", f"/ws/labs/{lab.id}/terminals/..%2Flb/"]:
        client = RawWebSocket(port, path, session_cookie(user))
        assert client.status == 403, path  # daphne's answer to a close before accept (4404)
        client.sock.close()
    assert "Traceback" not in log.read_text()


def test_a_handshake_while_redis_is_down_is_accepted_and_closed_with_4503(
    tmp_path: Path,
    private_redis: PrivateRedis,  # noqa: F811 - the fixture imported above
) -> None:
    user = User.objects.create_user(username="learner", password="pw")
    lab, _ = lifecycle.request_lab(user, "scaling-load-balancer", "load-balancing")
    with running_web(tmp_path, redis_url=private_redis.unix_url) as (port, log):
        private_redis.stop()
        client = RawWebSocket(port, f"/ws/labs/{lab.id}/", session_cookie(user))
        assert client.status == 101
        assert client.close_code() == 4503
        client.sock.close()
        text = log.read_text()
    assert "Traceback" not in text
    assert text.count("channel layer unavailable") == 1, text
