"""The index's state in Redis. Everything is bounded by max_entries servers.

Redis layout for prefix P (onion: the server's 56-character onion id):

    P:listings        hash onion -> JSON Listing (its accepted advert and bundle); at most
                      max_entries fields (the upsert script refuses a new one beyond that)
    P:probes:<onion>  list of JSON probes, newest first, trimmed to probe_window
    P:status          hash onion -> JSON ProbeStatus (failures in a row, last probe/answer,
                      next probe)
    P:audit           hash onion -> JSON Audit (state, passed, open canaries: cursor,
                      digest, post time, check times)
    P:directory       hash {signed: latest signed directory, epoch, servers: the listed
                      set's digest}
    P:gap:<onion>     exists while the onion may not submit again (advert_min_gap)

A server is forgotten whole (listing, probes, status, audits) when its advert expires.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from nyth_discovery.policy import Audit, Listing, Measurements, Probe, ProbeStatus

# Keep first_seen across renewals; refuse a new server when the index is full.
_UPSERT_LUA = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return 'full' end
local new = cjson.decode(ARGV[2])
if old then new['first_seen'] = cjson.decode(old)['first_seen'] end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(new))
if old then return 'renewed' end
return 'new'
"""


@dataclass(frozen=True)
class StoredDirectory:
    signed: bytes
    epoch: int
    servers: str  # digest of the listed set, to publish at once when it changes


def _json(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


def set_digest(onions: list[str]) -> str:
    return hashlib.sha256(",".join(sorted(onions)).encode()).hexdigest()


class DiscoveryStore:
    def __init__(self, redis: aioredis.Redis, *, key_prefix: str, max_entries: int,
                 probe_window: int) -> None:
        self.redis = redis
        self.prefix = key_prefix
        self.max_entries = max_entries
        self.probe_window = probe_window
        self.listings_key = f"{key_prefix}:listings"
        self.status_key = f"{key_prefix}:status"
        self.audit_key = f"{key_prefix}:audit"
        self.directory_key = f"{key_prefix}:directory"
        self._upsert = redis.register_script(_UPSERT_LUA)

    def _probes_key(self, onion: str) -> str:
        return f"{self.prefix}:probes:{onion}"

    # -- submissions ----------------------------------------------------------------------

    async def claim_submission(self, onion: str, gap_seconds: float) -> float | None:
        """None if onion may submit now (and the gap starts); else the seconds to wait."""
        if gap_seconds <= 0:
            return None
        key = f"{self.prefix}:gap:{onion}"
        if await self.redis.set(key, b"1", nx=True, px=max(1, int(gap_seconds * 1000))):
            return None
        left = await self.redis.pttl(key)
        return max(left, 1) / 1000 if left and left > 0 else gap_seconds

    async def upsert(self, listing: Listing) -> str:
        """'new', 'renewed' (first_seen kept) or 'full' (not stored)."""
        result = await self._upsert(keys=[self.listings_key],
                                    args=[listing.onion, _json(listing.to_json()),
                                          self.max_entries])
        return result.decode() if isinstance(result, bytes) else str(result)

    # -- reads ----------------------------------------------------------------------------

    async def listings(self) -> dict[str, Listing]:
        raw: dict[Any, Any] = await self.redis.hgetall(self.listings_key)
        return {k.decode(): Listing.from_json(json.loads(v)) for k, v in raw.items()}

    async def listing(self, onion: str) -> Listing | None:
        raw = await self.redis.hget(self.listings_key, onion)
        return None if raw is None else Listing.from_json(json.loads(raw))

    async def count(self) -> int:
        return int(await self.redis.hlen(self.listings_key))

    async def statuses(self) -> dict[str, ProbeStatus]:
        raw: dict[Any, Any] = await self.redis.hgetall(self.status_key)
        return {k.decode(): ProbeStatus.from_json(json.loads(v)) for k, v in raw.items()}

    async def status(self, onion: str) -> ProbeStatus | None:
        raw = await self.redis.hget(self.status_key, onion)
        return None if raw is None else ProbeStatus.from_json(json.loads(raw))

    async def probes(self, onion: str) -> list[Probe]:
        raw = await self.redis.lrange(self._probes_key(onion), 0, self.probe_window - 1)
        return [Probe(**json.loads(item)) for item in raw]

    async def audit(self, onion: str) -> Audit:
        raw = await self.redis.hget(self.audit_key, onion)
        return Audit() if raw is None else Audit.from_json(json.loads(raw))

    async def audits(self) -> dict[str, Audit]:
        raw: dict[Any, Any] = await self.redis.hgetall(self.audit_key)
        return {k.decode(): Audit.from_json(json.loads(v)) for k, v in raw.items()}

    async def measurements(self) -> list[Measurements]:
        """Every listed server with what was measured of it."""
        listings = await self.listings()
        statuses = await self.statuses()
        audits = await self.audits()
        onions = list(listings)
        async with self.redis.pipeline(transaction=False) as pipe:
            for onion in onions:
                pipe.lrange(self._probes_key(onion), 0, self.probe_window - 1)
            windows = await pipe.execute()
        return [Measurements(listings[onion], [Probe(**json.loads(p)) for p in window],
                             statuses.get(onion), audits.get(onion, Audit()))
                for onion, window in zip(onions, windows, strict=True)]

    # -- measurements -----------------------------------------------------------------------

    async def record_probe(self, onion: str, probe: Probe, status: ProbeStatus) -> None:
        if not await self.redis.hexists(self.listings_key, onion):
            return  # dropped while the probe ran
        key = self._probes_key(onion)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lpush(key, _json(probe.__dict__))
            pipe.ltrim(key, 0, self.probe_window - 1)
            pipe.hset(self.status_key, onion, _json(status.to_json()))
            await pipe.execute()

    async def save_audit(self, onion: str, audit: Audit) -> None:
        if await self.redis.hexists(self.listings_key, onion):
            await self.redis.hset(self.audit_key, onion, _json(audit.to_json()))

    async def forget(self, onion: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self.listings_key, onion)
            pipe.hdel(self.status_key, onion)
            pipe.hdel(self.audit_key, onion)
            pipe.delete(self._probes_key(onion))
            await pipe.execute()

    # -- the directory ----------------------------------------------------------------------

    async def save_directory(self, directory: StoredDirectory) -> None:
        await self.redis.hset(self.directory_key, mapping={
            "signed": directory.signed, "epoch": str(directory.epoch),
            "servers": directory.servers})

    async def directory(self) -> StoredDirectory | None:
        raw: dict[Any, Any] = await self.redis.hgetall(self.directory_key)
        if not raw or b"signed" not in raw:
            return None
        return StoredDirectory(bytes(raw[b"signed"]), int(raw[b"epoch"]),
                               raw.get(b"servers", b"").decode())
