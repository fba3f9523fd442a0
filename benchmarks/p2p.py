"""P2P round trips over onions on a private Tor network, against a same-run baseline.

One Devnet (redis, private Tor network, gateway, alice and bob as real processes).
All onions here are published on the same tor gateway whose SOCKS port the client uses,
so both measurements cross the same kind of path (client -> rendezvous -> service).

(a) baseline: a local asyncio echo server published as an onion (OnionPublisher, fresh
    Identity); one connection through SOCKS; N echoes of one P2P packet (PACKET_SIZE bytes)
    and of 64 bytes.
(b) ours: an in-process initiator runs the real handshake (P2PConnection) with bob's
    peer engine over his onion and sends N CONTACT_REQUEST envelopes with fresh ids; bob
    acks each one (after writing it to his store). Time per envelope: send until its Ack.
    (a) and (b) are interleaved in rounds so drift hits both alike.
(c) API level: alice -> bob, POST send until the message reads "delivered" (polled every
    5 ms), after befriending; includes the outbox, the engine and bob's store.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from nyth.proto.identity import Identity, public_key_from_onion
from nyth.proto.p2p import ContactRequest, Envelope, MessageKind, new_msg_id
from nyth.proto.session import PACKET_SIZE, AckReceived, HandshakeComplete, P2PConnection
from nyth.runtime.devnet import Devnet
from nyth.tor.publisher import OnionPublisher
from nyth.tor.socks import open_onion_connection

from benchmarks.common import Results, summary_ms, workdir

P2P_PORT = 9878
ECHO_VIRTUAL_PORT = 7


async def _echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def _message_echo_handler(reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
    """Echo whole packet-size messages: read one completely, then answer it. This is the
    shape of a request and its ack (the reply cannot start before the request ends),
    so it isolates what our protocol adds from what Tor charges for that shape."""
    with contextlib.suppress(Exception):
        while True:
            writer.write(await reader.readexactly(PACKET_SIZE))
            await writer.drain()
    writer.close()


async def _echo_rtt(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    size: int) -> float:
    payload = b"x" * size
    started = time.perf_counter()
    writer.write(payload)
    await writer.drain()
    await reader.readexactly(size)
    return time.perf_counter() - started


class _Initiator:
    def __init__(self, onion: str) -> None:
        self.conn = P2PConnection(Identity.generate(), public_key_from_onion(onion))
        self.body = ContactRequest("bench", "benchmark round trip").encode()

    async def handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(self.conn.data_to_send())
        await writer.drain()
        while True:
            events = self.conn.receive_data(await reader.readexactly(PACKET_SIZE))
            if out := self.conn.data_to_send():
                writer.write(out)
                await writer.drain()
            if any(isinstance(e, HandshakeComplete) for e in events):
                return

    async def rtt(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
        msg_id = new_msg_id()
        envelope = Envelope(msg_id, MessageKind.CONTACT_REQUEST, int(time.time() * 1000), self.body)
        started = time.perf_counter()
        self.conn.send(envelope)
        writer.write(self.conn.data_to_send())
        await writer.drain()
        while True:
            for event in self.conn.receive_data(await reader.readexactly(PACKET_SIZE)):
                if isinstance(event, AckReceived) and event.msg_id == msg_id:
                    return time.perf_counter() - started


async def _onion_benchmark(net: Devnet, bob_onion: str, n: int, res: Results) -> None:
    assert net.gateway is not None
    socks, control = net.gateway.socks, net.gateway.control
    server = await asyncio.start_server(_echo_handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    publisher = OnionPublisher(control, Identity.generate(), virtual_port=ECHO_VIRTUAL_PORT,
                               target=f"127.0.0.1:{port}")
    pub_task = asyncio.create_task(publisher.run())
    msg_server = await asyncio.start_server(_message_echo_handler, "127.0.0.1", 0)
    msg_publisher = OnionPublisher(control, Identity.generate(), virtual_port=ECHO_VIRTUAL_PORT,
                                   target=f"127.0.0.1:{msg_server.sockets[0].getsockname()[1]}")
    msg_task = asyncio.create_task(msg_publisher.run())
    try:
        t0 = time.perf_counter()
        await publisher.wait_published(120)
        res.add("echo onion published", f"{time.perf_counter() - t0:.1f} s", "ADD_ONION -> HS_DESC UPLOADED")
        t0 = time.perf_counter()
        for attempt in range(5):
            try:
                er, ew = await open_onion_connection(socks, publisher.onion, ECHO_VIRTUAL_PORT)
                break
            except Exception:
                if attempt == 4:
                    raise
                await asyncio.sleep(2)
        res.add("echo onion first connect", f"{time.perf_counter() - t0:.2f} s")
        await msg_publisher.wait_published(120)
        for attempt in range(5):
            try:
                mr, mw = await open_onion_connection(socks, msg_publisher.onion, ECHO_VIRTUAL_PORT)
                break
            except Exception:
                if attempt == 4:
                    raise
                await asyncio.sleep(2)
        t0 = time.perf_counter()
        br, bw = await open_onion_connection(socks, bob_onion, P2P_PORT)
        connect_bob = time.perf_counter() - t0
        initiator = _Initiator(bob_onion)
        t0 = time.perf_counter()
        await initiator.handshake(br, bw)
        handshake_ms = (time.perf_counter() - t0) * 1000
        res.add("bob onion connect + handshake", f"{connect_bob:.2f} s + {handshake_ms:.0f} ms")
        # warm-up, then interleaved rounds
        for _ in range(5):
            await _echo_rtt(er, ew, PACKET_SIZE)
            await _echo_rtt(er, ew, 64)
            await _echo_rtt(mr, mw, PACKET_SIZE)
            await initiator.rtt(br, bw)
        echo_msg: list[float] = []
        echo8k: list[float] = []
        echo64: list[float] = []
        ours: list[float] = []
        for _ in range(n):
            echo8k.append(await _echo_rtt(er, ew, PACKET_SIZE))
            echo64.append(await _echo_rtt(er, ew, 64))
            echo_msg.append(await _echo_rtt(mr, mw, PACKET_SIZE))
            ours.append(await initiator.rtt(br, bw))
        s8, s64, so = summary_ms(echo8k), summary_ms(echo64), summary_ms(ours)
        sm = summary_ms(echo_msg)
        for label, s in ((f"raw onion echo {PACKET_SIZE} B", s8), ("raw onion echo 64 B", s64),
                         (f"raw onion message echo {PACKET_SIZE} B (read all, then reply)", sm),
                         (f"nyth envelope -> ack ({PACKET_SIZE} B frames)", so)):
            res.add(label, f"{s['median_ms']:.2f} ms",
                    f"median; p95 {s['p95_ms']:.2f} ms, min {s['min_ms']:.2f}, "
                    f"max {s['max_ms']:.2f}, n={s['n']}")
        res.add(f"ratio ours / raw echo {PACKET_SIZE} B (median)", f"{so['median_ms'] / s8['median_ms']:.2f}",
                "goal <= 1.3")
        res.add(f"ratio ours / raw echo {PACKET_SIZE} B (p95)", f"{so['p95_ms'] / s8['p95_ms']:.2f}")
        res.add(f"ratio ours / raw message echo {PACKET_SIZE} B (median)",
                f"{so['median_ms'] / sm['median_ms']:.2f}", "same request/reply shape")
        res.add("ratio ours / raw echo 64 B (median)", f"{so['median_ms'] / s64['median_ms']:.2f}")
        for label, s in (("echo", s8), ("ours", so)):
            if s["median_ms"] > 50:
                res.note(f"{label} median {s['median_ms']:.0f} ms: likely the slow rendezvous path "
                         "(relay connection reuse + Nagle, see notes/private-tor-network.md)")
        bw.close()
        ew.close()
        mw.close()
    finally:
        for task in (pub_task, msg_task):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        server.close()
        msg_server.close()


def _api_send_delivered(net: Devnet, res: Results, count: int) -> None:
    from tests.fixtures.stack import befriend
    alice, bob = net.peers["alice"], net.peers["bob"]
    t0 = time.perf_counter()
    befriend(alice, bob)
    res.add("befriend alice -> bob (API)", f"{time.perf_counter() - t0:.2f} s")
    samples = []
    with alice.client() as ca:
        for i in range(count + 2):
            started = time.perf_counter()
            msg = ca.send(bob.onion, f"bench {i}")
            path = f"/v1/contacts/{bob.onion}/messages/{msg['id']}"
            deadline = started + 60
            while ca.get(path)["state"] != "delivered":
                if time.perf_counter() > deadline:
                    raise TimeoutError("message not delivered within 60 s")
                time.sleep(0.005)
            if i >= 2:  # first two warm the session
                samples.append(time.perf_counter() - started)
    s = summary_ms(samples)
    res.add("API send -> delivered (alice -> bob)", f"{s['median_ms']:.1f} ms",
            f"median; p95 {s['p95_ms']:.1f} ms, n={s['n']}, polled every 5 ms over HTTP")


def run(n: int = 200) -> Results:
    res = Results("p2p (private Tor network, loopback, 2 cores)")
    base = workdir("p2p")
    net = Devnet(base / "devnet", retry_cap_seconds=5.0)
    try:
        t0 = time.perf_counter()
        net.start_infrastructure()
        alice, bob = net.add_peer("alice"), net.add_peer("bob")
        alice.wait_online()
        bob.wait_online()
        res.add("devnet up (tor network, gateway, 2 peers)", f"{time.perf_counter() - t0:.1f} s")
        asyncio.run(_onion_benchmark(net, bob.onion, n, res))
        _api_send_delivered(net, res, 30)
    finally:
        for peer in net.peers.values():
            if peer.process.returncode not in (None, 0):
                print(peer.process.log_tail(20))
        net.remove()
    return res
