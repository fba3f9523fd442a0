"""Our mailbox, as the peer sees it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from nyth.web import error_responses

from nyth_peer.routes.common import Unlocked


def mailbox_routes(unlocked: Unlocked) -> APIRouter:
    router = APIRouter()

    @router.get("/mailbox", responses=error_responses(423))
    async def mailbox() -> dict[str, Any]:
        """Our mailbox: state, contact id, and what it can learn with the detection setting
        (false-positive rate, expected detections p·N + M, recommended n)."""
        e = unlocked()
        assert e.mailbox is not None
        return e.mailbox.privacy()

    return router
