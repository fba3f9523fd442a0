"""Which client (SOCKS credential, so which Tor circuit) and when the peer's mailbox code
uses for each request, against a real HTTP server on 127.0.0.1 (no Tor): the card
upload, polls, contact-card fetches and posts never share a credential, posts use the
cached card, and a post never follows a fetch of its recipient's card within the gap."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from nyth.mailbox_traffic import Isolation, Purpose, TrafficPolicy
from nyth.proto import fmd
from nyth.proto.contact_card import ContactCard
from nyth.proto.identity import Identity
from nyth.proto.mailbox_bundle import MailboxBundle
from nyth.proto.mailbox_record import RECOMMENDED_RECORD_SIZE
from nyth.proto.p2p import Envelope, MessageKind, encode_text, new_msg_id
from nyth_peer.engine import Engine
from nyth_peer.events import EventBus
from nyth_peer.mailbox import MailboxService
from nyth_peer.messenger import ACCEPTED, REFUSED
from nyth_peer.profile import Profile
from nyth_peer.settings import PeerSettings

from tests.unit.hostile_http import HostileServer, Reply, Request

MAILBOX = Identity.from_seed(b"M" * 32)
CAROL = Identity.from_seed(b"C" * 32)
BUNDLE = MailboxBundle(MAILBOX.public_key, fmd.TAG_SIZE, RECOMMENDED_RECORD_SIZE, 1000, 86_400, 0,
                       int(time.time())).sign(MAILBOX)
GAP = 1.5
# Short delays, so the test is quick; the gap is what the assertions are about.
QUICK = TrafficPolicy(post_delay_mean=0.05, post_delay_cap=0.2, card_post_gap=GAP,
                      first_fetch_spread=0.0)


@dataclass
class Sent:
    isolation: Isolation
    method: str
    path: str
    at: float


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def carol_card() -> bytes:
    now = int(time.time())
    return ContactCard(CAROL.public_key, MAILBOX.public_key,
                       fmd.FmdSecretKey.generate().public_key().encode(),
                       CAROL.x25519_public(), now, now + 7 * 86_400).sign(CAROL)


def mailbox(profile: Profile) -> HostileServer:
    card = carol_card()

    async def bundle(request: Request, reply: Reply) -> None:
        await reply.json(200, {"bundle": b64(BUNDLE)})

    async def get_card(request: Request, reply: Reply) -> None:
        await reply.json(200, {"card": b64(card), "issued_at": 0, "expires_at": 0})

    async def put_card(request: Request, reply: Reply) -> None:
        await reply.json(200, {**request.json(), "issued_at": 0, "expires_at": 0})

    async def post(request: Request, reply: Reply) -> None:
        await reply.json(201, {"id": f"{len(server.seen('POST', '/v1/records'))}-0"})

    async def records(request: Request, reply: Reply) -> None:
        await reply.json(200, {"records": [], "next": "0", "more": False})

    server = HostileServer({("GET", "/v1/bundle"): bundle,
                            ("GET", f"/v1/cards/{CAROL.onion}"): get_card,
                            ("PUT", f"/v1/cards/{profile.identity.onion}"): put_card,
                            ("POST", "/v1/records"): post, ("GET", "/v1/records"): records})
    return server


def recording(server: HostileServer, sent: list[Sent]) -> Callable[[Isolation], httpx.AsyncClient]:
    """The http factory the engine passes, with every request noted with its credential."""
    def make(isolation: Isolation) -> httpx.AsyncClient:
        async def note(request: httpx.Request) -> None:
            sent.append(Sent(isolation, request.method, request.url.path, time.monotonic()))
        return server.client(event_hooks={"request": [note]})
    return make


def service(profile: Profile, server: HostileServer, sent: list[Sent],
            own_mailbox: str | None = None) -> MailboxService:
    return MailboxService(profile, EventBus(), recording(server, sent), mailbox_onion=own_mailbox,
                          poll_seconds=0.1, detection_bits=None, on_record=lambda *_: True,
                          traffic=QUICK)


def envelope(text: str) -> Envelope:
    return Envelope(new_msg_id(), MessageKind.TEXT, int(time.time() * 1000), encode_text(text))


def one_purpose_per_credential(sent: list[Sent]) -> None:
    kinds: dict[Isolation, set[str]] = {}
    for s in sent:
        if s.path != "/v1/bundle":    # a bundle check goes with whatever it precedes
            kinds.setdefault(s.isolation, set()).add(f"{s.method} {s.path}")
    mixed = {iso.username: k for iso, k in kinds.items() if len(k) > 1}
    assert not mixed, f"one credential carried several kinds of request: {mixed}"


@pytest.fixture
def profile(tmp_path: Path):
    profile = Profile.create(tmp_path, "alice", "correct horse battery")
    yield profile
    profile.store.close()


async def test_a_send_on_a_cache_miss_fetches_and_posts_apart(profile: Profile) -> None:
    sent: list[Sent] = []
    async with mailbox(profile) as server:
        mb = service(profile, server, sent)
        await mb.send(CAROL.onion, MAILBOX.onion, envelope("one"))
        await mb.send(CAROL.onion, MAILBOX.onion, envelope("two"))
    fetches = [s for s in sent if s.method == "GET" and s.path.startswith("/v1/cards/")]
    posts = [s for s in sent if s.method == "POST"]
    assert len(fetches) == 1, "the second send must use the cached card"
    assert len(posts) == 2
    assert fetches[0].isolation.purpose is Purpose.CARD_FETCH
    assert {p.isolation.purpose for p in posts} == {Purpose.POST}
    assert len({fetches[0].isolation, *(p.isolation for p in posts)}) == 3, \
        "each post and the fetch need credentials of their own"
    assert posts[0].at - fetches[0].at >= GAP, (
        f"posted {posts[0].at - fetches[0].at:.3f} s after fetching the recipient's card")
    one_purpose_per_credential(sent)


async def test_the_refresher_fetches_cards_that_sends_then_use(profile: Profile) -> None:
    for onion, status, has_mailbox in ((CAROL.onion, ACCEPTED, True),
                                       (Identity.generate().onion, ACCEPTED, False),
                                       (Identity.generate().onion, REFUSED, True)):
        profile.store.put("contacts", onion, {"onion": onion, "status": status, "created_at": 0.0,
                                              "mailbox": MAILBOX.onion if has_mailbox else None})
    sent: list[Sent] = []
    async with mailbox(profile) as server:
        mb = service(profile, server, sent)
        await mb.refresher.step(time.time())
        await mb.refresher.step(time.time())     # cached now: the next refresh is hours away
        # The mailbox's bundle is checked first, on the same connection: it is public.
        assert [s.path for s in sent] == ["/v1/bundle", f"/v1/cards/{CAROL.onion}"]
        assert {s.isolation.purpose for s in sent} == {Purpose.CARD_FETCH}
        await mb.send(CAROL.onion, MAILBOX.onion, envelope("hi"))
    assert [s.path for s in sent].count(f"/v1/cards/{CAROL.onion}") == 1
    post = next(s for s in sent if s.method == "POST")
    assert post.at - sent[1].at >= GAP, "a post must wait out the gap after a scheduled fetch too"
    one_purpose_per_credential(sent)


async def test_our_card_upload_and_our_polls_use_different_credentials(profile: Profile) -> None:
    sent: list[Sent] = []
    async with mailbox(profile) as server:
        mb = service(profile, server, sent, own_mailbox=MAILBOX.onion)
        mb.start()
        deadline = time.monotonic() + 15
        while sum(s.path == "/v1/records" for s in sent) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await mb.stop()
    uploads = [s for s in sent if s.method == "PUT"]
    polls = [s for s in sent if s.path == "/v1/records"]
    assert len(uploads) == 1 and len(polls) >= 3, f"state: {mb.state}, requests: {sent}"
    assert uploads[0].isolation.purpose is Purpose.CARD_UPLOAD
    assert {p.isolation.purpose for p in polls} == {Purpose.POLL}
    assert uploads[0].isolation not in {p.isolation for p in polls}
    one_purpose_per_credential(sent)


async def test_no_card_fetch_follows_a_post_to_its_owner_within_the_gap(profile: Profile) -> None:
    sent: list[Sent] = []
    async with mailbox(profile) as server:
        mb = service(profile, server, sent)
        await mb.send(CAROL.onion, MAILBOX.onion, envelope("hi"))
        await mb.fetch_card(CAROL.onion, MAILBOX.onion)   # as the refresher would, at once
    post = next(s for s in sent if s.method == "POST")
    refetch = [s for s in sent if s.path.startswith("/v1/cards/")][-1]
    assert refetch.at - post.at >= GAP, f"fetched {refetch.at - post.at:.3f} s after the post"
    one_purpose_per_credential(sent)


async def test_a_cached_card_close_to_expiry_or_from_another_mailbox_is_fetched_again(
        profile: Profile) -> None:
    now = int(time.time())
    expiring = ContactCard(CAROL.public_key, MAILBOX.public_key,
                       fmd.FmdSecretKey.generate().public_key().encode(),
                           CAROL.x25519_public(), now, now + 1800).sign(CAROL)
    sent: list[Sent] = []
    async with mailbox(profile) as server:
        mb = service(profile, server, sent)
        mb.cards.put(CAROL.onion, MAILBOX.onion, expiring, now + 1800, time.time() - 86_400)
        await mb.send(CAROL.onion, MAILBOX.onion, envelope("one"))
        assert [s.path for s in sent].count(f"/v1/cards/{CAROL.onion}") == 1
        # the contact moved to another mailbox: the card cached from the old one is not used
        other = Identity.generate().onion
        mb.cards.put(CAROL.onion, other, carol_card(), now + 7 * 86_400, time.time() - 86_400)
        await mb.send(CAROL.onion, MAILBOX.onion, envelope("two"))
    assert [s.path for s in sent].count(f"/v1/cards/{CAROL.onion}") == 2
    one_purpose_per_credential(sent)


def test_the_settings_set_the_post_delay_and_the_gap(tmp_path: Path) -> None:
    def settings(**kwargs: Any) -> PeerSettings:
        return PeerSettings(data_dir=tmp_path, tor_socks="127.0.0.1:9050",
                            tor_control="127.0.0.1:9051", **kwargs)

    policy = Engine(settings(mailbox_post_delay_seconds=2, mailbox_card_gap_seconds=5))._traffic()
    assert (policy.post_delay_mean, policy.post_delay_cap, policy.card_post_gap) == (2, 8, 5)
    defaults = Engine(settings())._traffic()
    assert (defaults.post_delay_mean, defaults.card_post_gap) == (30, 120)


async def test_a_renewal_goes_between_polls_on_its_own_credential(profile: Profile) -> None:
    now = time.time()
    profile.store.put("mailbox", "card", {"expires_at": now + 3 * 3600, "published": True,
                                          "renew_at": now - 1})
    sent: list[Sent] = []
    async with mailbox(profile) as server:
        mb = service(profile, server, sent, own_mailbox=MAILBOX.onion)
        mb.start()
        deadline = time.monotonic() + 15
        while ((profile.store.get("mailbox", "card") or {})["renew_at"] < now
               and time.monotonic() < deadline):
            await asyncio.sleep(0.05)
        await mb.stop()
    kinds = [s.method if s.method == "PUT" else s.path for s in sent]
    assert kinds[:2] == ["/v1/bundle", "/v1/records"], \
        f"a valid card must not hold up polling: {kinds}"
    upload = next(s for s in sent if s.method == "PUT")
    assert upload.isolation.purpose is Purpose.CARD_UPLOAD
    assert upload.isolation not in {s.isolation for s in sent if s.method != "PUT"}
    row = profile.store.get("mailbox", "card")
    assert row is not None and row["renew_at"] > now + 6 * 86_400


async def test_a_failed_refresh_is_not_retried_within_minutes(profile: Profile) -> None:
    profile.store.put("contacts", CAROL.onion, {"onion": CAROL.onion, "status": ACCEPTED,
                                                "created_at": 0.0, "mailbox": MAILBOX.onion})
    sent: list[Sent] = []
    async with mailbox(profile) as server:
        del server.routes[("GET", f"/v1/cards/{CAROL.onion}")]    # 404: no card there
        mb = service(profile, server, sent)
        now = time.time()
        pause = await mb.refresher.step(now)
    assert [s.path for s in sent] == ["/v1/bundle", f"/v1/cards/{CAROL.onion}"]
    assert mb.refresher.due_at(CAROL.onion, MAILBOX.onion, now) >= now + 0.5 * QUICK.stale_retry
    assert 0 < pause <= 30
