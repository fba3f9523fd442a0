"""Logging in (the API token, once, for a session cookie), logging out, unlocking the
profile, and the event stream that tells open pages what to redraw."""

# No `from __future__ import annotations`: FastAPI must see the route-local `Session`
# dependency alias as an object, not as a name to look up in the module.

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from sse_starlette.sse import EventSourceResponse
from starlette.responses import RedirectResponse, Response

from nyth_peer.web.guard import Refused
from nyth_peer.web.session import COOKIE
from nyth_peer.web.ui import Ui, field, is_htmx


def auth_routes(ui: Ui) -> APIRouter:
    router = APIRouter()
    Session = Annotated[str, Depends(ui.guard.page)]

    @router.get("/login")
    async def login_page(request: Request) -> Response:
        ui.guard.check_host(request)
        return ui.renderer.page("login.html", title="Log in", csrf=None)

    @router.post("/login")
    async def login(request: Request) -> Response:
        # No session yet, so no CSRF token: the Host and same-origin checks, and the token
        # itself, which a cross-site page does not have, guard this one.
        ui.guard.check_host(request)
        ui.guard.check_same_origin(request)
        token = field(await request.form(), "token", 200)
        if not ui.guard.sessions.token_matches(token):
            raise Refused(401, "wrong API token")
        response = RedirectResponse("/ui/", 303)
        response.set_cookie(COOKIE, ui.guard.sessions.issue(), max_age=ui.guard.sessions.lifetime,
                            path="/ui", httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return response

    @router.post("/logout")
    async def logout(request: Request, sid: Session) -> Response:
        ui.guard.sessions.revoke(sid)
        response = RedirectResponse("/ui/login", 303)
        response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict")
        if is_htmx(request):
            response.headers["HX-Redirect"] = "/ui/login"
        return response

    @router.post("/unlock")
    async def unlock(request: Request, _: Session) -> Response:
        passphrase = field(await request.form(), "passphrase", 1024)
        return await ui.act(request, lambda: ui.api.post("/v1/profile/unlock",
                                                         {"passphrase": passphrase}),
                            "/ui/", "Unlocked.")

    @router.get("/events")
    async def events(request: Request, _: Session) -> EventSourceResponse:
        """Only what changed (the event's type), never its content: a page that hears of
        a change fetches its part again, rendered and escaped by the templates."""
        queue = ui.events.subscribe()

        async def stream() -> AsyncIterator[dict[str, str]]:
            try:
                while True:
                    event = await queue.get()
                    yield {"id": str(event["seq"]), "event": event["type"],
                           "data": json.dumps({"seq": event["seq"], "at": event["at"]})}
            finally:
                ui.events.unsubscribe(queue)

        return EventSourceResponse(stream(), ping=15)

    return router
