"""P2P messaging between real peer engines over onions on a private Tor network."""

from __future__ import annotations

import threading
import time

import pytest
from nyth.runtime.devnet import wait_until

from tests.fixtures.stack import befriend, wait_delivered

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_message_acked_and_reply(devnet):
    alice, bob = devnet.add_peer("alice"), devnet.add_peer("bob")
    alice.wait_online()
    bob.wait_online()
    befriend(alice, bob)
    with alice.client() as ca, bob.client() as cb:
        sent = ca.send(bob.onion, "hello bob")
        assert sent["state"] in ("queued", "sending")
        delivered = wait_delivered(ca, bob.onion, sent["id"])
        assert delivered["delivered_at"] is not None
        # Bob acked the contact request and this message: round trips over Tor.
        latency = ca.get(f"/v1/contacts/{bob.onion}")["latency"]
        assert latency["samples"] >= 1 and 0 < latency["p50_ms"] <= latency["p95_ms"], latency
        received = cb.messages(alice.onion)
        assert [m["text"] for m in received if m["direction"] == "in"] == ["hello bob"]

        reply = cb.send(alice.onion, "hi alice")
        wait_delivered(cb, alice.onion, reply["id"])
        texts = [m["text"] for m in ca.messages(bob.onion) if m["direction"] == "in"]
        assert texts == ["hi alice"]

        # The event stream told alice's user each transition of her next message.
        seen: list[str] = []
        ready = threading.Event()

        def follow() -> None:
            with alice.client() as stream:
                ready.set()
                for event in stream.events():
                    if event["type"] == "message" and event["message"]["text"] == "tracked":
                        seen.append(event["message"]["state"])
                        if seen[-1] == "delivered":
                            return

        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        ready.wait(10)
        time.sleep(0.5)
        tracked = ca.send(bob.onion, "tracked")
        wait_delivered(ca, bob.onion, tracked["id"])
        thread.join(30)
        assert seen[0] == "queued" and seen[-1] == "delivered" and "sending" in seen, seen


def test_refused_request_fails_queued_messages(devnet):
    alice, bob = devnet.add_peer("alice"), devnet.add_peer("bob")
    alice.wait_online()
    bob.wait_online()
    with alice.client() as ca, bob.client() as cb:
        ca.add_contact(bob.onion, "let me in")
        queued = ca.send(bob.onion, "are you there?")
        wait_until(lambda: cb.get(f"/v1/contacts/{alice.onion}")["status"] == "pending_inbound",
                   60, what="bob to see the request",
                   state=lambda: ca.get(f"/v1/contacts/{bob.onion}"))
        # Messages wait for acceptance, and say so.
        waiting = ca.get(f"/v1/contacts/{bob.onion}/messages/{queued['id']}")
        assert waiting["state"] == "queued"
        assert "accept" in (waiting["reason"] or "")
        assert cb.messages(alice.onion) == []
        cb.post(f"/v1/contacts/{alice.onion}/refuse")
        failed = wait_until(
            lambda: (m := ca.get(f"/v1/contacts/{bob.onion}/messages/{queued['id']}"))["state"]
            == "failed" and m, 60, what="alice's message to fail",
            state=lambda: ca.get(f"/v1/contacts/{bob.onion}/messages/{queued['id']}"))
        assert "not accept" in failed["reason"]
        assert ca.get(f"/v1/contacts/{bob.onion}")["status"] == "refused"
        assert cb.messages(alice.onion) == []


def test_offline_contact_queued_then_delivered_exactly_once(devnet):
    alice, bob = devnet.add_peer("alice"), devnet.add_peer("bob")
    alice.wait_online()
    bob.wait_online()
    befriend(alice, bob)
    bob.process.stop()
    with alice.client() as ca:
        sent = ca.send(bob.onion, "are you back?")
        queued = wait_until(
            lambda: (m := ca.get(f"/v1/contacts/{bob.onion}/messages/{sent['id']}"))["attempts"] >= 1
            and m, 180, what="a failed delivery attempt",
            state=lambda: ca.get(f"/v1/contacts/{bob.onion}/messages/{sent['id']}"))
        assert queued["state"] in ("queued", "sending")
        if queued["state"] == "queued":
            assert queued["reason"], "a queued message says why"
            assert queued["next_retry_at"] > time.time() - 1
        bob.process.start()
        bob.wait_online()
        wait_delivered(ca, bob.onion, sent["id"], timeout=120)
    with bob.client() as cb:
        # Let any retry in flight land, then check there is exactly one copy.
        time.sleep(3)
        texts = [m["text"] for m in cb.messages(alice.onion) if m["direction"] == "in"]
        assert texts == ["are you back?"]


def test_outbox_survives_sender_restart(devnet):
    alice, bob = devnet.add_peer("alice"), devnet.add_peer("bob")
    alice.wait_online()
    bob.wait_online()
    befriend(alice, bob)
    bob.process.stop()
    with alice.client() as ca:
        sent = ca.send(bob.onion, "persisted")
    alice.process.kill()  # no chance to flush anything: the outbox must already be on disk
    alice.process.start()
    bob.process.start()
    alice.wait_online()
    bob.wait_online()
    with alice.client() as ca, bob.client() as cb:
        wait_delivered(ca, bob.onion, sent["id"], timeout=150)
        time.sleep(2)
        assert [m["text"] for m in cb.messages(alice.onion)] == ["persisted"]
