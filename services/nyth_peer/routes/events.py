"""The live event stream (server-sent events)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from sse_starlette.sse import EventSourceResponse

from nyth_peer.engine import Engine


def event_routes(engine: Engine) -> APIRouter:
    router = APIRouter()

    @router.get("/events", response_class=EventSourceResponse,
                responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                                 "description": "state changes as server-sent events"}})
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
