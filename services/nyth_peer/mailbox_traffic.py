"""Contacts' cards, cached and fetched on a schedule of their own.

A send that fetched the recipient's card just before posting would tell the mailbox
which record is for whom. So cards are fetched for every contact that has a mailbox at
random times over the card's life (`nyth.mailbox_traffic.TrafficPolicy`), each on a
fresh circuit, and a send uses the cached card; it fetches only on a miss.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from nyth.errors import NythError
from nyth.http_limits import printable
from nyth.mailbox_traffic import TrafficPolicy
from nyth.proto.delivery import RetryPolicy

from nyth_peer.messenger import ACCEPTED, PENDING_OUTBOUND
from nyth_peer.store import Store

log = logging.getLogger(__name__)

CARDS = "mailbox_cards"
# How often the contact list is looked at for new contacts with a mailbox: local work.
SCAN_SECONDS = 30.0


class CardCache:
    """Verified cards of contacts, in the profile store (sealed like every row)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, onion: str, mailbox: str) -> dict[str, Any] | None:
        """The cached row for onion's card from that mailbox: card bytes, expires_at,
        fetched_at; None if none is cached (or one from another mailbox)."""
        row = self.store.get(CARDS, onion)
        if row is None or row.get("mailbox") != mailbox:
            return None
        return {**row, "card": base64.b64decode(row["card"])}

    def put(self, onion: str, mailbox: str, card: bytes, expires_at: int,
            fetched_at: float) -> None:
        self.store.put(CARDS, onion, {"mailbox": mailbox, "card": base64.b64encode(card).decode(),
                                      "expires_at": expires_at, "fetched_at": fetched_at})

    def drop(self, onion: str) -> None:
        self.store.delete(CARDS, onion)


class CardRefresher:
    """Fetches the card of every contact that has a mailbox at random times.

    fetch(onion, mailbox) fetches, verifies and caches one card (on its own circuit);
    it raises NythError when it cannot.
    """

    def __init__(self, store: Store, cache: CardCache,
                 fetch: Callable[[str, str], Awaitable[Any]], policy: TrafficPolicy,
                 retry: RetryPolicy, rng: random.Random | None = None) -> None:
        self.store = store
        self.cache = cache
        self._fetch = fetch
        self.policy = policy
        self.retry = retry
        self._rng = rng or random.SystemRandom()
        # onion -> (fetched_at the time was computed from, when to fetch)
        self._due: dict[str, tuple[float | None, float]] = {}
        self._failures: dict[str, int] = {}

    def contacts(self) -> dict[str, str]:
        """onion -> mailbox of every contact a message could go to through its mailbox."""
        return {c["onion"]: c["mailbox"] for c in self.store.list("contacts")
                if c.get("mailbox") and c.get("status") in (ACCEPTED, PENDING_OUTBOUND)}

    def due_at(self, onion: str, mailbox: str, now: float) -> float:
        """When onion's card is fetched next. Recomputed whenever the cache changed under
        us (a send fetched it on a miss), otherwise drawn once."""
        row = self.cache.get(onion, mailbox)
        basis = None if row is None else float(row["fetched_at"])
        known = self._due.get(onion)
        if known is not None and known[0] == basis:
            return known[1]
        if row is None:
            due = self.policy.first_fetch_at(now, self._rng)
        else:
            due = self.policy.next_refresh_at(float(row["fetched_at"]), float(row["expires_at"]),
                                              self._rng)
        self._due[onion] = (basis, due)
        return due

    async def run(self) -> None:
        while True:
            try:
                pause = await self.step(time.time())
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug here must not end refreshes for good; sends still fetch on a miss.
                log.exception("refreshing contacts' cards failed")
                pause = SCAN_SECONDS
            await asyncio.sleep(pause)

    async def step(self, now: float) -> float:
        """Fetch the cards that are due; returns how long to sleep before the next step."""
        contacts = self.contacts()
        for gone in set(self._due) - set(contacts):
            self._due.pop(gone, None)
            self._failures.pop(gone, None)
        for onion, mailbox in contacts.items():
            if self.due_at(onion, mailbox, now) <= now:
                await self._refresh(onion, mailbox)
        now = time.time()
        upcoming = [self.due_at(onion, mailbox, now) for onion, mailbox in contacts.items()]
        return max(0.05, min([SCAN_SECONDS, *(due - now for due in upcoming)]))

    async def _refresh(self, onion: str, mailbox: str) -> None:
        try:
            await self._fetch(onion, mailbox)
        except NythError as exc:
            failures = self._failures[onion] = self._failures.get(onion, 0) + 1
            row = self.cache.get(onion, mailbox)
            # Not the engine's quick retries: a contact without a card (or a mailbox that
            # is down) would have its card asked for every few minutes. A send still
            # fetches on a miss.
            wait = max(self.retry.delay(failures, self._rng),
                       self._rng.uniform(0.5, 1.5) * self.policy.stale_retry)
            self._due[onion] = (None if row is None else float(row["fetched_at"]),
                                time.time() + wait)
            log.info("could not refresh a contact's card: %s",
                     printable(f"{type(exc).__name__}: {exc}", 300))
            return
        self._failures.pop(onion, None)


class Pacing:
    """Per contact: a fetch of their card and a post to them are never in flight
    together, a post goes no sooner than card_post_gap after the last fetch ended (plus
    its random delay), and a fetch no sooner than card_post_gap after the last post."""

    def __init__(self, store: Store, policy: TrafficPolicy, rng: random.Random) -> None:
        self.store = store
        self.policy = policy
        self._rng = rng
        self._locks: dict[str, asyncio.Lock] = {}
        # monotonic times: only gaps matter
        self._fetched: dict[str, float] = {}
        self._posted: dict[str, float] = {}

    def _lock(self, onion: str) -> asyncio.Lock:
        return self._locks.setdefault(onion, asyncio.Lock())

    @contextlib.asynccontextmanager
    async def fetching(self, onion: str) -> AsyncIterator[None]:
        async with self._lock(onion):
            wait = self._posted.get(onion, -math.inf) + self.policy.card_post_gap - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                yield
            finally:
                # From the end: the mailbox saw the request before, however long tor
                # took to build the circuit for it.
                self._fetched[onion] = time.monotonic()

    @contextlib.asynccontextmanager
    async def posting(self, onion: str) -> AsyncIterator[None]:
        async with self._lock(onion):
            delay = self.policy.post_delay(self._rng)
            # The cache's time counts too: a fetch made before a restart.
            row = self.store.get(CARDS, onion)
            fetched_ago = time.time() - float(row["fetched_at"]) if row is not None else math.inf
            since = min(fetched_ago, time.monotonic() - self._fetched.get(onion, -math.inf))
            wait = self.policy.post_at(0.0, -since, delay)
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                yield
            finally:
                self._posted[onion] = time.monotonic()
