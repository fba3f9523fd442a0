"""Round trips the peer records: per contact, from sending a P2P message to its ack (two
real messengers, P2P between them as the node hands it over); per server, each answered
request of the peer's HTTP clients (a real server on 127.0.0.1); and both in the API."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import nyth_peer.messenger as messenger_mod
import pytest
from nyth.latency import LatencyBook
from nyth.proto.bundle import ServerBundle
from nyth.proto.delivery import DeliveryState, RetryPolicy
from nyth.proto.group import BLOB_SIZE, Invite, new_group_key
from nyth.proto.identity import Identity
from nyth.proto.p2p import Ack, Envelope
from nyth_peer.api import create_app
from nyth_peer.engine import Engine
from nyth_peer.events import EventBus
from nyth_peer.groups import GroupService
from nyth_peer.mailbox import MailboxService
from nyth_peer.messenger import Messenger
from nyth_peer.profile import Profile
from nyth_peer.round_trips import timed
from nyth_peer.settings import PeerSettings

from tests.unit.hostile_http import HostileServer, Reply, Request, until

FAST = RetryPolicy(initial=0.1, cap=0.3)
NETWORK_DELAY = 0.05   # each way
SERVER = Identity.from_seed(b"S" * 32)
BUNDLE = ServerBundle(SERVER.public_key, bytes(32), BLOB_SIZE, 100_000, 86_400,
                      int(time.time())).sign(SERVER)
TOKEN = "t" * 40


class Link:
    """Sessions between messengers, as P2PNode gives them: a message is handed to the
    receiver's on_message, and its ack (if it says so) comes back to the sender's on_ack,
    each way after NETWORK_DELAY. `ack_as` makes acks look as if someone else sent them."""

    def __init__(self) -> None:
        self.peers: dict[str, Messenger] = {}
        self.ack_as: str | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def node(self, onion: str) -> Any:
        link = self

        class Session:
            def __init__(self, to: str) -> None:
                self.to, self.closed = to, False

            async def send(self, payload: Envelope | Ack) -> None:
                task = asyncio.ensure_future(link.deliver(onion, self.to, payload))
                link.tasks.add(task)
                task.add_done_callback(link.tasks.discard)

        class Node:
            async def session_for(self, to: str, *, timeout: float = 0) -> Session:
                return Session(to)

        return Node()

    async def deliver(self, sender: str, to: str, payload: Envelope | Ack) -> None:
        await asyncio.sleep(NETWORK_DELAY)
        receiver = self.peers[to]
        if isinstance(payload, Ack):
            receiver.on_ack(self.ack_as or sender, payload.msg_id)
        elif await receiver.on_message(sender, payload):
            await self.deliver(to, sender, Ack(payload.msg_id))


@pytest.fixture
def profiles(tmp_path: Path) -> Iterator[tuple[Profile, Profile]]:
    alice = Profile.create(tmp_path / "a", "alice", "correct horse battery")
    bob = Profile.create(tmp_path / "b", "bob", "correct horse battery")
    yield alice, bob
    alice.store.close()
    bob.store.close()


@pytest.fixture
async def pair(profiles: tuple[Profile, Profile]) -> AsyncIterator[tuple[Messenger, Messenger,
                                                                       Link]]:
    link = Link()
    alice, bob = (Messenger(p, EventBus(), FAST) for p in profiles)
    for m in (alice, bob):
        link.peers[m.profile.identity.onion] = m
        m.start(link.node(m.profile.identity.onion))
    yield alice, bob, link
    for m in (alice, bob):
        await m.stop()
    for task in list(link.tasks):
        task.cancel()


def _delivered(m: Messenger, onion: str, msg_id: str) -> bool:
    return m.message(onion, msg_id)["state"] == DeliveryState.DELIVERED.value


async def test_acked_messages_give_the_contact_round_trips(pair: tuple[Messenger, Messenger,
                                                                       Link]) -> None:
    alice, bob, _link = pair
    a, b = alice.profile.identity.onion, bob.profile.identity.onion
    assert alice.add_contact(b, "hi")["latency"] == {"p50_ms": None, "p95_ms": None,
                                                     "samples": 0}
    await until(lambda: bob.store.has("contacts", a), "bob has alice's request")
    bob.answer_request(a, True)
    await until(lambda: alice.contact(b)["status"] == "accepted", "alice sees the accept")
    sent = alice.send_text(b, "hello")
    await until(lambda: _delivered(alice, b, sent["id"]), "the text delivered")
    # Alice's request and text were acked by bob; bob's accept by alice.
    latency = alice.contact(b)["latency"]
    assert latency["samples"] == 2
    assert 2 * NETWORK_DELAY * 1000 <= latency["p50_ms"] <= latency["p95_ms"] < 5000
    assert bob.contact(a)["latency"]["samples"] == 1
    assert alice.contacts()[0]["latency"] == latency


async def test_no_round_trip_without_the_contacts_ack(pair: tuple[Messenger, Messenger, Link],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    alice, bob, link = pair
    monkeypatch.setattr(messenger_mod, "ACK_TIMEOUT", 0.5)
    a, b = alice.profile.identity.onion, bob.profile.identity.onion
    link.ack_as = Identity.from_seed(b"Y" * 32).onion   # an ack that is not bob's
    alice.add_contact(b, "hi")
    await until(lambda: bob.store.has("contacts", a), "bob has alice's request")
    await until(lambda: (alice.store.list("outbox") or [{}])[0].get("attempts", 0) >= 1,
                "alice's attempt given up")
    assert alice.contact(b)["latency"]["samples"] == 0
    assert not alice._sent_at, "send times leave with their attempt"
    link.ack_as = None
    await until(lambda: alice.contact(b)["latency"]["samples"] == 1, "the retry acked")


def _routes() -> Any:
    async def bundle(request: Request, reply: Reply) -> None:
        await asyncio.sleep(0.05)
        await reply.json(200, {"bundle": base64.b64encode(BUNDLE).decode(),
                               "onion": SERVER.onion})

    async def page(request: Request, reply: Reply) -> None:
        await reply.json(200, {"blobs": [], "next": "0-0", "more": False})

    async def refuse(request: Request, reply: Reply) -> None:
        await reply.json(503, {"error": "busy"})

    async def hang_up(request: Request, reply: Reply) -> None:
        reply.writer.transport.abort()

    async def stream(request: Request, reply: Reply) -> None:
        async def pings() -> AsyncIterator[bytes]:
            while True:
                yield b": ping\r\n\r\n"
                await asyncio.sleep(0.1)
        await reply.chunked(200, pings(), {"content-type": "text/event-stream"})

    return {("GET", "/v1/bundle"): bundle, ("GET", "/v1/blobs"): page,
            ("GET", "/busy"): refuse, ("GET", "/hang-up"): hang_up,
            ("GET", "/v1/blobs/stream"): stream}


async def test_timed_clients_record_answered_requests_per_onion() -> None:
    book = LatencyBook()
    async with HostileServer(_routes()) as server:
        make = timed(server.client, book)
        async with make() as http:
            await http.get(f"http://{SERVER.onion}.onion/v1/bundle")
            await http.get(f"http://{SERVER.onion}.onion/busy")   # an answer all the same
            with pytest.raises(httpx.HTTPError):
                await http.get(f"http://{SERVER.onion}.onion/hang-up")
            await http.get("http://not-a-server.test/busy")
        summary = book.summary(SERVER.onion)
        assert summary["samples"] == 2 and len(book) == 1
        assert summary["p95_ms"] is not None and summary["p95_ms"] >= 50
        assert summary["p50_ms"] is not None and summary["p50_ms"] < summary["p95_ms"]


async def test_the_api_shows_round_trips_of_contacts_and_servers(
        profiles: tuple[Profile, Profile], tmp_path: Path) -> None:
    profile, _ = profiles
    settings: dict[str, Any] = {"data_dir": tmp_path, "tor_socks": "127.0.0.1:9050",
                                "tor_control": "127.0.0.1:9051"}
    engine = Engine(PeerSettings(**settings))
    events = engine.events
    engine.profile = profile
    engine.messenger = Messenger(profile, events, FAST)
    bob = Identity.from_seed(b"B" * 32).onion
    profile.store.put("contacts", bob, {"onion": bob, "name": "bob", "status": "accepted"})
    engine.messenger.latency.record(bob, 812.0)
    engine.mailbox = MailboxService(profile, events, lambda iso: httpx.AsyncClient(),
                                    mailbox_onion=None, poll_seconds=60, detection_bits=None,
                                    on_record=lambda *_: True)
    async with HostileServer(_routes()) as server:
        # The group service takes its clients from a timed factory, as in the engine.
        engine.groups = GroupService(profile, events, engine.messenger,
                                     timed(server.client, engine.server_latency), FAST)
        invite = Invite("friends", new_group_key(), (BUNDLE,))
        engine.groups._join(invite)
        try:
            await until(lambda: engine.server_latency.summary(SERVER.onion)["samples"] >= 2,
                        "the bundle and a page read")
        finally:
            await engine.groups.stop()
        transport = httpx.ASGITransport(app=create_app(engine, TOKEN))
        async with httpx.AsyncClient(transport=transport, base_url="http://peer",
                                     headers={"authorization": f"Bearer {TOKEN}"}) as api:
            servers = (await api.get("/v1/servers")).json()
            contacts = (await api.get("/v1/contacts")).json()
            one = (await api.get(f"/v1/contacts/{bob}")).json()
    [shown] = [s for s in servers if s["onion"] == SERVER.onion]
    assert shown["latency"]["samples"] >= 2 and shown["latency"]["p95_ms"] >= 50
    assert contacts[0]["latency"] == one["latency"] == {"p50_ms": 812.0, "p95_ms": 812.0,
                                                        "samples": 1}
