"""Mailbox storage in Redis: one stream of same-size records, contact cards, wake-ups.

Redis layout for prefix P:
    P:records      stream; each entry {"r": tag ‖ ciphertext, "w": W}: r is always
                   tag_size + record_size bytes, w always 32 bytes (W = y·U + m·B of the
                   tag, computed once at ingest so detection does not recompute it; public,
                   derived from the tag alone); its id is the public cursor. Entries
                   without "w" (stored before W was kept, or by a mailbox without FMD) are
                   still served; detection then computes W itself.
    P:new          pub-sub channel; each new entry's id is published there
    P:seen:<h>     replay guard, h = hex BLAKE2b-128(tag ‖ ciphertext); expires with
                   the retention window
    P:card:<h>     hash {"c": card bytes, "i": issued_at (20 digits)}, h = hex
                   BLAKE2b-128(onion public key); expires when the card does
    P:cards        sorted set of card hashes by expiry (counts cards for max_cards)

Nothing in a key name or a record is an onion address or plaintext: records are opaque
tags and ciphertexts, card keys are hashes (the card itself is public by design).

Retention and wake-ups work as `nyth.runtime.stream_store` describes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from nyth.errors import DecodeError
from nyth.runtime.redis_link import ReplicaWait, eval_acknowledged
from nyth.runtime.stream_store import Cursor, RetainedStream, cursor_from_redis, follow_channel

log = logging.getLogger(__name__)

RECORD_FIELD = b"r"
W_FIELD = b"w"
W_SIZE = 32

# Replay check, XADD and PUBLISH in one atomic round trip. A replay rewrites the guard's
# own expiry (no change, but a write): replication is in order, so a WAIT after it
# covers the first post too, and "already posted" is never said of a record that only
# the primary holds.
_APPEND_LUA = """
if not redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[3]) then
  local ttl = redis.call('PTTL', KEYS[3])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[3], ttl) end
  return false
end
local id
if ARGV[4] == '' then
  id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', 'r', ARGV[2])
else
  id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', 'r', ARGV[2], 'w', ARGV[4])
end
redis.call('PUBLISH', KEYS[2], id)
return id
"""

# Newest issued_at wins; issued_at is compared as a zero-padded 20-digit string (Lua
# numbers are doubles). Returns stored | same | older | conflict | full.
_PUT_CARD_LUA = """
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
local old = redis.call('HGET', KEYS[1], 'i')
if old then
  if old > ARGV[2] then return 'older' end
  if old == ARGV[2] then
    if redis.call('HGET', KEYS[1], 'c') == ARGV[1] then
      -- A write that changes nothing, so that a WAIT after it covers the first put.
      redis.call('PEXPIREAT', KEYS[1], ARGV[3])
      return 'same'
    end
    return 'conflict'
  end
elseif redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then
  return 'full'
end
redis.call('HSET', KEYS[1], 'c', ARGV[1], 'i', ARGV[2])
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[6], ARGV[7])
return 'stored'
"""


@dataclass(frozen=True)
class StoredRecord:
    id: Cursor
    tag: bytes
    ciphertext: bytes
    w: bytes | None = None  # the tag's W as stored at ingest; None for older records


@dataclass(frozen=True)
class Page:
    records: list[StoredRecord]
    next: Cursor
    more: bool


def _hash_hex(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class MailboxStore(RetainedStream[StoredRecord]):
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        key_prefix: str,
        tag_size: int,
        record_size: int,
        max_records: int,
        max_age_seconds: int,
        max_cards: int,
        clock: Any = time.time,
        wait: ReplicaWait | None = None,
    ) -> None:
        super().__init__(redis, key_prefix=key_prefix, name="records",
                         max_age_seconds=max_age_seconds, clock=clock)
        self.cards_key = f"{key_prefix}:cards"
        self.tag_size = tag_size
        self.record_size = record_size
        self.max_records = max_records
        self.max_cards = max_cards
        self.wait = wait  # None: acknowledged once the primary has it
        self._append = redis.register_script(_APPEND_LUA)
        self._put_card = redis.register_script(_PUT_CARD_LUA)

    async def append(self, tag: bytes, ciphertext: bytes,
                     w: bytes | None = None) -> Cursor | None:
        """Store one record; None if this exact (tag, ciphertext) was posted already.

        w: the tag's W (``nyth.proto.fmd.Tag.w``), kept next to it for detection. The
        replay guard covers tag and ciphertext only (W is a function of the tag).
        """
        if len(tag) != self.tag_size or len(ciphertext) != self.record_size:
            raise DecodeError("record has the wrong size")
        if w is not None and len(w) != W_SIZE:
            raise DecodeError(f"W must be {W_SIZE} bytes")
        record = tag + ciphertext
        seen = f"{self.prefix}:seen:{_hash_hex(record)}"
        raw = await eval_acknowledged(
            self.redis, self._append, _APPEND_LUA, keys=[self.stream_key, self.channel, seen],
            args=[self.max_records, record, self.max_age_ms, b"" if w is None else w],
            wait=self.wait)
        return None if raw is None else cursor_from_redis(raw)

    async def read_after(self, after: Cursor, limit: int) -> Page:
        """Up to limit records with ids > after, oldest first, skipping expired ones."""
        return Page(*await self.read_page(after, limit))

    def decode(self, entries: list[Any]) -> list[StoredRecord]:
        out = []
        for raw_id, fields in entries:
            raw = fields.get(RECORD_FIELD)
            if raw is None or len(raw) != self.tag_size + self.record_size:
                continue  # not ours (a shared Redis, or a size change): never serve it
            raw = bytes(raw)
            w = fields.get(W_FIELD)
            if w is not None and len(w) != W_SIZE:
                w = None  # never trust a malformed W: detection recomputes it
            out.append(StoredRecord(cursor_from_redis(raw_id), raw[: self.tag_size],
                                    raw[self.tag_size:], None if w is None else bytes(w)))
        return out

    # -- contact cards ------------------------------------------------------------------

    def _card_key(self, onion_public_key: bytes) -> str:
        return f"{self.prefix}:card:{_hash_hex(onion_public_key)}"

    async def put_card(self, onion_public_key: bytes, card: bytes, issued_at: int,
                       expires_at: int) -> str:
        key = self._card_key(onion_public_key)
        now = int(self._clock())
        result = await eval_acknowledged(
            self.redis, self._put_card, _PUT_CARD_LUA, keys=[key, self.cards_key],
            args=[card, f"{issued_at:020d}", expires_at * 1000, now, self.max_cards,
                  expires_at, key.rsplit(":", 1)[1]],
            wait=self.wait)
        return result.decode() if isinstance(result, bytes) else str(result)

    async def get_card(self, onion_public_key: bytes) -> bytes | None:
        raw: Any = await self.redis.hget(self._card_key(onion_public_key), "c")
        return None if raw is None else bytes(raw)


class Notifier:
    """One pub-sub subscription per process; wakes every detection stream on a new post."""

    def __init__(self, store: MailboxStore, *, poll_interval: float = 5.0) -> None:
        self.store = store
        self.poll_interval = poll_interval
        self._changed = asyncio.Event()
        self.closing = False

    async def run(self) -> None:
        await follow_channel(self.store, poll_interval=self.poll_interval,
                             on_change=self._on_change, log=log, name="notifier")

    async def _on_change(self, woken: bool) -> None:
        if woken:
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def close(self) -> None:
        self.closing = True
        self._wake()

    def snapshot(self) -> asyncio.Event:
        """Take this before reading: waiting on it then cannot miss a post in between."""
        return self._changed

    async def wait(self, event: asyncio.Event, timeout: float) -> None:
        """Return once event was set (a wake-up), after timeout, or at once when closing."""
        if self.closing:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
