"""The peer's proof of work for mailboxes it does not control (issue 8, finding 2).

A mailbox named in a stranger's contact id may demand any work. It cannot demand more
than MAX_POW_BITS (the bundle is refused and the user told why), a solve ends at its
deadline or as soon as its task is cancelled, and solves never run on the loop's default
executor, which the onion publisher, NEWNYM and card renewal need.

Against a real HTTP server on 127.0.0.1 (tests.unit.hostile_http), real profile and
service.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from nyth.mailbox_traffic import TrafficPolicy
from nyth.proto import fmd
from nyth.proto.contact_card import ContactCard
from nyth.proto.delivery import RetryPolicy
from nyth.proto.identity import Identity
from nyth.proto.mailbox_bundle import MAGIC, MAX_POW_BITS, MailboxBundle, pow_ok
from nyth.proto.mailbox_record import RECOMMENDED_RECORD_SIZE
from nyth.proto.p2p import Envelope, MessageKind, encode_text, new_msg_id
from nyth_peer import mailbox as mailbox_module
from nyth_peer import pow_pool
from nyth_peer.events import EventBus
from nyth_peer.mailbox import MailboxError, MailboxService
from nyth_peer.pins import MAILBOX as MAILBOX_PINS
from nyth_peer.profile import Profile

from tests.unit.hostile_http import Handler, HostileServer, Reply, Request

MAILBOX = Identity.from_seed(b"M" * 32)
CAROL = Identity.from_seed(b"C" * 32)
# What a solve must never need here: 2^60 hashes.
ENDLESS_BITS = 60


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def bundle_with_bits(bits: int) -> bytes:
    """Signed by the mailbox, whatever it demands (the constructor refuses > maximum)."""
    body = MAGIC + MAILBOX.public_key + struct.pack(
        ">HIQQBQ", fmd.TAG_SIZE, RECOMMENDED_RECORD_SIZE, 1000, 86_400, bits, int(time.time()))
    return body + MAILBOX.sign(body)


def carol_card() -> bytes:
    now = int(time.time())
    return ContactCard(CAROL.public_key, MAILBOX.public_key,
                       fmd.FmdSecretKey.generate().public_key().encode(),
                       CAROL.x25519_public(), now, now + 3600).sign(CAROL)


def mailbox(bits: int) -> HostileServer:
    """Serves a bundle demanding bits, Carol's card, and takes records whose work is right."""
    bundle = bundle_with_bits(bits)
    card = carol_card()

    async def get_bundle(request: Request, reply: Reply) -> None:
        await reply.json(200, {"bundle": b64(bundle)})

    async def get_card(request: Request, reply: Reply) -> None:
        await reply.json(200, {"card": b64(card)})

    async def post_record(request: Request, reply: Reply) -> None:
        body = request.json()
        ok = pow_ok(MAILBOX.public_key, base64.b64decode(body["tag"]),
                    base64.b64decode(body["ciphertext"]), body["nonce"], bits)
        await reply.json(201 if ok else 403, {"id": "1-0"} if ok else {"error": "weak"})

    routes: dict[tuple[str, str], Handler] = {
        ("GET", "/v1/bundle"): get_bundle, ("GET", f"/v1/cards/{CAROL.onion}"): get_card,
        ("POST", "/v1/records"): post_record}
    return HostileServer(routes)


@pytest.fixture
def profile(tmp_path: Path) -> Iterator[Profile]:
    profile = Profile.create(tmp_path, "alice", "correct horse battery")
    yield profile
    profile.store.close()


def service(profile: Profile, server: HostileServer) -> MailboxService:
    return MailboxService(profile, EventBus(), lambda _isolation: server.client(),
                          mailbox_onion=MAILBOX.onion,
                          poll_seconds=0.2, detection_bits=None, on_record=lambda *_: True,
                          retry=RetryPolicy(initial=0.1, cap=0.3),
                          traffic=TrafficPolicy(post_delay_mean=0.0, post_delay_cap=0.0,
                                                card_post_gap=0.0, first_fetch_spread=0.0))


def text() -> Envelope:
    return Envelope(new_msg_id(), MessageKind.TEXT, 0, encode_text("hi"))


class Spy:
    """Stands in for solve_pow: records when the solving thread starts and ends, and asks
    for ENDLESS_BITS whatever the bundle says, so only a stop can end it."""

    def __init__(self, real: Callable[..., int]) -> None:
        self.real = real
        self.started = threading.Event()
        self.ended = threading.Event()
        self.threads: list[str] = []

    def __call__(self, key: bytes, tag: bytes, record: bytes, bits: int, **kwargs: Any) -> int:
        self.threads.append(threading.current_thread().name)
        self.started.set()
        try:
            return int(self.real(key, tag, record, ENDLESS_BITS, **kwargs))
        finally:
            self.ended.set()


async def wait_for_thread(event: threading.Event, seconds: float) -> bool:
    """Polls: waiting in a thread would need the very executors under test."""
    deadline = time.monotonic() + seconds
    while not event.is_set() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return event.is_set()


async def test_a_bundle_demanding_more_than_the_maximum_is_refused_with_the_reason(
        profile: Profile) -> None:
    async with mailbox(25) as server:
        with pytest.raises(MailboxError) as caught:
            await asyncio.wait_for(service(profile, server).send(CAROL.onion, MAILBOX.onion,
                                                                 text()), 10)
        assert not server.seen("GET", f"/v1/cards/{CAROL.onion}")
    assert str(caught.value) == (
        f"mailbox {MAILBOX.onion}.onion sent an invalid bundle: mailbox bundle demands "
        f"25-bit proof of work; Nyth pays at most 24 bits")
    assert profile.store.get(MAILBOX_PINS.table, MAILBOX.onion) is None  # nothing pinned


async def test_our_own_mailbox_demanding_too_much_shows_why(profile: Profile) -> None:
    async with mailbox(64) as server:
        ours = service(profile, server)
        ours.start()
        try:
            deadline = time.monotonic() + 10
            while ours.state["state"] != "unreachable" and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            await ours.stop()
    assert "mailbox bundle demands 64-bit proof of work; Nyth pays at most 24 bits" in \
        str(ours.state["reason"])


async def test_a_mailbox_at_the_maximum_is_accepted(profile: Profile) -> None:
    async with mailbox(MAX_POW_BITS) as server:
        ours = service(profile, server)
        bundle = await ours._bundle(server.client(), MAILBOX.onion)
    assert isinstance(bundle, MailboxBundle) and bundle.pow_bits == MAX_POW_BITS


async def test_cancelling_a_send_stops_its_solving_thread(
        profile: Profile, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = Spy(mailbox_module.solve_pow)
    monkeypatch.setattr(mailbox_module, "solve_pow", spy)
    async with mailbox(MAX_POW_BITS) as server:
        task = asyncio.create_task(service(profile, server).send(CAROL.onion, MAILBOX.onion,
                                                                  text()))
        assert await wait_for_thread(spy.started, 10), "the solve never started"
        await asyncio.sleep(0.2)
        cancelled_at = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stopped = await wait_for_thread(spy.ended, 2.0)
        took = time.monotonic() - cancelled_at
    # Typically ≈ 0.01 s (one look every 4096 hashes); the bound leaves room for a busy CI.
    assert stopped, f"the solving thread was still running {took:.2f} s after its task " \
                    "was cancelled"


async def test_a_solve_that_runs_out_of_time_is_a_mailbox_error(
        profile: Profile, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = Spy(mailbox_module.solve_pow)
    monkeypatch.setattr(mailbox_module, "solve_pow", spy)
    monkeypatch.setattr(pow_pool, "POW_DEADLINE_SECONDS", 0.3)
    async with mailbox(MAX_POW_BITS) as server:
        started = time.monotonic()
        with pytest.raises(MailboxError, match=r"the proof of work for the record did not "
                                               r"finish in 0.3 s \(proof of work ran out of "
                                               r"time after [\d,]+ hashes\); trying again later"):
            await asyncio.wait_for(service(profile, server).send(CAROL.onion, MAILBOX.onion,
                                                                 text()), 10)
        took = time.monotonic() - started
    assert took < 5, f"a 0.3 s deadline took {took:.2f} s"
    assert spy.ended.is_set()
    assert not server.seen("POST", "/v1/records")


async def test_proof_of_work_does_not_need_the_default_executor(
        profile: Profile, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default executor is full (as with six solves for hostile mailboxes before the
    fix, or a slow NEWNYM): a post to an honest mailbox is still solved and sent."""
    threads: list[str] = []
    real = mailbox_module.solve_pow

    def recording(*args: Any, **kwargs: Any) -> int:
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(mailbox_module, "solve_pow", recording)
    loop = asyncio.get_running_loop()
    default = ThreadPoolExecutor(max_workers=1, thread_name_prefix="default")
    loop.set_default_executor(default)
    gate = threading.Event()
    blocker = loop.run_in_executor(None, gate.wait)
    try:
        async with mailbox(8) as server:
            await asyncio.wait_for(service(profile, server).send(CAROL.onion, MAILBOX.onion,
                                                                 text()), 10)
            assert len(server.seen("POST", "/v1/records")) == 1
    finally:
        gate.set()
        await blocker
        default.shutdown(wait=False)
    assert threads and all(name.startswith("nyth-pow") for name in threads), threads
