"""Blob storage on one Redis Stream, plus the per-process live feed for SSE clients.

Redis layout for prefix P:
    P:blobs   stream; each entry {"b": <blob bytes>}; its id is the public cursor
    P:new     pub-sub channel; each new entry's id is published there
    P:tokens:<key id>:spent    set of the spend ids of tokens posted with (when tokens
                               are required; <key id> names the token key, see
                               nyth_group_server.tokens, which also keeps the replay ids)

Retention and wake-ups work as `nyth.runtime.stream_store` describes.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from nyth.errors import DecodeError
from nyth.proto.blob_page import encode_page_run
from nyth.runtime.redis_link import ReplicaWait, eval_acknowledged
from nyth.runtime.stream_store import Cursor, RetainedStream, cursor_from_redis, follow_channel

log = logging.getLogger(__name__)

BLOB_FIELD = b"b"

# XADD and PUBLISH in one round trip; atomic, so a subscriber woken by the id always
# finds the entry in the stream.
_APPEND_LUA = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', 'b', ARGV[2])
redis.call('PUBLISH', KEYS[2], id)
return id
"""

# The same, paid for with a token: the spend id is recorded with the entry or neither
# happens. Redis does not undo a script's earlier writes when a later command fails, so
# the check comes first and the spend is written after the entry: a failing XADD (out
# of memory) then spends nothing. Returns false (nil) for a token already spent.
_APPEND_SPENT_LUA = """
if redis.call('SISMEMBER', KEYS[3], ARGV[3]) == 1 then return false end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', 'b', ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('PUBLISH', KEYS[2], id)
return id
"""


# Up to ARGV[2] of our blobs from ARGV[1] on, as {ids, the blobs back to back, more}: the
# same page as read_page (limit + 1 entries read; more when more than limit of them are
# ours), with the concatenation done in Redis rather than per blob in Python. Entries
# without a "b" field of the blob size (ARGV[3]) are not ours, as in decode().
_READ_RUN_LUA = """
local limit = tonumber(ARGV[2])
local size = tonumber(ARGV[3])
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', limit + 1)
local ids, blobs, ours = {}, {}, 0
for _, entry in ipairs(entries) do
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'b' then
      if #fields[i + 1] == size then
        ours = ours + 1
        if ours <= limit then
          ids[ours] = entry[1]
          blobs[ours] = fields[i + 1]
        end
      end
      break
    end
  end
end
return {ids, table.concat(blobs), ours > limit and 1 or 0}
"""


class AlreadySpent(Exception):
    """The post's token was spent before: nothing was stored."""

@dataclass(frozen=True)
class StoredBlob:
    id: Cursor
    blob: bytes


@dataclass(frozen=True)
class Page:
    blobs: list[StoredBlob]
    next: Cursor
    more: bool


class BlobStore(RetainedStream[StoredBlob]):
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        key_prefix: str,
        blob_size: int,
        max_blobs: int,
        max_age_seconds: int,
        clock: Any = time.time,
        spent_key: str | None = None,
        wait: ReplicaWait | None = None,
    ) -> None:
        super().__init__(redis, key_prefix=key_prefix, name="blobs",
                         max_age_seconds=max_age_seconds, clock=clock)
        self.blob_size = blob_size
        self.max_blobs = max_blobs
        # The set of spent tokens; None when the server requires none.
        self.spent_key = spent_key
        # None: a post is acknowledged once the primary has it (NYTH_REDIS_WAIT_REPLICAS=0).
        self.wait = wait
        self._append = redis.register_script(_APPEND_LUA)
        self._append_spent = redis.register_script(_APPEND_SPENT_LUA)
        self._read_run = redis.register_script(_READ_RUN_LUA)

    def decode(self, entries: list[Any]) -> list[StoredBlob]:
        blobs = []
        for raw_id, fields in entries:
            blob = fields.get(BLOB_FIELD)
            if blob is None or len(blob) != self.blob_size:
                continue  # not ours (a shared Redis): never served, whatever it holds
            blobs.append(StoredBlob(cursor_from_redis(raw_id), bytes(blob)))
        return blobs

    async def append(self, blob: bytes, spend_id: bytes | None = None) -> Cursor:
        """Store one blob; returns once Redis acknowledged it (fsynced, with our config)
        and, with self.wait, once that many replicas hold it (NotReplicated otherwise).
        With a token's spend id, atomically with recording it: AlreadySpent (and nothing
        stored) if it was recorded before."""
        if len(blob) != self.blob_size:
            raise DecodeError(f"blob must be exactly {self.blob_size} bytes, got {len(blob)}")
        if spend_id is None:
            raw = await eval_acknowledged(
                self.redis, self._append, _APPEND_LUA, keys=[self.stream_key, self.channel],
                args=[self.max_blobs, blob], wait=self.wait)
        else:
            raw = await eval_acknowledged(
                self.redis, self._append_spent, _APPEND_SPENT_LUA,
                keys=[self.stream_key, self.channel, self._spent_key()],
                args=[self.max_blobs, blob, spend_id], wait=self.wait)
            if raw is None:
                raise AlreadySpent("this token was already spent")
        return cursor_from_redis(raw)

    async def spend(self, spend_id: bytes) -> bool:
        """Record a spend without storing anything (the drop fault); False if it was
        recorded before."""
        return bool(await self.redis.sadd(self._spent_key(), spend_id))

    def _spent_key(self) -> str:
        if self.spent_key is None:
            raise RuntimeError("this server requires no tokens: it keeps no spent set")
        return self.spent_key

    async def read_after(self, after: Cursor, limit: int) -> Page:
        """Up to limit blobs with ids > after, oldest first, skipping expired ones."""
        return Page(*await self.read_page(after, limit))

    async def read_binary_page(self, after: Cursor, limit: int) -> bytes:
        """read_after as a binary page (nyth.proto.blob_page). Redis hands over the page's
        blobs already back to back (_READ_RUN_LUA), so no Python object is made per blob:
        catching up on a busy server is this, a thousand blobs a page, and per-entry work
        in Python (redis-py's field dicts, cursor parsing) was most of its cost."""
        if limit < 1:
            raise ValueError("limit must be >= 1")
        start = after.successor()
        if start is None:
            return encode_page_run([], b"", (after.ms, after.seq), False, self.blob_size)
        raw_ids, run, more = await self._read_run(
            keys=[self.stream_key], args=[str(max(start, self.age_floor())), limit,
                                          self.blob_size])
        ids = []
        for raw_id in raw_ids:
            # Redis wrote this id itself: "<ms>-<seq>", both parts u64.
            ms, _, seq = raw_id.partition(b"-")
            ids.append((int(ms), int(seq)))
        last = ids[-1] if ids else (after.ms, after.seq)
        return encode_page_run(ids, run, last, bool(more), self.blob_size)

    async def last_id(self) -> Cursor:
        entries: Any = await self.redis.xrevrange(self.stream_key, max="+", min="-", count=1)
        return cursor_from_redis(entries[0][0]) if entries else Cursor.ZERO


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
        self.closing = False

    async def run(self) -> None:
        await follow_channel(self.store, poll_interval=self.poll_interval,
                             on_change=lambda _woken: self.refresh(), log=log, name="live feed")

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
            blobs = self.store.decode(entries)
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
