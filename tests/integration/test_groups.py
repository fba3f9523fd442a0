"""Groups on a real group server, reached by real peers through the private Tor network."""

from __future__ import annotations

import base64

import httpx
import pytest
from nyth.proto.group import BLOB_SIZE
from nyth.proto.identity import public_key_from_onion
from nyth.runtime.devnet import wait_until

from tests.fixtures.stack import group_history as _history
from tests.fixtures.stack import start_group as _group_with

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _all_blobs(server):
    blobs, after = [], "0"
    while True:
        page = httpx.get(f"{server.url}/v1/blobs", params={"after": after, "limit": 1000}).json()
        blobs += [base64.b64decode(b["blob"]) for b in page["blobs"]]
        after = page["next"]
        if not page["more"]:
            return blobs


def test_three_members_see_every_post_in_one_dag_order(devnet):
    server, peers, gid = _group_with(devnet, ["alice", "bob", "carol"])
    posts = []
    for round_ in range(2):
        for p in peers:
            text = f"{p.name} says {round_}"
            with p.client() as c:
                c.post(f"/v1/groups/{gid}/messages", {"text": text})
            posts.append(text)

    def everyone_has_all():
        return all(len(_history(p, gid)["messages"]) == len(posts) for p in peers)

    wait_until(everyone_has_all, 120, what="every member to see every post",
               state=lambda: {p.name: len(_history(p, gid)["messages"]) for p in peers})
    histories = [_history(p, gid) for p in peers]
    orders = [[m["hash"] for m in h["messages"]] for h in histories]
    assert orders[0] == orders[1] == orders[2]
    assert sorted(m["body"] for m in histories[0]["messages"]) == sorted(posts)
    assert all(h["missing"] == [] for h in histories)
    # DAG order: every parent comes before its child.
    position = {h: i for i, h in enumerate(orders[0])}
    for m in histories[0]["messages"]:
        assert all(position[p] < position[m["hash"]] for p in m["parents"] if p in position)
    # Posts by the same author are acknowledged by the server.
    with peers[0].client() as c:
        own = [m for m in c.get(f"/v1/groups/{gid}/messages")["messages"]
               if m["author"] == public_key_from_onion(peers[0].onion).hex()]
        assert own and all(m["state"] == "posted" for m in own)
        assert all(m["mine"] and m["author_name"] == peers[0].name for m in own)
        # Every post reached the server, which answered: round trips to it.
        [pinned] = [s for s in c.get("/v1/servers") if s["onion"] == server.onion]
        assert pinned["latency"]["samples"] >= 1 and pinned["latency"]["p50_ms"] > 0, pinned
    # Bob's contact alice told her name with her contact request.
    by_alice = [m for m in histories[1]["messages"]
                if m["author"] == public_key_from_onion(peers[0].onion).hex()]
    assert by_alice and {m["author_name"] for m in by_alice} == {peers[0].name}
    assert not any(m["mine"] for m in by_alice)

    # What the server holds: same-size opaque blobs, nothing identifying.
    blobs = _all_blobs(server)
    assert len(blobs) == len(posts)
    assert {len(b) for b in blobs} == {BLOB_SIZE}
    forbidden = [gid.encode(), bytes.fromhex(gid), b"says", b"friends"]
    for p in peers:
        forbidden += [p.onion.encode(), p.onion.upper().encode(), public_key_from_onion(p.onion)]
    for blob in blobs:
        for needle in forbidden:
            assert needle not in blob


def test_group_server_kill9_loses_no_acknowledged_post(devnet):
    server, peers, gid = _group_with(devnet, ["alice", "bob"])
    alice, bob = peers
    texts = [f"burst {i}" for i in range(12)]
    with alice.client() as c:
        for i, text in enumerate(texts):
            c.post(f"/v1/groups/{gid}/messages", {"text": text})
            if i == 5:
                server.process.kill()
    posted_before = {m["body"] for m in _history(alice, gid)["messages"] if m["state"] == "posted"}
    server.process.start()
    # Clients resume without user action: alice's queued posts go out, bob's sync reconnects.
    wait_until(lambda: all(m["state"] == "posted" for m in _history(alice, gid)["messages"]),
               180, what="alice's queued posts to be accepted after the restart",
               state=lambda: [m for m in _history(alice, gid)["messages"] if m["state"] != "posted"])
    wait_until(lambda: len(_history(bob, gid)["messages"]) == len(texts), 180,
               what="bob to see every post after the restart",
               state=lambda: sorted(set(texts) - {m["body"] for m in _history(bob, gid)["messages"]}))
    assert {m["body"] for m in _history(bob, gid)["messages"]} == set(texts)
    assert posted_before <= set(texts)
    # A post cut off mid-request may be stored and then retried: at least once, never lost.
    assert len(_all_blobs(server)) >= len(texts)
