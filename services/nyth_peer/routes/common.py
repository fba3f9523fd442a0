"""What several routers share: path parameters, onion checks, the unlocked-engine accessor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import HTTPException, Path
from nyth.errors import DecodeError
from nyth.proto.identity import normalize_onion, public_key_from_onion
from nyth.proto.p2p import MAX_TEXT_CHARS
from pydantic import BaseModel, Field
from starlette.convertors import Convertor, register_url_convertor

from nyth_peer.engine import Engine
from nyth_peer.messenger import ContactError

# One accepted form, described exactly: the 56 lowercase base32 characters of a v3 onion,
# with or without ".onion" (what `nyth` prints and what users paste). The checksum and
# version inside it are beyond a pattern: check_onion refuses a typo there with 422.
ONION_PATTERN = r"^[a-z2-7]{56}(\.onion)?$"
ONION_DESCRIPTION = ("v3 onion address: 56 lowercase base32 characters, optionally followed by "
                     "'.onion'; one whose checksum or version is wrong is refused (422)")
HEX_ID_PATTERN = r"^[0-9a-f]{32}$"

Onion = Annotated[str, Path(pattern=ONION_PATTERN, min_length=56, max_length=62,
                            description=ONION_DESCRIPTION)]
GroupId = Annotated[str, Path(pattern=HEX_ID_PATTERN, min_length=32, max_length=32,
                              description="group id (32 lowercase hex digits)")]
MsgId = Annotated[str, Path(pattern=HEX_ID_PATTERN, min_length=32, max_length=32,
                            description="message id (32 lowercase hex digits)")]

# The same form in a request body.
OnionField = Annotated[str, Field(pattern=ONION_PATTERN, min_length=56, max_length=62,
                                  description=ONION_DESCRIPTION)]


class GroupIdSegment(Convertor[str]):
    """A path segment that can be a group id: any but "invites", which names the invites
    resource. Without it /v1/groups/invites also matched /v1/groups/{gid}, so a PATCH
    there reached the group routes (422 on the id) instead of being 405, and a 405 there
    listed the methods of a group. A malformed id still reaches the route and gets its
    422 with the reason (GroupId's pattern)."""

    regex = r"(?!invites(?:/|$))[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("group_id", GroupIdSegment())

# The engine once a profile is unlocked; raises 423 before.
Unlocked = Callable[[], Engine]


class TextIn(BaseModel):
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)


def unlocked_accessor(engine: Engine) -> Unlocked:
    def unlocked() -> Engine:
        if engine.profile is None:
            raise HTTPException(423, "profile is locked or not created yet")
        return engine

    return unlocked


def check_onion(text: str) -> str:
    """A full check (checksum, version, valid key), so a typo is refused, not dialed."""
    try:
        onion = normalize_onion(text)
        public_key_from_onion(onion)
    except DecodeError as exc:
        raise HTTPException(422, str(exc)) from exc
    return onion


def messenger(unlocked: Unlocked) -> Any:
    return unlocked().messenger


def contact_call(unlocked: Unlocked, fn: Any, missing: int = 400) -> Any:
    """fn(messenger), a ContactError answered with the status `missing`."""
    messenger_ = messenger(unlocked)
    try:
        return fn(messenger_)
    except ContactError as exc:
        raise HTTPException(missing, str(exc)) from exc
