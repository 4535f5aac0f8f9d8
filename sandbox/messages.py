"""Client messages on the lab's sockets: a JSON object with a string `type`, or a clear error."""

from __future__ import annotations

import json
from typing import Any


class BadMessage(Exception):
    """A client sent something that is not a message; the text goes back in an `error` frame."""


def parse_message(text: str | None, not_json: str = "Messages must be JSON objects.") -> dict[str, Any]:
    try:
        message = json.loads(text or "")
    except (ValueError, RecursionError) as exc:  # deeply nested input overflows the parser
        raise BadMessage(not_json) from exc
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise BadMessage('Messages need a "type".')
    return message
