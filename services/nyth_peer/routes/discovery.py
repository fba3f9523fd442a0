"""What the discovery indexes list, and reading them now."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query
from nyth.proto.discovery import ServerKind
from nyth.web import error_responses

from nyth_peer.discovery_views import DiscoveryView, KindLabel, discovery_view
from nyth_peer.routes.common import Unlocked

# A refresh through Tor may take long (a dead index, then its directory group's servers):
# the API answers by then with what it has, so a client's request never hangs on it.
REFRESH_WAIT_SECONDS = 150.0


def discovery_routes(unlocked: Unlocked) -> APIRouter:
    router = APIRouter()

    @router.get("/discovery", response_model=DiscoveryView, responses=error_responses(423))
    async def discovery(kind: Annotated[KindLabel | None, Query(
            description="only servers of this kind")] = None) -> dict[str, Any]:
        """Each discovery index's state (directory epoch, where it was read from, the last
        refusal and why) and the servers their directories list, ranked best first: state,
        availability, probes, latency, retention audits, the limits each promises, and
        where indexes disagree."""
        e = unlocked()
        assert e.discovery is not None
        return discovery_view(e.discovery, ServerKind.parse(kind) if kind else None)

    @router.post("/discovery/refresh", response_model=DiscoveryView,
                 responses=error_responses(423))
    async def discovery_refresh() -> dict[str, Any]:
        """Read every index now (falling back to its directory group), then answer as GET
        /v1/discovery; after REFRESH_WAIT_SECONDS it answers anyway, the refresh going on."""
        e = unlocked()
        assert e.discovery is not None
        task = e.discovery.refresh_now()
        await asyncio.wait({task}, timeout=REFRESH_WAIT_SECONDS)
        return discovery_view(e.discovery)

    return router
