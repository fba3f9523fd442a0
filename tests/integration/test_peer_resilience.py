"""The peer's onion listener under hostile input, and recovery from a gateway restart."""

from __future__ import annotations

import os
import socket
import time

import pytest
from nyth.ports import free_port
from nyth.proto.identity import Identity, public_key_from_onion
from nyth.proto.p2p import ContactRequest, Envelope, MessageKind, new_msg_id
from nyth.proto.session import PACKET_SIZE, P2PConnection
from nyth.runtime.devnet import Devnet, wait_until

from tests.fixtures.stack import befriend, wait_delivered

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _raw(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.settimeout(35)
    try:
        while True:
            if not sock.recv(PACKET_SIZE):
                return True
    except OSError:
        return True


def _handshake(sock: socket.socket, conn: P2PConnection) -> list[bytes]:
    """Run a real handshake over sock, returning every frame we sent."""
    sent = []
    out = conn.data_to_send()
    sent.append(out)
    sock.sendall(out)
    buf = b""
    while len(buf) < PACKET_SIZE:
        buf += sock.recv(PACKET_SIZE - len(buf))
    conn.receive_data(buf)
    out = conn.data_to_send()
    sent.append(out)
    sock.sendall(out)
    return sent


def test_listener_drops_garbage_replays_and_impostors(devnet):
    p2p_port = free_port()
    alice = devnet.add_peer("alice")
    bob = devnet.add_peer("bob", NYTH_P2P_PORT=str(p2p_port))
    alice.wait_online()
    bob.wait_online()
    befriend(alice, bob)
    bob_pk = public_key_from_onion(bob.onion)

    # 1. garbage of every shape: random full frames, short writes, a wrong magic.
    for payload in (os.urandom(PACKET_SIZE), os.urandom(100), b"NYTHP2P1" + bytes(PACKET_SIZE - 8),
                    b"\x00" * (3 * PACKET_SIZE)):
        with _raw(p2p_port) as sock:
            sock.sendall(payload)
            if len(payload) >= PACKET_SIZE:
                assert _closed_by_peer(sock)

    # 2. a real stranger's session, recorded, then replayed on a new connection.
    mallory = Identity.generate()
    conn = P2PConnection(mallory, bob_pk)
    with _raw(p2p_port) as sock:
        frames = _handshake(sock, conn)
        conn.send(Envelope(new_msg_id(), MessageKind.CONTACT_REQUEST, 1,
                           ContactRequest("mallory", "once").encode()))
        data = conn.data_to_send()
        frames.append(data)
        sock.sendall(data)
        time.sleep(1)
    with _raw(p2p_port) as sock:
        sock.sendall(frames[0])
        sock.recv(PACKET_SIZE)  # bob's reply, with a fresh ephemeral key
        sock.sendall(frames[1] + frames[2])  # the old proof cannot match: dropped
        assert _closed_by_peer(sock)

    # 3. an impostor claiming to be alice without her key cannot finish the handshake.
    impostor = P2PConnection(Identity.generate(), bob_pk)
    with _raw(p2p_port) as sock:
        hello = bytearray(impostor.data_to_send())
        hello[9:41] = public_key_from_onion(alice.onion)
        sock.sendall(bytes(hello))
        reply = sock.recv(PACKET_SIZE)
        assert reply
        sock.sendall(b"NYTHP2P1\x03" + os.urandom(32) + bytes(PACKET_SIZE - 41))
        assert _closed_by_peer(sock)

    # 4. an established session that then sends a forged packet is cut off.
    conn = P2PConnection(Identity.generate(), bob_pk)
    with _raw(p2p_port) as sock:
        _handshake(sock, conn)
        sock.sendall(os.urandom(PACKET_SIZE))
        assert _closed_by_peer(sock)

    # bob kept serving: mallory's one request is there once, and alice still gets through.
    with bob.client() as cb, alice.client() as ca:
        requests = [c for c in cb.get("/v1/contacts") if c["onion"] == mallory.onion]
        assert len(requests) == 1 and requests[0]["status"] == "pending_inbound"
        assert not any(c["onion"] == alice.onion and c["status"] != "accepted"
                       for c in cb.get("/v1/contacts"))
        sent = ca.send(bob.onion, "still there?")
        wait_delivered(ca, bob.onion, sent["id"])
        assert bob.process.running


def test_gateway_restart_onions_return_and_traffic_resumes(tmp_path, tor_network, redis_server,
                                                           make_tor_gateway):
    gateway = make_tor_gateway()
    net = Devnet(tmp_path / "net", network=tor_network, gateway=gateway, redis=redis_server,
                 retry_cap_seconds=5.0)
    try:
        alice, bob = net.add_peer("alice"), net.add_peer("bob")
        alice.wait_online()
        bob.wait_online()
        befriend(alice, bob)
        gateway.restart()
        # Nobody tells the peers: they notice the control connection died and publish again.
        wait_until(lambda: alice.process.running and bob.process.running, 5)
        alice.wait_online(timeout=120)
        bob.wait_online(timeout=120)
        with alice.client() as ca, bob.client() as cb:
            sent = ca.send(bob.onion, "after the restart")
            wait_delivered(ca, bob.onion, sent["id"], timeout=150)
            back = cb.send(alice.onion, "heard you")
            wait_delivered(cb, alice.onion, back["id"], timeout=150)
    finally:
        for peer in net.peers.values():
            print(f"--- {peer.name} ---\n{peer.process.log_tail(30)}")
        net.stop()
