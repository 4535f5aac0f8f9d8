"""Browser terminals through the real ASGI application into real containers: a learner types into
a shell on a node and sees its output, resizes it, leaves it; strangers are refused; a lab that
stops closes its terminals.

The nodes (lb and cache of the first lab) start once for the module, under a fixed lab id; each
test writes the ready lab row for that id, as a provisioned lab would have it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.utils import timezone

from sandbox import lifecycle
from sandbox.engine import Engine, NodeRun
from sandbox.live import publish
from sandbox.models import Lab
from sandbox.specs import load_lab
from stacklab.asgi import application
from tests.sandbox.test_consumers import headers_for
from tests.sandbox.test_docker_lab import in_thread

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.django_db(transaction=True)]

LAB_SLUG = "scaling-load-balancer"
BAD_RESIZE = "resize needs whole numbers cols and rows from 1 to 1000."
NOT_JSON = "Control messages must be JSON objects; send keystrokes as binary frames."
TIMEOUT = 10.0


@pytest.fixture(scope="module")
def lab_id(engine: Engine) -> Iterator[uuid.UUID]:
    """A lab id whose lb and cache nodes run on the engine, as provisioning would start them."""
    lab_id = uuid.uuid4()
    short_id = lab_id.hex[:12]
    package = load_lab(LAB_SLUG)
    try:
        network = engine.create_network(short_id, owner=0)
        for index, name in enumerate(["lb", "cache"], start=10):
            node = package.spec.node(name)
            engine.start_node(
                NodeRun(
                    lab=short_id,
                    owner=0,
                    name=name,
                    group=name,
                    image=engine.ensure_image(package.build_context(node)),
                    ip=network.address(index),
                    memory_bytes=node.limits.memory_bytes,
                    cpus=node.limits.cpus,
                    pids=node.limits.pids,
                    writable=node.writable_bytes,  # a read-only root: haproxy writes /run/haproxy
                ),
                network,
            )
        yield lab_id
    finally:
        engine.remove_lab(short_id)


@pytest.fixture
def lab(lab_id: uuid.UUID, learner: User) -> Lab:
    now = timezone.now()
    return Lab.objects.create(
        id=lab_id,
        owner=learner,
        lab_slug=LAB_SLUG,
        lesson_slug="load-balancing",
        state=Lab.State.READY,
        ready_at=now,
        expires_at=now + timedelta(minutes=60),
    )


class BrowserTerminal:
    """The browser's side of one terminal socket: what it sent, and everything it has seen."""

    def __init__(self, communicator: WebsocketCommunicator) -> None:
        self.communicator = communicator
        self.output = b""
        self.controls: list[dict[str, Any]] = []
        self.close_code: int | None = None

    async def type(self, keys: str) -> None:
        await self.communicator.send_to(bytes_data=keys.encode())

    async def control(self, message: dict[str, Any] | str) -> None:
        if isinstance(message, str):
            await self.communicator.send_to(text_data=message)
        else:
            await self.communicator.send_json_to(message)

    async def wait_for(self, is_seen: Callable[[BrowserTerminal], bool], what: str, timeout: float = TIMEOUT) -> None:
        """Read frames until `is_seen` holds, failing with what did come if it does not in time."""
        deadline = time.monotonic() + timeout
        while not is_seen(self):
            remaining = deadline - time.monotonic()
            seen = f"output {self.output[-400:]!r}, control frames {self.controls[-5:]}, close code {self.close_code}"
            if remaining <= 0 or self.close_code is not None:
                raise AssertionError(f"no {what} within {timeout:.0f}s; {seen}")
            try:
                message = await self.communicator.receive_output(timeout=remaining)
            except Exception as exc:  # a timeout cancels the application, which may then fail its own way
                raise AssertionError(f"no {what} within {timeout:.0f}s; {seen}") from exc
            if message["type"] == "websocket.close":
                self.close_code = message.get("code", 1000)
            elif message.get("bytes") is not None:
                self.output += message["bytes"]
            else:
                self.controls.append(json.loads(message["text"]))

    async def wait_for_output(self, text: bytes, timeout: float = TIMEOUT) -> None:
        await self.wait_for(lambda t: text in t.output, f"output {text!r}", timeout)

    async def wait_for_control(self, message: dict[str, Any]) -> None:
        await self.wait_for(lambda t: message in t.controls, f"control frame {message}")

    async def wait_for_close(self) -> int | None:
        await self.wait_for(lambda t: t.close_code is not None, "close")
        return self.close_code


async def open_terminal(
    user: User | None, lab_id: uuid.UUID | str, node: str, query: str = ""
) -> tuple[BrowserTerminal, bool, int | None]:
    headers = await database_sync_to_async(headers_for)(user)
    communicator = WebsocketCommunicator(application, f"/ws/labs/{lab_id}/terminals/{node}/{query}", headers=headers)
    connected, code = await communicator.connect(timeout=TIMEOUT)
    return BrowserTerminal(communicator), connected, code


async def test_typed_command_runs_in_the_node_and_its_output_comes_back(lab: Lab, learner: User) -> None:
    terminal, connected, _ = await open_terminal(learner, lab.id, "lb")
    try:
        assert connected
        await terminal.type("echo hello-$((6*7))\r")
        await terminal.wait_for_output(b"hello-42")  # computed by the shell, not the echoed keys
        await terminal.type("echo I am $(whoami) on $(hostname)\r")
        await terminal.wait_for_output(b"I am haproxy on lb")
    finally:
        await terminal.communicator.disconnect()


async def test_size_comes_from_the_query_string_and_follows_resizes(lab: Lab, learner: User) -> None:
    terminal, connected, _ = await open_terminal(learner, lab.id, "lb", "?cols=100&rows=30")
    try:
        assert connected
        await terminal.type("stty size\r")
        await terminal.wait_for_output(b"30 100")
        await terminal.control({"type": "resize", "cols": 120, "rows": 40})
        await terminal.type("stty size\r")
        await terminal.wait_for_output(b"40 120")
        assert terminal.controls == []  # a good resize is not answered
    finally:
        await terminal.communicator.disconnect()


async def test_escape_sequences_and_utf8_come_back_byte_for_byte(lab: Lab, learner: User) -> None:
    terminal, _, _ = await open_terminal(learner, lab.id, "lb")
    try:
        await terminal.type("printf '\\033[31mred\\033[0m \\342\\234\\223\\n'\r")
        # The keys echo back as backslash text; only the shell's output has the real bytes (and the
        # TTY's own touch: it turns the newline into CR LF).
        await terminal.wait_for_output("\x1b[31mred\x1b[0m ✓\r\n".encode())
    finally:
        await terminal.communicator.disconnect()


async def test_full_screen_programs_take_the_screen_and_give_it_back(lab: Lab, learner: User) -> None:
    terminal, _, _ = await open_terminal(learner, lab.id, "lb")
    try:
        await terminal.type("vi /tmp/notes\r")
        await terminal.wait_for_output(b"\x1b[?1049h")  # vi switched to the alternate screen
        await terminal.type("\x1b:q!\r")
        await terminal.wait_for_output(b"\x1b[?1049l")  # and gave the screen back on quit
        await terminal.type("top -b -n 1 | head -1\r")
        await terminal.wait_for_output(b"top - ")
    finally:
        await terminal.communicator.disconnect()


@pytest.mark.parametrize(("keys", "code"), [("exit\r", 0), ("exit 3\r", 3)])
async def test_leaving_the_shell_sends_its_exit_code_and_closes(lab: Lab, learner: User, keys: str, code: int) -> None:
    terminal, _, _ = await open_terminal(learner, lab.id, "lb")
    try:
        await terminal.type(keys)
        await terminal.wait_for_control({"type": "exit", "code": code})
        assert await terminal.wait_for_close() == 1000
    finally:
        await terminal.communicator.disconnect()


async def test_closing_the_terminal_leaves_nothing_running_on_the_node(engine: Engine, lab: Lab, learner: User) -> None:
    terminal, _, _ = await open_terminal(learner, lab.id, "lb")
    await terminal.type("sleep 4242 & echo started-$((1+1))\r")
    await terminal.wait_for_output(b"started-2")
    await terminal.communicator.disconnect()

    def running() -> str:
        listing = "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done"
        return engine.exec(lab.short_id, "lb", ["sh", "-c", listing]).output

    deadline = time.monotonic() + TIMEOUT
    while ("sleep 4242" in (left := await in_thread(running)) or "bash" in left) and time.monotonic() < deadline:
        await in_thread(time.sleep, 0.1)
    assert "sleep 4242" not in left and "bash" not in left, left


async def test_another_learner_is_refused(lab: Lab, make_user: Callable[..., User]) -> None:
    stranger = await database_sync_to_async(make_user)("mallory")
    terminal, connected, code = await open_terminal(stranger, lab.id, "lb")
    assert (connected, code) == (False, 4404)
    await terminal.communicator.disconnect()


async def test_anonymous_is_refused(lab: Lab) -> None:
    terminal, connected, code = await open_terminal(None, lab.id, "lb")
    assert (connected, code) == (False, 4401)
    await terminal.communicator.disconnect()


@pytest.mark.parametrize("node", ["app-9", "db-1", "stacklab", ".."])
async def test_a_node_the_lab_does_not_have_is_refused(lab: Lab, learner: User, node: str) -> None:
    terminal, connected, code = await open_terminal(learner, lab.id, node)
    assert (connected, code) == (False, 4404)
    await terminal.communicator.disconnect()


async def test_a_lab_that_is_not_ready_or_not_a_lab_is_refused(lab: Lab, learner: User) -> None:
    await database_sync_to_async(Lab.objects.filter(pk=lab.pk).update)(state=Lab.State.STOPPING)
    for lab_id in (lab.id, "not-a-uuid", uuid.uuid4()):
        terminal, connected, code = await open_terminal(learner, lab_id, "lb")
        assert (connected, code) == (False, 4404), lab_id
        await terminal.communicator.disconnect()


async def test_a_watching_instructor_gets_no_shell(lab: Lab, make_user: Callable[..., User]) -> None:
    # Instructors of the learner's cohort watch the lab read-only: a terminal would write to it.
    teacher = await database_sync_to_async(make_user)("teacher", instructor=True, teaching=[lab.owner_id])
    terminal, connected, code = await open_terminal(teacher, lab.id, "cache")
    assert (connected, code) == (False, 4404)
    await terminal.communicator.disconnect()


async def test_a_paused_node_gets_a_reason_instead_of_a_shell(engine: Engine, lab: Lab, learner: User) -> None:
    await in_thread(engine.act_on_node, lab.short_id, "cache", "pause")
    try:
        terminal, connected, _ = await open_terminal(learner, lab.id, "cache")
        try:
            assert connected  # accepted only to say why, which a refused handshake cannot
            await terminal.wait_for(lambda t: bool(t.controls), "a reason")
            assert terminal.controls == [
                {
                    "type": "exit",
                    "code": None,
                    "reason": "Node cache is not running (paused): start it before opening a terminal.",
                }
            ]
            assert await terminal.wait_for_close() == 4409
        finally:
            await terminal.communicator.disconnect()
    finally:
        await in_thread(engine.act_on_node, lab.short_id, "cache", "unpause")


async def test_bad_control_messages_get_an_error_and_the_terminal_keeps_working(lab: Lab, learner: User) -> None:
    terminal, _, _ = await open_terminal(learner, lab.id, "lb")
    try:
        for bad, error in [
            ("{not json", NOT_JSON),
            ("[1, 2]", 'Messages need a "type".'),
            ({"type": "launch"}, "Unknown message type 'launch'."),
            ({"type": "resize", "cols": 0, "rows": 40}, BAD_RESIZE),
            ({"type": "resize", "cols": "120", "rows": 40}, BAD_RESIZE),
            ({"type": "resize", "cols": 1001, "rows": 40}, BAD_RESIZE),
            ({"type": "resize", "cols": 80, "rows": True}, BAD_RESIZE),
            ({"type": "resize", "cols": 80.5, "rows": 24}, BAD_RESIZE),
            ({"type": "resize"}, BAD_RESIZE),
            ("[" * 100_000, NOT_JSON),
        ]:
            await terminal.control(bad)
            await terminal.wait_for(lambda t: bool(t.controls), f"answer to {str(bad)[:40]}")
            assert terminal.controls.pop() == {"type": "error", "message": error}
        await terminal.control({"type": "ping"})
        await terminal.wait_for_control({"type": "pong"})
        await terminal.type("echo still-$((40+2))\r")
        await terminal.wait_for_output(b"still-42")
    finally:
        await terminal.communicator.disconnect()


async def test_a_lab_that_stops_closes_its_terminals(lab: Lab, learner: User) -> None:
    terminal, _, _ = await open_terminal(learner, lab.id, "lb")
    try:
        # Other lab news (a step, an extend's `lab` message while still ready) leaves it open.
        await in_thread(publish, str(lab.id), {"type": "step", "at": "now", "message": "Break: kill app-2"})
        await in_thread(publish, str(lab.id), {"type": "lab", "id": str(lab.id), "state": "ready"})
        await terminal.type("echo alive-$((2*3))\r")
        await terminal.wait_for_output(b"alive-6")
        assert terminal.controls == []

        assert await in_thread(lifecycle._move, lab.id, [Lab.State.READY], Lab.State.STOPPING)
        await terminal.wait_for_control({"type": "exit", "code": None, "reason": "The lab is stopping."})
        assert await terminal.wait_for_close() == 4410
    finally:
        await terminal.communicator.disconnect()


async def test_terminals_on_two_nodes_of_a_lab_work_side_by_side(lab: Lab, learner: User) -> None:
    lb, _, _ = await open_terminal(learner, lab.id, "lb", "?cols=90&rows=20")
    cache, _, _ = await open_terminal(learner, lab.id, "cache", "?cols=70&rows=10")
    try:
        await lb.type("echo on-$(hostname) $(stty size)\r")
        await cache.type("echo on-$(hostname) $(stty size)\r")
        await lb.wait_for_output(b"on-lb 20 90")
        await cache.wait_for_output(b"on-cache 10 70")

        await cache.type("exit\r")
        await cache.wait_for_control({"type": "exit", "code": 0})
        await lb.type("echo lb-still-$((3*3))\r")
        await lb.wait_for_output(b"lb-still-9")
        assert b"on-cache" not in lb.output and b"on-lb" not in cache.output
        assert lb.controls == [] and lb.close_code is None
    finally:
        await lb.communicator.disconnect()
        await cache.communicator.disconnect()
