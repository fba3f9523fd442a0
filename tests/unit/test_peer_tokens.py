"""The peer's token wallets (nyth_peer.tokens) and their hook in the group post path,
against a group server on 127.0.0.1 that speaks the token protocol (honest, or not).

Profiles, stores, the group service and the proof-of-work pool are the real ones; the
server is hostile_http's, with the protocol from nyth.proto.tokens.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from nyth.proto import tokens
from nyth.proto.bundle import ServerBundle
from nyth.proto.delivery import RetryPolicy
from nyth.proto.group import BLOB_SIZE, Invite, open_group_message
from nyth.proto.identity import Identity
from nyth_peer import tokens as peer_tokens
from nyth_peer.events import EventBus
from nyth_peer.groups import GroupService
from nyth_peer.messenger import Messenger
from nyth_peer.pins import GROUP
from nyth_peer.profile import Profile

from tests.unit.hostile_http import HostileServer, Reply, Request, until

SERVER = Identity.from_seed(b"S" * 32)
OWNER = Identity.from_seed(b"O" * 32)
KEY = tokens.TokenSecretKey.from_seed(b"K" * 32)
OTHER_KEY = tokens.TokenSecretKey.from_seed(b"X" * 32)
BITS = 4
FAST = RetryPolicy(initial=0.1, cap=0.3)
PASSPHRASE = "correct horse battery"
TOKEN_BUNDLE = ServerBundle(SERVER.public_key, KEY.public_key, BLOB_SIZE, 100_000, 86_400,
                            int(time.time()), token_pow_bits=BITS).sign(SERVER)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class TokenServer:
    """A group server that wants a token per post. issuing_key: the key it evaluates
    under (another than its bundle's: the wrong-key fault); refuse: statuses to answer
    the next posts with, whatever their token."""

    issuing_key: tokens.TokenSecretKey = KEY
    refuse: list[int] = field(default_factory=list)
    spent: set[bytes] = field(default_factory=set)
    stored: list[bytes] = field(default_factory=list)
    issued: int = 0

    def routes(self) -> HostileServer:
        return HostileServer({("GET", "/v1/bundle"): self.bundle,
                              ("POST", "/v1/tokens"): self.issue,
                              ("POST", "/v1/blobs"): self.post,
                              ("GET", "/v1/blobs"): self.page,
                              ("GET", "/v1/blobs/stream"): self.stream})

    async def bundle(self, request: Request, reply: Reply) -> None:
        await reply.json(200, {"bundle": b64(TOKEN_BUNDLE)})

    async def page(self, request: Request, reply: Reply) -> None:
        await reply.json(200, {"blobs": [], "next": request.query["after"], "more": False})

    async def stream(self, request: Request, reply: Reply) -> None:
        async def pings() -> AsyncIterator[bytes]:
            while True:
                yield b": ping\r\n\r\n"
                await asyncio.sleep(0.1)
        await reply.chunked(200, pings(), {"content-type": "text/event-stream"})

    async def issue(self, request: Request, reply: Reply) -> None:
        issue_request = tokens.IssueRequest.decode(
            base64.b64decode(json.loads(request.body)["issue_request"]))
        assert issue_request.pow_ok(KEY.public_key, BITS)  # paid for under the bundle's key
        self.issued += len(issue_request.blinded)
        answer = tokens.issue(self.issuing_key, issue_request, 0)
        await reply.json(200, {"issue_response": b64(answer.encode())})

    async def post(self, request: Request, reply: Reply) -> None:
        if self.refuse:
            status = self.refuse.pop(0)
            await reply.json(status, {"error": f"refused ({status})"})
            return
        header = request.headers.get("nyth-token")
        if header is None:
            await reply.json(402, {"error": "a token, please"})
            return
        try:
            spend = tokens.check_redemption(KEY, base64.b64decode(header), request.body)
        except Exception as exc:
            await reply.json(403, {"error": str(exc)})
            return
        if spend in self.spent:
            await reply.json(409, {"error": "already spent"})
            return
        self.spent.add(spend)
        self.stored.append(request.body)
        await reply.json(201, {"id": f"{len(self.stored)}-0"})


@pytest.fixture
def profile(tmp_path: Path):
    profile = Profile.create(tmp_path, "alice", PASSPHRASE)
    yield profile
    profile.store.close()


def group_service(profile: Profile, server: HostileServer) -> GroupService:
    events = EventBus()
    return GroupService(profile, events, Messenger(profile, events, FAST), server.client, FAST)


async def joined(profile: Profile, server: HostileServer) -> tuple[GroupService, str]:
    service = group_service(profile, server)
    service.pins.check(GROUP, SERVER.onion, TOKEN_BUNDLE)  # what accepting an invite does
    invite = Invite.create("friends", OWNER.public_key, (TOKEN_BUNDLE,))
    service._join(invite)
    service.start()
    return service, invite.group_id.hex()


def record(profile: Profile, gid: str, post: dict[str, Any]) -> dict[str, Any]:
    found = profile.store.get(f"group_messages:{gid}", post["hash"])
    assert found is not None
    return found


async def posted(profile: Profile, gid: str, post: dict[str, Any]) -> dict[str, Any]:
    return await until(lambda: (r := record(profile, gid, post))["state"] == "posted" and r,
                       f"post {post['body']!r} to be acknowledged", timeout=30)


async def test_a_post_pays_with_a_token_from_a_batch_got_for_work(profile: Profile) -> None:
    honest = TokenServer()
    async with honest.routes() as server:
        service, gid = await joined(profile, server)
        first = service.post(gid, "paid for")
        await posted(profile, gid, first)
        second = service.post(gid, "and again")
        await posted(profile, gid, second)
        view = service.tokens.view(SERVER.onion)
        await service.stop()
    assert honest.issued == tokens.MAX_BATCH   # one batch (at start) paid for both
    assert len(honest.stored) == 2 and len(honest.spent) == 2
    group = profile.store.get("groups", gid)
    assert group is not None
    key = base64.b64decode(group["key"])
    assert {open_group_message(key, bytes.fromhex(gid), b).body for b in honest.stored} == {
        "paid for", "and again"}
    assert view == {"tokens": tokens.MAX_BATCH - 2, "state": "ready", "reason": None}
    assert profile.store.list(peer_tokens.SPENDS) == []


async def test_tokens_survive_a_restart_of_the_peer(profile: Profile, tmp_path: Path) -> None:
    honest = TokenServer()
    async with honest.routes() as server:
        service, gid = await joined(profile, server)
        await posted(profile, gid, service.post(gid, "before"))
        await service.stop()
        profile.store.close()
        # The wallet is in the sealed store: the database file shows no token.
        database = (tmp_path / "profile.db").read_bytes()
        wallet = Profile.unlock(tmp_path, PASSPHRASE).store
        held = wallet.get(peer_tokens.WALLETS, SERVER.onion)
        assert held is not None and len(held["tokens"]) == tokens.MAX_BATCH - 1
        assert not any(base64.b64decode(t)[32:] in database for t in held["tokens"])
        wallet.close()

        again = Profile.unlock(tmp_path, PASSPHRASE)
        try:
            service = group_service(again, server)
            service.start()
            await posted(again, gid, service.post(gid, "after"))
            await service.stop()
        finally:
            again.store.close()
    assert honest.issued == tokens.MAX_BATCH  # no new issuance after the restart
    assert len(honest.stored) == 2


@pytest.mark.parametrize("status", [409, 403, 400, 402])
async def test_a_token_refusal_is_retried_with_another_token(profile: Profile,
                                                             status: int) -> None:
    server_side = TokenServer(refuse=[status])
    async with server_side.routes() as server:
        service, gid = await joined(profile, server)
        post = service.post(gid, "not lost")
        done = await posted(profile, gid, post)
        await service.stop()
    assert done["state"] == "posted" and len(server_side.stored) == 1
    assert len(server_side.spent) == 1
    assert service.tokens.count(SERVER.onion) == tokens.MAX_BATCH - 2  # one per attempt


async def test_a_post_without_an_answer_goes_again_with_the_same_token(profile: Profile) -> None:
    server_side = TokenServer(refuse=[503, 502])
    async with server_side.routes() as server:
        service, gid = await joined(profile, server)
        await posted(profile, gid, service.post(gid, "patient"))
        sent = [r.headers["nyth-token"] for r in server.seen("POST", "/v1/blobs")]
        await service.stop()
    assert len(sent) == 3 and len(set(sent)) == 1
    assert service.tokens.count(SERVER.onion) == tokens.MAX_BATCH - 1


async def test_a_proof_under_another_key_is_refused(profile: Profile) -> None:
    """A server evaluating under a key of its own (to recognise our posts later) gives
    us nothing: its tokens are never kept, the post waits and says why, and the server
    is shown as refusing."""
    lying = TokenServer(issuing_key=OTHER_KEY)
    async with lying.routes() as server:
        service, gid = await joined(profile, server)
        post = service.post(gid, "never with those tokens")
        state = await until(lambda: service.server_state.get(SERVER.onion, {}).get("state")
                            == "tokens_refused" and service.server_state[SERVER.onion],
                            "the server to be shown refusing", timeout=30)
        waiting = await until(lambda: (r := record(profile, gid, post))["reason"] and r,
                              "the post to say why it waits", timeout=30)
        view = service.tokens.view(SERVER.onion)
        await service.stop()
    assert "does not verify for the token key we pinned" in state["reason"]
    assert waiting["state"] == "queued"
    assert waiting["reason"].startswith(f"getting tokens from {SERVER.onion[:8]}….onion")
    assert lying.stored == [] and service.tokens.count(SERVER.onion) == 0
    assert view is not None and view["state"] == "failed" and view["tokens"] == 0


async def test_a_post_waiting_for_tokens_says_so(profile: Profile) -> None:
    class Slow(TokenServer):
        async def issue(self, request: Request, reply: Reply) -> None:
            await reply.json(503, {"error": "busy"})

    slow = Slow()
    async with slow.routes() as server:
        service, gid = await joined(profile, server)
        post = service.post(gid, "waits")
        waiting = await until(lambda: (r := record(profile, gid, post))["reason"] and r,
                              "the post to say why it waits", timeout=30)
        await service.stop()
    assert waiting["reason"].startswith(f"getting tokens from {SERVER.onion[:8]}….onion: ")
    assert waiting["state"] == "queued" and slow.stored == []


async def test_a_server_without_tokens_gets_no_header(profile: Profile) -> None:
    free = ServerBundle(SERVER.public_key, bytes(32), BLOB_SIZE, 100_000, 86_400,
                        int(time.time())).sign(SERVER)
    service = group_service(profile, HostileServer({}))
    service.pins.check(GROUP, SERVER.onion, free)
    assert service.tokens.headers(SERVER.onion, "post", b"blob") == {}
    assert service.tokens.view(SERVER.onion) is None


async def test_a_re_pinned_token_key_makes_old_tokens_worthless(profile: Profile) -> None:
    service = group_service(profile, HostileServer({}))
    service.pins.check(GROUP, SERVER.onion, TOKEN_BUNDLE)
    wallets = service.tokens
    pending = tokens.prepare_issue(2)
    batch = tokens.finalize_batch(KEY.public_key, pending,
                                  tokens.issue(KEY, pending.request(0), 0))
    wallets._add(SERVER.onion, KEY.public_key.hex(), batch)
    assert wallets.count(SERVER.onion) == 2
    # The same wallet under another key (what a re-pin to a new token key leaves).
    token, left = wallets._take(SERVER.onion, OTHER_KEY.public_key.hex())
    assert token is None and left == 0
    token, left = wallets._take(SERVER.onion, KEY.public_key.hex())
    assert token is not None and left == 1
    assert repr(token).startswith("Token(input=") and token.output.hex() not in repr(token)


async def test_a_group_created_on_a_server_with_a_v2_bundle_gets_a_v2_invite(
        profile: Profile) -> None:
    """A v1 invite cannot carry a v2 bundle: the creator makes a v2 group (its owner)."""
    async with TokenServer().routes() as server:
        service = group_service(profile, server)
        group = await service.create("club", [SERVER.onion])
        await service.stop()
    row = profile.store.get("groups", group["id"])
    assert row is not None
    invite = Invite.decode(base64.b64decode(row["invite"]))
    assert invite.version == 2 and invite.owner == profile.identity.public_key
    assert invite.bundles == (TOKEN_BUNDLE,)
