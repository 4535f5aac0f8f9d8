"""The lab WebSocket: a page (or a tool) watching one lab live.

On connect it sends a `snapshot` (everything so far, so a reconnecting page catches up), then
every `lab`, `step`, `node`, `metrics` and `objective` message the workers and the monitor
publish. Clients may send `{"type": "ping"}`; anything else malformed gets an `error` frame and
the socket stays open.
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

CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404


class LabConsumer(AsyncWebsocketConsumer):
    lab_id: str

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        try:
            lab = await database_sync_to_async(get_lab_for_user)(user, self.scope["url_route"]["kwargs"]["lab_id"])
        except Http404:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.lab_id = str(lab.id)
        await self.channel_layer.group_add(lab_group(self.lab_id), self.channel_name)
        await self.accept()
        await self._send(await self._snapshot())

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "lab_id"):
            await self.channel_layer.group_discard(lab_group(self.lab_id), self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            message = parse_message(text_data)
        except BadMessage as error:
            await self._error(str(error))
            return
        if message["type"] == "ping":
            await self._send({"type": "pong"})
        elif message["type"] == "snapshot":
            await self._send(await self._snapshot())
        elif message["type"] == "active":
            # The page saw the learner at work; only the owner's activity keeps a lab alive.
            if await self._is_owner():
                await database_sync_to_async(lifecycle.mark_active)(self.lab_id)
        else:
            await self._error(f"Unknown message type {message['type']!r}.")

    async def lab_message(self, event: dict[str, Any]) -> None:
        """A message published to the lab's group (see sandbox.live.publish)."""
        await self._send(event["message"])

    @database_sync_to_async
    def _is_owner(self) -> bool:
        return Lab.objects.filter(pk=self.lab_id, owner_id=self.scope["user"].pk).exists()

    @database_sync_to_async
    def _snapshot(self) -> dict[str, Any]:
        return snapshot_payload(Lab.objects.get(pk=self.lab_id))

    async def _error(self, text: str) -> None:
        await self._send({"type": "error", "message": text})

    async def _send(self, message: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(message))
