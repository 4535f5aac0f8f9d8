"""How engine facts (events, container status) map to the node states a learner sees."""

from __future__ import annotations

from .engine import NodeStatus
from .models import Node

EVENT_STATES: dict[str, str] = {
    "start": Node.State.STARTING,
    "restart": Node.State.STARTING,
    "unpause": Node.State.STARTING,
    "health_status: healthy": Node.State.HEALTHY,
    "health_status: unhealthy": Node.State.UNHEALTHY,
    "die": Node.State.DOWN,
    "stop": Node.State.DOWN,
    "destroy": Node.State.DOWN,
    "pause": Node.State.PAUSED,
}

# Events after which only the engine's current view says what the node is. `oom` comes when the
# OOM killer ends any process in the container, even one the learner started while the node's
# main process serves on (`die` follows only if the container exits); after `unpause`, health
# events come only on a change.
ASK_ENGINE = frozenset({"oom", "unpause"})

# Every event the monitor follows.
NODE_EVENTS = frozenset(EVENT_STATES) | ASK_ENGINE

# States in which a node cannot serve: objectives that ask "while a replica is down" count these.
NOT_SERVING = frozenset({Node.State.DOWN, Node.State.PAUSED, Node.State.UNHEALTHY})


def state_from_event(action: str) -> str | None:
    """The node state an engine event leads to, or None for events that change nothing."""
    # Some engines append the exit code or health output after a colon ("health_status: healthy").
    return EVENT_STATES.get(action.strip())


def state_from_status(status: NodeStatus) -> str:
    if status.status == "paused":
        return Node.State.PAUSED
    if status.status != "running":
        return Node.State.DOWN
    if status.health == "healthy" or status.health is None:
        return Node.State.HEALTHY
    if status.health == "unhealthy":
        return Node.State.UNHEALTHY
    return Node.State.STARTING
