"""Blob storage on one Redis Stream, plus the per-process live feed for SSE clients.

Redis layout for prefix P:
    P:blobs   stream; each entry {"b": <blob bytes>}; its id is the public cursor
    P:new     pub-sub channel; each new entry's id is published there

Retention is enforced twice over: XADD trims to exactly max_blobs, a periodic
XTRIM MINID drops blobs past max_age_seconds, and reads never return a blob older than
max_age_seconds even between two trims. So the retention in the signed bundle is a
guarantee, not a best effort.

Pub-sub carries only wake-ups; the data always comes from the stream after a cursor.
A dropped pub-sub message (reconnect, slow subscriber) therefore costs latency, never
a blob.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import re
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar

import redis.asyncio as aioredis
from nyth.errors import DecodeError
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

_U64_MAX = (1 << 64) - 1
_CURSOR_RE = re.compile(r"(0|[0-9]{1,20}-[0-9]{1,20})")
BLOB_FIELD = b"b"

# XADD and PUBLISH in one round trip; atomic, so a subscriber woken by the id always
# finds the entry in the stream.
_APPEND_LUA = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', 'b', ARGV[2])
redis.call('PUBLISH', KEYS[2], id)
return id
"""


@dataclass(frozen=True, order=True)
class Cursor:
    """A Redis stream id ``<ms>-<seq>``: a position in the server's blob log."""

    ms: int
    seq: int

    ZERO: ClassVar[Cursor]

    @classmethod
    def parse(cls, text: str) -> Cursor:
        """Accept "0" (the start) or "<ms>-<seq>" with both parts in 0..2^64-1."""
        if not isinstance(text, str) or not _CURSOR_RE.fullmatch(text):
            raise DecodeError(
                "cursor must be \"0\" or a stream id \"<ms>-<seq>\" of decimal digits"
            )
        if text == "0":
            return cls.ZERO
        ms_text, seq_text = text.split("-")
        ms, seq = int(ms_text), int(seq_text)
        if ms > _U64_MAX or seq > _U64_MAX:
            raise DecodeError("cursor parts must each fit in 64 bits")
        return cls(ms, seq)

    def successor(self) -> Cursor | None:
        """The smallest id after this one; None past the very last possible id."""
        if self.seq < _U64_MAX:
            return Cursor(self.ms, self.seq + 1)
        if self.ms < _U64_MAX:
            return Cursor(self.ms + 1, 0)
        return None

    def __str__(self) -> str:
        return f"{self.ms}-{self.seq}"


Cursor.ZERO = Cursor(0, 0)


def cursor_from_redis(raw: bytes | str) -> Cursor:
    text = raw.decode("ascii") if isinstance(raw, bytes) else raw
    return Cursor.parse(text)


@dataclass(frozen=True)
class StoredBlob:
    id: Cursor
    blob: bytes


@dataclass(frozen=True)
class Page:
    blobs: list[StoredBlob]
    next: Cursor
    more: bool


class BlobStore:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        key_prefix: str,
        blob_size: int,
        max_blobs: int,
        max_age_seconds: int,
        clock: Any = time.time,
    ) -> None:
        self.redis = redis
        self.stream_key = f"{key_prefix}:blobs"
        self.channel = f"{key_prefix}:new"
        self.blob_size = blob_size
        self.max_blobs = max_blobs
        self.max_age_ms = max_age_seconds * 1000
        self._clock = clock
        self._append = redis.register_script(_APPEND_LUA)

    def age_floor(self) -> Cursor:
        """The oldest id still inside the retention window."""
        now_ms = int(self._clock() * 1000)
        return Cursor(max(0, now_ms - self.max_age_ms), 0)

    async def append(self, blob: bytes) -> Cursor:
        """Store one blob; returns once Redis acknowledged it (fsynced, with our config)."""
        if len(blob) != self.blob_size:
            raise DecodeError(f"blob must be exactly {self.blob_size} bytes, got {len(blob)}")
        raw = await self._append(keys=[self.stream_key, self.channel], args=[self.max_blobs, blob])
        return cursor_from_redis(raw)

    async def read_after(self, after: Cursor, limit: int) -> Page:
        """Up to limit blobs with ids > after, oldest first, skipping expired ones."""
        if limit < 1:
            raise ValueError("limit must be >= 1")
        start = after.successor()
        if start is None:
            return Page([], after, False)
        start = max(start, self.age_floor())
        # One extra entry tells whether there is more without a second round trip.
        entries: Any = await self.redis.xrange(self.stream_key, min=str(start), max="+",
                                          count=limit + 1)
        blobs = _decode_entries(entries)
        more = len(blobs) > limit
        blobs = blobs[:limit]
        return Page(blobs, blobs[-1].id if blobs else after, more)

    async def last_id(self) -> Cursor:
        entries: Any = await self.redis.xrevrange(self.stream_key, max="+", min="-", count=1)
        return cursor_from_redis(entries[0][0]) if entries else Cursor.ZERO

    async def trim_by_age(self) -> int:
        """Drop every blob older than max_age_seconds; returns how many went."""
        floor = self.age_floor()
        # Exact trimming (no "~"): the bundle promises max_age, not "about max_age".
        removed = await self.redis.execute_command("XTRIM", self.stream_key, "MINID", str(floor))
        return int(removed)

    async def count(self) -> int:
        return int(await self.redis.xlen(self.stream_key))


def _decode_entries(entries: list[Any]) -> list[StoredBlob]:
    blobs = []
    for raw_id, fields in entries:
        blob = fields.get(BLOB_FIELD)
        if blob is None:  # not ours (a shared Redis); never serve it
            continue
        blobs.append(StoredBlob(cursor_from_redis(raw_id), bytes(blob)))
    return blobs


class LiveFeed:
    """One pub-sub subscription per process, fanned out to all its SSE clients.

    The feed keeps the newest blobs it has seen in a ring. Every entry with an id in
    (floor, head] is in the ring, so a client whose cursor is >= floor is served from
    memory; a client further behind reads from Redis itself. Thousands of clients cost
    one XRANGE per burst of posts, not one each.
    """

    def __init__(
        self, store: BlobStore, *, poll_interval: float = 5.0, ring_size: int = 1024,
        page_size: int = 500,
    ) -> None:
        self.store = store
        self.poll_interval = poll_interval
        self.page_size = page_size
        self._ring: deque[StoredBlob] = deque(maxlen=ring_size)
        self._ids: deque[Cursor] = deque(maxlen=ring_size)
        self.floor: Cursor | None = None  # None until the first successful refresh
        self.head: Cursor | None = None
        self._changed = asyncio.Event()
        self.connected = False
        self.closing = False

    async def run(self) -> None:
        backoff = 0.1
        while True:
            pubsub = self.store.redis.pubsub()
            try:
                await pubsub.subscribe(self.store.channel)
                # Anything posted while we were (re)subscribing is picked up here.
                await self.refresh()
                self.connected = True
                backoff = 0.1
                while True:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=self.poll_interval
                    )
                    if message is not None:
                        # A burst of posts: drain the queued wake-ups, then read once.
                        while await pubsub.get_message(ignore_subscribe_messages=True,
                                                       timeout=0) is not None:
                            pass
                    # Also on timeout: a periodic read covers any lost wake-up.
                    await self.refresh()
            except (RedisError, OSError) as exc:
                self.connected = False
                log.warning("live feed lost Redis (%s); retrying in %.1f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def refresh(self) -> None:
        if self.head is None:
            head = await self.store.last_id()
            self.floor = self.head = head
            self._wake()
            return
        while True:
            entries: Any = await self.store.redis.xrange(
                self.store.stream_key, min=f"({self.head}", max="+", count=self.page_size
            )
            blobs = _decode_entries(entries)
            if entries:
                last = cursor_from_redis(entries[-1][0])
                for blob in blobs:
                    if len(self._ring) == self._ring.maxlen:
                        self.floor = self._ids[0]
                    self._ring.append(blob)
                    self._ids.append(blob.id)
                self.head = last
                self._wake()
            if len(entries) < self.page_size:
                return

    def close(self) -> None:
        """Server shutdown: release every waiting stream so it can end cleanly."""
        self.closing = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def cached_after(self, cursor: Cursor) -> list[StoredBlob] | None:
        """Blobs after cursor from memory, or None if the ring does not cover cursor."""
        if self.floor is None or cursor < self.floor:
            return None
        index = bisect.bisect_right(self._ids, cursor)
        age_floor = self.store.age_floor()
        return [blob for blob in list(self._ring)[index:] if blob.id >= age_floor]

    async def wait_beyond(self, cursor: Cursor, timeout: float) -> None:
        """Return once the feed has seen an id > cursor, after timeout, or on close."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.closing and (self.head is None or self.head <= cursor):
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
