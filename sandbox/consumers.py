"""The lab WebSocket: a page (or a tool) watching one lab live; and `LiveConsumer`, the shape of
every such socket (the course's dashboard is one too).

On connect the lab socket sends a `snapshot` (everything so far, so a reconnecting page catches
up), then every `lab`, `step`, `node`, `metrics` and `objective` message the workers and the
monitor publish. Clients may send `ping`, `snapshot` and `active`; anything else malformed gets
an `error` frame and the socket stays open.
"""

from __future__ import annotations

import json
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.http import Http404

from . import lifecycle
from .access import get_lab_for_user
from .live import lab_group
from .messages import BadMessage, parse_message
from .models import Lab
from .payloads import snapshot_payload
from .sockets import CLOSE_NOT_FOUND

CLOSE_UNAUTHENTICATED = 4401


class LiveConsumer(AsyncWebsocketConsumer):
    """A page following one thing live over its group: access is checked on connect (4401 for
    anonymous, 4404 for anything the user may not see, never saying whether it exists), then a
    `snapshot`, then every message sent to the group. Clients may send `ping` and `snapshot`;
    subclasses may take more message types. Anything malformed gets an `error` frame and the
    socket stays open.

    Subclasses say what they follow: `follow(user, key)` (sync, in a database thread) returns the
    group's name or raises Http404, and `snapshot()` (sync) the page's starting state.
    """

    url_key: str  # the URL route's keyword that names what is followed
    group: str

    def follow(self, user: Any, key: str) -> str:
        raise NotImplementedError

    def snapshot(self) -> dict[str, Any]:
        raise NotImplementedError

    async def on_message(self, message: dict[str, Any]) -> bool:
        """A client message beyond ping and snapshot: True if handled."""
        return False

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        try:
            key = self.scope["url_route"]["kwargs"][self.url_key]
            self.group = await database_sync_to_async(self.follow)(user, key)
        except Http404:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self._send(await database_sync_to_async(self.snapshot)())

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            message = parse_message(text_data)
        except BadMessage as error:
            await self._send({"type": "error", "message": str(error)})
            return
        if message["type"] == "ping":
            await self._send({"type": "pong"})
        elif message["type"] == "snapshot":
            await self._send(await database_sync_to_async(self.snapshot)())
        elif not await self.on_message(message):
            await self._send({"type": "error", "message": f"Unknown message type {message['type']!r}."})

    async def relay(self, event: dict[str, Any]) -> None:
        """A message sent to the group: passed on as it is."""
        await self._send(event["message"])

    async def _send(self, message: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(message))


class LabConsumer(LiveConsumer):
    """One lab, for its owner and those allowed to watch it (sandbox.access)."""

    url_key = "lab_id"
    lab_id: str

    def follow(self, user: Any, key: str) -> str:
        self.lab_id = str(get_lab_for_user(user, key).id)
        return lab_group(self.lab_id)

    def snapshot(self) -> dict[str, Any]:
        return snapshot_payload(Lab.objects.get(pk=self.lab_id))

    async def on_message(self, message: dict[str, Any]) -> bool:
        if message["type"] != "active":
            return False
        # The page saw the learner at work; only the owner's activity keeps a lab alive.
        if await self._is_owner():
            await database_sync_to_async(lifecycle.mark_active)(self.lab_id)
        return True

    # Messages published to the lab's group (sandbox.live.publish) have the type `lab.message`.
    lab_message = LiveConsumer.relay

    @database_sync_to_async
    def _is_owner(self) -> bool:
        return Lab.objects.filter(pk=self.lab_id, owner_id=self.scope["user"].pk).exists()
