"""P2P messages to one contact: send, read, and retry or cancel a pending one."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from nyth.web import error_responses

from nyth_peer.routes.common import MsgId, Onion, TextIn, Unlocked, check_onion, contact_call


def message_routes(unlocked: Unlocked) -> APIRouter:
    router = APIRouter()

    @router.post("/contacts/{onion}/messages", status_code=202,
                 responses=error_responses(400, 423))
    async def send(onion: Onion, body: TextIn) -> dict[str, Any]:
        return contact_call(unlocked, lambda m: m.send_text(check_onion(onion), body.text))

    @router.get("/contacts/{onion}/messages", responses=error_responses(404, 423))
    async def messages(onion: Onion,
                       limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> list[dict[str, Any]]:
        return contact_call(unlocked, lambda m: m.messages(check_onion(onion), limit),
                            missing=404)

    @router.get("/contacts/{onion}/messages/{msg_id}", responses=error_responses(404, 423))
    async def message(onion: Onion, msg_id: MsgId) -> dict[str, Any]:
        return contact_call(unlocked, lambda m: m.message(check_onion(onion), msg_id),
                            missing=404)

    @router.post("/contacts/{onion}/messages/{msg_id}/retry",
                 responses=error_responses(409, 423))
    async def retry(onion: Onion, msg_id: MsgId) -> dict[str, Any]:
        return contact_call(unlocked, lambda m: m.retry_now(check_onion(onion), msg_id),
                            missing=409)

    @router.post("/contacts/{onion}/messages/{msg_id}/cancel",
                 responses=error_responses(409, 423))
    async def cancel(onion: Onion, msg_id: MsgId) -> dict[str, Any]:
        return contact_call(unlocked, lambda m: m.cancel(check_onion(onion), msg_id),
                            missing=409)

    return router
