"""Blob storage on one Redis Stream, plus the per-process live feed for SSE clients.

Redis layout for prefix P:
    P:blobs   stream; each entry {"b": <blob bytes>}; its id is the public cursor
    P:new     pub-sub channel; after each append round trip (one or more entries),
              what it stored is announced there: "<previous> <id> <id>...\n" (the
              stream's last id before the round trip, then each new entry's), then
              the new blobs back to back. Every process's live feed takes the
              entries from it, without reading the stream, when <previous> is the
              last id it holds (nothing between was missed).
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
from redis.exceptions import ResponseError

from nyth_group_server.group_commit import (
    Batcher,
    Failed,
    Outcome,
    Spent,
    batch_limit,
    parse_outcomes,
    script_args,
)

log = logging.getLogger(__name__)

BLOB_FIELD = b"b"

# A batch of posts in one round trip (group commit: nyth_group_server.group_commit).
# ARGV: MAXLEN, then (blob, spend id or "") per post. Each post is what a lone append
# was: a token already spent (before, or by an earlier post of this batch) stores
# nothing; the spend is recorded after the entry, so an XADD that fails (out of memory)
# spends nothing; one post's failing XADD does not fail the others (pcall). Answers per
# post: its id, "S" (spent) or "E<error>". Atomic, and the PUBLISH comes after every
# XADD, so a subscriber woken by it finds all of them in the stream. It announces the
# new entries themselves (see P:new above): every process's live feed would otherwise
# read each burst back with an XRANGE of its own.
# KEYS: stream, channel, spent set (only read for posts with a spend id).
_APPEND_BATCH_LUA = """
local out = {}
local ids, blobs = {}, {}
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local previous = newest[1] and newest[1][1] or '0-0'
for i = 2, #ARGV, 2 do
  local spend = ARGV[i + 1]
  if spend ~= '' and redis.call('SISMEMBER', KEYS[3], spend) == 1 then
    out[#out + 1] = 'S'
  else
    local id = redis.pcall('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', 'b', ARGV[i])
    if type(id) == 'table' and id.err then
      out[#out + 1] = 'E' .. id.err
    else
      if spend ~= '' then redis.call('SADD', KEYS[3], spend) end
      out[#out + 1] = id
      ids[#ids + 1] = id
      blobs[#blobs + 1] = ARGV[i]
    end
  end
end
if #ids > 0 then
  redis.call('PUBLISH', KEYS[2],
             previous .. ' ' .. table.concat(ids, ' ') .. '\\n' .. table.concat(blobs))
end
return out
"""


def _field(fields: list[bytes], name: bytes) -> bytes | None:
    """A stream entry's field from its flat [name, value, ...] list."""
    return next((fields[i + 1] for i in range(0, len(fields) - 1, 2) if fields[i] == name),
                None)


def _announced(data: bytes, blob_size: int) -> tuple[Cursor, list[StoredBlob]] | None:
    """An append round trip's message on the channel: the id the stream ended at before
    it and the entries it stored. None for anything else (a message from an older
    server, which carried the last id alone)."""
    header, newline, joined = data.partition(b"\n")
    ids = header.split(b" ")
    if not newline or len(ids) < 2 or len(joined) != (len(ids) - 1) * blob_size:
        return None
    try:
        previous, *stored = map(cursor_from_redis, ids)
    except (DecodeError, UnicodeDecodeError):
        return None
    return previous, [StoredBlob(cursor, joined[k * blob_size:(k + 1) * blob_size])
                      for k, cursor in enumerate(stored)]


class AlreadySpent(Exception):
    """The post's token was spent before: nothing was stored."""

@dataclass(frozen=True)
class _Pending:
    blob: bytes
    spend_id: bytes | None
    future: asyncio.Future[Outcome]


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
        self._append_batch = redis.register_script(_APPEND_BATCH_LUA)
        # The same connections, but XRANGE answered as hiredis parsed it ([id, [field,
        # value, ...]] per entry): redis-py's dict per entry cost ≈ 3 ms of a 1000-blob
        # binary page (measured).
        self._raw = aioredis.Redis(connection_pool=redis.connection_pool)
        self._raw.set_response_callback("XRANGE", lambda response, **_options: response)
        self._batcher: Batcher[_Pending] = Batcher(batch_limit(blob_size))
        self._flusher: asyncio.Task[None] | None = None

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
        stored) if it was recorded before. Concurrent appends share round trips
        (group commit); QueueFull if too many are waiting already."""
        if len(blob) != self.blob_size:
            raise DecodeError(f"blob must be exactly {self.blob_size} bytes, got {len(blob)}")
        if spend_id is not None:
            self._spent_key()  # a server without tokens has no spent set: fail here
        loop = asyncio.get_running_loop()
        pending = _Pending(blob, spend_id, loop.create_future())
        self._batcher.add(pending)
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush(), name="group-commit")
        outcome = await pending.future
        if isinstance(outcome, Spent):
            raise AlreadySpent("this token was already spent")
        if isinstance(outcome, Failed):
            raise ResponseError(outcome.error)
        return outcome

    async def _flush(self) -> None:
        """Send batches, one round trip at a time, until nobody waits."""
        try:
            while batch := self._batcher.take():
                try:
                    # A caller that stopped waiting (client gone) is not stored: nobody
                    # would be told it was.
                    live = [p for p in batch if not p.future.done()]
                    if live:
                        await self._commit(live)
                except Exception:  # noqa: S110 (answered to each post of the batch)
                    # Every post of the failed round trip got its error; the posts queued
                    # behind it must still go, or they would wait for the next arrival.
                    pass
                finally:
                    self._batcher.done()
        except asyncio.CancelledError:
            for waiting in self._batcher.drain():  # shutdown: nobody will send them
                waiting.future.cancel()
            raise
        finally:
            self._flusher = None

    async def _commit(self, batch: list[_Pending]) -> None:
        keys = [self.stream_key, self.channel]
        if any(p.spend_id is not None for p in batch):
            keys.append(self._spent_key())
        try:
            # With self.wait, the whole batch is acknowledged only once the replicas
            # hold it (NotReplicated, answered 503 to each of its posts, otherwise).
            raw = await eval_acknowledged(
                self.redis, self._append_batch, _APPEND_BATCH_LUA, keys=keys,
                args=script_args(self.max_blobs, [(p.blob, p.spend_id) for p in batch]),
                wait=self.wait)
            try:
                outcomes = parse_outcomes(raw, len(batch))
            except DecodeError as exc:  # not our script's answer: a server fault, not the post's
                raise ResponseError(str(exc)) from None
        except BaseException as exc:
            # The whole round trip failed: no post of it is acknowledged. (Some may be
            # stored, as a lone append whose answer was lost could be; a retried post
            # is harmless, a retried token is answered "spent".)
            for p in batch:
                if not p.future.done():
                    if isinstance(exc, asyncio.CancelledError):
                        p.future.cancel()
                    else:
                        p.future.set_exception(exc)
            raise
        for p, outcome in zip(batch, outcomes, strict=True):
            if not p.future.done():
                p.future.set_result(outcome)

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
        """read_after as a binary page (nyth.proto.blob_page): the blobs joined back to
        back as hiredis handed them over, with no object per blob. (Joining them in a Lua
        script instead took 3-4 times as long: Redis spent ≈ 27 ms per 1000-blob page
        turning the entries into Lua strings and back, against ≈ 2 ms for the XRANGE.)"""
        if limit < 1:
            raise ValueError("limit must be >= 1")
        start = after.successor()
        if start is None:
            return encode_page_run([], b"", (after.ms, after.seq), False, self.blob_size)
        entries: Any = await self._raw.xrange(
            self.stream_key, min=str(max(start, self.age_floor())), max="+", count=limit + 1)
        raw_ids: list[bytes] = []
        blobs: list[bytes] = []
        size = self.blob_size
        for raw_id, fields in entries:
            # Our own entries have the one field, tested inline (a call per entry cost
            # ≈ 0.1 ms of a 1000-blob page; this whole loop and the encoding ≈ 1.2 ms,
            # against ≈ 3.4 ms with an id tuple per entry: measured).
            blob = fields[1] if len(fields) == 2 and fields[0] == BLOB_FIELD \
                else _field(fields, BLOB_FIELD)
            if blob is None or len(blob) != size:
                continue  # not ours (a shared Redis), as in decode()
            raw_ids.append(raw_id)
            blobs.append(blob)
        more = len(raw_ids) > limit
        del raw_ids[limit:], blobs[limit:]
        # Redis wrote these ids itself, "<ms>-<seq>" each: all their parts in one pass.
        id_parts = list(map(int, b"-".join(raw_ids).split(b"-"))) if raw_ids else []
        last = (id_parts[-2], id_parts[-1]) if id_parts else (after.ms, after.seq)
        return encode_page_run(id_parts, b"".join(blobs), last, more, self.blob_size)

    async def last_id(self) -> Cursor:
        entries: Any = await self.redis.xrevrange(self.stream_key, max="+", min="-", count=1)
        return cursor_from_redis(entries[0][0]) if entries else Cursor.ZERO


class LiveFeed:
    """One pub-sub subscription per process, fanned out to all its SSE clients.

    The feed keeps the newest blobs it has seen in a ring. Every entry with an id in
    (floor, head] is in the ring, so a client whose cursor is >= floor is served from
    memory; a client further behind reads from Redis itself. Thousands of clients cost
    one XRANGE per burst of posts, not one each; and none at all while the channel's
    announcements follow on from one another.
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
                             on_change=lambda _woken: self.refresh(), log=log, name="live feed",
                             absorb=self.absorb)

    def absorb(self, message: bytes) -> bool:
        """Take an append round trip's announcement into the ring. False if it does not
        follow on from the head (a message missed while reconnecting, an entry written
        without one, an older server's message): refresh() must read."""
        if self.head is None:
            return False
        announced = _announced(message, self.store.blob_size)
        if announced is None:
            return False
        previous, blobs = announced
        if blobs[-1].id <= self.head:
            return True  # read already (sent while the subscription's first read ran)
        if previous != self.head:
            return False
        self._add(blobs, blobs[-1].id)
        return True

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
            if entries:
                self._add(self.store.decode(entries), cursor_from_redis(entries[-1][0]))
            if len(entries) < self.page_size:
                return

    def _add(self, blobs: list[StoredBlob], head: Cursor) -> None:
        """Every entry up to head is now seen; blobs are those of them that are ours."""
        for blob in blobs:
            if len(self._ring) == self._ring.maxlen:
                self.floor = self._ids[0]
            self._ring.append(blob)
            self._ids.append(blob.id)
        self.head = head
        self._wake()

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
