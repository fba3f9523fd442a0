"""The live event stream (server-sent events)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from sse_starlette.sse import EventSourceResponse

from nyth_peer.engine import Engine
from nyth_peer.events import EVENT_TYPES

# One event of the stream as an SSE client parses it (OpenAPI before 3.2: the schema of a
# text/event-stream response describes each event). Keep-alive pings are SSE comments,
# which are no events. `data` is the event as JSON; what follows "at" depends on the type.
EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "event", "data"],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "string", "pattern": "^[1-9][0-9]*$",
               "description": "the event's sequence number (`seq`), rising by one per event"},
        "event": {"type": "string", "enum": list(EVENT_TYPES),
                  "description": "the event's type (`type`)"},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "type": "object",
                "required": ["seq", "type", "at"],
                "properties": {
                    "seq": {"type": "integer", "minimum": 1},
                    "type": {"type": "string", "enum": list(EVENT_TYPES)},
                    "at": {"type": "number", "description": "when (Unix seconds)"},
                },
                "additionalProperties": True,
            },
        },
    },
}


def event_routes(engine: Engine) -> APIRouter:
    router = APIRouter()

    @router.get("/events", response_class=EventSourceResponse,
                responses={200: {"content": {"text/event-stream": {"schema": EVENT_SCHEMA}},
                                 "description": "state changes as server-sent events, from "
                                                "the moment of the request on; a comment "
                                                "every 15 s keeps the connection alive"}})
    async def events(request: Request) -> EventSourceResponse:
        queue = engine.events.subscribe()

        async def stream() -> AsyncIterator[dict[str, str]]:
            try:
                while True:
                    event = await queue.get()
                    yield {"id": str(event["seq"]), "event": event["type"],
                           "data": json.dumps(event)}
            finally:
                engine.events.unsubscribe(queue)

        return EventSourceResponse(stream(), ping=15)

    return router
