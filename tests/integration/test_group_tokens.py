"""Groups on a group server that requires tokens, with real peers through the private
Tor network: end to end, across a restart of a peer (its stored tokens still pay), and
against a server that issues under another key than its bundle's (refused by the peer).

The server's side alone (every refusal, the flood, replays) is test_group_server_tokens.py,
which needs no Tor.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from nyth.proto.tokens import MAX_BATCH
from nyth.runtime.devnet import Devnet, PeerHandle, ServiceHandle, wait_until

from tests.fixtures.stack import group_history, start_group

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Low, so a batch is paid in well under a second: the work itself is benchmarked elsewhere.
TOKENS = {"NYTH_TOKENS_REQUIRED": "true", "NYTH_TOKEN_POW_BITS": "8"}


def issued(server: ServiceHandle) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    found = re.search(r"^nyth_group_tokens_issued_total ([0-9.e+]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def post_and_wait(peer: PeerHandle, gid: str, text: str, timeout: float = 120) -> dict[str, Any]:
    with peer.client() as c:
        sent = c.post(f"/v1/groups/{gid}/messages", {"text": text})

    def message() -> dict[str, Any]:
        return next(m for m in group_history(peer, gid)["messages"] if m["hash"] == sent["hash"])

    return wait_until(lambda: (m := message())["state"] == "posted" and m, timeout,
                      what=f"{peer.name}'s post {text!r} to be acknowledged", state=message)


def server_view(peer: PeerHandle, onion: str) -> dict[str, Any]:
    with peer.client() as c:
        return next(dict(s) for s in c.get("/v1/servers") if s["onion"] == onion)


def test_a_group_on_a_tokens_server_works_end_to_end(devnet: Devnet) -> None:
    server, peers, gid = start_group(devnet, ["alice", "bob"], **TOKENS)
    health = httpx.get(f"{server.url}/healthz", timeout=10).json()
    assert health["tokens_required"] is True
    for peer in peers:
        post_and_wait(peer, gid, f"{peer.name} pays with a token")
    wait_until(lambda: all(len(group_history(p, gid)["messages"]) == 2 for p in peers), 120,
               what="both members to see both posts")
    for peer in peers:
        view = server_view(peer, server.onion)
        assert view["pinned"]["limits"]["token_pow_bits"] == 8
        assert view["tokens"]["tokens"] < MAX_BATCH and view["tokens"]["state"] == "ready"
    assert issued(server) == 2 * MAX_BATCH   # one batch each


def test_a_restarted_peer_posts_with_its_stored_tokens(devnet: Devnet) -> None:
    server, (alice, bob), gid = start_group(devnet, ["alice", "bob"], **TOKENS)
    post_and_wait(alice, gid, "before the restart")
    before = issued(server)
    held = server_view(alice, server.onion)["tokens"]["tokens"]
    assert held >= 8  # above the low-water mark: no refill is due
    alice.process.restart()
    alice.wait_online()
    post_and_wait(alice, gid, "after the restart")
    wait_until(lambda: any(m["body"] == "after the restart"
                           for m in group_history(bob, gid)["messages"]), 120,
               what="bob to see alice's post after her restart")
    assert issued(server) == before, "the restarted peer got new tokens instead of its own"
    assert server_view(alice, server.onion)["tokens"]["tokens"] == held - 1


def test_a_server_proving_with_another_key_is_refused(devnet: Devnet) -> None:
    server, (alice,), gid = start_group(
        devnet, ["alice"], NYTH_DEV_MODE="true", NYTH_FAULT_TOKEN_WRONG_KEY="true", **TOKENS)
    with alice.client() as c:
        sent = c.post(f"/v1/groups/{gid}/messages", {"text": "never paid for"})

    def refused() -> dict[str, Any] | None:
        view = server_view(alice, server.onion)
        return view if view["state"] == "tokens_refused" else None

    view = wait_until(refused, 120, what="the server to be shown refusing its tokens",
                      state=lambda: server_view(alice, server.onion))
    assert "does not verify for the token key we pinned" in view["reason"]
    assert view["tokens"]["tokens"] == 0
    message = next(m for m in group_history(alice, gid)["messages"] if m["hash"] == sent["hash"])
    assert message["state"] == "queued"
    assert message["reason"].startswith(f"getting tokens from {server.onion[:8]}")
    blobs = httpx.get(f"{server.url}/v1/blobs", params={"after": "0"}, timeout=10).json()
    assert blobs["blobs"] == []
