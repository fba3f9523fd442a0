"""The prober: every listed server is asked for its signed bundle over Tor on a jittered
schedule (policy.next_probe_at), with bounded concurrency, new and failing servers first
(policy.probe_order). A probe succeeds when the server answers, within the deadline, with
the very bundle it advertised; a different (valid) bundle is a failure, "bundle changed":
its promises are no longer what the directory lists, until it advertises again."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from prometheus_client import Counter
from redis.exceptions import RedisError

from nyth_discovery import policy
from nyth_discovery.keyed_tasks import KeyedTasks
from nyth_discovery.policy import Listing, Probe
from nyth_discovery.reach import REQUEST_ERRORS, Reach
from nyth_discovery.storage import DiscoveryStore

log = logging.getLogger("nyth_discovery.prober")

PROBES = Counter("nyth_discovery_probes_total", "Probes of listed servers, by result.",
                 ["result"])
CONCURRENCY = 8
TICK = 1.0


async def probe_once(reach: Reach, listing: Listing,
                     clock: Callable[[], float] = time.time) -> Probe:
    """One probe of one server (never raises for the server's faults)."""
    started = time.monotonic()
    at = int(clock())
    try:
        served = await reach.fetch_bundle(listing.kind, listing.onion, "probe")
    except REQUEST_ERRORS as exc:
        return Probe(at, False, int((time.monotonic() - started) * 1000), reach.reason(exc))
    latency = int((time.monotonic() - started) * 1000)
    if served != listing.bundle:
        return Probe(at, False, latency, "bundle changed: the server serves another signed "
                                         "bundle than it advertised")
    return Probe(at, True, latency)


@dataclass
class Prober:
    store: DiscoveryStore
    reach: Reach
    interval: float
    concurrency: int = CONCURRENCY
    probe: Callable[[Reach, Listing], Awaitable[Probe]] = probe_once
    inflight: KeyedTasks = field(default_factory=KeyedTasks)

    async def run(self) -> None:
        while True:
            try:
                await self.start_due(time.time())
            except RedisError as exc:
                log.warning("probe scheduling failed: %s", exc)
            await asyncio.sleep(TICK)

    async def start_due(self, now: float) -> list[str]:
        """Start probes of the servers due, most urgent first, up to the concurrency."""
        listings = await self.store.listings()
        statuses = await self.store.statuses()
        due = policy.probe_order({o: statuses.get(o) for o in listings
                                  if o not in self.inflight}, now)
        started = due[: max(0, self.concurrency - len(self.inflight))]
        for onion in started:
            self.inflight.start(onion, self._probe(listings[onion]), "probe")
        return started

    async def _probe(self, listing: Listing) -> None:
        try:
            probe = await self.probe(self.reach, listing)
            PROBES.labels("ok" if probe.ok else "failed").inc()
            if not probe.ok:
                self.reach.failed()
                log.info("probe of %s….onion failed: %s", listing.onion[:8], probe.error)
            status = policy.after_probe(await self.store.status(listing.onion), probe,
                                        policy.next_probe_at(time.time(), self.interval))
            await self.store.record_probe(listing.onion, probe, status)
        except RedisError as exc:
            log.warning("recording a probe failed: %s", exc)

    async def stop(self) -> None:
        await self.inflight.stop()
