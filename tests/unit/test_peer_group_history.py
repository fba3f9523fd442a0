"""The order of a group's history in the peer (issue 8, finding 8): a member cannot move
its message before what the group already had by claiming time 0 and no parents; a
far-future claim is clamped; each item says whether and why its time was adjusted.

Real profile, GroupService and sync, against a group server on 127.0.0.1
(tests.unit.hostile_http).
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from nyth.proto.bundle import ServerBundle
from nyth.proto.dag import MAX_CLOCK_SKEW_MS
from nyth.proto.delivery import RetryPolicy
from nyth.proto.group import BLOB_SIZE, Invite, Move, new_group_key, seal_group_message, seal_group_move
from nyth.proto.identity import Identity
from nyth_peer.events import EventBus
from nyth_peer.group_views import GroupHistory
from nyth_peer.groups import GroupService
from nyth_peer.messenger import Messenger
from nyth_peer.profile import Profile

from tests.unit.hostile_http import Handler, HostileServer, Reply, Request, until

SERVER = Identity.from_seed(b"S" * 32)
BOB = Identity.from_seed(b"B" * 32)
MALLORY = Identity.from_seed(b"Y" * 32)
FAST = RetryPolicy(initial=0.1, cap=0.3)
HOUR = 3_600_000
BUNDLE = ServerBundle(SERVER.public_key, bytes(32), BLOB_SIZE, 100_000, 86_400,
                      int(time.time())).sign(SERVER)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def profile(tmp_path: Path) -> Iterator[Profile]:
    profile = Profile.create(tmp_path, "alice", "correct horse battery")
    yield profile
    profile.store.close()


def server(blobs: list[bytes]) -> HostileServer:
    """Serves blobs as one page of backlog, then a quiet live stream."""
    async def bundle(request: Request, reply: Reply) -> None:
        await reply.json(200, {"bundle": b64(BUNDLE), "onion": SERVER.onion})

    async def page(request: Request, reply: Reply) -> None:
        done = request.query["after"] != "0"
        items = [{"id": f"{i + 1}-0", "blob": b64(blob)} for i, blob in enumerate(blobs)]
        await reply.json(200, {"blobs": [] if done else items, "next": f"{len(blobs)}-0",
                               "more": False})

    async def stream(request: Request, reply: Reply) -> None:
        async def pings() -> AsyncIterator[bytes]:
            while True:
                yield b": ping\r\n\r\n"
                await asyncio.sleep(0.1)
        await reply.chunked(200, pings(), {"content-type": "text/event-stream"})

    routes: dict[tuple[str, str], Handler] = {
        ("GET", "/v1/bundle"): bundle, ("GET", "/v1/blobs"): page,
        ("GET", "/v1/blobs/stream"): stream}
    return HostileServer(routes)


async def synced(profile: Profile, blobs: list[bytes], invite: Invite
                 ) -> tuple[GroupService, list[dict[str, Any]]]:
    async with server(blobs) as hostile:
        events = EventBus()
        service = GroupService(profile, events, Messenger(profile, events, FAST), hostile.client,
                               FAST)
        service._join(invite)
        gid = invite.group_id.hex()
        try:
            await until(lambda: len(service.history(gid)["messages"]) == len(blobs),
                        "the backlog")
        finally:
            await service.stop()
    return service, service.history(invite.group_id.hex())["messages"]


def honest_backlog(key: bytes, gid: bytes) -> list[bytes]:
    """Bob's three messages, an hour apart, the last one an hour ago, each naming the last."""
    now = int(time.time() * 1000)
    blobs: list[bytes] = []
    parents: tuple[bytes, ...] = ()
    for i, body in enumerate(["one", "two", "three"]):
        blob, message = seal_group_message(BOB, key, gid, timestamp_ms=now - (3 - i) * HOUR,
                                           parents=parents, body=body)
        blobs.append(blob)
        parents = (message.hash,)
    return blobs


async def test_time_zero_and_no_parents_does_not_jump_before_the_group(
        profile: Profile) -> None:
    invite = Invite("friends", new_group_key(), (BUNDLE,))
    gid = invite.group_id
    forged, _ = seal_group_message(MALLORY, invite.key, gid, timestamp_ms=0, parents=(),
                                   body="I was here first")
    _, history = await synced(profile, [*honest_backlog(invite.key, gid), forged], invite)
    assert [m["body"] for m in history] == ["one", "two", "three", "I was here first"]
    assert [m["time_adjusted"] for m in history] == [None, None, None, "late"]
    assert history[-1]["timestamp_ms"] == 0  # the claim is still shown, for what it is
    assert history[-1]["order_time_ms"] == history[2]["timestamp_ms"]
    receipts = [m["received_at_ms"] for m in history]
    assert receipts == sorted(receipts) and len(set(receipts)) == 4  # one page, in order


async def test_a_far_future_timestamp_is_clamped(profile: Profile) -> None:
    invite = Invite("friends", new_group_key(), (BUNDLE,))
    gid = invite.group_id
    backlog = honest_backlog(invite.key, gid)
    future, _ = seal_group_message(MALLORY, invite.key, gid,
                                   timestamp_ms=int(time.time() * 1000) + 365 * 24 * HOUR,
                                   parents=(), body="from next year")
    service, history = await synced(profile, [*backlog, future], invite)
    last = history[-1]
    assert last["body"] == "from next year" and last["time_adjusted"] == "future"
    assert last["order_time_ms"] == last["received_at_ms"] + MAX_CLOCK_SKEW_MS
    # Our next post names it as a parent, so comes after it: at its clamped time, not a
    # year from now, and marked as moved.
    service.post(gid.hex(), "hello")
    reply = service.history(gid.hex())["messages"][-1]
    assert reply["body"] == "hello" and reply["time_adjusted"] == "before_parents"
    assert reply["order_time_ms"] == last["order_time_ms"]


async def test_honest_history_is_unadjusted_and_survives_a_restart(profile: Profile) -> None:
    invite = Invite("friends", new_group_key(), (BUNDLE,))
    gid = invite.group_id
    forged, _ = seal_group_message(MALLORY, invite.key, gid, timestamp_ms=0, parents=(),
                                   body="forged")
    _, history = await synced(profile, [*honest_backlog(invite.key, gid), forged], invite)
    assert all(m["order_time_ms"] == m["timestamp_ms"] for m in history[:3])
    events = EventBus()
    reloaded = GroupService(profile, events, Messenger(profile, events, FAST),
                            lambda: None,  # type: ignore[arg-type,return-value]  # never dials
                            FAST)
    assert reloaded.history(gid.hex())["messages"] == history  # from the store alone


async def test_a_v2_group_syncs_and_follows_its_owners_move(profile: Profile) -> None:
    """Invites v2 join as before; a MOVE by the owner joins the DAG (shown as a move in
    history) and is followed: the epoch and the invite we would hand out change."""
    invite = Invite.create("friends", BOB.public_key, (BUNDLE,))
    gid = invite.group_id
    move, _ = seal_group_move(BOB, invite.key, gid, timestamp_ms=int(time.time() * 1000),
                              parents=(), move=Move(1, (BUNDLE,)))
    async with server([move, *honest_backlog(invite.key, gid)]) as hostile:
        events = EventBus()
        service = GroupService(profile, events, Messenger(profile, events, FAST), hostile.client,
                               FAST)
        service._join(invite)
        try:
            await until(lambda: len(service.history(gid.hex())["messages"]) == 4, "the backlog")
        finally:
            await service.stop()
    history = service.history(gid.hex())["messages"]
    assert [m["body"] for m in history if m["kind"] == "text"] == ["one", "two", "three"]
    [moved] = [m for m in history if m["kind"] == "move"]
    assert moved["move"] == {"epoch": 1, "servers": [SERVER.onion]}
    view = service.group(gid.hex())
    assert (view["version"], view["epoch"], view["servers"]) == (2, 1, [SERVER.onion])
    row = profile.store.get("groups", gid.hex())
    assert row is not None and Invite.decode(base64.b64decode(row["invite"])).epoch == 1
    assert any(e["type"] == "group_moved" for e in events.recent)


async def test_authors_are_named_from_the_contacts(profile: Profile) -> None:
    """Each item names its author as the contacts list has them, our own posts as ours,
    and leaves a stranger (a member who is not a contact) unnamed."""
    invite = Invite("friends", new_group_key(), (BUNDLE,))
    gid = invite.group_id
    profile.store.put("contacts", BOB.onion, {"onion": BOB.onion, "name": "bob",
                                              "status": "accepted"})
    stranger, _ = seal_group_message(MALLORY, invite.key, gid,
                                     timestamp_ms=int(time.time() * 1000), parents=(),
                                     body="who am I")
    service, history = await synced(profile, [*honest_backlog(invite.key, gid), stranger],
                                    invite)
    service.post(gid.hex(), "mine")
    history = service.history(gid.hex())["messages"]
    by_body = {m["body"]: m for m in history}
    assert [(by_body[b]["author_name"], by_body[b]["mine"]) for b in
            ("one", "who am I", "mine")] == [("bob", False), (None, False), ("alice", True)]
    assert by_body["who am I"]["author"] == MALLORY.public_key.hex()
    # The API's response model keeps the fields (it drops what it does not declare).
    shown = GroupHistory.model_validate(service.history(gid.hex())).model_dump()
    assert [m["author_name"] for m in shown["messages"]][-2:] == [None, "alice"]
