"""The peer engine's local HTTP API (for the CLI, the web UI and bots).

Bound to loopback or an internal network and protected by a bearer token: whoever
holds the token can read and send as this profile.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request
from nyth.errors import AuthenticationError, DecodeError, RepinMismatchError
from nyth.proto.contact_id import ContactId
from nyth.proto.discovery import ServerKind
from nyth.proto.identity import normalize_onion, public_key_from_onion
from nyth.proto.p2p import MAX_TEXT_CHARS
from nyth.proto.server_choice import NotEnoughServers
from nyth.web import error_responses, install_common
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sse_starlette.sse import EventSourceResponse

from nyth_peer.discovery_views import (
    ChoiceView,
    DiscoveryView,
    KindLabel,
    NoDirectory,
    choose_servers,
    discovery_view,
)
from nyth_peer.engine import Engine
from nyth_peer.group_recovery import STRATEGIES, StrategyName
from nyth_peer.group_rows import GroupError, GroupForbiddenError
from nyth_peer.group_views import GroupHistory, GroupView
from nyth_peer.mailbox import MailboxError
from nyth_peer.messenger import ContactError
from nyth_peer.pins import UnknownServerError, UnusableBundleError
from nyth_peer.profile import NoProfileError, Profile, ProfileExistsError

# A refresh through Tor may take long (a dead index, then its directory group's servers):
# the API answers by then with what it has, so a client's request never hangs on it.
REFRESH_WAIT_SECONDS = 150.0

Onion = Annotated[str, Path(min_length=56, max_length=62, description="v3 onion address")]
GroupId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="group id (hex)")]
MsgId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="message id (hex)")]


class ProfileCreate(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    passphrase: str = Field(min_length=8, max_length=1024)


class Unlock(BaseModel):
    passphrase: str = Field(min_length=1, max_length=1024)


class ContactAdd(BaseModel):
    onion: str | None = Field(None, min_length=56, max_length=80,
                              description="the contact's onion address (reaches them only P2P)")
    contact_id: str | None = Field(
        None, min_length=10, max_length=200,
        description="the contact identifier they shared (nyth1…): onion + mailbox, so a "
                    "request reaches them even while they are offline")
    text: str = Field("", max_length=MAX_TEXT_CHARS, description="a note sent with the request")


class MailboxConfirm(BaseModel):
    mailbox: str = Field(min_length=56, max_length=80, description=(
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


class TextIn(BaseModel):
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)


class GroupCreate(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    servers: list[str] = Field(
        default_factory=list, max_length=8,
        description="group server onions; or none, with auto")
    auto: bool = Field(
        False, description="choose the servers from the discovery indexes' directories by the "
                           "default policy (docs/discovery.md) instead of naming them")
    k: int | None = Field(
        None, ge=1, le=8,
        description="with auto: exactly this many servers (409 if fewer are eligible); "
                    "unset: the policy's 2, or fewer when fewer are eligible (each choice "
                    "then says so)")


class GroupCreated(GroupView):
    choice: list[ChoiceView] | None = Field(
        None, description="with auto: the servers chosen and why each; null otherwise")


class GroupPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    recovery: list[StrategyName] | None = Field(
        None, max_length=len(STRATEGIES),
        description="the group's recovery strategies, tried in this order; any subset, [] "
                    "for none. refetch: re-read the server a gap was found on from an "
                    "earlier cursor; server: read the group's other servers (reads merge "
                    "and deduplicate); member: pull it from online members, P2P; move: "
                    "follow the owner's moves")

    @field_validator("recovery")
    @classmethod
    def _distinct(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("a strategy is named twice")
        return value


class GroupMove(BaseModel):
    model_config = ConfigDict(extra="forbid")
    servers: list[str] = Field(min_length=1, max_length=8,
                               description="the new servers' onions (distinct)")


class GroupInvite(BaseModel):
    contact: str = Field(min_length=56, max_length=80)


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


class Repin(BaseModel):
    bundle_sha256: str = Field(
        pattern=r"^[0-9a-fA-F]{64}$",
        description="SHA-256 (hex) of the presented bundle you reviewed (`presented.bundle_sha256` "
                    "in GET /v1/servers); it is pinned only if the server presents exactly that")


def _onion(text: str) -> str:
    """A full check (checksum, version, valid key), so a typo is refused, not dialed."""
    try:
        onion = normalize_onion(text)
        public_key_from_onion(onion)
    except DecodeError as exc:
        raise HTTPException(422, str(exc)) from exc
    return onion


def create_app(engine: Engine, api_token: str) -> FastAPI:
    app = FastAPI(title="Nyth peer engine", version="1",
                  description="Local API of one Nyth profile: contacts, P2P messages with "
                              "delivery states, groups, and a live event stream.")

    async def require_token(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
                token.encode(), api_token.encode()):
            raise HTTPException(401, "missing or wrong API token",
                                headers={"WWW-Authenticate": "Bearer"})

    def unlocked() -> Engine:
        if engine.profile is None:
            raise HTTPException(423, "profile is locked or not created yet")
        return engine

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_token)],
                   responses=error_responses(401, 422))

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, Any]:
        profile = engine.profile
        return {"status": "ok",
                "profile": "unlocked" if profile else (
                    "locked" if Profile.exists(engine.settings.data_dir) else "none"),
                "onion": profile.identity.onion if profile else None,
                "onion_state": engine.onion_status.get("state")}

    # -- profile ---------------------------------------------------------------------------
    @v1.post("/profile", status_code=201, responses=error_responses(409))
    async def create_profile(body: ProfileCreate) -> dict[str, Any]:
        try:
            profile = await asyncio.to_thread(Profile.create, engine.settings.data_dir,
                                              body.name, body.passphrase)
        except ProfileExistsError as exc:
            raise HTTPException(409, str(exc)) from exc
        await engine.activate(profile)
        return _profile_view(engine)

    @v1.post("/profile/unlock", responses=error_responses(403, 404))
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

    @v1.get("/profile", responses=error_responses(423))
    async def get_profile() -> dict[str, Any]:
        return _profile_view(unlocked())

    @v1.get("/status", responses=error_responses(423))
    async def status() -> dict[str, Any]:
        e = unlocked()
        assert e.messenger is not None and e.groups is not None
        return {"onion": e.onion_status, "contacts": e.messenger.connection,
                "servers": e.groups.server_state}

    @v1.get("/mailbox", responses=error_responses(423))
    async def mailbox() -> dict[str, Any]:
        """Our mailbox: state, contact id, and what it can learn with the detection setting
        (false-positive rate, expected detections p·N + M, recommended n)."""
        e = unlocked()
        assert e.mailbox is not None
        return e.mailbox.privacy()

    # -- pinned servers --------------------------------------------------------------------
    @v1.get("/servers", response_model=list[ServerView], responses=error_responses(423))
    async def servers() -> list[dict[str, Any]]:
        """Every pinned server (group servers and mailboxes): what its pinned bundle promises,
        its state, and — when it presents a different signed bundle, which is refused — that
        bundle's limits, hash and what changed, for you to review before re-pinning."""
        return unlocked().servers()

    @v1.post("/servers/{onion}/repin", response_model=ServerView,
             responses=error_responses(404, 409, 423, 502))
    async def repin(onion: Onion, body: Repin) -> dict[str, Any]:
        """Accept a server's changed bundle. The server's bundle is fetched again and verified
        against its onion key; it is pinned only if its SHA-256 is the one you reviewed, so
        you never accept something you did not see (409 otherwise, and nothing changes).
        Sync, posts and mailbox polling with that server resume at once."""
        e = unlocked()
        server = _onion(onion)
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

    # -- contacts and messages -------------------------------------------------------------
    @v1.get("/contacts", response_model=list[ContactView], response_model_by_alias=True,
            responses=error_responses(423))
    async def contacts() -> list[dict[str, Any]]:
        return _messenger().contacts()

    @v1.post("/contacts", status_code=201, response_model=ContactView,
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
            return _contact_call(lambda m: m.add_contact(cid.onion, body.text, cid.mailbox_onion))
        onion = _onion(body.onion or "")
        return _contact_call(lambda m: m.add_contact(onion, body.text))

    @v1.get("/contacts/{onion}", response_model=ContactView, response_model_by_alias=True,
            responses=error_responses(404, 423))
    async def contact(onion: Onion) -> dict[str, Any]:
        return _contact_call(lambda m: m.contact(_onion(onion)), missing=404)

    @v1.post("/contacts/{onion}/mailbox/confirm", response_model=ContactView,
             response_model_by_alias=True, responses=error_responses(404, 409, 423))
    async def confirm_mailbox(onion: Onion, body: MailboxConfirm) -> dict[str, Any]:
        """Answer a proposed mailbox change (`mailbox_change` on the contact): name the
        proposed mailbox to use it from now on, or the current one to keep it. Until then
        offline messages keep going to the current mailbox. 409 if no change is waiting or
        the mailbox named is neither; 404 for an unknown contact."""
        contact_onion, mailbox = _onion(onion), _onion(body.mailbox)
        messenger = _messenger()
        if not messenger.store.has("contacts", contact_onion):
            raise HTTPException(404, f"no contact {contact_onion}.onion")
        return _contact_call(lambda m: m.confirm_mailbox(contact_onion, mailbox), missing=409)

    @v1.post("/contacts/{onion}/accept", responses=error_responses(409, 423))
    async def accept(onion: Onion) -> dict[str, Any]:
        return _contact_call(lambda m: m.answer_request(_onion(onion), True), missing=409)

    @v1.post("/contacts/{onion}/refuse", responses=error_responses(409, 423))
    async def refuse(onion: Onion) -> dict[str, Any]:
        return _contact_call(lambda m: m.answer_request(_onion(onion), False), missing=409)

    @v1.post("/contacts/{onion}/messages", status_code=202, responses=error_responses(400, 423))
    async def send(onion: Onion, body: TextIn) -> dict[str, Any]:
        return _contact_call(lambda m: m.send_text(_onion(onion), body.text))

    @v1.get("/contacts/{onion}/messages", responses=error_responses(404, 423))
    async def messages(onion: Onion,
                       limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> list[dict[str, Any]]:
        return _contact_call(lambda m: m.messages(_onion(onion), limit), missing=404)

    @v1.get("/contacts/{onion}/messages/{msg_id}", responses=error_responses(404, 423))
    async def message(onion: Onion, msg_id: MsgId) -> dict[str, Any]:
        return _contact_call(lambda m: m.message(_onion(onion), msg_id), missing=404)

    @v1.post("/contacts/{onion}/messages/{msg_id}/retry", responses=error_responses(409, 423))
    async def retry(onion: Onion, msg_id: MsgId) -> dict[str, Any]:
        return _contact_call(lambda m: m.retry_now(_onion(onion), msg_id), missing=409)

    @v1.post("/contacts/{onion}/messages/{msg_id}/cancel", responses=error_responses(409, 423))
    async def cancel(onion: Onion, msg_id: MsgId) -> dict[str, Any]:
        return _contact_call(lambda m: m.cancel(_onion(onion), msg_id), missing=409)

    # -- groups ----------------------------------------------------------------------------
    @v1.get("/groups", response_model=list[GroupView], responses=error_responses(423))
    async def groups() -> list[dict[str, Any]]:
        return _groups().groups()

    @v1.post("/groups", status_code=201, response_model=GroupCreated,
             responses=error_responses(400, 409, 423))
    async def create_group(body: GroupCreate) -> dict[str, Any]:
        """Create a group on these servers, owned by us (only we may move it). With
        `auto`, the servers are chosen from the discovery directories held, by the default
        policy, and `choice` says why each; 409 with the reason when no directory is held
        or too few servers are eligible."""
        if body.auto == bool(body.servers):
            raise HTTPException(422, "name the servers or ask for auto, one of the two")
        if body.k is not None and not body.auto:
            raise HTTPException(422, "k goes with auto")
        choice = None
        servers = [_onion(s) for s in body.servers]
        groups_ = _groups()
        if body.auto:
            e = unlocked()
            assert e.discovery is not None
            known = [o for g in groups_.store.list("groups") for o in g["servers"]]
            try:
                picked = choose_servers(e.discovery, k=body.k, known=known)
            except (NoDirectory, NotEnoughServers) as exc:
                raise HTTPException(409, str(exc)) from exc
            choice = [{"onion": c.onion, "reason": c.reason} for c in picked]
            servers = [c.onion for c in picked]
        view = await _group_call(groups_.create(body.name, servers))
        return {**view, "choice": choice}

    @v1.get("/groups/invites", responses=error_responses(423))
    async def invites() -> list[dict[str, Any]]:
        return _groups().invites()

    @v1.post("/groups/invites/{gid}/accept", response_model=GroupView,
             responses=error_responses(400, 423))
    async def accept_invite(gid: GroupId) -> dict[str, Any]:
        return await _group_call(_groups().accept_invite(gid))

    @v1.get("/groups/{gid}", response_model=GroupView, responses=error_responses(404, 423))
    async def group(gid: GroupId) -> dict[str, Any]:
        """The group: servers, epoch, and recovery status (gaps found, recovered and how,
        open with the reason and the next attempt)."""
        return _group_sync(lambda g: g.group(gid), missing=404)

    @v1.patch("/groups/{gid}", response_model=GroupView, responses=error_responses(404, 423))
    async def patch_group(gid: GroupId, body: GroupPatch) -> dict[str, Any]:
        """Switch the group's recovery strategies (kept across restarts)."""
        if body.recovery is None:
            return _group_sync(lambda g: g.group(gid), missing=404)
        recovery = list(body.recovery)
        return _group_sync(lambda g: g.set_recovery(gid, recovery), missing=404)

    @v1.post("/groups/{gid}/move", response_model=GroupView,
             responses=error_responses(400, 403, 404, 423))
    async def move_group(gid: GroupId, body: GroupMove) -> dict[str, Any]:
        """Move the group to other servers (its owner only: 403 otherwise). Their bundles
        are fetched and pinned, and a signed MOVE is posted to the old and the new servers;
        members follow it. 400 if a server cannot be reached or pinned."""
        servers = [_onion(s) for s in body.servers]
        groups_ = _groups()
        if not groups_.store.has("groups", gid):
            raise HTTPException(404, f"no group {gid}")
        try:
            return await groups_.moves.move(gid, servers)
        except GroupForbiddenError as exc:
            raise HTTPException(403, str(exc)) from exc
        except GroupError as exc:
            raise HTTPException(400, str(exc)) from exc

    @v1.post("/groups/{gid}/invite", status_code=202, responses=error_responses(400, 423))
    async def invite(gid: GroupId, body: GroupInvite) -> dict[str, Any]:
        contact = _onion(body.contact)
        try:
            return _group_sync(lambda g: g.invite(gid, contact))
        except ContactError as exc:
            raise HTTPException(400, str(exc)) from exc

    @v1.post("/groups/{gid}/messages", status_code=202, responses=error_responses(400, 423))
    async def post(gid: GroupId, body: TextIn) -> dict[str, Any]:
        return _group_sync(lambda g: g.post(gid, body.text))

    @v1.get("/groups/{gid}/messages", response_model=GroupHistory,
            responses=error_responses(404, 423))
    async def history(gid: GroupId,
                      limit: Annotated[int, Query(ge=1, le=5000)] = 500) -> dict[str, Any]:
        return _group_sync(lambda g: g.history(gid, limit), missing=404)

    # -- discovery -------------------------------------------------------------------------
    @v1.get("/discovery", response_model=DiscoveryView, responses=error_responses(423))
    async def discovery(kind: Annotated[KindLabel | None, Query(
            description="only servers of this kind")] = None) -> dict[str, Any]:
        """Each discovery index's state (directory epoch, where it was read from, the last
        refusal and why) and the servers their directories list, ranked best first: state,
        availability, probes, latency, retention audits, the limits each promises, and
        where indexes disagree."""
        e = unlocked()
        assert e.discovery is not None
        return discovery_view(e.discovery, ServerKind.parse(kind) if kind else None)

    @v1.post("/discovery/refresh", response_model=DiscoveryView, responses=error_responses(423))
    async def discovery_refresh() -> dict[str, Any]:
        """Read every index now (falling back to its directory group), then answer as GET
        /v1/discovery; after REFRESH_WAIT_SECONDS it answers anyway, the refresh going on."""
        e = unlocked()
        assert e.discovery is not None
        task = e.discovery.refresh_now()
        await asyncio.wait({task}, timeout=REFRESH_WAIT_SECONDS)
        return discovery_view(e.discovery)

    # -- events ----------------------------------------------------------------------------
    @v1.get("/events", response_class=EventSourceResponse,
            responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                             "description": "state changes as server-sent events"}})
    async def events(request: Request) -> EventSourceResponse:
        queue = engine.events.subscribe()

        async def stream() -> AsyncIterator[dict[str, str]]:
            try:
                while True:
                    event = await queue.get()
                    yield {"id": str(event["seq"]), "event": event["type"],
                           "data": json.dumps(event)}
            finally:
                engine.events.unsubscribe(queue)

        return EventSourceResponse(stream(), ping=15)

    # -- helpers ---------------------------------------------------------------------------
    def _messenger() -> Any:
        e = unlocked()
        return e.messenger

    def _groups() -> Any:
        e = unlocked()
        return e.groups

    def _contact_call(fn: Any, missing: int = 400) -> Any:
        messenger = _messenger()
        try:
            return fn(messenger)
        except ContactError as exc:
            raise HTTPException(missing, str(exc)) from exc

    def _group_sync(fn: Any, missing: int = 400) -> Any:
        groups_ = _groups()
        try:
            return fn(groups_)
        except GroupError as exc:
            raise HTTPException(missing, str(exc)) from exc

    async def _group_call(coro: Any) -> Any:
        try:
            return await coro
        except GroupError as exc:
            raise HTTPException(400, str(exc)) from exc

    app.include_router(v1)
    install_common(app, "peer", max_body_bytes=64 * 1024)
    return app


def _profile_view(engine: Engine) -> dict[str, Any]:
    assert engine.profile is not None
    onion = engine.profile.identity.onion
    return {"name": engine.profile.name, "onion": onion, "address": f"{onion}.onion",
            "contact_id": engine.mailbox.contact_id if engine.mailbox else None,
            "onion_state": engine.onion_status}
