"""The peer engine's local HTTP API (for the CLI, the web UI and bots).

Bound to loopback or an internal network and protected by a bearer token: whoever
holds the token can read and send as this profile.

The routes live in `nyth_peer.routes`, one router per resource; this module assembles
them. Their order is the order of the OpenAPI document and of route matching.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Iterable
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from nyth.web import error_responses, install_common

from nyth_peer.engine import Engine
from nyth_peer.routes.common import unlocked_accessor
from nyth_peer.routes.contacts import contact_routes
from nyth_peer.routes.discovery import discovery_routes
from nyth_peer.routes.events import event_routes
from nyth_peer.routes.groups import group_routes
from nyth_peer.routes.mailbox import mailbox_routes
from nyth_peer.routes.messages import message_routes
from nyth_peer.routes.operations import operations_routes
from nyth_peer.routes.profile import profile_routes
from nyth_peer.routes.servers import server_routes
from nyth_peer.web import install_ui


def create_app(engine: Engine, api_token: str, ui_hosts: Iterable[str] = ()) -> FastAPI:
    """ui_hosts: the names the web UI answers to besides loopback's (see NYTH_UI_HOSTS)."""
    app = FastAPI(title="Nyth peer engine", version="1",
                  description="Local API of one Nyth profile: contacts, P2P messages with "
                              "delivery states, groups, and a live event stream.")
    unlocked = unlocked_accessor(engine)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(_token_check(api_token))],
                   responses=error_responses(401, 422))
    for router in (profile_routes(engine, unlocked), mailbox_routes(unlocked),
                   server_routes(unlocked), contact_routes(unlocked), message_routes(unlocked),
                   group_routes(unlocked), discovery_routes(unlocked), event_routes(engine)):
        v1.include_router(router)
    app.include_router(operations_routes(engine))
    app.include_router(v1)
    install_ui(app, engine.events, api_token, ui_hosts)
    install_common(app, "peer", max_body_bytes=64 * 1024)
    return app


# Declared as the OpenAPI security scheme of /v1/*, so clients (and fuzzers) know the
# token is needed; auto_error off, because a missing token is our 401, not FastAPI's 403.
_BEARER = HTTPBearer(auto_error=False, scheme_name="api-token",
                     description="the peer's API token (NYTH_API_TOKEN_FILE, or api-token in "
                                 "its data directory)")


def _token_check(api_token: str) -> Callable[..., Awaitable[None]]:
    async def require_token(
            credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]) -> None:
        if credentials is None or not secrets.compare_digest(
                credentials.credentials.encode(), api_token.encode()):
            raise HTTPException(401, "missing or wrong API token",
                                headers={"WWW-Authenticate": "Bearer"})

    return require_token
