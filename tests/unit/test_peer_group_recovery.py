"""The peer's gap recovery (group_recovery.RecoveryDriver) and moves (group_moves) with
real profiles, stores and services: group servers are real HTTP servers on 127.0.0.1
(tests.unit.hostile_http, one per onion), and members talk over an in-memory stand-in for
the P2P node that hands each message to the other side's messenger, as the node does.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nyth.proto.bundle import ServerBundle
from nyth.proto.delivery import RetryPolicy
from nyth.proto.group import (
    BLOB_SIZE,
    Invite,
    Move,
    new_group_key,
    open_group_message,
    seal_group_message,
    seal_group_move,
)
from nyth.proto.group_sync import MAX_PULL, GroupPull
from nyth.proto.identity import Identity
from nyth.proto.p2p import Envelope, MessageKind, new_msg_id
from nyth.proto.recovery import RecoveryPolicy
from nyth_peer.api import create_app
from nyth_peer.events import EventBus
from nyth_peer.groups import GroupService
from nyth_peer.messenger import Messenger
from nyth_peer.profile import Profile

from tests.unit.hostile_http import Handler, HostileServer, Reply, Request, until

SERVER_A = Identity.from_seed(b"a" * 32)
SERVER_B = Identity.from_seed(b"b" * 32)
BOB = Identity.from_seed(b"B" * 32)
STRANGER = Identity.from_seed(b"X" * 32)
FAST = RetryPolicy(initial=0.1, cap=0.3)
QUICK = RecoveryPolicy(first_delay_ms=100, backoff_ms=(300,), jitter=0.0, pull_timeout_ms=3000,
                       heads_every_ms=200)
TOKEN = "t" * 32


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def bundle_of(server: Identity) -> bytes:
    return ServerBundle(server.public_key, bytes(32), BLOB_SIZE, 100_000, 86_400,
                        int(time.time())).sign(server)


BUNDLES = {SERVER_A.onion: bundle_of(SERVER_A), SERVER_B.onion: bundle_of(SERVER_B)}

Reads = Callable[[int], list[bytes]]  # the n-th page request (0, 1, …) -> blobs in it


def group_server(server: Identity, reads: Reads) -> HostileServer:
    """A group server whose pages are reads(n) for its n-th page request, whose live stream
    stays quiet, and which accepts posts (kept in .posted)."""
    pages = 0
    posted: list[bytes] = []

    async def bundle(request: Request, reply: Reply) -> None:
        await reply.json(200, {"bundle": b64(BUNDLES[server.onion]), "onion": server.onion})

    async def page(request: Request, reply: Reply) -> None:
        nonlocal pages
        blobs = reads(pages)
        pages += 1
        items = [{"id": f"{i + 1}-0", "blob": b64(blob)} for i, blob in enumerate(blobs)]
        await reply.json(200, {"blobs": items, "next": items[-1]["id"] if items else "0",
                               "more": False})

    async def stream(request: Request, reply: Reply) -> None:
        async def pings() -> AsyncIterator[bytes]:
            while True:
                yield b": ping\r\n\r\n"
                await asyncio.sleep(0.1)
        await reply.chunked(200, pings(), {"content-type": "text/event-stream"})

    async def post(request: Request, reply: Reply) -> None:
        posted.append(request.body)
        await reply.json(201, {"id": f"{len(posted)}-1"})

    routes: dict[tuple[str, str], Handler] = {
        ("GET", "/v1/bundle"): bundle, ("GET", "/v1/blobs"): page,
        ("GET", "/v1/blobs/stream"): stream, ("POST", "/v1/blobs"): post}
    hostile = HostileServer(routes)
    hostile.posted = posted  # type: ignore[attr-defined]
    return hostile


def routed(servers: dict[str, HostileServer]) -> Callable[[], httpx.AsyncClient]:
    """Clients whose requests to <onion>.onion land on that onion's server."""
    def client() -> httpx.AsyncClient:
        mounts = {f"http://{onion}.onion": httpx.AsyncHTTPTransport(
            proxy=f"http://127.0.0.1:{server.port}") for onion, server in servers.items()}
        return httpx.AsyncClient(mounts=mounts, trust_env=False)
    return client


class FakeSession:
    def __init__(self, net: FakeNet, sender: str, to: str) -> None:
        self.net, self.sender, self.to = net, sender, to
        self.closed = False

    async def send(self, envelope: Envelope) -> None:
        self.net.sent.append((self.sender, self.to, envelope))
        target = self.net.members.get(self.to)
        if target is not None:
            await target.messenger.on_message(self.sender, envelope)


class FakeNode:
    def __init__(self, net: FakeNet, onion: str) -> None:
        self.net, self.onion = net, onion

    async def session_for(self, onion: str, *, timeout: float = 0) -> FakeSession:
        return FakeSession(self.net, self.onion, onion)


class FakeNet:
    """P2P as the node gives it to the messenger: sessions up and down, messages in."""

    def __init__(self) -> None:
        self.members: dict[str, GroupService] = {}
        self.sent: list[tuple[str, str, Envelope]] = []

    def join(self, service: GroupService) -> None:
        onion = service.profile.identity.onion
        service.recovery.node = FakeNode(self, onion)  # type: ignore[assignment]
        self.members[onion] = service

    def connect(self, a: GroupService, b: GroupService) -> None:
        a.messenger.on_state(b.profile.identity.onion, "connected", None)
        b.messenger.on_state(a.profile.identity.onion, "connected", None)


@pytest.fixture
def profiles(tmp_path: Path) -> Iterator[Callable[[str], Profile]]:
    made: list[Profile] = []

    def make(name: str) -> Profile:
        made.append(Profile.create(tmp_path / name, name, "correct horse battery"))
        return made[-1]

    yield make
    for profile in made:
        profile.store.close()


def service_for(profile: Profile, servers: dict[str, HostileServer],
                policy: RecoveryPolicy = QUICK) -> GroupService:
    events = EventBus()
    service = GroupService(profile, events, Messenger(profile, events, FAST), routed(servers),
                           FAST, policy=policy)
    service.start()
    return service


def bobs_two(invite: Invite) -> tuple[bytes, bytes, Any, Any]:
    """Bob's m1 and m2 (naming m1), as blobs and messages."""
    now = int(time.time() * 1000)
    blob1, m1 = seal_group_message(BOB, invite.key, invite.group_id, timestamp_ms=now - 2000,
                                   parents=(), body="one")
    blob2, m2 = seal_group_message(BOB, invite.key, invite.group_id, timestamp_ms=now - 1000,
                                   parents=(m1.hash,), body="two")
    return blob1, blob2, m1, m2


def recent(service: GroupService, gid: str) -> list[dict[str, Any]]:
    return list(service.group(gid)["recovery"]["recent"])


async def test_a_gap_on_one_server_is_filled_from_another(profiles: Any) -> None:
    invite = Invite.create("club", BOB.public_key, (BUNDLES[SERVER_A.onion], BUNDLES[SERVER_B.onion]))
    gid = invite.group_id.hex()
    blob1, blob2, m1, _ = bobs_two(invite)
    # A lost m1; B's first answer is empty (the gap is not B's stream filling it), its
    # re-read has m1.
    async with group_server(SERVER_A, lambda n: [blob2]) as a, \
            group_server(SERVER_B, lambda n: [] if n == 0 else [blob1]) as b:
        service = service_for(profiles("alice"), {SERVER_A.onion: a, SERVER_B.onion: b})
        service._join(invite)
        try:
            done = await until(lambda: recent(service, gid), "the gap to be recovered")
        finally:
            await service.stop()
    assert done[0]["hash"] == m1.hash.hex()
    assert done[0]["recovered_by"] == {"method": "server", "source": SERVER_B.onion, "name": None}
    view = service.group(gid)["recovery"]
    assert (view["found"], view["recovered"], view["open"]) == (1, {"server": 1}, [])
    [row] = [m for m in service.history(gid)["messages"] if m["hash"] == m1.hash.hex()]
    assert row["recovered_by"]["method"] == "server" and row["body"] == "one"
    kinds = [e["type"] for e in service.events.recent]
    assert "group_gap_found" in kinds and "group_gap_recovered" in kinds
    # The counts, and how the gap was filled, outlive the peer.
    events = EventBus()
    reloaded = GroupService(service.profile, events, Messenger(service.profile, events, FAST),
                            routed({}), FAST)
    assert reloaded.group(gid)["recovery"]["recovered"] == {"server": 1}
    assert reloaded.group(gid)["recovery"]["found"] == 1
    [row] = [m for m in reloaded.history(gid)["messages"] if m["hash"] == m1.hash.hex()]
    assert row["recovered_by"]["source"] == SERVER_B.onion


async def test_a_gap_is_filled_by_re_reading_the_same_server(profiles: Any) -> None:
    invite = Invite.create("club", BOB.public_key, (BUNDLES[SERVER_A.onion],))
    gid = invite.group_id.hex()
    blob1, blob2, _m1, _ = bobs_two(invite)
    async with group_server(SERVER_A, lambda n: [blob2] if n == 0 else [blob1, blob2]) as a:
        service = service_for(profiles("alice"), {SERVER_A.onion: a})
        service._join(invite)
        try:
            done = await until(lambda: recent(service, gid), "the gap to be recovered")
        finally:
            await service.stop()
    assert done[0]["recovered_by"] == {"method": "refetch", "source": SERVER_A.onion, "name": None}
    # The re-read left the main cursor where the live stream had it.
    assert service.store.get("cursors", SERVER_A.onion) == {"cursor": "1-0"}
    # What it cost: the main read's blob, and both blobs again, charged to the re-read.
    cost = service.group(gid)["recovery"]["cost"]
    assert cost["reread_blobs"] == 2 and cost["blobs_read"] >= 1 and cost["p2p_messages"] == 0


async def test_a_gap_is_pulled_from_a_member_who_is_not_a_contact(profiles: Any) -> None:
    invite = Invite.create("club", BOB.public_key, (BUNDLES[SERVER_A.onion],))
    gid = invite.group_id.hex()
    blob1, blob2, m1, _ = bobs_two(invite)
    net = FakeNet()
    async with group_server(SERVER_A, lambda n: [blob1, blob2]) as honest, \
            group_server(SERVER_A, lambda n: [blob2]) as withholding:
        alice = service_for(profiles("alice"), {SERVER_A.onion: honest})
        carol = service_for(profiles("carol"), {SERVER_A.onion: withholding})
        net.join(alice)
        net.join(carol)
        alice_onion, carol_onion = alice.profile.identity.onion, carol.profile.identity.onion
        alice._join(invite, introduced=(carol_onion,))  # alice invited carol
        carol._join(invite, introduced=(alice_onion,))
        await until(lambda: len(alice.history(gid)["messages"]) == 2, "alice's history")
        net.connect(alice, carol)
        try:
            done = await until(lambda: recent(carol, gid), "carol's gap to be recovered")
        finally:
            await alice.stop()
            await carol.stop()
    assert done[0]["recovered_by"] == {"method": "member", "source": alice_onion, "name": None}
    [row] = [m for m in carol.history(gid)["messages"] if m["hash"] == m1.hash.hex()]
    assert row["member"] == alice_onion and row["body"] == "one"
    kinds = {e.kind for _s, _t, e in net.sent}
    assert MessageKind.GROUP_PULL in kinds and MessageKind.GROUP_PART in kinds
    # Nothing of it went through either messenger's outbox.
    assert alice.store.list("outbox") == [] and carol.store.list("outbox") == []
    # Each side counts the sync messages it sent and received for the group: at least the
    # PULL and the PART (HEADS may have gone too).
    for side in (alice, carol):
        cost = side.group(gid)["recovery"]["cost"]
        assert cost["p2p_messages"] >= 2 and cost["p2p_bytes"] > len(m1.wire), cost


async def test_pulls_from_non_members_and_oversized_pulls_get_nothing(profiles: Any) -> None:
    invite = Invite.create("club", BOB.public_key, (BUNDLES[SERVER_A.onion],))
    gid = invite.group_id
    blob1, blob2, m1, m2 = bobs_two(invite)
    net = FakeNet()
    member = Identity.from_seed(b"M" * 32).onion
    async with group_server(SERVER_A, lambda n: [blob1, blob2]) as a:
        alice = service_for(profiles("alice"), {SERVER_A.onion: a})
        net.join(alice)
        alice._join(invite, introduced=(member,))
        await until(lambda: len(alice.history(gid.hex())["messages"]) == 2, "alice's history")

        async def pull(sender: str, body: bytes) -> bool:
            envelope = Envelope(new_msg_id(), MessageKind.GROUP_PULL, 1, body)
            return await alice.messenger.on_message(sender, envelope)

        try:
            # A stranger's PULL: no answer, no ack, nothing remembered.
            assert await pull(STRANGER.onion, GroupPull(gid, (m1.hash,)).encode()) is False
            # A member's PULL of more than MAX_PULL hashes is malformed: refused whole.
            huge = gid + bytes([MAX_PULL + 1]) + b"".join(
                bytes([i]) * 32 for i in range(MAX_PULL + 1))
            assert await pull(member, huge) is False
            await asyncio.sleep(0.3)
            assert net.sent == [] and alice.recovery.dropped == 1
            assert alice.store.list(f"seen:{STRANGER.onion}") == []
            # ...and cost the member none of its budget: a proper one is answered in full.
            await pull(member, GroupPull(gid, (m1.hash, m2.hash)).encode())
            await until(lambda: len(net.sent) == 2, "the answer")
        finally:
            await alice.stop()
    answered = [e for _s, to, e in net.sent if to == member]
    assert {e.kind for e in answered} == {MessageKind.GROUP_PART}


async def test_the_owner_moves_the_group_and_carries_its_history(profiles: Any) -> None:
    async with group_server(SERVER_A, lambda n: []) as a, group_server(SERVER_B, lambda n: []) as b:
        service = service_for(profiles("alice"), {SERVER_A.onion: a, SERVER_B.onion: b})
        try:
            view = await service.create("club", [SERVER_A.onion])
            gid = view["id"]
            assert (view["version"], view["owned"], view["epoch"]) == (2, True, 0)
            service.post(gid, "before the move")
            await until(lambda: len(a.posted) == 1, "the post")  # type: ignore[attr-defined]
            moved = await service.moves.move(gid, [SERVER_B.onion])
            assert (moved["epoch"], moved["servers"]) == (1, [SERVER_B.onion])
            assert [d["onion"] for d in moved["draining"]] == [SERVER_A.onion]
            # The MOVE to the old and the new server; the history carried to the new one.
            await until(lambda: len(a.posted) == 2 and len(b.posted) == 2,  # type: ignore[attr-defined]
                        "the move and the carried post")
            service.post(gid, "after the move")
            await until(lambda: len(b.posted) == 3, "a post to the new server")  # type: ignore[attr-defined]
        finally:
            await service.stop()
    key = base64.b64decode(service.store.get("groups", gid)["key"])  # type: ignore[index]
    opened = [open_group_message(key, bytes.fromhex(gid), blob) for blob in b.posted]  # type: ignore[attr-defined]
    assert sorted(m.body for m in opened) == ["", "after the move", "before the move"]
    assert len(a.posted) == 2  # type: ignore[attr-defined]  # nothing new goes to the old server
    history = service.history(gid)["messages"]
    assert [m["kind"] for m in history] == ["text", "move", "text"]
    assert all(m["state"] == "posted" for m in history)


async def test_a_move_is_held_while_following_is_off_and_followed_when_on(profiles: Any) -> None:
    invite = Invite.create("club", BOB.public_key, (BUNDLES[SERVER_A.onion],))
    gid = invite.group_id.hex()
    move, _ = seal_group_move(BOB, invite.key, invite.group_id, timestamp_ms=1, parents=(),
                              move=Move(1, (BUNDLES[SERVER_B.onion],)))
    async with group_server(SERVER_A, lambda n: [move]) as a, group_server(SERVER_B, lambda n: []) as b:
        service = service_for(profiles("alice"), {SERVER_A.onion: a, SERVER_B.onion: b})
        service._join(invite)
        try:
            service.set_recovery(gid, ["refetch", "server", "member"])
            ignored = await until(lambda: service.group(gid)["recovery"]["moves_ignored"],
                                  "the move to be held")
            assert ignored[0]["reason"] == "following moves is off for this group"
            assert service.group(gid)["epoch"] == 0
            view = service.set_recovery(gid, ["refetch", "move"])
            assert (view["epoch"], view["servers"]) == (1, [SERVER_B.onion])
            assert [d["onion"] for d in view["draining"]] == [SERVER_A.onion]
        finally:
            await service.stop()


# -- the API ----------------------------------------------------------------------------------

@pytest.fixture
async def api(profiles: Any) -> AsyncIterator[tuple[httpx.AsyncClient, GroupService]]:
    # Every onion the groups name is routed to a local server: nothing resolves names.
    async with group_server(SERVER_A, lambda n: []) as a, group_server(SERVER_B, lambda n: []) as b:
        service = service_for(profiles("alice"), {SERVER_A.onion: a, SERVER_B.onion: b})
        engine: Any = type("E", (), {"profile": service.profile, "groups": service,
                                     "messenger": service.messenger, "events": service.events})()
        transport = httpx.ASGITransport(app=create_app(engine, TOKEN))
        async with httpx.AsyncClient(transport=transport, base_url="http://peer",
                                     headers={"authorization": f"Bearer {TOKEN}"}) as client:
            yield client, service
        await service.stop()


@pytest.mark.parametrize("body", [
    {"recovery": ["servers"]}, {"recovery": ["member", "member"]}, {"recovery": "member"},
    {"recovery": ["refetch"], "other": 1}, {"recovery": ["refetch"] * 5}])
async def test_patch_refuses_what_is_not_a_list_of_distinct_strategies(
        api: Any, body: dict[str, Any]) -> None:
    client, service = api
    gid = service._join(Invite.create("club", BOB.public_key, (BUNDLES[SERVER_A.onion],)))["id"]
    answer = await client.patch(f"/v1/groups/{gid}", json=body)
    assert answer.status_code == 422, answer.text
    assert service.group(gid)["recovery"]["strategies"] == ["server", "member", "refetch", "move"]


async def test_patch_switches_strategies_and_they_are_kept(api: Any) -> None:
    client, service = api
    gid = service._join(Invite.create("club", BOB.public_key, (BUNDLES[SERVER_A.onion],)))["id"]
    answer = await client.patch(f"/v1/groups/{gid}", json={"recovery": ["member", "refetch"]})
    assert answer.status_code == 200 and answer.json()["recovery"]["strategies"] == ["member", "refetch"]
    machine = service.recovery.machines[gid]
    assert [str(s) for s in machine.policy.strategies] == ["member", "refetch"]
    assert machine.policy.follow_moves is False
    assert service.store.get("groups", gid)["recovery"] == ["member", "refetch"]
    assert (await client.patch(f"/v1/groups/{'0' * 32}", json={"recovery": []})).status_code == 404


async def test_only_the_owner_may_move_a_group(api: Any) -> None:
    client, service = api
    owned_by_bob = service._join(Invite.create("club", BOB.public_key, (BUNDLES[SERVER_A.onion],)))
    v1 = service._join(Invite("old", new_group_key(), (BUNDLES[SERVER_A.onion],)))
    body = {"servers": [SERVER_B.onion]}
    answer = await client.post(f"/v1/groups/{owned_by_bob['id']}/move", json=body)
    assert answer.status_code == 403
    assert f"only the group's owner may move it; its owner is {BOB.onion}.onion" in answer.text
    answer = await client.post(f"/v1/groups/{v1['id']}/move", json=body)
    assert answer.status_code == 403 and "created before moves" in answer.text
    assert (await client.post(f"/v1/groups/{'0' * 32}/move", json=body)).status_code == 404
    assert (await client.post(f"/v1/groups/{v1['id']}/move", json={"servers": []})).status_code == 422
    assert service.group(owned_by_bob["id"])["epoch"] == 0


async def test_openapi_documents_the_group_views(api: Any) -> None:
    client, _service = api
    spec = (await client.get("/openapi.json")).json()
    group = spec["paths"]["/v1/groups/{gid}"]
    assert set(group) == {"get", "patch"}
    ref = group["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.endswith("/GroupView")
    move = spec["paths"]["/v1/groups/{gid}/move"]["post"]["responses"]
    assert {"200", "400", "403", "404"} <= set(move)
    recovery = spec["components"]["schemas"]["GroupPatch"]["properties"]["recovery"]
    assert recovery["anyOf"][0]["items"]["enum"] == ["refetch", "server", "member", "move"]
    history = spec["components"]["schemas"]["GroupMessageView"]["properties"]
    assert {"seen_by", "recovered_by", "kind", "move"} <= set(history)
