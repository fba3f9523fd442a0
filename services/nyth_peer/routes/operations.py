"""GET /healthz, outside /v1 and so without the API token: whether a profile exists and
is unlocked, its onion, and the onion service's state."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from nyth_peer.engine import Engine
from nyth_peer.profile import Profile


def operations_routes(engine: Engine) -> APIRouter:
    router = APIRouter()

    @router.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, Any]:
        profile = engine.profile
        return {"status": "ok",
                "profile": "unlocked" if profile else (
                    "locked" if Profile.exists(engine.settings.data_dir) else "none"),
                "onion": profile.identity.onion if profile else None,
                "onion_state": engine.onion_status.get("state")}

    return router
