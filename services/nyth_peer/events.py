"""In-process event bus feeding the API's server-sent event stream.

Every state change the user should see (connection, delivery, contact, group) is
published here as {"type": ..., "at": unix seconds, ...fields}.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, Literal, get_args

SUBSCRIBER_QUEUE = 1000
HISTORY = 200

# Every event type there is: the API's schema of GET /v1/events lists them, and mypy
# refuses a publish() of any other, so the documented stream and the real one agree.
EventType = Literal[
    "profile", "onion", "contact", "contact_request", "contact_request_delivered",
    "contact_request_dropped", "connection", "message", "mailbox", "server", "group",
    "group_invite", "group_message", "group_moved", "group_gap_found", "group_gap_recovered",
]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)


class EventBus:
    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._seq = 0
        self.recent: deque[dict[str, Any]] = deque(maxlen=HISTORY)

    def publish(self, type_: EventType, **fields: Any) -> dict[str, Any]:
        self._seq += 1
        event = {"seq": self._seq, "type": type_, "at": time.time(), **fields}
        self.recent.append(event)
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                # A consumer that stopped reading loses its stream rather than our memory.
                self._subscribers.discard(queue)
        return event

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._subscribers.discard(queue)
