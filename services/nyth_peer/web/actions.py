"""The UI's state-changing requests: each is a form post (CSRF-checked by the guard)
turned into a call of the peer's own API, so the API's validation and answers apply."""

# No `from __future__ import annotations`: FastAPI must see the route-local `Session`
# dependency alias as an object, not as a name to look up in the module.

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from nyth_peer.web.guard import Refused
from nyth_peer.web.ui import GroupId, MsgId, Onion, Ui, field

MAX_TEXT = 4000


def action_routes(ui: Ui) -> APIRouter:
    router = APIRouter()
    Session = Annotated[str, Depends(ui.guard.page)]

    @router.post("/contacts")
    async def add_contact(request: Request, _: Session) -> Response:
        form = await request.form()
        address = "".join(field(form, "address", 300).split())
        body = ({"contact_id": address} if address.startswith("nyth1")
                else {"onion": address.lower().removesuffix(".onion")})
        body["text"] = field(form, "text", 1000, required=False)
        return await ui.act(request, lambda: ui.api.post("/v1/contacts", body), "/ui/",
                            "Contact request sent.")

    @router.post("/contacts/{onion}/accept")
    async def accept(request: Request, _: Session, onion: Onion) -> Response:
        return await ui.act(request, lambda: ui.api.post(f"/v1/contacts/{onion}/accept"),
                            "/ui/", "Accepted.")

    @router.post("/contacts/{onion}/refuse")
    async def refuse(request: Request, _: Session, onion: Onion) -> Response:
        return await ui.act(request, lambda: ui.api.post(f"/v1/contacts/{onion}/refuse"),
                            "/ui/", "Refused.")

    @router.post("/contacts/{onion}/mailbox/confirm")
    async def confirm_mailbox(request: Request, _: Session, onion: Onion) -> Response:
        mailbox = field(await request.form(), "mailbox", 80)
        return await ui.act(
            request, lambda: ui.api.post(f"/v1/contacts/{onion}/mailbox/confirm",
                                         {"mailbox": mailbox}), "/ui/", "Mailbox confirmed.")

    @router.post("/contacts/{onion}/messages")
    async def send(request: Request, _: Session, onion: Onion) -> Response:
        text = field(await request.form(), "text", MAX_TEXT)
        return await ui.act(
            request, lambda: ui.api.post(f"/v1/contacts/{onion}/messages", {"text": text}),
            f"/ui/contacts/{onion}", "")

    @router.post("/contacts/{onion}/messages/{msg_id}/retry")
    async def retry(request: Request, _: Session, onion: Onion, msg_id: MsgId) -> Response:
        return await ui.act(
            request, lambda: ui.api.post(f"/v1/contacts/{onion}/messages/{msg_id}/retry"),
            f"/ui/contacts/{onion}", "Trying again now.")

    @router.post("/contacts/{onion}/messages/{msg_id}/cancel")
    async def cancel(request: Request, _: Session, onion: Onion, msg_id: MsgId) -> Response:
        return await ui.act(
            request, lambda: ui.api.post(f"/v1/contacts/{onion}/messages/{msg_id}/cancel"),
            f"/ui/contacts/{onion}", "Cancelled.")

    @router.post("/groups")
    async def create_group(request: Request, _: Session) -> Response:
        form = await request.form()
        name = field(form, "name", 64)
        body: dict[str, Any]
        if field(form, "choice", 10, required=False) == "manual":
            servers = field(form, "servers", 1000).split()
            body = {"name": name, "servers": [s.lower().removesuffix(".onion") for s in servers]}
        else:
            body = {"name": name, "auto": True}
        created: dict[str, str] = {}

        async def create() -> None:
            created.update(await ui.api.post("/v1/groups", body))

        response = await ui.act(request, create, "/ui/groups", f"Group {name!r} created.")
        if "id" in created and response.status_code == 303:
            response.headers["location"] = f"/ui/groups/{created['id']}"
        return response

    @router.post("/groups/invites/{gid}/accept")
    async def join(request: Request, _: Session, gid: GroupId) -> Response:
        return await ui.act(request, lambda: ui.api.post(f"/v1/groups/invites/{gid}/accept"),
                            f"/ui/groups/{gid}", "Joined.")

    @router.post("/groups/{gid}/invite")
    async def invite(request: Request, _: Session, gid: GroupId) -> Response:
        contact = field(await request.form(), "contact", 80)
        return await ui.act(
            request, lambda: ui.api.post(f"/v1/groups/{gid}/invite", {"contact": contact}),
            f"/ui/groups/{gid}", "Invitation sent.")

    @router.post("/groups/{gid}/messages")
    async def post(request: Request, _: Session, gid: GroupId) -> Response:
        text = field(await request.form(), "text", MAX_TEXT)
        return await ui.act(
            request, lambda: ui.api.post(f"/v1/groups/{gid}/messages", {"text": text}),
            f"/ui/groups/{gid}", "")

    @router.post("/servers/{onion}/repin")
    async def repin(request: Request, _: Session, onion: Onion) -> Response:
        digest = field(await request.form(), "bundle_sha256", 64)
        if len(digest) != 64:
            raise Refused(422, "bundle_sha256 is 64 hex digits")
        return await ui.act(
            request, lambda: ui.api.post(f"/v1/servers/{onion}/repin",
                                         {"bundle_sha256": digest}),
            "/ui/servers", "Re-pinned: the new bundle is accepted.")

    return router
