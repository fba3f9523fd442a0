"""What a mailbox can link, seen from the mailbox itself and from the tor gateway, over the
private Tor network (issue 8, finding 1).

The mailbox's view: a relay between tor and the real mailbox process notes each TCP
connection tor opens (one per Tor stream) and the requests on it, with the time each
arrived. The circuits: the gateway's STREAM events name each stream's circuit and SOCKS
username. A card fetch must not share a connection, a circuit or a short time window
with the record it leads to; the profile's card upload must not share a connection or
circuit with its polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from nyth.mailbox_traffic import Isolation, Purpose
from nyth.ports import free_port
from nyth.runtime.devnet import wait_until
from nyth.tor.endpoints import open_controller
from stem.control import EventType
from stem.response.events import StreamEvent

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

GAP = 8.0     # NYTH_MAILBOX_CARD_GAP_SECONDS for alice; the default is 120
ENV = {"NYTH_MAILBOX_AFTER_SECONDS": "0", "NYTH_MAILBOX_POLL_SECONDS": "1",
       "NYTH_MAILBOX_POST_DELAY_SECONDS": "1", "NYTH_MAILBOX_CARD_GAP_SECONDS": str(GAP)}


@dataclass
class Connection:
    number: int                    # in order of arrival (ports can be reused)
    port: int                      # tor's end of the TCP connection: what the mailbox sees
    requests: list[tuple[float, str, str]] = field(default_factory=list)  # (time, method, path)


class MailboxView:
    """A TCP relay in front of the mailbox (its onion's target): per connection, the
    request lines that came on it and when. HTTP/1.1 in clear, as tor delivers it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.upstream: int | None = None
        self.connections: list[Connection] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._relay, "127.0.0.1", self.port), self.loop).result(10)

    def requests(self) -> list[tuple[float, str, str, str]]:
        """(time, connection, method, path), in order of arrival."""
        return sorted((t, f"#{c.number} from port {c.port}", m, p)
                      for c in list(self.connections) for t, m, p in c.requests)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self.upstream is not None
        conn = Connection(len(self.connections), writer.get_extra_info("peername")[1])
        self.connections.append(conn)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        back = asyncio.ensure_future(self._pump(up_reader, writer))
        try:
            await self._requests(reader, up_writer, conn)
        finally:
            up_writer.close()
            await asyncio.gather(back, return_exceptions=True)
            writer.close()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    @staticmethod
    async def _requests(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        conn: Connection) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, target = (x.decode("latin-1") for x in head.split(b" ", 2)[:2])
                conn.requests.append((time.monotonic(), method, target.split("?", 1)[0]))
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                body = await reader.readexactly(length)
                writer.write(head + body)
                await writer.drain()

    def close(self) -> None:
        self.server.close()
        self.loop.call_soon_threadsafe(self.loop.stop)


class CircuitView:
    """The gateway's STREAM events for streams to one onion: each stream's SOCKS
    credential and the circuits it was attached to."""

    def __init__(self, control: Any, onion: str) -> None:
        self.target = f"{onion}.onion"
        self.streams: dict[str, dict[str, Any]] = {}
        self.controller = open_controller(control)
        self.controller.add_event_listener(self._on_stream, EventType.STREAM)

    def _on_stream(self, event: StreamEvent) -> None:
        if event.target_address != self.target:
            return
        stream = self.streams.setdefault(event.id, {"circuits": set(), "isolation": None})
        username = event.keyword_args.get("SOCKS_USERNAME")
        if username is not None:
            stream["isolation"] = Isolation(username, event.keyword_args.get("SOCKS_PASSWORD", ""))
        if event.circ_id and event.circ_id != "0":
            stream["circuits"].add(event.circ_id)

    def by_circuit(self) -> dict[str, list[Isolation | None]]:
        circuits: dict[str, list[Isolation | None]] = {}
        for stream in list(self.streams.values()):
            for circ in stream["circuits"]:
                circuits.setdefault(circ, []).append(stream["isolation"])
        return circuits

    def close(self) -> None:
        self.controller.close()


def kind(method: str, path: str, bob: str) -> str:
    return {("PUT", f"/v1/cards/{bob}"): "card upload", ("GET", f"/v1/cards/{bob}"): "card fetch",
            ("POST", "/v1/records"): "post", ("GET", "/v1/records"): "poll"}.get(
        (method, path), f"{method} {path.split('/')[2] if path.count('/') > 1 else path}")


def test_the_mailbox_cannot_pair_a_record_with_its_card_fetch(devnet):
    view = MailboxView()
    mailbox = devnet.add_mailbox(NYTH_POW_BITS="8", NYTH_ONION_TARGET=f"127.0.0.1:{view.port}")
    view.upstream = int(mailbox.url.rsplit(":", 1)[1])
    circuits = None
    try:
        mailbox.wait_online()
        circuits = CircuitView(devnet.gateway.control, mailbox.onion)
        bob = devnet.add_peer("bob", NYTH_MAILBOX=mailbox.onion, **ENV)
        alice = devnet.add_peer("alice", **ENV)   # no mailbox of her own: only bob's
        bob.wait_online()
        alice.wait_online()

        def seen() -> list[tuple[float, str, str]]:
            return [(t, port, kind(m, p, bob.onion)) for t, port, m, p in view.requests()]

        with bob.client() as cb:
            bob_id = cb.profile()["contact_id"]
            wait_until(lambda: [k for *_, k in seen()].count("poll") >= 3, 90,
                       what="bob's card upload and a few polls", state=lambda: {
                           "bob's mailbox": cb.get("/v1/mailbox")["state"], "mailbox saw": seen()})
        bob.process.stop()

        with alice.client() as ca:
            ca.post("/v1/contacts", {"contact_id": bob_id, "text": "hi bob, it's alice"})
            msg = ca.send(bob.onion, "while you were away")
            wait_until(lambda: ca.get(f"/v1/contacts/{bob.onion}/messages/{msg['id']}")["via"]
                       == "mailbox" and [k for *_, k in seen()].count("post") >= 2, 240,
                       what="alice's request and message to be posted to bob's mailbox",
                       state=lambda: {"contact": ca.get(f"/v1/contacts/{bob.onion}"),
                                      "mailbox saw": seen()})

        requests = seen()
        print("the mailbox saw:", *(f"{t:.1f} {conn}: {k}" for t, conn, k in requests), sep="\n  ")
        print("streams to the mailbox, by circuit:", *(
            f"{circ}: {[iso.username if iso else None for iso in isos]}"
            for circ, isos in circuits.by_circuit().items()), sep="\n  ")
        # 1. The mailbox's own view: connections.
        kinds_by_connection: dict[str, list[str]] = {}
        for _, conn, k in requests:
            kinds_by_connection.setdefault(conn, []).append(k)
        for conn, kinds in kinds_by_connection.items():
            named = {"card upload", "card fetch"} & set(kinds)
            anonymous = {"poll", "post"} & set(kinds)
            assert not (named and anonymous), (
                f"one connection ({conn}) carried {kinds}: the mailbox links them")
            assert kinds.count("post") <= 1, f"two posts on one connection ({conn}): {kinds}"
        # 2. The mailbox's own view: time. Every post comes at least GAP after the last
        #    fetch of bob's card before it.
        for at, _, k in requests:
            if k == "post":
                fetches = [t for t, _, k2 in requests if k2 == "card fetch" and t <= at]
                assert fetches, f"a post without a card fetch before it: {requests}"
                assert at - max(fetches) >= GAP, (
                    f"a record was posted {at - max(fetches):.1f} s after a fetch of its "
                    f"recipient's card (at least {GAP} s expected): {requests}")
        # 3. The circuits behind those connections (tor's view, as the mailbox's tor has
        #    it for its rendezvous circuits): one purpose per circuit, one post per circuit.
        by_circuit = circuits.by_circuit()
        assert by_circuit, f"no stream to the mailbox seen on the gateway: {circuits.streams}"
        for circ, isolations in by_circuit.items():
            purposes = {iso.purpose if iso else None for iso in isolations}
            assert None not in purposes, (
                f"circuit {circ} carried a stream without a SOCKS credential: {isolations}")
            assert len(purposes) == 1, f"circuit {circ} carried several purposes: {isolations}"
            if Purpose.POST in purposes or Purpose.CARD_FETCH in purposes:
                assert len(set(isolations)) == 1, (
                    f"circuit {circ} carried streams of two posts or fetches: {isolations}")
        posts = [iso for s in circuits.streams.values() if (iso := s["isolation"])
                 and iso.purpose is Purpose.POST]
        assert len(posts) >= 2 and len(set(posts)) == len(posts), \
            f"each post needs a credential of its own: {posts}"
    finally:
        if circuits is not None:
            circuits.close()
        view.close()
