"""What every WebSocket of the platform shares, in front of the consumers: a refusal for a path
where no socket lives, and a clean close when the channel layer (Redis) cannot be reached.
The close codes are listed in docs/api.md."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import redis.exceptions

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CLOSE_NOT_FOUND = 4404
# Like HTTP 503: a service the socket needs (Redis) is away, try again later. Not the registered
# 1013 "try again later": autobahn (under daphne) lets a server close only with 1000 or 3000-4999.
CLOSE_UNAVAILABLE = 4503

# What the channel layer raises when Redis is away: refused, reset, or silent past its read timeout.
CHANNEL_LAYER_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


async def refuse_unknown_path(scope: Scope, receive: Receive, send: Send) -> None:
    """The last WebSocket route: no socket lives at this path (a typo, a missing trailing slash,
    a node name with `/` in it), so the handshake is refused with 4404, as for a lab the user
    may not see."""
    await receive()  # websocket.connect
    await send({"type": "websocket.close", "code": CLOSE_NOT_FOUND})


class ChannelLayerGuard:
    """ASGI middleware for the WebSocket routes: a consumer that loses its channel layer (Redis
    down during the handshake or later) ends with close 4503, "try again later", and one warning
    line, rather than crashing (an HTTP 500 to the handshake, or 1011, with a traceback). The
    page reconnects and catches up from a fresh snapshot once Redis is back."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        accepted = closed = False

        async def watched_receive() -> Message:
            nonlocal closed
            message = await receive()
            closed = closed or message["type"] == "websocket.disconnect"  # the client left
            return message

        async def watched_send(message: Message) -> None:
            nonlocal accepted, closed
            accepted = accepted or message["type"] == "websocket.accept"
            closed = closed or message["type"] == "websocket.close"
            await send(message)

        try:
            await self.app(scope, watched_receive, watched_send)
        except CHANNEL_LAYER_ERRORS as exc:
            if closed:
                logger.warning("websocket %s: channel layer unavailable as it closed: %s", scope.get("path"), exc)
                return
            logger.warning(
                "websocket %s: channel layer unavailable, closed with %d: %s", scope.get("path"), CLOSE_UNAVAILABLE, exc
            )
            # Accepted only to say why: a close before accept reaches a browser as a bare 403.
            if not accepted:
                await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": CLOSE_UNAVAILABLE})
