"""The peer's web UI: server-rendered pages under /ui on the API's own port, live from the
engine's event stream (htmx and its SSE extension, vendored in static/vendor)."""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import APIRouter, FastAPI, Request
from fastapi.staticfiles import StaticFiles
from starlette.responses import RedirectResponse, Response

from nyth_peer.events import EventBus
from nyth_peer.web.actions import action_routes
from nyth_peer.web.api_client import Api, ApiError
from nyth_peer.web.auth import auth_routes
from nyth_peer.web.guard import Guard, Refused, with_security_headers
from nyth_peer.web.pages import page_routes
from nyth_peer.web.render import STATIC, Renderer
from nyth_peer.web.session import Sessions
from nyth_peer.web.ui import Ui

PREFIX = "/ui"


def install_ui(app: FastAPI, events: EventBus, api_token: str, hosts: Iterable[str]) -> Ui:
    ui = Ui(api=Api(app, api_token), guard=Guard(Sessions(api_token), hosts),
            renderer=Renderer(), events=events)
    router = APIRouter(prefix=PREFIX, include_in_schema=False)
    router.include_router(auth_routes(ui))
    router.include_router(page_routes(ui))
    router.include_router(action_routes(ui))
    app.include_router(router)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=STATIC), name="ui-static")
    app.middleware("http")(with_security_headers(PREFIX))

    async def on_refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Refused)
        return ui.refused(request, exc)

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return ui.refused(request, Refused(exc.status, exc.message))

    app.add_exception_handler(Refused, on_refused)
    app.add_exception_handler(ApiError, on_api_error)

    @app.get("/", include_in_schema=False)
    async def root() -> Response:
        return RedirectResponse(f"{PREFIX}/", 303)

    return ui



