"""The profile: create, unlock, read; and the engine's status."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, HTTPException
from nyth.errors import AuthenticationError
from nyth.web import error_responses
from pydantic import BaseModel, Field, field_validator

from nyth_peer.engine import Engine
from nyth_peer.profile import NoProfileError, Profile, ProfileExistsError
from nyth_peer.routes.common import Unlocked

# What str.strip() removes (str.isspace; tests/unit/test_peer_openapi.py checks the list).
# The name is stripped before use, so one made only of these is no name: the schema says
# so with a pattern (some character outside them), the model with a readable message.
WHITESPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004"
              "\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
NAME_PATTERN = "[^" + "".join(f"\\u{ord(c):04x}" for c in WHITESPACE) + "]"


class ProfileCreate(BaseModel):
    name: str = Field(min_length=1, max_length=64, json_schema_extra={"pattern": NAME_PATTERN},
                      description="shown to contacts; not only whitespace")
    passphrase: str = Field(min_length=8, max_length=1024)

    @field_validator("name")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the name is only whitespace")
        return value


class Unlock(BaseModel):
    passphrase: str = Field(min_length=1, max_length=1024)


def profile_routes(engine: Engine, unlocked: Unlocked) -> APIRouter:
    router = APIRouter()

    @router.post("/profile", status_code=201, responses=error_responses(409))
    async def create_profile(body: ProfileCreate) -> dict[str, Any]:
        try:
            profile = await asyncio.to_thread(Profile.create, engine.settings.data_dir,
                                              body.name, body.passphrase)
        except ProfileExistsError as exc:
            raise HTTPException(409, str(exc)) from exc
        await engine.activate(profile)
        return _profile_view(engine)

    @router.post("/profile/unlock", responses=error_responses(403, 404))
    async def unlock(body: Unlock) -> dict[str, Any]:
        if engine.profile is None:
            try:
                profile = await asyncio.to_thread(Profile.unlock, engine.settings.data_dir,
                                                  body.passphrase)
            except NoProfileError as exc:
                raise HTTPException(404, str(exc)) from exc
            except AuthenticationError as exc:
                raise HTTPException(403, "wrong passphrase") from exc
            await engine.activate(profile)
        return _profile_view(engine)

    @router.get("/profile", responses=error_responses(423))
    async def get_profile() -> dict[str, Any]:
        return _profile_view(unlocked())

    @router.get("/status", responses=error_responses(423))
    async def status() -> dict[str, Any]:
        e = unlocked()
        assert e.messenger is not None and e.groups is not None
        return {"onion": e.onion_status, "contacts": e.messenger.connection,
                "servers": e.groups.server_state}

    return router


def _profile_view(engine: Engine) -> dict[str, Any]:
    assert engine.profile is not None
    onion = engine.profile.identity.onion
    return {"name": engine.profile.name, "onion": onion, "address": f"{onion}.onion",
            "contact_id": engine.mailbox.contact_id if engine.mailbox else None,
            "onion_state": engine.onion_status}
