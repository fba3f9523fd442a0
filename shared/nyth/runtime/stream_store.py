"""The Redis Stream under each Redis-backed onion service (group server, mailbox).

Each service keeps one stream of same-size entries under its key prefix P, whose stream
ids are the public cursors, and a pub-sub channel ``P:new`` on which every new id is
published. What an entry holds, and the Lua script that appends it, are the service's.

Retention is enforced twice over: the append script's XADD trims to exactly the maximum
count, a periodic XTRIM MINID drops entries past the maximum age, and reads never return
an entry older than that even between two trims. So the retention in the signed bundle
is a guarantee, not a best effort.

Pub-sub carries only wake-ups; the data always comes from the stream after a cursor. A
dropped pub-sub message (reconnect, slow subscriber) therefore costs latency, never an
entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from nyth.errors import DecodeError

_U64_MAX = (1 << 64) - 1
_CURSOR_RE = re.compile(r"(0|[0-9]{1,20}-[0-9]{1,20})")
# What the APIs promise in OpenAPI: 19 digits always fit in 64 bits, so every string a
# schema-driven client generates from it parses.
CURSOR_PATTERN = r"^(0|[0-9]{1,19}-[0-9]{1,19})$"


@dataclass(frozen=True, order=True)
class Cursor:
    """A Redis stream id ``<ms>-<seq>``: a position in a service's log."""

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
    return Cursor.parse(raw.decode("ascii") if isinstance(raw, bytes) else raw)


class _Entry(Protocol):
    @property
    def id(self) -> Cursor: ...


EntryT = TypeVar("EntryT", bound=_Entry)


class RetainedStream(Generic[EntryT]):
    """The stream ``<key_prefix>:<name>`` and its channel; subclasses decode entries."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        key_prefix: str,
        name: str,
        max_age_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.prefix = key_prefix
        self.stream_key = f"{key_prefix}:{name}"
        self.channel = f"{key_prefix}:new"
        self.max_age_ms = max_age_seconds * 1000
        self._clock = clock

    def decode(self, entries: list[Any]) -> list[EntryT]:
        """XRANGE entries as the service's items, leaving out any that are not its own
        (a shared Redis): those are never served."""
        raise NotImplementedError

    def age_floor(self) -> Cursor:
        """The oldest id still inside the retention window."""
        now_ms = int(self._clock() * 1000)
        return Cursor(max(0, now_ms - self.max_age_ms), 0)

    async def read_page(self, after: Cursor, limit: int) -> tuple[list[EntryT], Cursor, bool]:
        """Up to limit entries with ids > after, oldest first, skipping expired ones:
        (entries, the cursor to continue from, whether more are already waiting)."""
        if limit < 1:
            raise ValueError("limit must be >= 1")
        start = after.successor()
        if start is None:
            return [], after, False
        start = max(start, self.age_floor())
        # One extra entry tells whether there is more without a second round trip.
        entries: Any = await self.redis.xrange(self.stream_key, min=str(start), max="+",
                                               count=limit + 1)
        items = self.decode(entries)
        more = len(items) > limit
        items = items[:limit]
        return items, items[-1].id if items else after, more

    async def trim_by_age(self) -> int:
        """Drop every entry older than the maximum age; returns how many went."""
        floor = self.age_floor()
        # Exact trimming (no "~"): the bundle promises max_age, not "about max_age".
        removed = await self.redis.execute_command("XTRIM", self.stream_key, "MINID", str(floor))
        return int(removed)

    async def count(self) -> int:
        return int(await self.redis.xlen(self.stream_key))


async def follow_channel(
    stream: RetainedStream[Any],
    *,
    poll_interval: float,
    on_change: Callable[[bool], Awaitable[None]],
    log: logging.Logger,
    name: str,
    absorb: Callable[[bytes], bool] | None = None,
) -> None:
    """Subscribe to the stream's channel for ever, one subscription per process.

    Awaits on_change(True) once subscribed (whatever was posted while we were not is
    then found by reading) and after each burst of messages, on_change(False) after each
    quiet poll_interval. Reconnects with backoff while Redis is away.

    absorb, for channels whose messages carry what was written: each message is offered
    to it, and only one it cannot take (False: it does not follow on from what the
    subscriber holds) leads to on_change(True), which reads.
    """
    backoff = 0.1
    while True:
        pubsub = stream.redis.pubsub()
        try:
            await pubsub.subscribe(stream.channel)
            await on_change(True)
            backoff = 0.1
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                   timeout=poll_interval)
                if message is not None and absorb is not None:
                    if not absorb(message["data"]):
                        await on_change(True)
                    continue
                if message is not None:
                    # A burst of posts: drain the queued wake-ups, then react once.
                    while await pubsub.get_message(ignore_subscribe_messages=True,
                                                   timeout=0) is not None:
                        pass
                await on_change(message is not None)
        except (RedisError, OSError) as exc:
            log.warning("%s lost Redis (%s); retrying in %.1f s", name, exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
