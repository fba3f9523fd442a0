"""What several routers share: path parameters, onion checks, the unlocked-engine accessor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import HTTPException, Path
from nyth.errors import DecodeError
from nyth.proto.identity import normalize_onion, public_key_from_onion
from nyth.proto.p2p import MAX_TEXT_CHARS
from pydantic import BaseModel, Field

from nyth_peer.engine import Engine
from nyth_peer.messenger import ContactError

Onion = Annotated[str, Path(min_length=56, max_length=62, description="v3 onion address")]
GroupId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="group id (hex)")]
MsgId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="message id (hex)")]

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
