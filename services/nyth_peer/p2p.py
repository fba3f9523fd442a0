"""Asyncio adapter around the sans-IO P2PConnection: the onion listener and dialer.

Inbound: tor forwards the onion's virtual port to our listener; anyone may complete a
handshake (that is how contact requests arrive), but garbage, forged or replayed frames
end only that one connection. Outbound: always through the tor gateway's SOCKS port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

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
HANDSHAKE_TIMEOUT = 30.0
MAX_INBOUND = 128

MessageHandler = Callable[[str, Envelope], Awaitable[bool]]
AckHandler = Callable[[str, bytes], None]
StateHandler = Callable[[str, str, str | None], None]


class Session:
    """One established session with a remote onion."""

    def __init__(self, conn: P2PConnection, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        assert conn.remote_public_key is not None
        self.conn = conn
        self.onion = onion_from_public_key(conn.remote_public_key)
        self.reader = reader
        self.writer = writer
        self._write_lock = asyncio.Lock()
        self.closed = False

    async def send(self, payload: Envelope | Ack) -> None:
        async with self._write_lock:
            if self.closed:
                raise ConnectionError("session closed")
            self.conn.send(payload)
            self.writer.write(self.conn.data_to_send())
            await self.writer.drain()

    def close(self) -> None:
        self.closed = True
        self.conn.close()
        with contextlib.suppress(Exception):
            self.writer.close()


class P2PNode:
    def __init__(self, identity: Identity, socks: SocksEndpoint, *, on_message: MessageHandler,
                 on_ack: AckHandler, on_state: StateHandler) -> None:
        self.identity = identity
        self.socks = socks
        self._on_message = on_message
        self._on_ack = on_ack
        self._on_state = on_state
        self.sessions: dict[str, Session] = {}
        self._dialing: dict[str, asyncio.Future[Session]] = {}
        self._server: asyncio.Server | None = None
        self._inbound = asyncio.Semaphore(MAX_INBOUND)
        self._tasks: set[asyncio.Task[None]] = set()
        self.rejected_connections = 0

    async def listen(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._handle_inbound, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions.values()):
            session.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

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
        if self._inbound.locked():
            writer.close()
            return
        async with self._inbound:
            conn = P2PConnection(self.identity)
            try:
                await asyncio.wait_for(self._handshake(conn, reader, writer), HANDSHAKE_TIMEOUT)
            except (NythError, OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                self.rejected_connections += 1
                log.info("inbound handshake rejected: %s", type(exc).__name__)
                writer.close()
                return
            session = Session(conn, reader, writer)
            self._register(session)
            await self._read_loop(session)

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
            await asyncio.wait_for(self._handshake(conn, reader, writer), HANDSHAKE_TIMEOUT)
        except (NythError, OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            writer.close()
            reason = f"handshake with the contact failed ({type(exc).__name__}: {exc})"
            self._on_state(onion, "unreachable", reason)
            raise OnionConnectError(reason) from exc
        session = Session(conn, reader, writer)
        self._register(session)
        task = asyncio.ensure_future(self._read_loop(session))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return session

    def _register(self, session: Session) -> None:
        self.sessions[session.onion] = session
        self._on_state(session.onion, "connected", None)

    # -- established sessions -----------------------------------------------------------------
    async def _read_loop(self, session: Session) -> None:
        reason = "closed by the contact"
        try:
            while True:
                frame = await session.reader.readexactly(PACKET_SIZE)
                for event in session.conn.receive_data(frame):
                    if isinstance(event, MessageReceived):
                        if await self._on_message(session.onion, event.envelope):
                            await session.send(Ack(event.envelope.msg_id))
                    elif isinstance(event, AckReceived):
                        self._on_ack(session.onion, event.msg_id)
        except asyncio.IncompleteReadError:
            pass
        except NythError as exc:
            reason = f"protocol error from the contact: {exc}"
            log.info("session with %s ended: %s", session.onion[:8], exc)
        except OSError as exc:
            reason = f"connection lost: {exc}"
        finally:
            session.close()
            if self.sessions.get(session.onion) is session:
                del self.sessions[session.onion]
                self._on_state(session.onion, "disconnected", reason)
