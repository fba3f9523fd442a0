"""Asyncio adapter around the sans-IO P2PConnection: the onion listener and dialer.

Inbound: tor forwards the onion's virtual port to our listener; anyone may complete a
handshake (that is how contact requests arrive), but garbage, forged or replayed frames
end only that one connection. Outbound: always through the tor gateway's SOCKS port.

Inbound connections draw on separate budgets (P2PLimits), so strangers with throwaway
keys cannot take the slots our contacts need: a bounded pool of handshakes in progress
(each with a deadline), then, once the handshake names the caller, either the contacts'
budget or a small strangers' budget whose idle sessions are dropped. Whether an onion is
a contact is policy owned by the messenger; the node only asks the `is_contact` predicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from nyth.errors import NythError
from nyth.proto.identity import Identity, onion_from_public_key, public_key_from_onion
from nyth.proto.p2p import Ack, Envelope
from nyth.proto.session import (
    PACKET_SIZE,
    AckReceived,
    HandshakeComplete,
    MessageReceived,
    P2PConnection,
)
from nyth.tor.endpoints import SocksEndpoint
from nyth.tor.socks import OnionConnectError, open_onion_connection

log = logging.getLogger(__name__)

P2P_VIRTUAL_PORT = 9878

MessageHandler = Callable[[str, Envelope], Awaitable[bool]]
AckHandler = Callable[[str, bytes], None]
StateHandler = Callable[[str, str, str | None], None]
ContactPredicate = Callable[[str], bool]


@dataclass(frozen=True)
class P2PLimits:
    """Inbound budgets and timeouts.

    Honest traffic needs little: a peer keeps at most one session with us in each
    direction, a handshake takes two round trips, and a stranger only has a contact
    request to deliver (one frame and its ack).
    """

    handshake_timeout: float = 30.0
    # Handshakes in progress, before we know who calls: the oldest gives way when full.
    max_handshakes: int = 32
    # Established inbound sessions of onions the user chose (one per contact).
    max_contact_sessions: int = 256
    # Established inbound sessions of everyone else: the oldest gives way when full.
    max_stranger_sessions: int = 16
    # A stranger's session with no complete frame for this long is closed.
    stranger_idle_timeout: float = 60.0
    # Once a frame has begun, the rest must follow within this (contacts included).
    frame_timeout: float = 30.0
    # A peer that does not read what we write for this long is cut off.
    write_timeout: float = 30.0


# ADD_ONION MaxStreams (per rendezvous circuit; tor then tears down a circuit that goes
# over). An honest remote holds one session with us, plus one while it replaces a dead
# one; 8 leaves room for a few profiles behind one tor client without stream isolation
# (the devnet), while one circuit can hold at most a quarter of the handshake pool and
# half the strangers' budget, so filling either takes several rendezvous circuits.
P2P_MAX_STREAMS = 8


class Session:
    """One established session with a remote onion."""

    def __init__(self, conn: P2PConnection, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, *, inbound: bool = False,
                 write_timeout: float = 30.0) -> None:
        assert conn.remote_public_key is not None
        self.conn = conn
        self.onion = onion_from_public_key(conn.remote_public_key)
        self.reader = reader
        self.writer = writer
        self.inbound = inbound
        self.write_timeout = write_timeout
        self.last_active = time.monotonic()
        self._write_lock = asyncio.Lock()
        self.closed = False

    async def send(self, payload: Envelope | Ack) -> None:
        async with self._write_lock:
            if self.closed:
                raise ConnectionError("session closed")
            self.conn.send(payload)
            self.writer.write(self.conn.data_to_send())
            try:
                async with asyncio.timeout(self.write_timeout):
                    await self.writer.drain()
            except TimeoutError:
                self.close()
                raise ConnectionError(
                    f"the contact read nothing for {self.write_timeout:g} s") from None
            self.last_active = time.monotonic()

    def close(self) -> None:
        self.closed = True
        self.conn.close()
        # abort, not close: close() first flushes what is buffered, which never ends if
        # the peer stopped reading - and the read loop waits on the connection's end.
        with contextlib.suppress(Exception):
            self.writer.transport.abort()


class _Idle(Exception):
    pass


class P2PNode:
    def __init__(self, identity: Identity, socks: SocksEndpoint, *, on_message: MessageHandler,
                 on_ack: AckHandler, on_state: StateHandler, is_contact: ContactPredicate,
                 limits: P2PLimits | None = None) -> None:
        self.identity = identity
        self.socks = socks
        self.limits = limits or P2PLimits()
        self._on_message = on_message
        self._on_ack = on_ack
        self._on_state = on_state
        self._is_contact = is_contact
        # The session we send on, per onion; at most one inbound and one outbound exist.
        self.sessions: dict[str, Session] = {}
        self._dialing: dict[str, asyncio.Future[Session]] = {}
        self._server: asyncio.Server | None = None
        # Insertion-ordered (oldest first), which is the eviction order.
        self._handshaking: dict[asyncio.StreamWriter, None] = {}
        self._contacts: dict[str, Session] = {}
        self._strangers: dict[str, Session] = {}
        self._outbound: dict[str, Session] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._handlers: set[asyncio.Task[Any]] = set()   # the listener's, one per connection
        self.rejected_connections = 0
        self.dropped: Counter[str] = Counter()  # why inbound connections were cut, for ops

    async def listen(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._handle_inbound, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._handshaking):
            writer.transport.abort()
        for pool in (self._contacts, self._strangers, self._outbound):
            for session in list(pool.values()):
                session.close()
        for session in list(self.sessions.values()):
            session.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # The aborted connections end their handlers at once; wait for that, so none is
        # left for the event loop's shutdown to cancel mid-way.
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=5)

    def inbound_counts(self) -> dict[str, int]:
        return {"handshaking": len(self._handshaking), "contacts": len(self._contacts),
                "strangers": len(self._strangers)}

    # -- handshakes ---------------------------------------------------------------------------
    @staticmethod
    async def _handshake(conn: P2PConnection, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        writer.write(conn.data_to_send())
        await writer.drain()
        while True:
            frame = await reader.readexactly(PACKET_SIZE)
            events = conn.receive_data(frame)
            out = conn.data_to_send()
            if out:
                writer.write(out)
                await writer.drain()
            if any(isinstance(e, HandshakeComplete) for e in events):
                return

    async def _handle_inbound(self, reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve_inbound(reader, writer)
        finally:
            self._handlers.discard(task)

    async def _serve_inbound(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        if len(self._handshaking) >= self.limits.max_handshakes:
            # Before the handshake nothing tells a contact from a flood. Refusing newcomers
            # would let a few stalled connections, renewed every deadline, lock everyone
            # out; evicting the oldest means a flood must keep outpacing honest handshakes.
            oldest = next(iter(self._handshaking))
            self._handshaking.pop(oldest)
            oldest.transport.abort()
            self.dropped["handshake_evicted"] += 1
        self._handshaking[writer] = None
        conn = P2PConnection(self.identity)
        try:
            await asyncio.wait_for(self._handshake(conn, reader, writer),
                                   self.limits.handshake_timeout)
        except (NythError, OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            self.rejected_connections += 1
            log.info("inbound handshake rejected: %s", type(exc).__name__)
            writer.transport.abort()
            return
        finally:
            self._handshaking.pop(writer, None)
        session = Session(conn, reader, writer, inbound=True,
                          write_timeout=self.limits.write_timeout)
        self._admit(session)
        self._register(session)
        await self._read_loop(session)

    def _admit(self, session: Session) -> None:
        """Give an authenticated inbound session a slot in its budget."""
        onion = session.onion
        # One inbound session per onion, and the newest wins: only the key's holder can
        # open it, and it dials again only when it believes the old one dead (its gateway
        # restarted, its network changed) while we may not have noticed yet. Refusing the
        # newcomer would leave that contact unable to deliver until we did.
        for pool in (self._contacts, self._strangers):
            old = pool.pop(onion, None)
            if old is not None:
                old.close()
                self.dropped["replaced"] += 1
        if self._is_contact(onion):
            if len(self._contacts) >= self.limits.max_contact_sessions:
                # Contacts can only be this many with a very long contact list; the one
                # quiet longest gives way (we still dial it ourselves when we need it).
                idle = min(self._contacts.values(), key=lambda s: s.last_active)
                self._contacts.pop(idle.onion)
                idle.close()
                self.dropped["contact_evicted"] += 1
            self._contacts[onion] = session
            return
        self._promote_contacts()
        if len(self._strangers) >= self.limits.max_stranger_sessions:
            # The longest-established gives way, not the newcomer: a stranger needs a few
            # seconds to deliver its request, so squatters must keep reconnecting (and
            # handshaking) to hold slots, instead of holding them for free.
            oldest = next(iter(self._strangers.values()))
            self._strangers.pop(oldest.onion)
            oldest.close()
            self.dropped["stranger_evicted"] += 1
            log.info("strangers' session budget full: dropped the oldest")
        self._strangers[onion] = session

    def _promote_contacts(self) -> None:
        for onion, session in list(self._strangers.items()):
            if self._is_contact(onion):
                self._promote(session)

    def _promote(self, session: Session) -> None:
        """A stranger the user has accepted since it connected moves to the contacts'
        budget, out of reach of the strangers' eviction and idle timeout."""
        if len(self._contacts) < self.limits.max_contact_sessions:
            del self._strangers[session.onion]
            self._contacts[session.onion] = session

    async def session_for(self, onion: str, *, timeout: float = 120.0) -> Session:
        """The live session with onion, dialing through Tor if there is none.
        Raises OnionConnectError with a human-readable reason."""
        session = self.sessions.get(onion)
        if session is not None and not session.closed:
            return session
        pending = self._dialing.get(onion)
        if pending is None:
            pending = asyncio.ensure_future(self._dial(onion, timeout))
            self._dialing[onion] = pending
            pending.add_done_callback(lambda _f: self._dialing.pop(onion, None))
        return await asyncio.shield(pending)

    async def _dial(self, onion: str, timeout: float) -> Session:
        self._on_state(onion, "connecting", None)
        try:
            reader, writer = await open_onion_connection(self.socks, onion, P2P_VIRTUAL_PORT,
                                                         timeout=timeout)
        except OnionConnectError as exc:
            self._on_state(onion, "unreachable", exc.reason)
            raise
        conn = P2PConnection(self.identity, public_key_from_onion(onion))
        try:
            await asyncio.wait_for(self._handshake(conn, reader, writer),
                                   self.limits.handshake_timeout)
        except (NythError, OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            writer.transport.abort()
            reason = f"handshake with the contact failed ({type(exc).__name__}: {exc})"
            self._on_state(onion, "unreachable", reason)
            raise OnionConnectError(reason) from exc
        session = Session(conn, reader, writer, write_timeout=self.limits.write_timeout)
        old = self._outbound.pop(onion, None)
        if old is not None:
            old.close()
        self._outbound[onion] = session
        self._register(session)
        task = asyncio.ensure_future(self._read_loop(session))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return session

    def _register(self, session: Session) -> None:
        self.sessions[session.onion] = session
        self._on_state(session.onion, "connected", None)

    def _forget(self, session: Session) -> None:
        onion = session.onion
        for pool in (self._contacts, self._strangers, self._outbound):
            if pool.get(onion) is session:
                del pool[onion]

    # -- established sessions -----------------------------------------------------------------
    async def _read_frame(self, session: Session) -> bytes:
        while True:
            # Contacts may stay quiet as long as they like (the protocol has no keepalive,
            # and an open session is what lets them reach us at once); strangers may not.
            # Asked again on every wait: the user may accept a stranger meanwhile.
            contact = self._is_contact(session.onion)
            if contact and self._strangers.get(session.onion) is session:
                self._promote(session)
            idle = None if contact else self.limits.stranger_idle_timeout
            try:
                async with asyncio.timeout(idle):
                    first = await session.reader.readexactly(1)
                break
            except TimeoutError:
                if not self._is_contact(session.onion):
                    raise _Idle from None
        async with asyncio.timeout(self.limits.frame_timeout):
            return first + await session.reader.readexactly(PACKET_SIZE - 1)

    async def _read_loop(self, session: Session) -> None:
        reason = "closed by the contact"
        try:
            while True:
                frame = await self._read_frame(session)
                session.last_active = time.monotonic()
                for event in session.conn.receive_data(frame):
                    if isinstance(event, MessageReceived):
                        if await self._on_message(session.onion, event.envelope):
                            await session.send(Ack(event.envelope.msg_id))
                    elif isinstance(event, AckReceived):
                        self._on_ack(session.onion, event.msg_id)
        except asyncio.IncompleteReadError:
            pass
        except _Idle:
            reason = f"idle for {self.limits.stranger_idle_timeout:g} s (not a contact)"
            if session.inbound:
                self.dropped["stranger_idle"] += 1
        except TimeoutError:
            reason = f"the contact stalled in the middle of a frame for {self.limits.frame_timeout:g} s"
        except NythError as exc:
            reason = f"protocol error from the contact: {exc}"
            log.info("session with %s ended: %s", session.onion[:8], exc)
        except OSError as exc:
            reason = f"connection lost: {exc}"
        finally:
            session.close()
            self._forget(session)
            self._unregister(session, reason)

    def _unregister(self, session: Session, reason: str) -> None:
        onion = session.onion
        if self.sessions.get(onion) is not session:
            return
        # The other direction's session, if one is still up, carries on.
        for pool in (self._contacts, self._strangers, self._outbound):
            other = pool.get(onion)
            if other is not None and not other.closed:
                self.sessions[onion] = other
                return
        del self.sessions[onion]
        self._on_state(onion, "disconnected", reason)
