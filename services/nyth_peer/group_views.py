"""What the API shows of a group: its servers, epoch and recovery status, and its history
with how gaps were filled and which members have seen each of my posts.

The models are the API's response models (exact: FastAPI drops nothing silently and
documents every field); the functions build them from the group service's state.
"""

from __future__ import annotations

import base64
import dataclasses
from typing import TYPE_CHECKING, Any, Literal

from nyth.proto.group import GroupKind, Invite
from nyth.proto.identity import onion_from_public_key
from nyth.proto.recovery import GapView, RecoveredBy
from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from nyth_peer.groups import GroupService

KindName = Literal["text", "move", "other"]


class Member(BaseModel):
    onion: str
    name: str | None = Field(description="the contact's name, if this member is a contact")


class RecoveredByView(BaseModel):
    method: Literal["refetch", "server", "member", "local"] = Field(
        description="refetch: the server re-read for it; server: a server of the group; "
                    "member: pulled from a member, P2P; local: our own storage")
    source: str | None = Field(description="the server's or member's onion (null for local)")
    name: str | None = Field(description="the member's contact name, when known")


class GapInfo(BaseModel):
    hash: str = Field(description="the missing message's hash (hex)")
    state: Literal["open", "recovered"]
    found_at: float = Field(description="when the gap was found (Unix seconds)")
    found_via: str = Field(description='"server <onion>", "member <onion>", "local" or '
                                       '"history" (already missing when recovery started)')
    attempts: int
    reason: str | None = Field(description="why the last attempts failed")
    doing: str | None = Field(description="the attempt under way, if any")
    next_attempt_at: float | None = Field(
        description="the next attempt (Unix seconds); null while one is under way or once recovered")
    recovered_at: float | None
    recovered_by: RecoveredByView | None


class IgnoredMove(BaseModel):
    hash: str
    reason: str


class RecoveryCost(BaseModel):
    """What this group's traffic cost since the peer started: what recovery adds on top of
    one download of each message (the recovery experiment reads these)."""

    blobs_read: int = Field(description="this group's blobs downloaded from its servers, "
                                        "copies from a second server included")
    reread_blobs: int = Field(description="blobs (of any group) downloaded again by this "
                                          "group's recovery re-reads")
    p2p_messages: int = Field(description="group sync messages (HEADS, PULL, PART, NOT_SERVED) "
                                          "sent and received")
    p2p_bytes: int = Field(description="their bodies' bytes")


class RecoveryView(BaseModel):
    strategies: list[str] = Field(description="this group's recovery strategies, in order")
    found: int = Field(description="gaps found since we joined (kept across restarts)")
    recovered: dict[str, int] = Field(
        description="gaps recovered since we joined, by method (kept across restarts)")
    open: list[GapInfo] = Field(description="gaps still open, oldest first")
    recent: list[GapInfo] = Field(description="recovered gaps, newest first")
    untracked: int = Field(description="open gaps beyond the tracking limit, picked up later")
    moves_ignored: list[IgnoredMove] = Field(description="moves not followed, and why")
    cost: RecoveryCost


class DrainingServer(BaseModel):
    onion: str
    until: float = Field(description="read until (Unix seconds), then dropped")


class ServerState(BaseModel):
    state: str
    reason: str | None = None
    since: float | None = None
    next_retry_at: float | None = None


class GroupView(BaseModel):
    id: str
    name: str
    version: Literal[1, 2] = Field(description="1: made before moves (no owner, never moves)")
    owner: str | None = Field(description="the owner's onion (v2): only it may move the group")
    owned: bool = Field(description="whether we are the owner")
    epoch: int = Field(description="0 until the group first moves, then the followed move's")
    servers: list[str] = Field(description="where posts go and history is read")
    draining: list[DrainingServer] = Field(description="old servers still read after a move")
    created_at: float
    messages: int
    missing: int = Field(description="messages named by others that we do not hold")
    server_state: dict[str, ServerState]
    recovery: RecoveryView


class MoveView(BaseModel):
    epoch: int
    servers: list[str] = Field(description="the servers the move names, in its order")


class GroupMessageView(BaseModel):
    hash: str
    author: str = Field(description="the author's ed25519 public key (hex)")
    author_name: str | None = Field(
        None, description="the author's name as our contacts list has it (our own profile "
                          "name for our posts); null when the author is not a contact or "
                          "never told a name. Chosen by the author: show it as text only")
    mine: bool = Field(False, description="whether we wrote it (show \"you\")")
    timestamp_ms: int = Field(description="the author's claimed time")
    parents: list[str]
    body: str = Field(description='the text ("" for a move or a kind this version does not know)')
    kind: KindName
    move: MoveView | None = Field(description="a move's epoch and servers")
    state: str = Field(description="queued / posted (ours), received")
    reason: str | None
    next_retry_at: float | None
    pending_servers: list[str] | None = Field(None, description="ours: servers yet to acknowledge it")
    server: str | None = Field(None, description="the server we first got it from")
    member: str | None = Field(None, description="the member we pulled it from, P2P")
    recovered_by: RecoveredByView | None = Field(None, description="how it filled a gap")
    seen_by: list[Member] | None = Field(
        None, description="ours: members whose messages name it as a parent (null for others')")
    received_at_ms: int | None
    order_time_ms: int
    time_adjusted: str | None


class GroupHistory(BaseModel):
    group: str
    messages: list[GroupMessageView]
    missing: list[str]


def kind_name(kind: Any) -> KindName:
    if kind == GroupKind.TEXT:
        return "text"
    return "move" if kind == GroupKind.MOVE else "other"


def public(record: dict[str, Any]) -> dict[str, Any]:
    """A stored message row as shown: without its wire form, with its kind's name."""
    view = {k: v for k, v in record.items() if k != "wire"}
    view["kind"] = kind_name(record.get("kind", GroupKind.TEXT))
    view.setdefault("move", None)
    return view


def _name(groups: GroupService, onion: str) -> str | None:
    contact = groups.store.get("contacts", onion)
    return contact.get("name") if contact else None


def recovered_view(groups: GroupService, how: RecoveredBy) -> dict[str, Any]:
    source = how.source or None
    name = _name(groups, source) if how.method == "member" and source else None
    return {"method": str(how.method), "source": source, "name": name}


def _gap(groups: GroupService, gap: GapView) -> dict[str, Any]:
    def seconds(ms: int | None) -> float | None:
        return None if ms is None else ms / 1000

    return {"hash": gap.hash.hex(), "state": str(gap.state), "found_at": gap.found_at_ms / 1000,
            "found_via": gap.found_via, "attempts": gap.attempts, "reason": gap.reason,
            "doing": gap.doing, "next_attempt_at": seconds(gap.next_attempt_ms),
            "recovered_at": seconds(gap.recovered_at_ms),
            "recovered_by": recovered_view(groups, gap.recovered_by) if gap.recovered_by else None}


def group_view(groups: GroupService, row: dict[str, Any]) -> dict[str, Any]:
    gid = row["id"]
    dag = groups.dags.get(gid)
    invite = Invite.decode(base64.b64decode(row["invite"]))
    owner = onion_from_public_key(invite.owner) if invite.owner else None
    status = groups.recovery.status(gid)
    recovery: dict[str, Any] = {
        "strategies": groups.recovery.strategies(row), **groups.recovery.totals(gid), "open": [],
        "recent": [], "untracked": 0, "moves_ignored": [],
        "cost": dataclasses.asdict(groups.recovery.cost(gid))}
    if status is not None:
        recovery.update(
            open=[_gap(groups, g) for g in status.open],
            recent=[_gap(groups, g) for g in status.recent], untracked=status.untracked,
            moves_ignored=[{"hash": h.hex(), "reason": r} for h, r in status.moves_ignored])
    servers = row["servers"]
    draining = row.get("draining") or {}
    read_state = [*servers, *sorted(o for o in draining if o not in servers)]
    return {"id": gid, "name": row["name"], "version": invite.version, "owner": owner,
            "owned": owner == groups.profile.identity.onion, "epoch": invite.epoch,
            "servers": servers,
            "draining": [{"onion": o, "until": t / 1000} for o, t in sorted(draining.items())],
            "created_at": row["created_at"], "messages": len(dag) if dag else 0,
            "missing": len(dag.missing()) if dag else 0,
            "server_state": {s: groups.server_state.get(s, {"state": "idle"}) for s in read_state},
            "recovery": recovery}


def history(groups: GroupService, gid: str, limit: int) -> dict[str, Any]:
    dag = groups.dag(gid)
    key = f"group_messages:{gid}"
    me = groups.profile.identity.public_key
    messages = []
    # Per author, not per message: a page repeats few authors many times.
    names: dict[bytes, str | None] = {me: groups.profile.name}
    for placed in dag.placed()[-limit:]:
        message = placed.message
        row = groups.store.get(key, message.hash.hex())
        item = public(row) if row is not None else {
            "hash": message.hash.hex(), "author": message.author.hex(),
            "timestamp_ms": message.timestamp_ms, "parents": [p.hex() for p in message.parents],
            "body": message.body, "kind": kind_name(message.kind), "move": None,
            "state": "received", "reason": None, "next_retry_at": None}
        seen = None
        if message.author == me:
            seen = [{"onion": o, "name": _name(groups, o)}
                    for o in sorted(groups.recovery.seen_by(gid, message.hash))]
        if message.author not in names:
            names[message.author] = _name(groups, onion_from_public_key(message.author))
        received = row.get("received_at_ms") if row else None
        messages.append({**item, "author_name": names[message.author],
                         "mine": message.author == me,
                         "received_at_ms": received if type(received) is int else None,
                         "order_time_ms": placed.order_time_ms,
                         "time_adjusted": placed.time_adjusted, "seen_by": seen})
    return {"group": gid, "messages": messages,
            "missing": sorted(h.hex() for h in dag.missing())}
