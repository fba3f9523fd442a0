"""The mailbox as a real process (``python -m nyth_mailbox``) on a real Redis.

Covers: the signed bundle and the limits it states (enforced), contact cards (only
verifying, unexpired, newest wins, bounded), posts (same size, PoW, replay refused),
download everything, detection with delegated keys (true matches; everything at n = 0;
bounded work per call) and the live detection stream, and what Redis ends up holding.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx_sse
import nacl.public
import pytest
import redis
from nyth.proto import fmd
from nyth.proto.contact_card import ContactCard
from nyth.proto.identity import Identity
from nyth.proto.mailbox_bundle import card_pow_ok, pow_ok, solve_pow
from nyth.runtime.devnet import wait_until
from nyth_mailbox.launch import MailboxProcess

from tests.fixtures.mailbox import Mailbox, random_tag
from tests.fixtures.services import stop_and_check_log

pytestmark = pytest.mark.integration

SIZE = 256
BITS = 6
TAG = 67
Launch = Callable[..., MailboxProcess]


@pytest.fixture
def launch(tmp_path: Path, redis_url: str, redis_prefix: str) -> Iterator[Launch]:
    started: list[MailboxProcess] = []

    def _launch(name: str = "mb", **env: str) -> MailboxProcess:
        proc = MailboxProcess(
            tmp_path / name, redis_url=redis_url, name=name, stream_key=redis_prefix,
            env={"NYTH_RECORD_SIZE": str(SIZE), "NYTH_POW_BITS": str(BITS),
                 "NYTH_LOG_LEVEL": "warning", "NYTH_KEEPALIVE_SECONDS": "1", **env},
        )
        proc.start()
        started.append(proc)
        return proc

    yield _launch
    for proc in started:
        stop_and_check_log(proc)


def card_for(mb: Mailbox, identity: Identity, issued: int | None = None, lifetime: int = 86400,
             mailbox: bytes | None = None) -> bytes:
    """identity's card naming mb (or the mailbox key given)."""
    issued = int(time.time()) - 5 if issued is None else issued
    fmd_key = bytes(fmd.FmdSecretKey.generate().public_key().encode())
    mailbox = mb.bundle.onion_public_key if mailbox is None else mailbox
    return ContactCard(identity.public_key, mailbox, fmd_key, os.urandom(32), issued,
                       issued + lifetime).sign(identity)


# -- bundle, posts, download everything ---------------------------------------------------


def test_bundle_is_signed_and_states_the_limits(launch: Launch) -> None:
    proc = launch(NYTH_MAX_RECORDS="500", NYTH_MAX_AGE_SECONDS="7200")
    mb = Mailbox(proc)
    b = mb.bundle
    assert (b.tag_size, b.record_size, b.max_records, b.max_age_seconds, b.pow_bits) == (
        TAG, SIZE, 500, 7200, BITS)
    raw = mb.http.get("/v1/bundle").json()
    assert raw["record_size"] == SIZE and raw["pow_bits"] == BITS
    health = mb.http.get("/healthz").json()
    assert health["status"] == "ok" and health["onion"] == mb.onion
    proc.restart()
    assert Mailbox(proc).http.get("/v1/bundle").json()["bundle"] == raw["bundle"]


def test_post_download_replay_and_what_redis_holds(launch: Launch, redis_url: str,
                                                  redis_prefix: str) -> None:
    mb = Mailbox(launch())
    alice, bob = Identity.generate(), Identity.generate()
    plaintext = f"hello bob, this is {alice.onion}".encode()
    sealed = nacl.public.SealedBox(nacl.public.PublicKey(bob.x25519_public())).encrypt(plaintext)
    ciphertext = sealed + os.urandom(SIZE - len(sealed))  # padded to the record size
    assert mb.put_card(bob.onion, card_for(mb, bob)).status_code == 200

    posted = [(random_tag(), ciphertext)] + [(random_tag(), os.urandom(SIZE)) for _ in range(11)]
    ids = []
    for tag, ct in posted:
        response = mb.post(tag, ct)
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    got = mb.download_all(limit=5)
    assert [(i, t, c) for i, t, c in got] == [(i, t, c) for i, (t, c) in zip(ids, posted, strict=True)]

    # A replay (same tag and ciphertext, even with a fresh nonce) is refused.
    replay = mb.post(*posted[0])
    assert replay.status_code == 409 and "already" in replay.json()["error"]
    other_nonce = solve_pow(mb.bundle.onion_public_key, *posted[0], BITS,
                            start=solve_pow(mb.bundle.onion_public_key, *posted[0], BITS) + 1)
    assert mb.post(*posted[0], nonce=other_nonce).status_code == 409
    assert len(mb.download_all()) == len(posted)

    with redis.Redis.from_url(redis_url) as raw:
        entries = raw.xrange(f"{redis_prefix}:records")
        assert {len(fields[b"r"]) for _, fields in entries} == {TAG + SIZE}
        # W = y·U + m·B of the tag, computed once at ingest (32 bytes)
        assert all(set(fields) == {b"r", b"w"} for _, fields in entries)
        assert [fields[b"w"] for _, fields in entries] == [
            fmd.decode_tag(fields[b"r"][:TAG]).w for _, fields in entries]
        dump = b""
        for key in raw.scan_iter(match=f"{redis_prefix}*"):
            dump += key + b"\n"
            kind = raw.type(key)
            if kind == b"stream":
                dump += b"".join(v for _, f in raw.xrange(key) for v in f.values())
            elif kind == b"string":
                dump += raw.get(key) or b""
    for needle in (alice.onion, bob.onion, mb.onion):
        assert needle.encode() not in dump and needle.upper().encode() not in dump
    assert plaintext not in dump and b"hello bob" not in dump
    assert alice.public_key not in dump


def test_pow_and_sizes_are_enforced(launch: Launch) -> None:
    mb = Mailbox(launch(NYTH_POW_BITS="12"))
    tag, ct = random_tag(), os.urandom(SIZE)
    bad = next(n for n in range(1000) if not pow_ok(mb.bundle.onion_public_key, tag, ct, n, 12))
    response = mb.post(tag, ct, nonce=bad)
    assert response.status_code == 403 and "proof of work" in response.json()["error"]
    assert mb.post(tag, ct).status_code == 201
    assert mb.post(random_tag(), os.urandom(SIZE - 1)).status_code == 422
    assert mb.post(random_tag(), os.urandom(SIZE + 3)).status_code == 422
    assert mb.post(os.urandom(TAG - 1), os.urandom(SIZE)).status_code == 422
    assert mb.http.post("/v1/records", json={"tag": "!!", "ciphertext": "x", "nonce": 1}
                        ).status_code == 422
    assert mb.http.post("/v1/records", content=b"x" * 100_000).status_code == 413
    assert len(mb.download_all()) == 1

    # Publishing a card costs the same work, under its own hash domain.
    bob = Identity.generate()
    card = card_for(mb, bob)
    key = mb.bundle.onion_public_key
    unworked = next(n for n in range(1000) if not card_pow_ok(key, card, n, 12))
    response = mb.put_card(bob.onion, card, nonce=unworked)
    assert response.status_code == 403 and "proof of work" in response.json()["error"]
    assert mb.http.get(f"/v1/cards/{bob.onion}").status_code == 404
    # Work done for a post does not count for a card.
    post_work = solve_pow(key, card[:TAG], card[TAG:], 12)
    if not card_pow_ok(key, card, post_work, 12):
        assert mb.put_card(bob.onion, card, nonce=post_work).status_code == 403
    assert mb.put_card(bob.onion, card).status_code == 200
    metrics = mb.http.get("/metrics").text
    assert 'nyth_mailbox_pow_failed_total{what="record"} 1.0' in metrics
    assert 'nyth_mailbox_pow_failed_total{what="card"}' in metrics


def test_invalid_tags_are_refused(launch: Launch) -> None:
    mb = Mailbox(launch())
    tag = bytearray(random_tag())
    tag[:32] = b"\xff" * 32  # not a ristretto255 encoding
    response = mb.post(bytes(tag), os.urandom(SIZE))
    assert response.status_code == 422 and "tag" in response.json()["error"]


def test_retention_by_count_and_age_is_enforced(launch: Launch, redis_url: str,
                                               redis_prefix: str) -> None:
    mb = Mailbox(launch("count", NYTH_MAX_RECORDS="4"))
    ids = [mb.post(random_tag(), os.urandom(SIZE)).json()["id"] for _ in range(9)]
    assert [i for i, _, _ in mb.download_all()] == ids[-4:]

    mb2 = Mailbox(launch("age", NYTH_MAX_AGE_SECONDS="1", NYTH_TRIM_INTERVAL_SECONDS="0.2",
                         NYTH_STREAM_KEY=redis_prefix + "x"))
    for _ in range(3):
        assert mb2.post(random_tag(), os.urandom(SIZE)).status_code == 201
    assert len(mb2.download_all()) == 3
    time.sleep(1.6)
    assert mb2.download_all() == []
    with redis.Redis.from_url(redis_url) as raw:
        assert raw.xlen(f"{redis_prefix}x:records") == 0


# -- contact cards ---------------------------------------------------------------------------


def test_cards_verify_expire_and_newest_wins(launch: Launch) -> None:
    mb = Mailbox(launch(NYTH_MAX_CARDS="3", NYTH_MAX_CARD_LIFETIME_SECONDS="864000"))
    bob, mallory = Identity.generate(), Identity.generate()
    now = int(time.time())
    assert mb.http.get(f"/v1/cards/{bob.onion}").status_code == 404

    first = card_for(mb, bob, issued=now - 100)
    response = mb.put_card(bob.onion, first)
    assert response.status_code == 200, response.text
    got = mb.http.get(f"/v1/cards/{bob.onion}").json()
    assert base64.b64decode(got["card"]) == first
    assert ContactCard.verify(first, bob.onion, now, mailbox=mb.onion).issued_at \
        == got["issued_at"]
    assert mb.put_card(bob.onion, first).status_code == 200  # idempotent

    forged = bytearray(card_for(mb, bob))
    forged[-1] ^= 1
    assert mb.put_card(bob.onion, bytes(forged)).status_code == 422
    expired = card_for(mb, bob, issued=now - 1000, lifetime=500)
    assert "expired" in mb.put_card(bob.onion, expired).json()["error"]
    wrong_onion = mb.put_card(bob.onion, card_for(mb, mallory))
    assert wrong_onion.status_code == 422 and "different onion" in wrong_onion.json()["error"]
    # Bob's genuine card, but naming another mailbox: no sender would accept it from here.
    elsewhere = mb.put_card(bob.onion, card_for(mb, bob, mailbox=mallory.public_key))
    assert elsewhere.status_code == 422
    assert "names another mailbox" in elsewhere.json()["error"]
    too_long = mb.put_card(bob.onion, card_for(mb, bob, lifetime=20 * 86400))
    assert too_long.status_code == 422

    older = card_for(mb, bob, issued=now - 200)
    assert mb.put_card(bob.onion, older).status_code == 409
    newer = card_for(mb, bob, issued=now - 10)
    assert mb.put_card(bob.onion, newer).status_code == 200
    assert base64.b64decode(mb.http.get(f"/v1/cards/{bob.onion}").json()["card"]) == newer
    assert mb.put_card(bob.onion, card_for(mb, bob, issued=now - 10)).status_code == 409

    for _ in range(2):
        other = Identity.generate()
        assert mb.put_card(other.onion, card_for(mb, other)).status_code == 200
    full = Identity.generate()
    assert mb.put_card(full.onion, card_for(mb, full)).status_code == 429
    # Renewing a card already held still works when full.
    assert mb.put_card(bob.onion, card_for(mb, bob, issued=now)).status_code == 200

    bad = mb.http.get("/v1/cards/" + "a" * 56)
    assert bad.status_code == 422 and set(bad.json()) == {"error"}


# -- detection -----------------------------------------------------------------------------


def test_detection_returns_true_matches_and_everything_at_n0(launch: Launch) -> None:
    mb = Mailbox(launch(NYTH_MAX_DETECT_SCAN="7"))
    F = fmd
    bob = F.FmdSecretKey.generate()
    mine = set()
    for i in range(30):
        if i % 6 == 0:
            response = mb.post(bytes(F.flag(bob.public_key())), os.urandom(SIZE))
            mine.add(response.json()["id"])
        else:
            response = mb.post(random_tag(), os.urandom(SIZE))
        assert response.status_code == 201
    ids, calls = mb.detect_all(bytes(bob.extract(24).encode()))
    assert set(ids) == mine and len(ids) == 5
    assert calls >= 30 // 7  # the work per call is bounded
    # n = 1: every true match plus about half of the rest.
    ids1, _ = mb.detect_all(bytes(bob.extract(1).encode()))
    assert mine <= set(ids1)
    everything, _ = mb.detect_all(b"", limit=4)
    assert everything == [i for i, _, _ in mb.download_all()]

    bad = mb.http.post("/v1/detect", json={"detection_key": base64.b64encode(b"x" * 31).decode()})
    assert bad.status_code == 422
    assert mb.http.post("/v1/detect", json={"detection_key": "", "after": "x"}).status_code == 422
    assert "nyth_mailbox_detection_tests_total" in mb.http.get("/metrics").text


def test_detection_uses_stored_w_and_serves_records_without_it(
        launch: Launch, redis_url: str, redis_prefix: str) -> None:
    mb = Mailbox(launch())
    F = fmd
    bob = F.FmdSecretKey.generate()
    assert mb.post(bytes(F.flag(bob.public_key())), os.urandom(SIZE)).status_code == 201
    key = bytes(bob.extract(24).encode())
    stream = f"{redis_prefix}:records"
    with redis.Redis.from_url(redis_url) as raw:
        # Records from before W was stored (no "w"), or with a malformed one: W is
        # recomputed, they still match.
        legacy = raw.xadd(stream, {"r": bytes(F.flag(bob.public_key())) + os.urandom(SIZE)})
        broken = raw.xadd(stream, {"r": bytes(F.flag(bob.public_key())) + os.urandom(SIZE),
                                   "w": b"short"})
        # A wrong (but well-sized) stored W is what detection trusts: it never matches,
        # which shows the stored W is the one used.
        tag = bytes(F.flag(bob.public_key()))
        raw.xadd(stream, {"r": tag + os.urandom(SIZE), "w": F.decode_tag(random_tag()).w})
    ids, _ = mb.detect_all(key)
    assert len(ids) == 3 and ids[1:] == [legacy.decode(), broken.decode()]
    assert len(mb.download_all()) == 4


def test_detection_work_and_connections_are_bounded(launch: Launch, redis_url: str,
                                                    redis_prefix: str) -> None:
    """Nobody can queue unbounded CPU work or hold unbounded connections: detection calls
    past max_concurrent_detects and connections past max_connections get 503 at once."""
    mb = Mailbox(launch(NYTH_MAX_CONCURRENT_DETECTS="1", NYTH_MAX_DETECT_SCAN="3000",
                        NYTH_MAX_CONNECTIONS="16"))
    F = fmd
    tag = bytes(F.flag(F.FmdSecretKey.generate().public_key()))
    with redis.Redis.from_url(redis_url) as raw:
        pipe = raw.pipeline()
        for _ in range(3000):  # no stored W: each test recomputes it (≈ 0.2 ms)
            pipe.xadd(f"{redis_prefix}:records", {"r": tag + os.urandom(SIZE)})
        pipe.execute()
    key = base64.b64encode(bytes(F.FmdSecretKey.generate().extract(8).encode())).decode()
    answers: list[httpx.Response] = []

    def detect() -> None:
        with httpx.Client(base_url=str(mb.http.base_url), trust_env=False, timeout=60) as c:
            answers.append(c.post("/v1/detect", json={"detection_key": key, "after": "0"}))

    threads = [threading.Thread(target=detect) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    codes = sorted(r.status_code for r in answers)
    assert codes[0] == 200 and codes[-1] == 503, codes
    busy = next(r for r in answers if r.status_code == 503)
    assert busy.headers["retry-after"] and "detections" in busy.json()["error"]
    assert "nyth_mailbox_detect_busy_total" in mb.http.get("/metrics").text

    # 16 connections held open (mb.http holds one of them) fill the process's budget.
    mb.http.close()
    host, port = mb.http.base_url.host, mb.http.base_url.port
    idle = [socket.create_connection((host, port)) for _ in range(16)]
    try:
        time.sleep(0.2)
        refused = httpx.get(f"http://{host}:{port}/healthz", trust_env=False, timeout=10)
        assert refused.status_code == 503
    finally:
        for sock in idle:
            sock.close()
    assert wait_until(lambda: httpx.get(f"http://{host}:{port}/healthz", trust_env=False,
                                        timeout=10).status_code == 200, 10)


def test_live_detection_stream(launch: Launch) -> None:
    proc = launch()
    mb = Mailbox(proc)
    F = fmd
    bob = F.FmdSecretKey.generate()
    key = base64.b64encode(bytes(bob.extract(24).encode())).decode()
    backlog = mb.post(bytes(F.flag(bob.public_key())), os.urandom(SIZE)).json()["id"]
    mb.post(random_tag(), os.urandom(SIZE))
    got: list[dict[str, Any]] = []
    ready = threading.Event()

    def reader() -> None:
        with httpx.Client(trust_env=False, timeout=15) as client, httpx_sse.connect_sse(
            client, "POST", f"{proc.base_url}/v1/detect/stream", json={"detection_key": key}
        ) as source:
            ready.set()
            for event in source.iter_sse():
                if event.event == "record":
                    got.append({"id": event.id, **json.loads(event.data)})
                    if len(got) == 2:
                        return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    assert ready.wait(10)
    time.sleep(0.3)
    mb.post(random_tag(), os.urandom(SIZE))
    ct = os.urandom(SIZE)
    live = mb.post(bytes(F.flag(bob.public_key())), ct).json()["id"]
    thread.join(15)
    assert [g["id"] for g in got] == [backlog, live]
    assert base64.b64decode(got[1]["ciphertext"]) == ct
    bad = mb.http.post("/v1/detect/stream", json={"detection_key": "abc"})
    assert bad.status_code == 422
    # The old form, with the key in the URL, is refused rather than ignored.
    assert mb.http.get("/v1/detect/stream", params={"key": key}).status_code == 405
