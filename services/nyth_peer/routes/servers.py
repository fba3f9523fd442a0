"""Pinned servers (group servers and mailboxes): their state, and re-pinning a changed
bundle after review."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException
from nyth.errors import AuthenticationError, DecodeError, RepinMismatchError
from nyth.web import error_responses
from pydantic import BaseModel, Field

from nyth_peer.group_rows import GroupError
from nyth_peer.mailbox import MailboxError
from nyth_peer.pins import UnknownServerError, UnusableBundleError
from nyth_peer.round_trips import LatencyView
from nyth_peer.routes.common import Onion, Unlocked, check_onion


class PinnedBundle(BaseModel):
    bundle_sha256: str = Field(description="SHA-256 (hex) of the signed bundle's bytes")
    limits: dict[str, int] = Field(
        description="what the bundle promises, e.g. max_age_seconds, max_blobs, pow_bits")
    issued_at: int = Field(description="when the server signed it (Unix seconds)")


class PresentedBundle(PinnedBundle):
    changes: list[str] = Field(
        description='what differs from the pinned bundle, "field old -> new" each')
    seen_at: float = Field(description="when the server last presented it (Unix seconds)")


class TokensView(BaseModel):
    tokens: int = Field(description="unspent tokens we hold for this server")
    state: str = Field(description='"idle", "working" (getting a batch), "ready" or "failed"')
    reason: str | None = Field(description='what getting tokens is doing ("proof of work") '
                                           "or why it failed")


class ServerView(BaseModel):
    onion: str
    kind: Literal["group", "mailbox"]
    used_for: list[str] = Field(description="groups and mailbox roles that use this server")
    pinned: PinnedBundle
    pinned_at: float | None = Field(description="when it was pinned (null: before this was recorded)")
    state: str = Field(description='connection state; "bundle_changed" while a changed bundle '
                                   "is refused")
    reason: str | None
    since: float | None
    next_retry_at: float | None
    presented: PresentedBundle | None = Field(
        description="the different bundle the server presented instead, to review; null if none")
    tokens: TokensView | None = Field(
        None, description="a group server that wants a token per post: our tokens for it; "
                          "null otherwise")
    latency: LatencyView = Field(
        description="round trips of our recent requests to this server that got an answer: "
                    "from sending the request to its status line and headers, reaching the "
                    "onion through Tor included when the connection was new")


class Repin(BaseModel):
    bundle_sha256: str = Field(
        pattern=r"^[0-9a-fA-F]{64}$",
        description="SHA-256 (hex) of the presented bundle you reviewed (`presented.bundle_sha256` "
                    "in GET /v1/servers); it is pinned only if the server presents exactly that")


def server_routes(unlocked: Unlocked) -> APIRouter:
    router = APIRouter()

    @router.get("/servers", response_model=list[ServerView], responses=error_responses(423))
    async def servers() -> list[dict[str, Any]]:
        """Every pinned server (group servers and mailboxes): what its pinned bundle promises,
        its state, and — when it presents a different signed bundle, which is refused — that
        bundle's limits, hash and what changed, for you to review before re-pinning."""
        return unlocked().servers()

    @router.post("/servers/{onion}/repin", response_model=ServerView,
                 responses=error_responses(404, 409, 423, 502))
    async def repin(onion: Onion, body: Repin) -> dict[str, Any]:
        """Accept a server's changed bundle. The server's bundle is fetched again and verified
        against its onion key; it is pinned only if its SHA-256 is the one you reviewed, so
        you never accept something you did not see (409 otherwise, and nothing changes).
        Sync, posts and mailbox polling with that server resume at once."""
        e = unlocked()
        server = check_onion(onion)
        try:
            return await e.repin(server, body.bundle_sha256)
        except UnknownServerError as exc:
            raise HTTPException(404, str(exc)) from exc
        except RepinMismatchError as exc:
            now = e.server(server)["presented"]
            hint = ("it presents the pinned bundle again: nothing to re-pin" if now is None else
                    f"it presents now: {'; '.join(now['changes'])}; review that (nyth servers) "
                    "and re-pin it if you accept it")
            raise HTTPException(409, f"{exc}; {hint}") from exc
        except UnusableBundleError as exc:
            raise HTTPException(409, f"{exc}; nothing was re-pinned") from exc
        except (DecodeError, AuthenticationError) as exc:
            raise HTTPException(502, f"{server}.onion presents an invalid bundle ({exc}); "
                                     "nothing was re-pinned") from exc
        except (GroupError, MailboxError) as exc:
            raise HTTPException(502, f"{exc}; nothing was re-pinned") from exc

    return router
