"""Issuing the signed directory, and publishing it into the public directory group.

Every directory_interval the index builds a Directory from its measurements (policy.
build_entries: listings whose advert has not expired; expired ones are forgotten), signs
it with its onion key under an epoch that always rises (unix ms), and stores it: GET
/v1/directory serves it in chunks.

Every publish_interval, and at once when the set of listed servers changed, it posts the
chunks into the directory group on every directory server, each as a DIRECTORY group
message sealed with the group key of the index bundle, so peers can read (and verify) the
directory while the index itself is down. Tokens are paid when a server wants them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from nyth.group_server_client import GroupServerClient, TokenPurse
from nyth.proto import discovery
from nyth.proto.discovery import Directory, IndexBundle
from nyth.proto.group import GroupKind, seal_group_data
from nyth.proto.identity import Identity
from prometheus_client import Counter, Gauge
from redis.exceptions import RedisError

from nyth_discovery import policy
from nyth_discovery.keyed_tasks import KeyedTasks
from nyth_discovery.reach import Reach
from nyth_discovery.storage import DiscoveryStore, StoredDirectory, set_digest

log = logging.getLogger("nyth_discovery.publisher")

EPOCH = Gauge("nyth_discovery_directory_epoch", "Epoch of the latest signed directory.")
ENTRIES = Gauge("nyth_discovery_entries", "Servers in the latest signed directory.")
PUBLISHES = Counter("nyth_discovery_publishes_total",
                    "Directory publications into the directory group, per server, by result.",
                    ["result"])
TICK = 1.0
RETRY_AFTER = 30.0


@dataclass
class PublishState:
    """One directory server, as /healthz shows it."""

    onion: str
    state: str = "pending"          # pending | publishing | published | failed
    epoch: int | None = None        # the last epoch posted there whole
    servers: str | None = None      # the listed set it had
    at: float = 0.0                 # when it was posted
    chunks: int = 0
    reason: str | None = None
    retry_at: float = 0.0

    def view(self) -> dict[str, Any]:
        return {"onion": self.onion, "state": self.state, "epoch": self.epoch,
                "published_at": int(self.at) or None, "chunks": self.chunks,
                "reason": self.reason}


async def issue_directory(store: DiscoveryStore, identity: Identity, *, max_entries: int,
                          lifetime: int, now: float) -> StoredDirectory:
    """Build, sign and store a new directory; forget servers whose advert expired."""
    measured = await store.measurements()
    for m in measured:
        if m.listing.advert_expires <= now:
            log.info("%s….onion: advert expired, no longer listed", m.listing.onion[:8])
            await store.forget(m.listing.onion)
    entries = policy.build_entries(measured, int(now), max_entries)
    previous = await store.directory()
    epoch = policy.next_epoch(previous.epoch if previous else None, int(now * 1000))
    directory = Directory(identity.public_key, epoch, int(now), int(now) + lifetime, entries)
    stored = StoredDirectory(directory.sign(identity), epoch,
                             set_digest([e.onion for e in entries]))
    await store.save_directory(stored)
    EPOCH.set(epoch)
    ENTRIES.set(len(entries))
    return stored


@dataclass
class Publisher:
    store: DiscoveryStore
    identity: Identity
    bundle: IndexBundle
    reach: Reach
    directory_interval: float
    lifetime: int
    publish_interval: float
    max_entries: int
    purse: TokenPurse = field(default_factory=TokenPurse)
    states: dict[str, PublishState] = field(default_factory=dict)
    latest: StoredDirectory | None = None
    _tasks: KeyedTasks = field(default_factory=KeyedTasks)

    def __post_init__(self) -> None:
        self.states = {o: PublishState(o) for o in self.bundle.directory_onions}

    async def run_issue(self) -> None:
        while True:
            try:
                self.latest = await issue_directory(
                    self.store, self.identity, max_entries=self.max_entries,
                    lifetime=self.lifetime, now=time.time())
            except RedisError as exc:
                log.warning("issuing the directory failed: %s", exc)
            await asyncio.sleep(self.directory_interval)

    async def run_publish(self) -> None:
        while True:
            self.start_due(time.time())
            await asyncio.sleep(TICK)

    def start_due(self, now: float) -> list[str]:
        latest = self.latest
        if latest is None or not self.reach.available:
            return []
        started = []
        for onion, state in self.states.items():
            if onion in self._tasks or state.retry_at > now:
                continue
            if policy.publish_due(published_epoch=state.epoch, published_set=state.servers,
                                  current_set=latest.servers, last_published_at=state.at,
                                  now=now, interval=self.publish_interval):
                self._tasks.start(onion, self._publish(state, latest), "publish")
                started.append(onion)
        return started

    async def _publish(self, state: PublishState, directory: StoredDirectory) -> None:
        state.state, state.reason = "publishing", None
        try:
            chunks = discovery.chunk_directory(directory.signed, directory.epoch)
            async with self.reach.client("publish") as http:
                client = GroupServerClient(http, state.onion)
                server_bundle = await client.bundle()
                for chunk in chunks:
                    blob, _ = seal_group_data(
                        self.identity, self.bundle.group_key, self.bundle.directory_group_id,
                        kind=GroupKind.DIRECTORY, timestamp_ms=int(time.time() * 1000),
                        parents=(), data=chunk.encode())
                    await client.post_blob(blob, await self.purse.take(client, server_bundle))
        except Exception as exc:
            # Whatever a directory server does (refuse, hang, answer garbage) is its
            # failure, shown in /healthz and retried; it must never end the loop.
            PUBLISHES.labels("failed").inc()
            state.state, state.reason = "failed", self.reach.reason(exc)
            state.retry_at = time.time() + min(RETRY_AFTER, self.publish_interval)
            self.reach.failed()
            log.info("publishing epoch %d to %s….onion failed: %s", directory.epoch,
                     state.onion[:8], state.reason)
            return
        PUBLISHES.labels("ok").inc()
        state.state, state.epoch, state.servers = "published", directory.epoch, directory.servers
        state.at, state.chunks = time.time(), len(chunks)
        log.info("published epoch %d (%d chunks) to %s….onion", directory.epoch, len(chunks),
                 state.onion[:8])

    async def stop(self) -> None:
        await self._tasks.stop()
