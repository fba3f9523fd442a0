"""The peer's group sync and mailbox code against real misbehaving servers on 127.0.0.1
(a plain httpx client, no Tor): oversized and malformed answers, endless or silent event
streams and hostile error text become a server failing with a readable reason, and the
retry machinery carries on; well-formed answers still work.

Profiles, stores, services and the messenger are the real ones.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import nacl.bindings
import pytest
from nyth.mailbox_traffic import TrafficPolicy
from nyth.proto import blob_page, fmd
from nyth.proto.bundle import ServerBundle
from nyth.proto.contact_card import ContactCard
from nyth.proto.delivery import RetryPolicy
from nyth.proto.group import BLOB_SIZE, Invite, new_group_key, seal_group_message
from nyth.proto.identity import Identity
from nyth.proto.mailbox_bundle import MailboxBundle
from nyth.proto.mailbox_record import RECOMMENDED_RECORD_SIZE, seal_record
from nyth.proto.p2p import Envelope, MessageKind, encode_text, new_msg_id
from nyth_peer import groups as groups_module
from nyth_peer import mailbox as mailbox_module
from nyth_peer import server_sync
from nyth_peer.events import EventBus
from nyth_peer.groups import GroupService
from nyth_peer.mailbox import MailboxError, MailboxService
from nyth_peer.messenger import ACCEPTED, Messenger
from nyth_peer.profile import Profile

from tests.unit.hostile_http import Handler, HostileServer, Reply, Request, forever, until

SERVER = Identity.from_seed(b"S" * 32)
MAILBOX = Identity.from_seed(b"M" * 32)
BOB = Identity.from_seed(b"B" * 32)
FAST = RetryPolicy(initial=0.1, cap=0.3)
EVENT_STREAM = {"content-type": "text/event-stream"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def profile(tmp_path: Path):
    profile = Profile.create(tmp_path, "alice", "correct horse battery")
    yield profile
    profile.store.close()


# -- group servers ---------------------------------------------------------------------

GROUP_BUNDLE = ServerBundle(SERVER.public_key, bytes(32), BLOB_SIZE, 100_000, 86_400,
                            int(time.time())).sign(SERVER)


async def bundle(request: Request, reply: Reply) -> None:
    await reply.json(200, {"bundle": b64(GROUP_BUNDLE), "onion": SERVER.onion})


async def empty_page(request: Request, reply: Reply) -> None:
    await reply.json(200, {"blobs": [], "next": request.query["after"], "more": False})


async def quiet_stream(request: Request, reply: Reply) -> None:
    async def pings() -> AsyncIterator[bytes]:
        while True:
            yield b": ping\r\n\r\n"
            await asyncio.sleep(0.1)
    await reply.chunked(200, pings(), EVENT_STREAM)


def group_server(**routes: Any) -> HostileServer:
    handlers: dict[tuple[str, str], Handler] = {
        ("GET", "/v1/bundle"): bundle, ("GET", "/v1/blobs"): empty_page,
        ("GET", "/v1/blobs/stream"): quiet_stream}
    for name, handler in routes.items():
        handlers[{"page": ("GET", "/v1/blobs"), "stream": ("GET", "/v1/blobs/stream"),
                  "post": ("POST", "/v1/blobs")}[name]] = handler
    return HostileServer(handlers)


async def joined(profile: Profile, server: HostileServer,
                 idle: float | None = None) -> tuple[GroupService, Invite]:
    events = EventBus()
    service = GroupService(profile, events, Messenger(profile, events, FAST), server.client, FAST)
    if idle is not None:
        service.stream_idle_seconds = idle
    invite = Invite("friends", new_group_key(), (GROUP_BUNDLE,))
    service._join(invite)  # what accepting an invite does once its servers are pinned
    return service, invite


def state(service: GroupService) -> dict[str, Any]:
    return service.server_state.get(SERVER.onion, {})


async def failure_reason(service: GroupService) -> str:
    return str((await until(lambda: state(service).get("state") == "unreachable" and state(service),
                            "the server to be reported unreachable"))["reason"])


async def test_well_formed_pages_and_events_are_ingested(profile: Profile) -> None:
    key = new_group_key()
    invite = Invite("friends", key, (GROUP_BUNDLE,))
    gid = invite.group_id
    first, _ = seal_group_message(BOB, key, gid, timestamp_ms=1, parents=(), body="from the backlog")
    second, _ = seal_group_message(BOB, key, gid, timestamp_ms=2, parents=(), body="live")

    async def page(request: Request, reply: Reply) -> None:
        done = request.query["after"] != "0"
        await reply.json(200, {"blobs": [] if done else [{"id": "5-0", "blob": b64(first)}],
                               "next": "5-0", "more": False})

    async def stream(request: Request, reply: Reply) -> None:
        assert request.query["after"] == "5-0"
        async def events() -> AsyncIterator[bytes]:
            yield f"id: 6-0\r\nevent: blob\r\ndata: {b64(second)}\r\n\r\n".encode()
            while True:
                await asyncio.sleep(0.1)
                yield b": ping\r\n\r\n"
        await reply.chunked(200, events(), EVENT_STREAM)

    async with group_server(page=page, stream=stream) as server:
        events = EventBus()
        service = GroupService(profile, events, Messenger(profile, events, FAST), server.client, FAST)
        service._join(invite)
        await until(lambda: service.history(gid.hex())["messages"].__len__() == 2, "both messages")
        assert state(service)["state"] == "live"
        assert profile.store.get("cursors", SERVER.onion) == {"cursor": "6-0"}
        await service.stop()
    bodies = sorted(m["body"] for m in service.history(gid.hex())["messages"])
    assert bodies == ["from the backlog", "live"]


async def test_an_oversized_page_is_the_server_failing(profile: Profile) -> None:
    async def huge(request: Request, reply: Reply) -> None:
        await reply.chunked(200, forever(b"[{}," * 16384))

    async with group_server(page=huge) as server:
        service, _ = await joined(profile, server)
        reason = await failure_reason(service)
        await until(lambda: len(server.seen("GET", "/v1/blobs")) >= 2, "a retry")
        await service.stop()
    assert f"{SERVER.onion[:8]}….onion sent more than {server_sync.PAGE_ANSWER_BYTES:,} bytes " \
           "for a page of blobs" in reason
    assert all(reply.sent < 32 << 20 for reply in server.replies)


@pytest.mark.parametrize(("page", "expected"), [
    ({"blobs": [{"id": "1-0", "blob": b64(bytes(100))}], "next": "1-0", "more": False},
     "blobs.0.blob: Value error, must decode to exactly 2048 bytes, got 100"),
    ({"blobs": [], "next": "1-0", "more": "yes"}, "more: Input should be a valid boolean"),
    ({"blobs": [], "next": "../../etc", "more": False}, "next: String should match pattern"),
    ({"blobs": [{"id": "1-0", "blob": "AA"}] * 501, "next": "1-0", "more": False},
     "blobs: List should have at most 500 items"),
    ({"blobs": [], "next": "0", "more": True}, "says more blobs wait after 0 but does not move"),
])
async def test_a_malformed_page_is_the_server_failing(profile: Profile, page: dict[str, Any],
                                                      expected: str) -> None:
    async def bad(request: Request, reply: Reply) -> None:
        await reply.json(200, page)

    async with group_server(page=bad) as server:
        service, _ = await joined(profile, server)
        reason = await failure_reason(service)
        await service.stop()
    assert expected in reason
    assert profile.store.get("cursors", SERVER.onion) is None


# -- binary pages (docs/protocol.md §4.1) ----------------------------------------------

BINARY_PAGE = {"content-type": blob_page.MEDIA_TYPE}


def binary_page(ids: list[tuple[int, int]], blobs: list[bytes], next_id: tuple[int, int],
                more: bool = False, size: int = BLOB_SIZE) -> bytes:
    return blob_page.encode_page(ids, blobs, next_id, more, size)


async def test_a_binary_page_is_asked_for_and_ingested(profile: Profile) -> None:
    key = new_group_key()
    invite = Invite("friends", key, (GROUP_BUNDLE,))
    gid = invite.group_id
    blobs = [seal_group_message(BOB, key, gid, timestamp_ms=i, parents=(), body=f"b{i}")[0]
             for i in range(3)]

    async def page(request: Request, reply: Reply) -> None:
        # Two pages: the cursor in the first page's header leads to the second.
        if request.query["after"] == "0":
            data = binary_page([(5, 0), (5, 1)], blobs[:2], (5, 1), more=True)
        else:
            assert request.query["after"] == "5-1"
            data = binary_page([(7, 0)], blobs[2:], (7, 0))
        await reply.raw(200, data, BINARY_PAGE)

    async with group_server(page=page) as server:
        events = EventBus()
        service = GroupService(profile, events, Messenger(profile, events, FAST), server.client, FAST)
        service._join(invite)
        await until(lambda: len(service.history(gid.hex())["messages"]) == 3, "three messages")
        await until(lambda: state(service).get("state") == "live", "the server to be live")
        await service.stop()
    assert profile.store.get("cursors", SERVER.onion) == {"cursor": "7-0"}
    accepts = {r.headers.get("accept") for r in server.seen("GET", "/v1/blobs")}
    assert accepts == {f"{blob_page.MEDIA_TYPE}, application/json;q=0.5"}


def _spoilt_pages() -> list[tuple[bytes, str]]:
    good = binary_page([(1, 0), (1, 1)], [bytes(BLOB_SIZE), bytes(BLOB_SIZE)], (1, 1))
    return [
        (good[:-1], "blob page truncated"),
        (good[:20], "truncated: 20 bytes, shorter than its 33-byte header"),
        (good + b"\x00", "blob page extended"),
        (binary_page([(1, 0)], [bytes(1024)], (1, 0), size=1024),
         "carries 1024-byte blobs; this server's are 2048 bytes"),
        (b"NYTHBAD1" + good[8:], "bad magic"),
        (good[:8] + b"\x02" + good[9:], "unknown flags 0x02"),
        # A count beyond what was asked, with the bytes to match it.
        (binary_page([(1, i) for i in range(server_sync.PAGE + 1)],
                     [bytes(BLOB_SIZE)] * (server_sync.PAGE + 1), (1, 0)),
         "sent more than"),
    ]


@pytest.mark.parametrize(("data", "expected"), _spoilt_pages(),
                         ids=["cut-1", "cut-header", "extended", "blob-size", "magic", "flags",
                              "count"])
async def test_a_malformed_binary_page_is_the_server_failing(profile: Profile, data: bytes,
                                                             expected: str) -> None:
    async def bad(request: Request, reply: Reply) -> None:
        await reply.raw(200, data, BINARY_PAGE)

    async with group_server(page=bad) as server:
        service, _ = await joined(profile, server)
        reason = await failure_reason(service)
        await service.stop()
    assert expected in reason and f"{SERVER.onion[:8]}….onion" in reason
    assert profile.store.get("cursors", SERVER.onion) is None


async def test_an_endless_binary_page_is_cut_at_the_binary_bound(profile: Profile) -> None:
    """The limit follows the type the answer claims: a binary page may be no longer than
    PAGE blobs take, well below the JSON bound."""
    async def endless(request: Request, reply: Reply) -> None:
        await reply.chunked(200, forever(bytes(65536)), BINARY_PAGE)

    binary_bound = blob_page.page_size(server_sync.PAGE, BLOB_SIZE)
    assert binary_bound < server_sync.PAGE_ANSWER_BYTES
    async with group_server(page=endless) as server:
        service, _ = await joined(profile, server)
        reason = await failure_reason(service)
        await service.stop()
    assert f"sent more than {binary_bound:,} bytes for a page of blobs" in reason
    assert all(reply.sent < 32 << 20 for reply in server.replies)


async def test_a_server_without_binary_pages_is_read_as_json(profile: Profile) -> None:
    """An older server ignores Accept: its JSON answer is read as before."""
    async with group_server() as server:
        service, _ = await joined(profile, server)
        await until(lambda: state(service).get("state") == "live", "the server to be live")
        await service.stop()
    assert server.seen("GET", "/v1/blobs")[0].headers["accept"].startswith(blob_page.MEDIA_TYPE)


async def test_an_endless_stream_line_is_dropped_and_reconnected(profile: Profile) -> None:
    async def endless(request: Request, reply: Reply) -> None:
        await reply.chunked(200, forever(b"data: " + b"A" * 65536), EVENT_STREAM)

    async with group_server(stream=endless) as server:
        service, _ = await joined(profile, server)
        reason = await failure_reason(service)
        await until(lambda: len(server.seen("GET", "/v1/blobs/stream")) >= 2, "a reconnection")
        await service.stop()
    assert f"line longer than {server_sync.STREAM_MAX_LINE:,} bytes" in reason
    assert all(reply.sent < 32 << 20 for reply in server.replies)


async def test_endless_data_lines_are_dropped(profile: Profile) -> None:
    async def endless(request: Request, reply: Reply) -> None:
        await reply.chunked(200, forever(b"data: " + b"A" * 1000 + b"\n"), EVENT_STREAM)

    async with group_server(stream=endless) as server:
        service, _ = await joined(profile, server)
        reason = await failure_reason(service)
        await service.stop()
    assert f"event larger than {server_sync.STREAM_MAX_EVENT:,} bytes" in reason


async def test_a_malformed_blob_event_is_the_server_failing(profile: Profile) -> None:
    async def wrong(request: Request, reply: Reply) -> None:
        async def events() -> AsyncIterator[bytes]:
            yield f"id: 7-0\nevent: blob\ndata: {b64(bytes(2000))}\n\n".encode()
            await asyncio.sleep(30)
        await reply.chunked(200, events(), EVENT_STREAM)

    async with group_server(stream=wrong) as server:
        service, _ = await joined(profile, server)
        reason = await failure_reason(service)
        await service.stop()
    assert "blob event whose data must decode to exactly 2048 bytes" in reason


async def test_a_silent_stream_is_dropped_and_reconnected(profile: Profile) -> None:
    async def silent(request: Request, reply: Reply) -> None:
        await reply.head(200, {"transfer-encoding": "chunked", **EVENT_STREAM})
        await asyncio.sleep(60)

    async with group_server(stream=silent) as server:
        service, _ = await joined(profile, server, idle=0.5)
        reason = await failure_reason(service)
        await until(lambda: len(server.seen("GET", "/v1/blobs/stream")) >= 2, "a reconnection")
        await service.stop()
    assert "sent nothing on the event stream for 0.5 s" in reason


def test_the_stream_idle_deadline_spans_several_server_keep_alives() -> None:
    assert server_sync.SERVER_KEEPALIVE_SECONDS == 15.0
    assert server_sync.STREAM_IDLE_SECONDS >= 3 * server_sync.SERVER_KEEPALIVE_SECONDS


async def test_an_oversized_post_answer_keeps_the_post_queued(profile: Profile) -> None:
    async def huge(request: Request, reply: Reply) -> None:
        await reply.chunked(201, forever(b'{"id": "' + b"9" * 8192))

    async with group_server(post=huge) as server:
        service, invite = await joined(profile, server)
        service.start()
        gid = invite.group_id.hex()
        record = service.post(gid, "hello")
        key = f"group_messages:{gid}"
        queued = await until(lambda: (r := profile.store.get(key, record["hash"]))
                             and r["reason"] and r, "the post to fail with a reason")
        await service.stop()
    assert queued["state"] == "queued"
    assert f"sent more than {groups_module.POST_ANSWER_BYTES:,} bytes for a post " \
           "acknowledgement" in queued["reason"]


# -- mailboxes -------------------------------------------------------------------------

MAILBOX_BUNDLE = MailboxBundle(MAILBOX.public_key, fmd.TAG_SIZE, RECOMMENDED_RECORD_SIZE, 1000,
                               86_400, 0, int(time.time())).sign(MAILBOX)
RECORDS_ANSWER_BYTES = mailbox_module.page_answer_bytes(
    mailbox_module.page_limit(RECOMMENDED_RECORD_SIZE), RECOMMENDED_RECORD_SIZE)


async def mailbox_bundle(request: Request, reply: Reply) -> None:
    await reply.json(200, {"bundle": b64(MAILBOX_BUNDLE)})


async def card_stored(request: Request, reply: Reply) -> None:
    await reply.json(200, {**request.json(), "issued_at": 0, "expires_at": 0})


def mailbox_server(profile: Profile, **routes: Any) -> HostileServer:
    card = f"/v1/cards/{profile.identity.onion}"
    handlers: dict[tuple[str, str], Handler] = {("GET", "/v1/bundle"): mailbox_bundle,
                                                ("PUT", card): card_stored}
    for name, handler in routes.items():
        handlers[{"records": ("GET", "/v1/records"), "detect": ("POST", "/v1/detect"),
                  "card": ("PUT", card)}.get(name) or ("GET", f"/v1/cards/{name}")] = handler
    return HostileServer(handlers)


def card_of(owner: Identity, mailbox: Identity) -> bytes:
    now = int(time.time())
    return ContactCard(owner.public_key, mailbox.public_key,
                       fmd.FmdSecretKey.generate().public_key().encode(), b"\x07" * 32, now,
                       now + 3600).sign(owner)


# What is paced for privacy (post delay, card-to-post gap) is tested in
# test_peer_mailbox_traffic.py; here it would only make the tests wait.
NO_WAITING = TrafficPolicy(post_delay_mean=0.0, post_delay_cap=0.0, card_post_gap=0.0,
                           first_fetch_spread=0.0)


def mailbox_service(profile: Profile, server: HostileServer, detection_bits: int | None = None,
                    ) -> tuple[MailboxService, Messenger]:
    events = EventBus()
    messenger = Messenger(profile, events, FAST)
    GroupService(profile, events, messenger, server.client, FAST)  # handles invites
    service = MailboxService(profile, events, lambda _isolation: server.client(),
                             mailbox_onion=MAILBOX.onion,
                             poll_seconds=0.2, detection_bits=detection_bits,
                             on_record=messenger.on_mailbox_record, traffic=NO_WAITING)
    return service, messenger


async def mailbox_failure(service: MailboxService) -> str:
    await until(lambda: service.state["state"] == "unreachable", "the mailbox to fail")
    return str(service.state["reason"])


def page_of(records: list[dict[str, str]], next_: str, **extra: Any) -> Callable[..., Any]:
    async def handler(request: Request, reply: Reply) -> None:
        after = request.query.get("after") or request.json()["after"]
        done = after == next_
        await reply.json(200, {"records": [] if done else records, "next": next_,
                               "more": False, **extra})
    return handler


def sealed_to(profile: Profile, service: MailboxService, sender: Identity,
              envelope: Envelope) -> dict[str, str]:
    # The key of the card the service is about to publish (created now if need be).
    card_key = service.card_keys.for_new_card(int(time.time()) + 3600, 3600)
    ciphertext = seal_record(sender, profile.identity.public_key, card_key, envelope,
                             RECOMMENDED_RECORD_SIZE)
    return {"tag": b64(fmd.flag(service._secret.public_key())), "ciphertext": b64(ciphertext)}


def stranger_record(i: int) -> dict[str, str]:
    return {"id": f"{i}-0", "tag": b64(fmd.flag(fmd.FmdSecretKey.generate().public_key())),
            "ciphertext": b64(bytes(RECOMMENDED_RECORD_SIZE))}


async def test_an_oversized_records_page_is_the_mailbox_failing(profile: Profile) -> None:
    async def huge(request: Request, reply: Reply) -> None:
        await reply.chunked(200, forever(b"[{}," * 16384))

    async with mailbox_server(profile, records=huge) as server:
        service, _ = mailbox_service(profile, server)
        service.start()
        reason = await mailbox_failure(service)
        await service.stop()
    assert f"mailbox {MAILBOX.onion[:8]}….onion sent more than {RECORDS_ANSWER_BYTES:,} bytes " \
           "for a page of records" in reason


def test_pages_of_larger_records_ask_for_fewer_of_them() -> None:
    assert mailbox_module.page_limit(RECOMMENDED_RECORD_SIZE) == mailbox_module.PAGE
    largest = mailbox_module.page_limit(1 << 16)
    assert 1 <= largest < 50
    assert mailbox_module.page_answer_bytes(largest, 1 << 16) <= \
        mailbox_module.PAGE_BYTES + mailbox_module.JSON_SLACK


async def test_hostile_card_refusal_text_is_cleaned_and_cut(profile: Profile) -> None:
    async def refuse(request: Request, reply: Reply) -> None:
        await reply.json(403, {"error": "\x1b[2J\x1b[Hyour data is gone\r\n\u202e" + "x" * 20_000})

    async with mailbox_server(profile, card=refuse) as server:
        service, _ = mailbox_service(profile, server)
        service.start()
        reason = await mailbox_failure(service)
        await service.stop()
    assert reason.startswith("MailboxError: mailbox refused our card (403: [2J [Hyour data is gone x")
    assert reason.endswith("…)") and len(reason) < 300
    assert all(ch.isprintable() for ch in reason)


async def test_a_bad_record_is_skipped_and_later_ones_still_arrive(profile: Profile) -> None:
    invite = Invite("friends", new_group_key(), (GROUP_BUNDLE[:-1] + bytes([GROUP_BUNDLE[-1] ^ 1]),))
    profile.store.put("contacts", BOB.onion, {"onion": BOB.onion, "name": "bob", "status": ACCEPTED,
                                              "created_at": 0.0})

    def env(kind: MessageKind, body: bytes) -> Envelope:
        return Envelope(new_msg_id(), kind, int(time.time() * 1000), body)

    async with mailbox_server(profile) as server:
        service, messenger = mailbox_service(profile, server)
        records = [{"id": "1-0", **sealed_to(profile, service, BOB,
                                             env(MessageKind.GROUP_INVITE, invite.encode()))},
                   {"id": "2-0", **sealed_to(profile, service, BOB,
                                             env(MessageKind.TEXT, encode_text("after it")))}]
        server.routes[("GET", "/v1/records")] = page_of(records, "2-0")
        service.start()
        await until(lambda: profile.store.list(f"messages:{BOB.onion}"), "the second message")
        await until(lambda: service.state["state"] == "live", "the mailbox to be live")
        await service.stop()
    assert [m["text"] for m in messenger.messages(BOB.onion)] == ["after it"]
    assert profile.store.list("invites") == []
    row = profile.store.get("mailbox", "cursor")
    assert row is not None and row["cursor"] == "2-0" and row["ours"] == 2 and row["seen"] == 2


async def test_download_mode_counts_records_itself(profile: Profile) -> None:
    records = [stranger_record(1), stranger_record(2)]
    async with mailbox_server(profile, records=page_of(records, "2-0", scanned=10**12)) as server:
        service, _ = mailbox_service(profile, server)
        service.start()
        await until(lambda: (profile.store.get("mailbox", "cursor") or {}).get("cursor") == "2-0",
                    "the page to be read")
        await service.stop()
    assert profile.store.get("mailbox", "cursor")["seen"] == 2  # type: ignore[index]


@pytest.mark.parametrize(("scanned", "expected"), [
    (b"1e999", "scanned: Input should be a valid integer"),
    (b"NaN", "scanned: Input should be a valid integer"),
    (b"-3", "scanned: Input should be greater than or equal to 0"),
    (b"2.5", "scanned: Input should be a valid integer"),
    (b"true", "scanned: Input should be a valid integer"),
    (b"100000000", "claims it scanned 100000000 records for 0 matches; it keeps at most 1000"),
])
async def test_a_delegated_scanned_count_is_checked(profile: Profile, scanned: bytes,
                                                    expected: str) -> None:
    async def detect(request: Request, reply: Reply) -> None:
        await reply.raw(200, b'{"records": [], "next": "9-0", "more": false, "scanned": '
                        + scanned + b"}", {"content-type": "application/json"})

    async with mailbox_server(profile, detect=detect) as server:
        service, _ = mailbox_service(profile, server, detection_bits=6)
        service.start()
        reason = await mailbox_failure(service)
        await service.stop()
    assert expected in reason
    assert (profile.store.get("mailbox", "cursor") or {}).get("seen", 0) == 0
    json.dumps(service.privacy(), allow_nan=False)


async def test_a_plausible_delegated_count_is_used(profile: Profile) -> None:
    async with mailbox_server(profile, detect=page_of([], "9-0", scanned=700)) as server:
        service, _ = mailbox_service(profile, server, detection_bits=6)
        service.start()
        await until(lambda: (profile.store.get("mailbox", "cursor") or {}).get("cursor") == "9-0",
                    "the page to be read")
        await service.stop()
    assert profile.store.get("mailbox", "cursor")["seen"] == 700  # type: ignore[index]


async def test_junk_counters_from_older_versions_are_survived(profile: Profile) -> None:
    profile.store.put("mailbox", "cursor", {"cursor": {"evil": 1}, "seen": float("inf"),
                                            "ours": float("nan"), "since": "yesterday"})
    async with mailbox_server(profile, records=page_of([stranger_record(3)], "3-0")) as server:
        service, _ = mailbox_service(profile, server)
        privacy = service.privacy()
        json.dumps(privacy, allow_nan=False)  # what GET /v1/mailbox answered 500 on
        assert privacy["records_per_day"] == 0 and privacy["recommended_bits"] == 0
        service.start()
        await until(lambda: (profile.store.get("mailbox", "cursor") or {}).get("cursor") == "3-0",
                    "the page to be read")
        await service.stop()
    assert server.seen("GET", "/v1/records")[0].query["after"] == "0"
    row = profile.store.get("mailbox", "cursor")
    assert row is not None and row["seen"] == 1 and row["ours"] == 0
    json.dumps(service.privacy(), allow_nan=False)


async def test_an_oversized_card_of_a_contact_is_refused(profile: Profile) -> None:
    carol = Identity.generate()

    async def huge(request: Request, reply: Reply) -> None:
        await reply.chunked(200, forever(b'{"card": "' + b"A" * 65536))

    async with mailbox_server(profile, **{carol.onion: huge}) as server:
        service, _ = mailbox_service(profile, server)
        envelope = Envelope(new_msg_id(), MessageKind.TEXT, 0, encode_text("hi"))
        with pytest.raises(MailboxError) as caught:
            await service.send(carol.onion, MAILBOX.onion, envelope)
    assert f"sent more than {mailbox_module.CARD_ANSWER_BYTES:,} bytes for a contact card" \
        in str(caught.value)


async def test_a_wrong_size_card_of_a_contact_is_refused(profile: Profile) -> None:
    carol = Identity.generate()
    card = card_of(carol, MAILBOX)

    async def padded(request: Request, reply: Reply) -> None:
        await reply.json(200, {"card": b64(card + b"\0" * 30)})

    async with mailbox_server(profile, **{carol.onion: padded}) as server:
        service, _ = mailbox_service(profile, server)
        envelope = Envelope(new_msg_id(), MessageKind.TEXT, 0, encode_text("hi"))
        with pytest.raises(MailboxError, match=r"the contact's card was refused: .* card: Value "
                                               r"error, is longer than the base64"):
            await service.send(carol.onion, MAILBOX.onion, envelope)


@pytest.mark.parametrize("named", ["another mailbox", "this mailbox"])
async def test_a_card_naming_another_mailbox_is_refused_by_the_sender(
        profile: Profile, named: str) -> None:
    """Carol's real card, served by a mailbox it does not name (someone circulated a
    contact id with their own mailbox): nothing is sealed or posted there. The control
    (the card names the mailbox that serves it) gets as far as posting the record."""
    carol = Identity.generate()
    card = card_of(carol, Identity.generate() if named == "another mailbox" else MAILBOX)

    async def serve(request: Request, reply: Reply) -> None:
        await reply.json(200, {"card": b64(card)})

    async with mailbox_server(profile, **{carol.onion: serve}) as server:
        service, _ = mailbox_service(profile, server)
        envelope = Envelope(new_msg_id(), MessageKind.TEXT, 0, encode_text("hi"))
        with pytest.raises(MailboxError) as caught:
            await service.send(carol.onion, MAILBOX.onion, envelope)
        posted = server.seen("POST", "/v1/records")
    if named == "another mailbox":
        assert "the contact's card was refused: contact card names another mailbox" \
            in str(caught.value)
        assert f"not {MAILBOX.onion}.onion" in str(caught.value)
        assert posted == []
    else:
        assert "mailbox refused the record (404" in str(caught.value)
        assert len(posted) == 1


async def test_each_card_gets_a_new_random_x25519_key(profile: Profile, tmp_path: Path) -> None:
    async with mailbox_server(profile, records=page_of([], "0")) as server:
        service, _ = mailbox_service(profile, server)
        service.start()
        put = ("PUT", f"/v1/cards/{profile.identity.onion}")
        # Waited for in the store, not on the server: the server sees a PUT before the
        # service has read its answer and recorded the card.
        row = await until(lambda: profile.store.get("mailbox", "card"), "the first card")
        # Due for renewal: the next round publishes a new card.
        profile.store.put("mailbox", "card", {**row, "expires_at": int(time.time()) + 60,
                                              "renew_at": time.time()})
        await until(lambda: (profile.store.get("mailbox", "card") or {}).get("x25519")
                    != row["x25519"], "the renewed card")
        await service.stop()
    cards = [ContactCard.decode_unverified(base64.b64decode(r.json()["card"]))[0]
             for r in server.seen(*put)[:2]]
    assert all(c.mailbox_public_key == MAILBOX.public_key for c in cards)
    keys = [c.x25519_public_key for c in cards]
    assert keys[0] != keys[1]
    assert profile.identity.x25519_public() not in keys   # not the gateway's key any more
    secrets = service.card_keys.secrets(time.time())
    assert [nacl.bindings.crypto_scalarmult_base(s) for s in secrets] == keys[::-1]
    # Sealed in the profile store like every row: never on disk in clear.
    on_disk = b"".join(p.read_bytes() for p in tmp_path.glob("profile.db*"))
    assert all(secret not in on_disk and b64(secret).encode() not in on_disk
               for secret in secrets)


async def test_an_expired_card_key_is_deleted_and_its_records_no_longer_open(
        profile: Profile) -> None:
    """A key whose card expired longer ago than the mailbox keeps records is deleted at
    the next poll: a record sealed to it (a mailbox that kept it anyway) stays closed;
    one sealed to a retained key (card expired, retention not over) still opens."""
    profile.store.put("contacts", BOB.onion, {"onion": BOB.onion, "name": "bob",
                                              "status": ACCEPTED, "created_at": 0.0})
    now = int(time.time())
    async with mailbox_server(profile) as server:
        service, messenger = mailbox_service(profile, server)
        service_keys = service.card_keys
        expired = service_keys.for_new_card(now - 7200, 3600)    # gone since an hour
        service_keys.published(expired)
        retained = service_keys.for_new_card(now - 600, 3600)    # kept 50 more minutes
        service_keys.published(retained)
        keys = {"expired": expired, "retained": retained}
        records = []
        for i, (name, key) in enumerate(keys.items()):
            envelope = Envelope(new_msg_id(), MessageKind.TEXT, now * 1000, encode_text(name))
            records.append({"id": f"{i + 1}-0", "tag": b64(fmd.flag(service._secret.public_key())),
                            "ciphertext": b64(seal_record(BOB, profile.identity.public_key, key,
                                                          envelope, RECOMMENDED_RECORD_SIZE))})
        server.routes[("GET", "/v1/records")] = page_of(records, "2-0")
        service.start()
        await until(lambda: (profile.store.get("mailbox", "cursor") or {}).get("cursor") == "2-0",
                    "the page to be read")
        await service.stop()
    assert [m["text"] for m in messenger.messages(BOB.onion)] == ["retained"]
    remaining = [nacl.bindings.crypto_scalarmult_base(s) for s in service_keys.secrets(time.time())]
    assert keys["expired"] not in remaining and keys["retained"] in remaining
    stored = json.dumps(profile.store.get("mailbox", "card_keys"))
    assert b64(keys["expired"]) not in stored and b64(keys["retained"]) in stored


async def test_a_card_is_republished_when_the_mailbox_changes(profile: Profile) -> None:
    """The card names its mailbox: one still valid but published on another mailbox (the
    profile moved) is not taken for this one's."""
    profile.store.put("mailbox", "card", {"expires_at": int(time.time()) + 5 * 86400,
                                          "published": True, "mailbox": BOB.onion})
    async with mailbox_server(profile, records=page_of([], "0")) as server:
        service, _ = mailbox_service(profile, server)
        row = profile.store.get("mailbox", "card")
        assert row is not None
        key = service.card_keys.for_new_card(row["expires_at"], 3600)
        service.card_keys.published(key)
        profile.store.put("mailbox", "card", {**row, "x25519": b64(key)})
        service.start()
        # The server sees the PUT before the service has read the answer and recorded it:
        # what is waited for is the record, the outcome that matters.
        await until(lambda: (profile.store.get("mailbox", "card") or {}).get("mailbox")
                    == MAILBOX.onion, "the card to be recorded as published on the new mailbox")
        await service.stop()
    assert server.seen("PUT", f"/v1/cards/{profile.identity.onion}")


@pytest.mark.parametrize("label", ["alice", None])
async def test_the_test_reader_label_is_sent_only_when_set(profile: Profile,
                                                         label: str | None) -> None:
    # The test hook for fault-injecting servers (NYTH_TEST_READER_LABEL, dev mode only):
    # every request to a group server names the reader; without a label none does.
    async with group_server() as server:
        events = EventBus()
        service = GroupService(profile, events, Messenger(profile, events, FAST),
                               groups_module.with_test_reader(server.client, label), FAST)
        service._join(Invite("friends", new_group_key(), (GROUP_BUNDLE,)))
        # "live" is set once the backlog is read, just before the stream is requested:
        # wait for the request itself, or a loaded machine stops the service in between.
        await until(lambda: any(r.path == "/v1/blobs/stream" for r in server.requests),
                    "the stream to be requested")
        await service.stop()
    paths = {r.path for r in server.requests}
    assert {"/v1/bundle", "/v1/blobs", "/v1/blobs/stream"} <= paths
    assert [r.headers.get("nyth-test-reader") for r in server.requests] == \
        [label] * len(server.requests)
