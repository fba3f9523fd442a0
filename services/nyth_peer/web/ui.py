"""What every UI route shares: the in-process API, the guard, the templates, and how a
refusal or an API error is shown (a page, or for htmx a fragment in the flash area)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Path, Request
from markupsafe import escape
from starlette.datastructures import FormData
from starlette.responses import HTMLResponse, RedirectResponse, Response

from nyth_peer.events import EventBus
from nyth_peer.web.api_client import Api, ApiError
from nyth_peer.web.guard import Guard, Refused
from nyth_peer.web.render import Renderer
from nyth_peer.web.session import COOKIE

LOGIN = "/ui/login"

# Path parameters of UI routes (a malformed one is a 422 before anything runs).
Onion = Annotated[str, Path(pattern=r"^[a-z2-7]{56}$")]
GroupId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]
MsgId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]


@dataclass
class Ui:
    api: Api
    guard: Guard
    renderer: Renderer
    events: EventBus

    async def status(self) -> dict[str, Any]:
        """The status bar: who we are, our onion's and our mailbox's states."""
        profile = await self.api.get("/v1/profile")
        mailbox = (await self.api.get("/v1/mailbox"))["state"]
        return {"profile": profile, "mailbox": None if mailbox.get("state") == "off" else mailbox}

    async def page(self, sid: str, name: str, nav: str, title: str, **context: Any) -> Response:
        return self.renderer.page(name, csrf=self.guard.sessions.csrf(sid), nav=nav,
                                  title=title, status=await self.status(), **context)

    def part(self, name: str, sid: str, **context: Any) -> Response:
        return self.renderer.page(name, csrf=self.guard.sessions.csrf(sid), **context)

    async def act(self, request: Request, call: Callable[[], Awaitable[Any]], back: str,
                  done: str) -> Response:
        """Run an action through the API. With htmx: a line in the flash area and an
        event that redraws what changed; without JavaScript: back to the page."""
        try:
            await call()
        except ApiError as exc:
            raise Refused(exc.status, exc.message) from exc
        if is_htmx(request):
            return HTMLResponse(f'<p class="ok">{escape(done)}</p>',
                                headers={"HX-Trigger": "nyth:changed"})
        return RedirectResponse(back, 303)

    def refused(self, request: Request, exc: Refused) -> Response:
        if exc.login and is_htmx(request):
            return Response(status_code=401, headers={"HX-Redirect": LOGIN})
        if exc.login and request.method == "GET":
            return RedirectResponse(LOGIN, 303)
        if is_htmx(request):
            return HTMLResponse(f'<p class="error">{escape(exc.message)}</p>',
                                status_code=exc.status,
                                headers={"HX-Retarget": "#flash", "HX-Reswap": "innerHTML"})
        sid = self.guard.sessions.verify(request.cookies.get(COOKIE))
        csrf = self.guard.sessions.csrf(sid) if sid else None
        if exc.status == 423 and csrf:
            return self.renderer.page("unlock.html", status_code=423, title="Unlock", csrf=csrf)
        return self.renderer.page(
            "refused.html", status_code=exc.status, title="Refused", login=exc.login,
            heading="Not allowed" if exc.status in (401, 403, 421) else "That did not work",
            message=exc.message, csrf=csrf)


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def field(form: FormData, name: str, max_chars: int, *, required: bool = True) -> str:
    value = form.get(name)
    text = value.strip() if isinstance(value, str) else ""
    if required and not text:
        raise Refused(422, f"{name.replace('_', ' ')} is required")
    if len(text) > max_chars:
        raise Refused(422, f"{name.replace('_', ' ')} is longer than {max_chars} characters")
    return text
