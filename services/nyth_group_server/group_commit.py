"""Group commit of concurrent posts, sans-IO: which posts share the next Redis round trip,
and what each of them gets back.

While one append round trip is in flight, posts that arrive queue; when it returns, the
next round trip carries everything queued (up to a bound), in arrival order. A lone post
goes at once, alone: no timer, so no added latency. Under load one EVALSHA (and one AOF
fsync, one PUBLISH, one live-feed read) serves many posts instead of one each.

Each post keeps its own answer: the script (storage.py) appends them one after the other
as separate appends would, and answers per post with its id, "spent" or the error of its
own XADD; a post is acknowledged only once the round trip that stored it returned.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeAlias, TypeVar

from nyth.errors import DecodeError
from nyth.runtime.stream_store import Cursor, cursor_from_redis

T = TypeVar("T")

# Posts per round trip at most, and bytes of blobs per round trip at most (a big-blob
# server gets smaller batches): bounds the script's arguments and Redis's time in it.
MAX_BATCH = 64
MAX_BATCH_BYTES = 1 << 20
# Posts waiting for a round trip at most; past it a post is answered 503 at once. Far
# above what max_connections lets in at a time, so it only bounds a misconfiguration.
MAX_QUEUED = 4096

SPENT = b"S"
FAILED_PREFIX = b"E"


def batch_limit(blob_size: int, max_batch: int = MAX_BATCH,
                max_bytes: int = MAX_BATCH_BYTES) -> int:
    """Posts per round trip for blobs of blob_size bytes (at least 1)."""
    return max(1, min(max_batch, max_bytes // max(1, blob_size)))


class QueueFull(Exception):
    """Too many posts are waiting for Redis already."""


class Batcher(Generic[T]):
    """The queue of posts and the one-round-trip-at-a-time rule.

    add() a post; take() gives the next batch to send (empty while one is in flight or
    nothing waits) and marks it in flight; done() once its answer came back (or failed).
    """

    def __init__(self, max_batch: int, max_queued: int = MAX_QUEUED) -> None:
        if max_batch < 1 or max_queued < 1:
            raise ValueError("max_batch and max_queued must be >= 1")
        self.max_batch = max_batch
        self.max_queued = max_queued
        self._queue: deque[T] = deque()
        self.in_flight = False

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, item: T) -> None:
        if len(self._queue) >= self.max_queued:
            raise QueueFull(f"{self.max_queued} posts are already waiting")
        self._queue.append(item)

    def take(self) -> list[T]:
        if self.in_flight or not self._queue:
            return []
        count = min(self.max_batch, len(self._queue))
        batch = [self._queue.popleft() for _ in range(count)]
        self.in_flight = True
        return batch

    def drain(self) -> list[T]:
        """Everything still queued, removed (shutdown)."""
        items = list(self._queue)
        self._queue.clear()
        return items

    def done(self) -> None:
        if not self.in_flight:
            raise RuntimeError("done() without a batch in flight")
        self.in_flight = False


@dataclass(frozen=True)
class Spent:
    """The post's token was spent before (earlier, or by a post earlier in the batch)."""


@dataclass(frozen=True)
class Failed:
    """Redis refused this post's XADD (e.g. out of memory): nothing stored for it."""

    error: str


Outcome: TypeAlias = Cursor | Spent | Failed


def script_args(max_len: int, posts: Sequence[tuple[bytes, bytes | None]]) -> list[bytes | int]:
    """ARGV of the batch append script: the MAXLEN, then blob and spend id per post (b""
    for a post without a token; a real spend id is never empty)."""
    args: list[bytes | int] = [max_len]
    for blob, spend_id in posts:
        if spend_id is not None and not spend_id:
            raise ValueError("a spend id is never empty")
        args += [blob, spend_id or b""]
    return args


def parse_outcomes(raw: object, count: int) -> list[Outcome]:
    """The script's answer, one entry per post in order; DecodeError if it is not one."""
    if not isinstance(raw, list) or len(raw) != count:
        raise DecodeError(f"append script answered {type(raw).__name__}, not {count} results")
    out: list[Outcome] = []
    for item in raw:
        value = item.encode() if isinstance(item, str) else item
        if not isinstance(value, bytes):
            raise DecodeError(f"append script result {value!r} is not a string")
        if value == SPENT:
            out.append(Spent())
        elif value.startswith(FAILED_PREFIX):
            out.append(Failed(value[len(FAILED_PREFIX):].decode("utf-8", "replace")))
        else:
            try:
                out.append(cursor_from_redis(value))
            except ValueError:  # not ASCII, or not a stream id
                raise DecodeError(f"append script result {value!r} is not an id") from None
    return out
