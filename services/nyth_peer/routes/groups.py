"""Groups: create (naming servers or choosing them from discovery), invites, moves,
recovery settings, posts and history."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from nyth.proto.server_choice import NotEnoughServers
from nyth.web import error_responses
from pydantic import BaseModel, ConfigDict, Field, field_validator

from nyth_peer.discovery_views import ChoiceView, NoDirectory, choose_servers
from nyth_peer.group_recovery import STRATEGIES, StrategyName
from nyth_peer.group_rows import GroupError, GroupForbiddenError
from nyth_peer.group_views import GroupHistory, GroupView
from nyth_peer.messenger import ContactError
from nyth_peer.routes.common import GroupId, OnionField, TextIn, Unlocked, check_onion


class GroupCreate(BaseModel):
    # Either servers named (auto absent or false, no k) or auto (no servers): the route
    # refuses any other mix with 422, and the schema says so, so clients see it too.
    model_config = ConfigDict(json_schema_extra={"oneOf": [
        {"required": ["servers"],
         "properties": {"servers": {"minItems": 1}, "auto": {"const": False},
                        "k": {"type": "null"}}},
        {"required": ["auto"],
         "properties": {"auto": {"const": True}, "servers": {"maxItems": 0}}},
    ]})
    name: str = Field(min_length=1, max_length=64)
    servers: list[OnionField] = Field(
        default_factory=list, max_length=8, json_schema_extra={"uniqueItems": True},
        description="group server onions (distinct); or none, with auto")
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
        None, max_length=len(STRATEGIES), json_schema_extra={"uniqueItems": True},
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
    servers: list[OnionField] = Field(min_length=1, max_length=8,
                                      json_schema_extra={"uniqueItems": True},
                                      description="the new servers' onions (distinct)")


class GroupInvite(BaseModel):
    contact: OnionField = Field(description="the contact to invite (an accepted contact)")


def group_routes(unlocked: Unlocked) -> APIRouter:
    router = APIRouter()

    @router.get("/groups", response_model=list[GroupView], responses=error_responses(423))
    async def groups() -> list[dict[str, Any]]:
        return _groups(unlocked).groups()

    @router.post("/groups", status_code=201, response_model=GroupCreated,
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
        servers = [check_onion(s) for s in body.servers]
        groups_ = _groups(unlocked)
        if body.auto:
            choice = _auto_choice(unlocked, groups_, body.k)
            servers = [c["onion"] for c in choice]
        view = await _group_call(groups_.create(body.name, servers))
        return {**view, "choice": choice}

    @router.get("/groups/invites", responses=error_responses(423))
    async def invites() -> list[dict[str, Any]]:
        return _groups(unlocked).invites()

    @router.post("/groups/invites/{gid}/accept", response_model=GroupView,
                 responses=error_responses(400, 404, 423))
    async def accept_invite(gid: GroupId) -> dict[str, Any]:
        """Join the group of a pending invite: 404 if there is none with that id, 400 if
        its servers cannot be reached or pinned."""
        groups_ = _groups(unlocked)
        if not groups_.store.has("invites", gid):
            raise HTTPException(404, f"no invite to group {gid}")
        return await _group_call(groups_.accept_invite(gid))

    _add_one_group_routes(router, unlocked)
    return router


def _add_one_group_routes(router: APIRouter, unlocked: Unlocked) -> None:
    """The routes of one group, by id: after /groups/invites, which they would shadow."""

    @router.get("/groups/{gid:group_id}", response_model=GroupView, responses=error_responses(404, 423))
    async def group(gid: GroupId) -> dict[str, Any]:
        """The group: servers, epoch, and recovery status (gaps found, recovered and how,
        open with the reason and the next attempt)."""
        return _group_sync(unlocked, lambda g: g.group(gid), missing=404)

    @router.patch("/groups/{gid:group_id}", response_model=GroupView,
                  responses=error_responses(404, 423))
    async def patch_group(gid: GroupId, body: GroupPatch) -> dict[str, Any]:
        """Switch the group's recovery strategies (kept across restarts)."""
        if body.recovery is None:
            return _group_sync(unlocked, lambda g: g.group(gid), missing=404)
        recovery = list(body.recovery)
        return _group_sync(unlocked, lambda g: g.set_recovery(gid, recovery), missing=404)

    @router.post("/groups/{gid:group_id}/move", response_model=GroupView,
                 responses=error_responses(400, 403, 404, 423))
    async def move_group(gid: GroupId, body: GroupMove) -> dict[str, Any]:
        """Move the group to other servers (its owner only: 403 otherwise). Their bundles
        are fetched and pinned, and a signed MOVE is posted to the old and the new servers;
        members follow it. 400 if a server cannot be reached or pinned."""
        servers = [check_onion(s) for s in body.servers]
        groups_ = _groups(unlocked)
        if not groups_.store.has("groups", gid):
            raise HTTPException(404, f"no group {gid}")
        try:
            return await groups_.moves.move(gid, servers)
        except GroupForbiddenError as exc:
            raise HTTPException(403, str(exc)) from exc
        except GroupError as exc:
            raise HTTPException(400, str(exc)) from exc

    @router.post("/groups/{gid:group_id}/invite", status_code=202,
                 responses=error_responses(400, 404, 423))
    async def invite(gid: GroupId, body: GroupInvite) -> dict[str, Any]:
        """Invite an accepted contact: 404 for an unknown group, 400 if the onion is not
        an accepted contact."""
        contact = check_onion(body.contact)
        _known_group(unlocked, gid)
        try:
            return _group_sync(unlocked, lambda g: g.invite(gid, contact))
        except ContactError as exc:
            raise HTTPException(400, str(exc)) from exc

    @router.post("/groups/{gid:group_id}/messages", status_code=202,
                 responses=error_responses(404, 423))
    async def post(gid: GroupId, body: TextIn) -> dict[str, Any]:
        _known_group(unlocked, gid)
        return _group_sync(unlocked, lambda g: g.post(gid, body.text), missing=404)

    @router.get("/groups/{gid:group_id}/messages", response_model=GroupHistory,
                responses=error_responses(404, 423))
    async def history(gid: GroupId,
                      limit: Annotated[int, Query(ge=1, le=5000)] = 500) -> dict[str, Any]:
        return _group_sync(unlocked, lambda g: g.history(gid, limit), missing=404)


def _groups(unlocked: Unlocked) -> Any:
    return unlocked().groups


def _known_group(unlocked: Unlocked, gid: str) -> None:
    """404 for a group we are not in, before an operation whose other failures are 400."""
    if not _groups(unlocked).store.has("groups", gid):
        raise HTTPException(404, f"no group {gid}")


def _group_sync(unlocked: Unlocked, fn: Any, missing: int = 400) -> Any:
    """fn(groups), a GroupError answered with the status `missing`."""
    groups_ = _groups(unlocked)
    try:
        return fn(groups_)
    except GroupError as exc:
        raise HTTPException(missing, str(exc)) from exc


async def _group_call(coro: Any) -> Any:
    try:
        return await coro
    except GroupError as exc:
        raise HTTPException(400, str(exc)) from exc


def _auto_choice(unlocked: Unlocked, groups_: Any, k: int | None) -> list[dict[str, str]]:
    """The servers the default policy picks from the directories held, each with why;
    409 when no directory is held or too few servers are eligible."""
    e = unlocked()
    assert e.discovery is not None
    known = [o for g in groups_.store.list("groups") for o in g["servers"]]
    try:
        picked = choose_servers(e.discovery, k=k, known=known)
    except (NoDirectory, NotEnoughServers) as exc:
        raise HTTPException(409, str(exc)) from exc
    return [{"onion": c.onion, "reason": c.reason} for c in picked]

