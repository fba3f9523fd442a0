"""Fault injection: a group server that misbehaves on purpose (NYTH_DEV_MODE only).

For the tests and the experiment on recovering dropped group messages. Each fault is
something a hostile or broken server can do to its clients, and does that and nothing
else:

- drop (NYTH_FAULT_DROP_FRACTION): answer a post 201 with a plausible id, store nothing;
- withhold (NYTH_FAULT_WITHHOLD_FROM / _FRACTION): leave some blobs out of every answer
  to the labelled readers, pages and the live stream alike, the same blobs every time;
- forget (NYTH_FAULT_FORGET_AFTER_SECONDS): delete blobs that long after they were
  stored, although the bundle promises max_age_seconds;
- delay (NYTH_FAULT_DELAY_MS): sleep before answering a post or a read;
- reorder (NYTH_FAULT_REORDER): shuffle the blobs of each answer;
- token wrong key (NYTH_FAULT_TOKEN_WRONG_KEY, with NYTH_TOKENS_REQUIRED): issue tokens
  under a key of its own, not the bundle's, as a server would to recognise the clients
  it gave them to; every honest client refuses the proof (`nyth_group_server.tokens`).

Every decision is a keyed hash of (NYTH_FAULT_SEED, the server's onion, the blob or its
id): a test can predict it exactly (`FaultPolicy.drops`, `withholds`), a re-fetch or a
restart meets the same fault, and two servers with the same seed fail independently.

Readers: a server reached over Tor cannot tell who reads. In dev mode a client may name
itself in the ``Nyth-Test-Reader`` header (a test hook, `reader_dependency`); a peer
sends it only when its own dev mode sets NYTH_TEST_READER_LABEL.

`FaultPolicy.HONEST` (outside dev mode, or with no fault set) changes nothing, so the
app consults its policy unconditionally.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated, ClassVar

from fastapi import Header
from nyth.config import TEST_READER_HEADER, TEST_READER_LABEL_PATTERN
from nyth.runtime.stream_store import Cursor, cursor_from_redis
from prometheus_client import Counter
from pydantic import BaseModel, Field
from redis.exceptions import RedisError

from nyth_group_server.settings import GroupServerSettings
from nyth_group_server.storage import BlobStore, Page, StoredBlob

log = logging.getLogger("nyth_group_server.faults")

DROPPED = Counter("nyth_group_fault_dropped_total",
                  "Posts answered 201 but not stored (fault injection).")
WITHHELD = Counter("nyth_group_fault_withheld_total",
                   "Blobs left out of an answer to a labelled reader (fault injection).")
FORGOTTEN = Counter("nyth_group_fault_forgotten_total",
                    "Blobs deleted before the bundle's max age (fault injection).")

# A dropped post still takes the id an honest server would have given it, then deletes
# the entry in the same atomic step: nobody ever sees it, no subscriber is woken, and the
# stream's own id generator moves on, so the id fits between its neighbours.
_DROP_LUA = """
local id = redis.call('XADD', KEYS[1], '*', 'dropped', '')
redis.call('XDEL', KEYS[1], id)
return id
"""


class FaultsView(BaseModel):
    active: list[str] = Field(
        description="The faults in effect: drop, withhold, forget, delay, reorder, "
                    "token_wrong_key.")
    seed: int
    drop_fraction: float
    withhold_from: list[str]
    withhold_fraction: float
    forget_after_seconds: float | None
    delay_ms: int
    reorder: bool
    token_wrong_key: bool


def reader_dependency(dev_mode: bool) -> Callable[..., str | None]:
    """A FastAPI dependency giving the reader's label: the Nyth-Test-Reader header in dev
    mode (documented in OpenAPI there), never anything otherwise (the header is ignored)."""
    if not dev_mode:
        def no_reader() -> str | None:
            return None
        return no_reader

    def test_reader(label: Annotated[str | None, Header(
        alias=TEST_READER_HEADER, pattern=TEST_READER_LABEL_PATTERN, max_length=64,
        description="Test hook (dev mode only): who reads, for NYTH_FAULT_WITHHOLD_FROM.",
    )] = None) -> str | None:
        return label

    return test_reader


@dataclass(frozen=True)
class FaultPolicy:
    """What this server does wrong on purpose; see the module docstring."""

    HONEST: ClassVar[FaultPolicy]

    dev_mode: bool = False
    seed: int = 0
    drop_fraction: float = 0.0
    withhold_from: frozenset[str] = frozenset()
    withhold_fraction: float = 1.0
    forget_after_seconds: float | None = None
    delay_ms: int = 0
    reorder: bool = False
    token_wrong_key: bool = False
    onion: str = ""
    clock: Callable[[], float] = field(default=time.time, compare=False, repr=False)

    @classmethod
    def from_settings(cls, settings: GroupServerSettings, onion: str) -> FaultPolicy:
        if not settings.dev_mode:
            return cls.HONEST
        return cls(
            dev_mode=True, seed=settings.fault_seed,
            drop_fraction=settings.fault_drop_fraction,
            withhold_from=frozenset(settings.fault_withhold_from),
            withhold_fraction=settings.fault_withhold_fraction,
            forget_after_seconds=settings.fault_forget_after_seconds,
            delay_ms=settings.fault_delay_ms, reorder=settings.fault_reorder,
            token_wrong_key=settings.fault_token_wrong_key, onion=onion,
        )

    # -- what is on ------------------------------------------------------------------------

    @cached_property
    def active(self) -> tuple[str, ...]:
        on = {
            "drop": self.drop_fraction > 0,
            "withhold": bool(self.withhold_from) and self.withhold_fraction > 0,
            "forget": self.forget_after_seconds is not None,
            "delay": self.delay_ms > 0,
            "reorder": self.reorder,
            "token_wrong_key": self.token_wrong_key,
        }
        return tuple(name for name, is_on in on.items() if is_on)

    @cached_property
    def alters_reads(self) -> bool:
        return bool({"withhold", "forget", "reorder"} & set(self.active))

    def view(self) -> FaultsView | None:
        """For /healthz: None outside dev mode."""
        if not self.dev_mode:
            return None
        return FaultsView(
            active=list(self.active), seed=self.seed, drop_fraction=self.drop_fraction,
            withhold_from=sorted(self.withhold_from), withhold_fraction=self.withhold_fraction,
            forget_after_seconds=self.forget_after_seconds, delay_ms=self.delay_ms,
            reorder=self.reorder, token_wrong_key=self.token_wrong_key,
        )

    # -- decisions -------------------------------------------------------------------------

    def _unit(self, purpose: bytes, data: bytes) -> float:
        """A number in [0, 1) fixed by (seed, onion, purpose, data)."""
        key = b"nyth-fault-v1|%d|%s" % (self.seed, self.onion.encode())
        digest = hmac.new(key, purpose + b"|" + data, hashlib.sha256).digest()
        return (int.from_bytes(digest[:8], "big") >> 11) / 2**53  # exact: never 1.0

    def drops(self, blob: bytes) -> bool:
        """Whether a post of these bytes is answered 201 and thrown away. Keyed by the
        bytes, so a client re-posting the same blob here meets the same fate."""
        return self.drop_fraction > 0 and self._unit(b"drop", blob) < self.drop_fraction

    def withholds(self, reader: str | None, blob_id: Cursor) -> bool:
        """Whether this blob is kept from this reader: always the same for one id."""
        return (reader is not None and reader in self.withhold_from
                and self._unit(b"withhold", str(blob_id).encode()) < self.withhold_fraction)

    def forgotten_below(self) -> Cursor | None:
        """Blobs with a smaller id are forgotten (None: nothing is)."""
        if self.forget_after_seconds is None:
            return None
        now_ms = int(self.clock() * 1000)
        return Cursor(max(0, now_ms - int(self.forget_after_seconds * 1000)), 0)

    # -- acting on them ------------------------------------------------------------------

    async def delay(self) -> None:
        if self.delay_ms:
            await asyncio.sleep(self.delay_ms / 1000)

    @staticmethod
    async def drop(store: BlobStore, spend_id: bytes | None = None) -> Cursor | None:
        """Store nothing, and return the id an honest append would have returned.

        What a hostile server would answer: an id from the stream's own sequence, so it
        is later than every id before it and earlier than every later one, and no blob
        ever appears under it. Made-up ids would give it away: "now-0" or the last id's
        successor is the id the next real post gets (two posts under one id), an id in
        the future makes the following real ids go backwards. Still detectable, by
        design: the poster never finds its id when it reads back, and two posts in the
        same millisecond show a gap in the sequence numbers (5-0, then 5-2).

        A post's token is spent all the same (None if it already was), as a server
        that keeps the payment and drops the post would.
        """
        if spend_id is not None and not await store.spend(spend_id):
            return None
        script = store.redis.register_script(_DROP_LUA)
        raw = await script(keys=[store.stream_key])
        DROPPED.inc()
        return cursor_from_redis(raw)

    def serve(self, blobs: list[StoredBlob], reader: str | None) -> list[StoredBlob]:
        """What a reader gets of these blobs (oldest first): forgotten and withheld ones
        left out, the rest shuffled if reordering."""
        if not self.alters_reads:
            return blobs
        kept, withheld = self._split(blobs, reader)
        WITHHELD.inc(len(withheld))
        return self._shuffle(kept)

    async def read_page(self, store: BlobStore, after: Cursor, limit: int,
                        reader: str | None) -> Page:
        """The page this server answers: `store.read_after` when no fault alters reads.

        Otherwise as honest-looking as a hostile server can make it: read on past the
        blobs it leaves out until the page is full (or the stream ends), and put `next`
        at the last blob it returns (or at `after` when it returns none), exactly as an
        honest page. A client's cursor thus never passes a withheld blob, and a re-fetch
        is withheld again. Costs at most one pass over the stream (max_blobs entries).
        """
        if not self.alters_reads:
            return await store.read_after(after, limit)
        cursor = after
        floor = self.forgotten_below()
        if floor is not None and floor.ms > 0:
            cursor = max(cursor, Cursor(floor.ms - 1, 0))  # skip most forgotten ones unread
        kept: list[StoredBlob] = []
        withheld: list[StoredBlob] = []
        while len(kept) <= limit:
            page = await store.read_after(cursor, limit + 1 - len(kept))
            more_kept, more_withheld = self._split(page.blobs, reader)
            kept += more_kept
            withheld += more_withheld
            if not page.more:
                break
            cursor = page.next
        more = len(kept) > limit
        if more:  # withheld blobs past this page are not kept from this answer
            beyond = kept[limit].id
            withheld = [blob for blob in withheld if blob.id < beyond]
        WITHHELD.inc(len(withheld))
        kept = kept[:limit]
        return Page(self._shuffle(kept), kept[-1].id if kept else after, more)

    def _split(self, blobs: Iterable[StoredBlob],
               reader: str | None) -> tuple[list[StoredBlob], list[StoredBlob]]:
        floor = self.forgotten_below()
        kept: list[StoredBlob] = []
        withheld: list[StoredBlob] = []
        for blob in blobs:
            if floor is not None and blob.id < floor:
                continue
            (withheld if self.withholds(reader, blob.id) else kept).append(blob)
        return kept, withheld

    def _shuffle(self, blobs: list[StoredBlob]) -> list[StoredBlob]:
        if not self.reorder or len(blobs) < 2:
            return blobs
        # The same answer is shuffled the same way every time it is asked for.
        span = f"{blobs[0].id}/{blobs[-1].id}".encode()
        rng = random.Random(int(self._unit(b"reorder", span) * 2**53))
        shuffled = list(blobs)
        rng.shuffle(shuffled)
        return shuffled

    async def forget_loop(self, store: BlobStore, interval: float) -> None:
        """Delete forgotten blobs from Redis every interval (reads hide them meanwhile)."""
        while True:
            floor = self.forgotten_below()
            assert floor is not None
            try:
                removed = int(await store.redis.execute_command(
                    "XTRIM", store.stream_key, "MINID", str(floor)))
                if removed:
                    FORGOTTEN.inc(removed)
                    log.info("forgot %d blobs (fault injection)", removed)
            except RedisError as exc:
                log.warning("forgetting failed: %s", exc)
            await asyncio.sleep(interval)


FaultPolicy.HONEST = FaultPolicy()
