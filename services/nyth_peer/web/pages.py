"""The UI's pages, and the parts of them that redraw themselves when the engine's event
stream says something changed (GET /ui/parts/...)."""

# No `from __future__ import annotations`: FastAPI must see the route-local `Session`
# dependency alias as an object, not as a name to look up in the module.

from typing import Annotated, Any

import segno
from fastapi import APIRouter, Depends
from markupsafe import Markup
from starlette.responses import Response

from nyth_peer.web.ui import GroupId, Onion, Ui


def page_routes(ui: Ui) -> APIRouter:
    router = APIRouter()
    Session = Annotated[str, Depends(ui.guard.page)]

    @router.get("/")
    async def home(sid: Session) -> Response:
        return await ui.page(sid, "home.html", "chats", "Chats",
                             contacts=await _contacts(ui))

    @router.get("/parts/contacts")
    async def contacts_part(sid: Session) -> Response:
        return ui.part("part_contacts.html", sid, contacts=await _contacts(ui))

    @router.get("/contacts/{onion}")
    async def chat(sid: Session, onion: Onion) -> Response:
        contact = await ui.api.get(f"/v1/contacts/{onion}")
        return await ui.page(sid, "chat.html", "chats",
                             contact.get("name") or onion[:16], contact=contact,
                             messages=await _messages(ui, onion))

    @router.get("/parts/contacts/{onion}/head")
    async def chat_head(sid: Session, onion: Onion) -> Response:
        return ui.part("part_chat_head.html", sid,
                       contact=await ui.api.get(f"/v1/contacts/{onion}"))

    @router.get("/parts/contacts/{onion}/messages")
    async def chat_messages(sid: Session, onion: Onion) -> Response:
        return ui.part("part_messages.html", sid, messages=await _messages(ui, onion))

    @router.get("/groups")
    async def groups(sid: Session) -> Response:
        return await ui.page(sid, "groups.html", "groups", "Groups",
                             **await _groups(ui))

    @router.get("/parts/groups")
    async def groups_part(sid: Session) -> Response:
        return ui.part("part_groups.html", sid, **await _groups(ui))

    @router.get("/groups/{gid}")
    async def group(sid: Session, gid: GroupId) -> Response:
        view = await ui.api.get(f"/v1/groups/{gid}")
        return await ui.page(sid, "group.html", "groups", view["name"], group=view,
                             history=await _history(ui, gid),
                             contacts=await ui.api.get("/v1/contacts"),
                             server_latency=await _server_latency(ui))

    @router.get("/parts/groups/{gid}/messages")
    async def group_messages(sid: Session, gid: GroupId) -> Response:
        return ui.part("part_group_messages.html", sid, history=await _history(ui, gid))

    @router.get("/parts/groups/{gid}/state")
    async def group_state(sid: Session, gid: GroupId) -> Response:
        return ui.part("part_group_state.html", sid,
                       group=await ui.api.get(f"/v1/groups/{gid}"),
                       server_latency=await _server_latency(ui))

    @router.get("/servers")
    async def servers(sid: Session) -> Response:
        return await ui.page(sid, "servers.html", "servers", "Servers",
                             servers=await ui.api.get("/v1/servers"))

    @router.get("/parts/servers")
    async def servers_part(sid: Session) -> Response:
        return ui.part("part_servers.html", sid, servers=await ui.api.get("/v1/servers"))

    @router.get("/me")
    async def me(sid: Session) -> Response:
        profile = await ui.api.get("/v1/profile")
        qr = None
        if profile.get("contact_id"):
            code = segno.make(profile["contact_id"], error="m")
            # Our own markup from our own contact id: the one thing not escaped.
            qr = Markup(code.svg_inline(scale=4, border=2, omitsize=True, light="#fff"))  # noqa: S704
        return await ui.page(sid, "me.html", "me", "Me", profile=profile, qr_svg=qr)

    @router.get("/parts/status")
    async def status_part(sid: Session) -> Response:
        return ui.part("part_status.html", sid, status=await ui.status())

    return router


async def _contacts(ui: Ui) -> list[dict[str, Any]]:
    contacts: list[dict[str, Any]] = await ui.api.get("/v1/contacts")
    # Requests waiting for the user's answer first, then by name.
    return sorted(contacts, key=lambda c: (c["status"] != "pending_inbound",
                                           (c.get("name") or "~").lower(), c["onion"]))


async def _messages(ui: Ui, onion: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = await ui.api.get(f"/v1/contacts/{onion}/messages")
    return sorted(messages, key=lambda m: (m["timestamp_ms"], m["id"]))


async def _groups(ui: Ui) -> dict[str, Any]:
    names = await _names(ui)
    invites = await ui.api.get("/v1/groups/invites")
    for invite in invites:
        invite["from_name"] = names.get(invite.get("from", ""))
    return {"groups": await ui.api.get("/v1/groups"), "invites": invites}


async def _names(ui: Ui) -> dict[str, str]:
    return {c["onion"]: c["name"] for c in await ui.api.get("/v1/contacts") if c.get("name")}


async def _history(ui: Ui, gid: str) -> dict[str, Any]:
    history: dict[str, Any] = await ui.api.get(f"/v1/groups/{gid}/messages")
    for message in history["messages"]:
        message["author_label"] = ("you" if message["mine"] else message["author_name"]
                                   or f"{message['author'][:8]}…")
    return history


async def _server_latency(ui: Ui) -> dict[str, Any]:
    return {s["onion"]: s.get("latency") for s in await ui.api.get("/v1/servers")}
