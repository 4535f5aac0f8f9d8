"""Browser terminals: a WebSocket bridged to a shell on one node of a running lab (a `docker exec`
with a TTY), for xterm.js.

Binary frames carry the TTY both ways; text frames carry JSON control messages. The exec socket
blocks, so each terminal has two threads of its own: one pumps output to the socket, one feeds
keystrokes to the shell (a shell that does not read its input must not stall this consumer).
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.http import Http404

from . import lifecycle
from .access import get_lab_for_user
from .engine import EngineError, Terminal
from .live import lab_group
from .messages import BadMessage, parse_message
from .models import Lab
from .sockets import CLOSE_NOT_FOUND
from .specs import LabSpecError, load_lab

logger = logging.getLogger(__name__)

CLOSE_NORMAL = 1000
CLOSE_UNAUTHENTICATED = 4401
CLOSE_NODE_UNAVAILABLE = 4409
CLOSE_LAB_ENDED = 4410
DEFAULT_SIZE = (80, 24)  # cols, rows
MAX_SIZE = 1000
READ_BYTES = 64 * 1024
MAX_PENDING_INPUT = 1024 * 1024  # bytes typed or pasted that the shell has not taken yet
SEND_TIMEOUT = 30.0
JOIN_TIMEOUT = 5.0


def terminal_lab(user: AbstractBaseUser | AnonymousUser, lab_id: str, node: str) -> Lab:
    """The lab on whose `node` the user may open a terminal: their own (a shell writes, so
    watching a lab is not enough), ready, and with such a node in its spec. Raises Http404
    otherwise."""
    lab = get_lab_for_user(user, lab_id, write=True)
    if lab.state != Lab.State.READY:
        raise Http404("The lab is not ready")
    try:
        spec = load_lab(lab.lab_slug).spec
    except LabSpecError as exc:
        raise Http404("No such lab") from exc
    if not any(node in group.instances for group in spec.nodes):
        raise Http404("No such node")
    return lab


def open_terminal(lab: Lab, node: str, cols: int, rows: int) -> Terminal:
    """A shell on the node (blocking: the engine is reached over HTTP)."""
    return lifecycle.connect_engine().open_terminal(lab.short_id, node, cols, rows)


def _size(value: Any) -> int | None:
    """A terminal dimension, if `value` is a whole number in range."""
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_SIZE:
        return value
    return None


def initial_size(query_string: bytes) -> tuple[int, int]:
    """cols and rows from `?cols=..&rows=..`; a missing or bad value takes its default."""
    query = parse_qs(query_string.decode("latin-1"))
    return _query_size(query, "cols", DEFAULT_SIZE[0]), _query_size(query, "rows", DEFAULT_SIZE[1])


def _query_size(query: dict[str, list[str]], key: str, default: int) -> int:
    text = query.get(key, [""])[0]
    if not (text.isascii() and text.isdigit() and len(text) <= 4):
        return default
    return _size(int(text)) or default


class TerminalConsumer(AsyncWebsocketConsumer):
    """One terminal on one node: `ws/labs/<lab_id>/terminals/<node>/`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lab_id = ""
        self.short_id = ""
        self.node = ""
        self.terminal: Terminal | None = None
        self._ended = False  # the last frame went out (or the client left): send nothing more
        self._released = False  # the terminal is closed and its threads joined
        self._threads: list[threading.Thread] = []
        self._inbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._is_owner = False
        self._last_activity = float("-inf")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # `disconnect` runs only when the client leaves: a consumer that ends another way (its
        # channel layer raised, ChannelLayerGuard closes with 4503; or it was cancelled) must
        # still close the shell, or the exec and both threads would live on.
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._ended = True
            await self._release("socket ended")

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        kwargs = self.scope["url_route"]["kwargs"]
        try:
            lab = await database_sync_to_async(terminal_lab)(user, kwargs["lab_id"], kwargs["node"])
        except Http404:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.lab_id, self.short_id, self.node = str(lab.id), lab.short_id, kwargs["node"]
        self._is_owner = lab.owner_id == user.pk
        # Joined before the terminal opens, so a lab that stops meanwhile still closes it.
        await self.channel_layer.group_add(lab_group(self.lab_id), self.channel_name)
        cols, rows = initial_size(self.scope.get("query_string", b""))
        try:
            self.terminal = await asyncio.to_thread(open_terminal, lab, self.node, cols, rows)
        except EngineError as exc:
            # Accepted only to say why: a close before accept reaches a browser as a bare 403.
            logger.info("lab %s: terminal on %s refused: %s", self.short_id, self.node, exc)
            await self.accept()
            await self._end({"type": "exit", "code": None, "reason": str(exc)}, CLOSE_NODE_UNAVAILABLE)
            return
        await self.accept()
        loop = asyncio.get_running_loop()
        # Joined when the terminal closes; daemons only so a consumer that crashed cannot hold up
        # the process's exit.
        self._threads = [
            threading.Thread(
                target=self._pump_output, args=(self.terminal, loop), name=f"terminal-out-{self.node}", daemon=True
            ),
            threading.Thread(
                target=self._pump_input, args=(self.terminal,), name=f"terminal-in-{self.node}", daemon=True
            ),
        ]
        for thread in self._threads:
            thread.start()
        logger.info("lab %s: terminal on %s opened by user %s (%dx%d)", self.short_id, self.node, user.pk, cols, rows)

    async def _note_activity(self) -> None:
        """Typing keeps the owner's lab from its idle stop (checked at most every ACTIVE_EVERY)."""
        now = time.monotonic()
        if now - self._last_activity < lifecycle.ACTIVE_EVERY.total_seconds() or not self._is_owner:
            return
        self._last_activity = now
        await database_sync_to_async(lifecycle.mark_active)(self.lab_id)

    async def disconnect(self, code: int) -> None:
        if not self.lab_id:
            return
        await self.channel_layer.group_discard(lab_group(self.lab_id), self.channel_name)
        self._ended = True
        await self._release(f"socket closed ({code})")

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self._ended or self.terminal is None:
            return
        if bytes_data is not None:
            await self._queue_input(bytes_data)
            await self._note_activity()
            return
        try:
            message = parse_message(
                text_data, not_json="Control messages must be JSON objects; send keystrokes as binary frames."
            )
        except BadMessage as error:
            await self._error(str(error))
            return
        if message["type"] == "ping":
            await self._send({"type": "pong"})
        elif message["type"] == "resize":
            cols, rows = _size(message.get("cols")), _size(message.get("rows"))
            if cols is None or rows is None:
                await self._error(f"resize needs whole numbers cols and rows from 1 to {MAX_SIZE}.")
                return
            try:
                await asyncio.to_thread(self.terminal.resize, cols, rows)
            except EngineError as exc:
                await self._error(str(exc))
        else:
            await self._error(f"Unknown message type {message['type']!r}.")

    async def lab_message(self, event: dict[str, Any]) -> None:
        """A message to the lab's group: a lab that is no longer ready takes its terminals along."""
        message = event["message"]
        if message.get("type") != "lab" or message.get("state") == Lab.State.READY:
            return
        reason = f"The lab is {message.get('state')}."
        await self._end({"type": "exit", "code": None, "reason": reason}, CLOSE_LAB_ENDED)
        await self._release(f"lab {message.get('state')}")

    # -- the two sides ----------------------------------------------------------------------

    async def _queue_input(self, data: bytes) -> None:
        """Hand keystrokes to the input thread, refusing a flood the shell is not taking."""
        with self._pending_lock:
            is_flood = self._pending + len(data) > MAX_PENDING_INPUT
            if not is_flood:
                self._pending += len(data)
        if is_flood:
            await self._error("The terminal is not taking input this fast: some was dropped.")
            return
        self._inbox.put(data)

    def _pump_input(self, terminal: Terminal) -> None:
        while (data := self._inbox.get()) is not None:
            with self._pending_lock:
                self._pending -= len(data)
            try:
                terminal.write(data)
            except EngineError:
                return  # the shell is gone; the output side reports how it ended

    def _pump_output(self, terminal: Terminal, loop: asyncio.AbstractEventLoop) -> None:
        while data := terminal.read(READ_BYTES):
            try:
                # Waiting for each send keeps a flood of output from queueing up without bound.
                asyncio.run_coroutine_threadsafe(self._output(data), loop).result(timeout=SEND_TIMEOUT)
            except Exception:  # whatever broke the send, this side is done
                logger.exception("lab %s: terminal on %s could not send output", self.short_id, self.node)
                return
        if not self._ended:
            exited = self._exited()
            try:
                asyncio.run_coroutine_threadsafe(exited, loop)
            except RuntimeError:  # the event loop is gone, and the consumer with it
                exited.close()

    async def _output(self, data: bytes) -> None:
        if not self._ended:
            await self.send(bytes_data=data)

    async def _exited(self) -> None:
        """The shell ended (or its node went away): tell the client how, and close."""
        if self._ended or self.terminal is None:
            return
        code = await asyncio.to_thread(self.terminal.exit_code)
        await self._end({"type": "exit", "code": code}, CLOSE_NORMAL)
        await self._release(f"shell exited ({code})")

    # -- ending -----------------------------------------------------------------------------

    async def _end(self, message: dict[str, Any], close_code: int) -> None:
        """Send the last frame and close the socket, once, whichever side ended first."""
        if self._ended:
            return
        self._ended = True
        await self._send(message)
        await self.close(code=close_code)

    async def _release(self, why: str) -> None:
        """Close the terminal and wait for its threads, once."""
        if self._released or self.terminal is None:
            return
        self._released = True
        self._inbox.put(None)
        await asyncio.to_thread(self.terminal.close)
        await asyncio.to_thread(self._join)
        logger.info("lab %s: terminal on %s closed: %s", self.short_id, self.node, why)

    def _join(self) -> None:
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=JOIN_TIMEOUT)
                if thread.is_alive():
                    logger.warning("lab %s: terminal thread %s did not stop", self.short_id, thread.name)

    async def _error(self, text: str) -> None:
        await self._send({"type": "error", "message": text})

    async def _send(self, message: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(message))
