"""Contacts: requests, answers to them, and confirming a proposed mailbox change."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from nyth.errors import DecodeError
from nyth.proto.contact_id import ContactId
from nyth.proto.p2p import MAX_TEXT_CHARS
from nyth.web import error_responses
from pydantic import BaseModel, ConfigDict, Field

from nyth_peer.round_trips import LatencyView
from nyth_peer.routes.common import (
    ONION_DESCRIPTION,
    ONION_PATTERN,
    Onion,
    OnionField,
    Unlocked,
    check_onion,
    contact_call,
    messenger,
)

# What ContactId.encode writes (nyth1 and 109 base32 characters), in lowercase or, as a
# QR code's alphanumeric mode carries it, in uppercase. Its checksum is beyond a pattern:
# a typo there is refused with 422.
CONTACT_ID_PATTERN = r"^(nyth1[a-z2-7]{109}|NYTH1[A-Z2-7]{109})$"


class ContactAdd(BaseModel):
    # Exactly one of onion and contact_id (the route answers 422 otherwise).
    model_config = ConfigDict(json_schema_extra={"oneOf": [
        {"required": ["onion"], "properties": {"onion": {"type": "string"}}},
        {"required": ["contact_id"], "properties": {"contact_id": {"type": "string"}}},
    ]})
    onion: str | None = Field(None, pattern=ONION_PATTERN, min_length=56, max_length=62,
                              description="the contact's onion address (reaches them only "
                                          f"P2P): {ONION_DESCRIPTION}")
    contact_id: str | None = Field(
        None, pattern=CONTACT_ID_PATTERN, min_length=114, max_length=114,
        description="the contact identifier they shared (nyth1…): onion + mailbox, so a "
                    "request reaches them even while they are offline; one whose checksum "
                    "is wrong is refused (422)")
    text: str = Field("", max_length=MAX_TEXT_CHARS, description="a note sent with the request")


class MailboxConfirm(BaseModel):
    mailbox: OnionField = Field(description=(
        "the mailbox onion to use from now on: `mailbox_change.to` switches to the proposed "
        "mailbox, `mailbox_change.from` keeps the current one and dismisses the proposal"))


class MailboxChange(BaseModel):
    from_: str = Field(alias="from", description="the mailbox onion in use (kept until you confirm)")
    to: str = Field(description="the mailbox onion a contact id named for this contact")
    since: float = Field(description="when the change was proposed (Unix seconds)")


class ContactView(BaseModel):
    """A contact. Other fields (request state, connection...) are passed through."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    onion: str
    status: str
    mailbox: str | None = Field(None, description="the mailbox onion offline messages go to")
    mailbox_change: MailboxChange | None = Field(
        None, description="a different mailbox proposed by a contact id, not in use until "
                          "you confirm it (POST /v1/contacts/{onion}/mailbox/confirm)")
    latency: LatencyView = Field(
        description="round trips of our recent P2P messages that the contact acknowledged: "
                    "from sending the message on an open session to receiving its ack "
                    "(connecting is not included; mailbox deliveries are not counted)")


def contact_routes(unlocked: Unlocked) -> APIRouter:
    router = APIRouter()

    @router.get("/contacts", response_model=list[ContactView], response_model_by_alias=True,
                responses=error_responses(423))
    async def contacts() -> list[dict[str, Any]]:
        return messenger(unlocked).contacts()

    @router.post("/contacts", status_code=201, response_model=ContactView,
                 response_model_by_alias=True, responses=error_responses(400, 423))
    async def add_contact(body: ContactAdd) -> dict[str, Any]:
        """Add a contact (a contact request). Adding a known contact by a contact id that
        names another mailbox than the stored one changes nothing but `mailbox_change`."""
        if (body.onion is None) == (body.contact_id is None):
            raise HTTPException(422, "give exactly one of onion and contact_id")
        if body.contact_id is not None:
            try:
                cid = ContactId.decode(body.contact_id)
            except DecodeError as exc:
                raise HTTPException(422, f"contact id: {exc}") from exc
            return contact_call(unlocked, lambda m: m.add_contact(cid.onion, body.text,
                                                                  cid.mailbox_onion))
        onion = check_onion(body.onion or "")
        return contact_call(unlocked, lambda m: m.add_contact(onion, body.text))

    @router.get("/contacts/{onion}", response_model=ContactView, response_model_by_alias=True,
                responses=error_responses(404, 423))
    async def contact(onion: Onion) -> dict[str, Any]:
        return contact_call(unlocked, lambda m: m.contact(check_onion(onion)), missing=404)

    @router.post("/contacts/{onion}/mailbox/confirm", response_model=ContactView,
                 response_model_by_alias=True, responses=error_responses(404, 409, 423))
    async def confirm_mailbox(onion: Onion, body: MailboxConfirm) -> dict[str, Any]:
        """Answer a proposed mailbox change (`mailbox_change` on the contact): name the
        proposed mailbox to use it from now on, or the current one to keep it. Until then
        offline messages keep going to the current mailbox. 409 if no change is waiting or
        the mailbox named is neither; 404 for an unknown contact."""
        contact_onion, mailbox = check_onion(onion), check_onion(body.mailbox)
        if not messenger(unlocked).store.has("contacts", contact_onion):
            raise HTTPException(404, f"no contact {contact_onion}.onion")
        return contact_call(unlocked, lambda m: m.confirm_mailbox(contact_onion, mailbox),
                            missing=409)

    @router.post("/contacts/{onion}/accept", responses=error_responses(409, 423))
    async def accept(onion: Onion) -> dict[str, Any]:
        """Accept a pending contact request from this onion (409 if there is none)."""
        return contact_call(unlocked, lambda m: m.answer_request(check_onion(onion), True),
                            missing=409)

    @router.post("/contacts/{onion}/refuse", responses=error_responses(409, 423))
    async def refuse(onion: Onion) -> dict[str, Any]:
        """Refuse a pending contact request from this onion (409 if there is none)."""
        return contact_call(unlocked, lambda m: m.answer_request(check_onion(onion), False),
                            missing=409)

    return router
