"""A server asking discovery indexes to list it: the group server's and the mailbox's
advertiser (docs/discovery.md, docs/operations.md).

For each index: fetch its signed bundle over Tor (verified for that index's onion), build
an advert naming our kind, our onion key, the index, the SHA-256 of our own signed bundle
and our operator label, pay the proof of work the index's bundle asks for (in a thread,
stopped on shutdown), sign it with our onion key and post it. A failure is retried with
capped backoff; a listed advert is renewed at half its lifetime. Each index's state and
reason are shown on the service's /healthz.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import httpx
from pydantic import BaseModel, Field

from nyth.config import AdvertiserSettings, OnionServiceSettings
from nyth.healthz import onion_from_healthz
from nyth.index_http import failure_reason, fetch_index_bundle, post_advert
from nyth.proto.delivery import RetryPolicy
from nyth.proto.discovery import (
    Advert,
    IndexBundle,
    ServerKind,
    bundle_hash,
    solve_advert_pow,
)
from nyth.proto.hashcash import PowStopped
from nyth.proto.identity import Identity

log = logging.getLogger(__name__)

# States an index is in, as /healthz shows them.
WAITING, FETCHING, WORKING, POSTING, LISTED, RETRYING = (
    "waiting", "fetching_bundle", "proof_of_work", "posting", "listed", "retrying")
# How long the first attempt waits for our own onion to be published: an index checks an
# advert against the bundle it fetches from us over Tor, so posting earlier is refused.
READY_WAIT_SECONDS = 300.0
# A renewal this long before expiry at the latest, whatever half the lifetime is.
MIN_RENEW_MARGIN = 5.0


class AdvertView(BaseModel):
    state: str = Field(description='"waiting" (for our onion), "fetching_bundle", '
                                   '"proof_of_work", "posting", "listed" or "retrying"')
    reason: str | None = Field(description="why the last attempt failed, or what runs now")
    expires_at: int | None = Field(description="when the advert the index holds expires "
                                               "(Unix seconds); null before one was accepted")
    accepted: int = Field(description="adverts this index accepted since the start")
    next_attempt_at: float | None = Field(
        description="the next attempt or renewal (Unix seconds)")


AdvertsField = Field(
    None, description="Per discovery index (onion) this server advertises to: the state of "
                      "its advert; null when no index is configured.")


@dataclass
class _IndexState:
    state: str = WAITING
    reason: str | None = None
    expires_at: int | None = None
    accepted: int = 0
    next_attempt_at: float | None = None


class Advertiser:
    def __init__(self, kind: ServerKind, identity: Identity, bundle: bytes, *,
                 indexes: list[str], healthz: list[str], label: str, lifetime: int,
                 http_factory: Callable[[], httpx.AsyncClient], retry: RetryPolicy,
                 ready: Callable[[], bool] | None = None) -> None:
        self.kind = kind
        self.identity = identity
        self.bundle = bundle
        self.label = label
        self.lifetime = lifetime
        self.healthz = list(healthz)
        self.retry = retry
        self._http = http_factory
        self._ready = ready
        self._stop = threading.Event()  # read by the proof-of-work thread
        self.states: dict[str, _IndexState] = {o: _IndexState() for o in indexes}
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def from_settings(cls, settings: Any, kind: ServerKind, identity: Identity, bundle: bytes,
                      ready: Callable[[], bool] | None = None) -> Advertiser | None:
        """The advertiser these settings ask for; None when no index is configured."""
        assert isinstance(settings, AdvertiserSettings)
        assert isinstance(settings, OnionServiceSettings)
        if not settings.discovery_indexes and not settings.discovery_healthz:
            return None
        from nyth.tor.endpoints import SocksEndpoint
        from nyth.tor.socks import onion_http_client
        assert settings.tor_socks is not None  # AdvertiserSettings refuses to start without
        socks = SocksEndpoint.from_string(settings.tor_socks)
        return cls(kind, identity, bundle, indexes=settings.discovery_indexes,
                   healthz=settings.discovery_healthz, label=settings.operator_label,
                   lifetime=settings.advert_lifetime_seconds,
                   http_factory=lambda: onion_http_client(socks, timeout=60.0),
                   retry=RetryPolicy(initial=2.0, cap=settings.advert_retry_cap_seconds),
                   ready=ready)

    def view(self) -> dict[str, dict[str, Any]]:
        return {onion: asdict(state) for onion, state in self.states.items()}

    async def run(self) -> None:
        """Advertise to every index until stopped (cancelled)."""
        for url in self.healthz:
            # A neighbour deployed beside us (compose): its onion is read from its /healthz.
            onion = await onion_from_healthz(url)
            if onion is None:
                log.warning("no discovery index at %s: it did not tell its onion", url)
            elif onion not in self.states:
                self.states[onion] = _IndexState()
        self._tasks = [asyncio.ensure_future(self._index_loop(o)) for o in self.states]
        try:
            await asyncio.gather(*self._tasks)
        finally:
            self.close()

    def close(self) -> None:
        """Stop: the proof of work in its thread first (it checks the flag), then tasks."""
        self._stop.set()
        for task in self._tasks:
            task.cancel()

    def _set(self, onion: str, state: str, reason: str | None = None,
             next_attempt_at: float | None = None) -> None:
        current = self.states[onion]
        current.state, current.reason, current.next_attempt_at = state, reason, next_attempt_at

    async def _wait_ready(self, onion: str) -> None:
        if self._ready is None:
            return
        deadline = time.monotonic() + READY_WAIT_SECONDS
        while not self._ready() and time.monotonic() < deadline:
            self._set(onion, WAITING, "waiting for our onion to be published")
            await asyncio.sleep(1.0)

    async def _index_loop(self, onion: str) -> None:
        await self._wait_ready(onion)
        failures = 0
        while not self._stop.is_set():
            try:
                expires_at = await self._advertise(onion)
            except PowStopped:
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                delay = self.retry.delay(failures)
                held = self.states[onion].expires_at
                still = (f" (the advert it holds expires at {held})"
                         if held and held > time.time() else "")
                self._set(onion, RETRYING, failure_reason(exc) + still, time.time() + delay)
                log.info("advert to %s….onion failed: %s", onion[:8], self.states[onion].reason)
                await asyncio.sleep(delay)
                continue
            failures = 0
            # Renew at half the lifetime, and never so late that the advert lapses.
            wait = max(1.0, min((expires_at - time.time()) / 2,
                                expires_at - time.time() - MIN_RENEW_MARGIN))
            self._set(onion, LISTED, None, time.time() + wait)
            await asyncio.sleep(wait)

    async def _advertise(self, onion: str) -> int:
        """One advert to the index, from its bundle to its acknowledgement; returns when
        it expires."""
        async with self._http() as http:
            self._set(onion, FETCHING)
            index = IndexBundle.verify(await fetch_index_bundle(http, onion), onion)
            now = int(time.time())
            advert = Advert(self.kind, self.identity.public_key, index.index_key,
                            bundle_hash(self.bundle), self.label, now, now + self.lifetime)
            self._set(onion, WORKING, f"{index.advert_pow_bits} bits of proof of work")
            solved = await asyncio.to_thread(solve_advert_pow, advert, index.advert_pow_bits,
                                             stop=self._stop.is_set)
            self._set(onion, POSTING)
            await post_advert(http, onion, solved.sign(self.identity))
        state = self.states[onion]
        state.expires_at = solved.expires_at
        state.accepted += 1
        log.info("listed by index %s….onion until %d", onion[:8], solved.expires_at)
        return solved.expires_at
