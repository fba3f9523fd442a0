"""BlobStore and LiveFeed against a real redis-server (in-process, no HTTP)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import redis.asyncio as aioredis
from nyth.errors import DecodeError
from nyth.proto.blob_page import encode_page
from nyth.runtime.stream_store import cursor_from_redis
from nyth.runtime.tasks import cancel_and_wait
from nyth_group_server.storage import AlreadySpent, BlobStore, Cursor, LiveFeed, Page
from redis.exceptions import ConnectionError as RedisConnectionError

pytestmark = pytest.mark.integration

SIZE = 64


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


def _store(client: aioredis.Redis, prefix: str, **kwargs: object) -> BlobStore:
    options: dict[str, object] = {"blob_size": SIZE, "max_blobs": 1000, "max_age_seconds": 3600}
    options.update(kwargs)
    return BlobStore(client, key_prefix=prefix, **options)  # type: ignore[arg-type]


async def test_append_and_page(client: aioredis.Redis, redis_prefix: str) -> None:
    store = _store(client, redis_prefix)
    ids = [await store.append(bytes([i]) * SIZE) for i in range(25)]
    assert ids == sorted(ids) and len(set(ids)) == 25
    seen: list[Cursor] = []
    cursor = Cursor.ZERO
    while True:
        page = await store.read_after(cursor, 10)
        seen += [b.id for b in page.blobs]
        assert all(len(b.blob) == SIZE for b in page.blobs)
        cursor = page.next
        if not page.more:
            break
    assert seen == ids
    empty = await store.read_after(ids[-1], 10)
    assert empty.blobs == [] and empty.next == ids[-1] and not empty.more
    # The largest possible cursor has no successor; it is simply "after everything".
    last = Cursor((1 << 64) - 1, (1 << 64) - 1)
    assert (await store.read_after(last, 5)).blobs == []


async def test_wrong_size_is_refused(client: aioredis.Redis, redis_prefix: str) -> None:
    store = _store(client, redis_prefix)
    with pytest.raises(DecodeError):
        await store.append(b"x" * (SIZE - 1))
    assert await store.count() == 0


async def test_count_retention_is_exact(client: aioredis.Redis, redis_prefix: str) -> None:
    store = _store(client, redis_prefix, max_blobs=7)
    ids = [await store.append(bytes([i]) * SIZE) for i in range(20)]
    assert await store.count() == 7
    page = await store.read_after(Cursor.ZERO, 100)
    assert [b.id for b in page.blobs] == ids[-7:]


async def test_age_retention_on_read_and_by_trim(client: aioredis.Redis, redis_prefix: str) -> None:
    clock = Clock()
    store = _store(client, redis_prefix, max_age_seconds=60, clock=clock)
    for i in range(5):
        await store.append(bytes([i]) * SIZE)
    assert len((await store.read_after(Cursor.ZERO, 100)).blobs) == 5
    clock.now += 61
    # Expired blobs are never served, even before the trimmer has run...
    assert (await store.read_after(Cursor.ZERO, 100)).blobs == []
    # ...and the trimmer really deletes them.
    assert await store.trim_by_age() == 5
    assert await store.count() == 0


async def test_foreign_entries_in_the_stream_are_never_served(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    store = _store(client, redis_prefix)
    await client.xadd(store.stream_key, {"other": "x"})
    blob_id = await store.append(b"k" * SIZE)
    page = await store.read_after(Cursor.ZERO, 10)
    assert [b.id for b in page.blobs] == [blob_id]


@asynccontextmanager
async def _running_feed(store: BlobStore, ring_size: int) -> AsyncIterator[tuple[LiveFeed, Cursor]]:
    """A live feed on store, running, once it holds a first blob (also yielded)."""
    first = await store.append(b"f" * SIZE)
    feed = LiveFeed(store, poll_interval=30.0, ring_size=ring_size)
    task = asyncio.create_task(feed.run())
    try:
        await _feed_at(feed, first, "the feed's first read")
        yield feed, first
    finally:
        assert await cancel_and_wait(task, timeout=10)


async def test_live_feed_wakes_on_posts_from_another_client(
    redis_url: str, client: aioredis.Redis, redis_prefix: str
) -> None:
    store = _store(client, redis_prefix)
    async with _running_feed(store, ring_size=4) as (feed, before):
        # Another process's store on the same Redis: only pub-sub can tell us in time.
        other_client = aioredis.Redis.from_url(redis_url)
        other = _store(other_client, redis_prefix)
        posted = [await other.append(bytes([i]) * SIZE) for i in range(6)]
        await other_client.aclose()
        await asyncio.wait_for(feed.wait_beyond(posted[-2], timeout=30), 31)
        assert feed.head == posted[-1]
        # The ring holds the newest 4: a cursor inside is served from memory...
        cached = feed.cached_after(posted[2])
        assert cached is not None and [b.id for b in cached] == posted[3:]
        # ...a cursor behind the ring must go to Redis.
        assert feed.cached_after(before) is None


async def _xrange_calls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_xrange", {}).get("calls", 0))


async def test_live_feed_takes_announced_posts_without_reading_and_reads_after_a_gap(
    redis_url: str, client: aioredis.Redis, redis_prefix: str
) -> None:
    store = _store(client, redis_prefix)
    async with aioredis.Redis.from_url(redis_url) as other_client, \
            _running_feed(store, ring_size=16) as (feed, start):
        reads = await _xrange_calls(client)
        other = _store(other_client, redis_prefix)
        posted = [await other.append(bytes([i]) * SIZE) for i in range(3)]
        posted += await asyncio.gather(*(other.append(bytes([9 - i]) * SIZE) for i in range(3)))
        await _feed_at(feed, posted[-1], "the announced posts")
        # Every round trip announced its entries: the feed read none of them.
        assert await _xrange_calls(client) == reads
        cached = feed.cached_after(start)
        assert cached is not None
        assert [(b.id, b.blob) for b in cached] == [
            (b.id, b.blob) for b in (await store.read_after(start, 100)).blobs]
        assert [b.id for b in cached] == posted
        # An entry written without an announcement: the next announcement does not
        # follow on from the feed's head, so the feed reads, and misses nothing.
        unannounced = cursor_from_redis(await client.xadd(store.stream_key, {"b": b"u" * SIZE}))
        after = await other.append(b"a" * SIZE)
        await _feed_at(feed, after, "the post after an unannounced entry")
        assert await _xrange_calls(client) > reads
        cached = feed.cached_after(start)
        assert cached is not None and [b.id for b in cached] == [*posted, unannounced, after]
        # A message that is no announcement (an older server's: the last id alone) is read.
        older = cursor_from_redis(await client.xadd(store.stream_key, {"b": b"o" * SIZE}))
        await client.publish(store.channel, str(older))
        await _feed_at(feed, older, "an entry named by an id-only message")


async def _feed_at(feed: LiveFeed, cursor: Cursor, what: str, timeout: float = 30.0) -> None:
    """Wait until the feed's head is cursor; fail saying where the head is stuck."""
    deadline = time.monotonic() + timeout
    while feed.head != cursor:
        if time.monotonic() > deadline:
            raise AssertionError(f"live feed head {feed.head} after {timeout:.0f} s, "
                                 f"waiting for {cursor} ({what})")
        await asyncio.sleep(0.01)


def _as_binary(page: Page, size: int = SIZE) -> bytes:
    return encode_page([(b.id.ms, b.id.seq) for b in page.blobs], [b.blob for b in page.blobs],
                       (page.next.ms, page.next.seq), page.more, size)


async def test_binary_pages_are_read_after_byte_for_byte(client: aioredis.Redis,
                                                         redis_prefix: str) -> None:
    """The binary fast path builds pages from Redis's reply directly; it must answer what
    read_after answers, in every case read_after handles: paging and its end, entries
    that are not ours, expired blobs and the very last cursor."""
    clock = Clock()
    store = _store(client, redis_prefix, max_age_seconds=60, clock=clock)
    old = [await store.append(os.urandom(SIZE)) for _ in range(3)]
    await client.xadd(store.stream_key, {"other": "x"})
    clock.now += 30
    ids = old + [await store.append(os.urandom(SIZE)) for _ in range(20)]
    await client.xadd(store.stream_key, {"other": "y"})
    await client.xadd(store.stream_key, {"b": b"not one of ours: the wrong size"})
    ids.append(await store.append(os.urandom(SIZE)))
    # A blob-sized "b" field after another field: read_after serves it, so must this.
    ids.append(cursor_from_redis(await client.xadd(store.stream_key,
                                                   {"x": "1", "b": os.urandom(SIZE)})))
    cursors = [Cursor.ZERO, *ids, Cursor((1 << 64) - 1, (1 << 64) - 1)]
    for when in (clock.now, clock.now + 31):  # then the first three have expired
        clock.now = when
        for limit in (1, 4, 10, 100):
            for cursor in cursors:
                expected = _as_binary(await store.read_after(cursor, limit))
                assert await store.read_binary_page(cursor, limit) == expected, (cursor, limit)


async def test_concurrent_appends_share_round_trips_and_keep_their_own_answers(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    """Group commit: posts that arrive while a round trip is in flight go in the next one
    together; each still gets its own id, or AlreadySpent for a token spent before or by
    an earlier post of the same batch; every acknowledged id is in the stream with its
    blob, and count retention stays exact."""
    spent_key = f"{redis_prefix}:spent"
    store = _store(client, redis_prefix, max_blobs=30, spent_key=spent_key)
    await client.sadd(spent_key, b"old")
    calls = 0
    script = store._append_batch

    async def counting(**kwargs: object) -> object:
        nonlocal calls
        calls += 1
        return await script(**kwargs)  # type: ignore[arg-type]

    store._append_batch = counting  # type: ignore[assignment]
    blobs = [bytes([i]) * SIZE for i in range(50)]
    # Every third post pays, with only 4 distinct tokens: most are spent within the batch.
    spends: list[bytes | None] = [None if i % 3 else b"t%d" % (i % 12) for i in range(50)]
    spends[1] = b"old"
    answers = await asyncio.gather(*(store.append(b, s) for b, s in zip(blobs, spends, strict=True)),
                                   return_exceptions=True)
    assert calls < 10  # 50 posts, far fewer round trips
    first_use: set[bytes] = set()
    acknowledged: dict[Cursor, bytes] = {}
    for i, answer in enumerate(answers):
        spend = spends[i]
        if spend is None or (spend not in first_use and spend != b"old"):
            assert isinstance(answer, Cursor), (i, answer)
            acknowledged[answer] = blobs[i]
            if spend is not None:
                first_use.add(spend)
        else:
            assert isinstance(answer, AlreadySpent), (i, answer)
    assert len(acknowledged) == 50 - 1 - (17 - 4)
    # Count retention stays exact: the newest 30 acknowledged posts, each with its blob.
    stored = {b.id: b.blob for b in (await store.read_after(Cursor.ZERO, 100)).blobs}
    assert stored == {i: acknowledged[i] for i in sorted(acknowledged)[-30:]}
    assert await client.smembers(spent_key) == {b"old", *first_use}


async def test_a_post_whose_caller_left_before_its_round_trip_is_not_stored(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    store = _store(client, redis_prefix)
    first = asyncio.create_task(store.append(b"a" * SIZE))
    await asyncio.sleep(0)  # its round trip is now in flight
    gone = asyncio.create_task(store.append(b"b" * SIZE))
    kept = asyncio.create_task(store.append(b"c" * SIZE))
    await asyncio.sleep(0)
    gone.cancel()
    await first
    await kept
    assert [b.blob for b in (await store.read_after(Cursor.ZERO, 10)).blobs] == [
        b"a" * SIZE, b"c" * SIZE]


async def test_a_failed_round_trip_fails_its_posts_only(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    """Redis failing one round trip answers its posts with the error (a 503 upstream,
    nothing acknowledged); posts queued behind it still go, without a new arrival."""
    store = _store(client, redis_prefix)
    script = store._append_batch
    calls = 0

    async def failing_once(**kwargs: object) -> object:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(0.05)  # the others queue meanwhile
            raise RedisConnectionError("lost")
        return await script(**kwargs)  # type: ignore[arg-type]

    store._append_batch = failing_once  # type: ignore[assignment]
    first = asyncio.create_task(store.append(b"a" * SIZE))
    await asyncio.sleep(0)
    queued = [asyncio.create_task(store.append(bytes([i]) * SIZE)) for i in range(5)]
    with pytest.raises(RedisConnectionError):
        await first
    ids = await asyncio.wait_for(asyncio.gather(*queued), 5)
    assert [b.id for b in (await store.read_after(Cursor.ZERO, 10)).blobs] == sorted(ids)
