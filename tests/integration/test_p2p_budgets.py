"""The P2P listener's inbound budgets, with real sockets on 127.0.0.1 (no Tor: throwaway-key
clients connect straight to the listener, which is what tor would forward to it)."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from nyth.proto.identity import Identity
from nyth.proto.p2p import Ack, Envelope, MessageKind, encode_text, new_msg_id
from nyth.proto.session import PACKET_SIZE, AckReceived, P2PConnection
from nyth.tor.endpoints import SocksEndpoint
from nyth_peer.p2p import P2PLimits, P2PNode, Session

pytestmark = [pytest.mark.integration]


class Bob:
    """A listening P2P node and what it reported."""

    def __init__(self, limits: P2PLimits) -> None:
        self.identity = Identity.generate()
        self.contacts: set[str] = set()
        self.received: list[tuple[str, bytes]] = []
        self.states: list[tuple[str, str, str | None]] = []
        self.node = P2PNode(self.identity, SocksEndpoint("127.0.0.1", 9), on_message=self._message,
                            on_ack=lambda _o, _m: None, on_state=self._state,
                            is_contact=self.contacts.__contains__, limits=limits)
        self.port = 0

    async def _message(self, onion: str, envelope: Envelope) -> bool:
        self.received.append((onion, envelope.msg_id))
        return onion in self.contacts   # acked only for contacts, like the messenger

    def _state(self, onion: str, state: str, reason: str | None) -> None:
        self.states.append((onion, state, reason))

    async def __aenter__(self) -> Bob:
        self.port = await self.node.listen("127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.node.close()


class Client:
    def __init__(self, identity: Identity, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, conn: P2PConnection) -> None:
        self.identity, self.reader, self.writer, self.conn = identity, reader, writer, conn

    @classmethod
    async def connect(cls, bob: Bob, identity: Identity | None = None) -> Client:
        identity = identity or Identity.generate()
        reader, writer = await asyncio.open_connection("127.0.0.1", bob.port)
        conn = P2PConnection(identity, bob.identity.public_key)
        await asyncio.wait_for(P2PNode._handshake(conn, reader, writer), 10)
        return cls(identity, reader, writer, conn)

    async def deliver(self) -> bytes:
        """Send one text and wait for bob's ack."""
        msg_id = new_msg_id()
        self.conn.send(Envelope(msg_id, MessageKind.TEXT, int(time.time() * 1000),
                                encode_text("hello")))
        self.writer.write(self.conn.data_to_send())
        await self.writer.drain()
        while True:
            frame = await asyncio.wait_for(self.reader.readexactly(PACKET_SIZE), 10)
            for event in self.conn.receive_data(frame):
                if isinstance(event, AckReceived):
                    assert event.msg_id == msg_id
                    return msg_id

    def close(self) -> None:
        self.writer.transport.abort()


async def settled(bob: Bob) -> None:
    """Until bob has finished the handshakes clients consider done."""
    for _ in range(100):
        if bob.node.inbound_counts()["handshaking"] == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("handshakes did not finish")


async def closed_by_bob(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(PACKET_SIZE), within) == b""
    except TimeoutError:   # before OSError, of which it is a subclass
        return False
    except OSError:
        return True


async def test_strangers_cannot_take_the_contacts_slots() -> None:
    limits = P2PLimits()   # the shipped budgets
    async with Bob(limits) as bob:
        # More strangers than the old shared limit of 128, each with its own throwaway key,
        # all completing the handshake and then sitting idle.
        strangers = [await Client.connect(bob) for _ in range(130)]
        await settled(bob)
        # ... and pre-authentication squatters that never send a byte.
        squatters = [await asyncio.open_connection("127.0.0.1", bob.port)
                     for _ in range(limits.max_handshakes + 8)]
        await asyncio.sleep(0.1)
        counts = bob.node.inbound_counts()
        assert counts["strangers"] == limits.max_stranger_sessions
        assert counts["handshaking"] <= limits.max_handshakes
        # The oldest strangers gave way; the newest ones are still served.
        assert await closed_by_bob(strangers[0].reader, 2)
        assert not await closed_by_bob(strangers[-1].reader, 0.2)

        alice = Identity.generate()
        bob.contacts.add(alice.onion)
        contact = await Client.connect(bob, alice)
        msg_id = await contact.deliver()
        assert (alice.onion, msg_id) in bob.received
        assert bob.node.inbound_counts()["contacts"] == 1
        assert bob.node.sessions[alice.onion].inbound

        # A new stranger (a real contact request) still gets in, too.
        newcomer = await Client.connect(bob)
        assert not await closed_by_bob(newcomer.reader, 0.2)
        assert bob.node.inbound_counts()["strangers"] == limits.max_stranger_sessions
        assert bob.node.dropped["stranger_evicted"] >= 130 + 1 - limits.max_stranger_sessions
        for client in [*strangers, contact, newcomer]:
            client.close()
        for _, writer in squatters:
            writer.transport.abort()


async def test_idle_strangers_are_dropped_contacts_are_not() -> None:
    limits = P2PLimits(stranger_idle_timeout=0.3)
    async with Bob(limits) as bob:
        alice = Identity.generate()
        bob.contacts.add(alice.onion)
        contact = await Client.connect(bob, alice)
        stranger = await Client.connect(bob)
        assert await closed_by_bob(stranger.reader, 3)
        assert any(o == stranger.identity.onion and s == "disconnected" and "idle" in (r or "")
                   for o, s, r in bob.states)
        assert bob.node.dropped["stranger_idle"] == 1
        assert bob.node.inbound_counts()["strangers"] == 0
        # The contact stayed as quiet for longer, and is still connected and served.
        assert not await closed_by_bob(contact.reader, 0.5)
        await contact.deliver()

        # A stranger the user accepts while it is connected is not dropped as idle.
        later = await Client.connect(bob)
        await asyncio.sleep(0.1)
        bob.contacts.add(later.identity.onion)
        assert not await closed_by_bob(later.reader, 1.0)
        assert bob.node.inbound_counts() == {"handshaking": 0, "contacts": 2, "strangers": 0}
        await later.deliver()
        contact.close()
        later.close()


async def test_deadlines_handshake_and_half_sent_frame() -> None:
    limits = P2PLimits(handshake_timeout=0.3, frame_timeout=0.3)
    async with Bob(limits) as bob:
        # Connects and never says HELLO.
        reader, writer = await asyncio.open_connection("127.0.0.1", bob.port)
        assert await closed_by_bob(reader, 3)
        assert bob.node.rejected_connections == 1
        writer.close()
        # A contact that starts a frame and stalls is cut off too.
        alice = Identity.generate()
        bob.contacts.add(alice.onion)
        contact = await Client.connect(bob, alice)
        contact.writer.write(b"\x00" * 100)
        assert await closed_by_bob(contact.reader, 3)
        assert any("stalled" in (r or "") for _, s, r in bob.states if s == "disconnected")
        contact.close()


async def test_one_inbound_session_per_onion_the_newest_wins() -> None:
    async with Bob(P2PLimits()) as bob:
        alice = Identity.generate()
        bob.contacts.add(alice.onion)
        first = await Client.connect(bob, alice)
        second = await Client.connect(bob, alice)
        assert await closed_by_bob(first.reader, 2)
        await second.deliver()
        assert bob.node.inbound_counts()["contacts"] == 1
        assert bob.node.dropped["replaced"] == 1
        # The replaced session's end did not report alice as disconnected.
        assert [s for o, s, _ in bob.states if o == alice.onion] == ["connected", "connected"]
        # Same for a stranger: a second connection replaces the first, not a second slot.
        mallory = Identity.generate()
        one = await Client.connect(bob, mallory)
        two = await Client.connect(bob, mallory)
        assert await closed_by_bob(one.reader, 2)
        assert not await closed_by_bob(two.reader, 0.2)
        assert bob.node.inbound_counts()["strangers"] == 1
        for client in (second, two):
            client.close()


async def test_a_peer_that_stops_reading_is_cut_off() -> None:
    initiator = P2PConnection(Identity.generate(), (responder_id := Identity.generate()).public_key)
    responder = P2PConnection(responder_id)
    responder.receive_data(initiator.data_to_send())
    initiator.receive_data(responder.data_to_send())
    responder.receive_data(initiator.data_to_send())
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reader, writer = await asyncio.open_connection(sock=ours)
    session = Session(responder, reader, writer, write_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(ConnectionError, match="read nothing"):
        for _ in range(10_000):   # theirs never reads: the buffers fill, drain stalls
            await session.send(Ack(new_msg_id()))
    assert time.monotonic() - started < 5
    assert session.closed
    theirs.close()
