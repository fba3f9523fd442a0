"""The discovery index: what a probe costs, how many servers one index can keep measured,
and how reading a 1,000-entry directory from the public directory group compares with
reading it straight from the index. Every figure is a ratio to a limit measured in the
same run, on one devnet (private Tor network, real processes).

Probes. The limit is a raw onion connect and one HTTP request (a fresh client, GET
/healthz of a group server), what any probe must at least do, on a new circuit (a SOCKS
credential of its own, as the index gives every probe), and for comparison on the
circuit tor already has to that onion. A probe is the index's own
`probe_once` (a fresh circuit credential, GET /v1/bundle, bounded answer, signature and
onion checked), run in this process so its CPU can be counted. Bytes over Tor are the
gateway's own counters (GETINFO traffic/read + traffic/written); the server's onion is
served by the same gateway, so they count both ends of each circuit, for both figures.
From the per-probe cost: servers one index keeps measured at a 300 s interval, bounded by
CPU (one core) and by the prober's concurrency (8 probes at once, each taking its
median wall time).

Directory sync. A directory of 1,000 entries (real signed bundles of 1,000 generated
servers, figures filled in) is signed with the index's key and given both to the index
(its Redis, as if it had issued it) and to the directory group on the group server (as
its publisher posts it: one DIRECTORY message per chunk, tokens paid). Two peers pinned
the index earlier. One refreshes from the index; then the index is stopped and the other
refreshes, which reads the directory group. The ratio is group time / index time, each
measured through the peer's own API (POST /v1/discovery/refresh until it holds the new
epoch).
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import socket
import statistics
import time
from typing import Any

from nyth.proto import discovery
from nyth.proto.bundle import ServerBundle
from nyth.proto.discovery import AuditState, Directory, Entry, ServerKind
from nyth.proto.group import GroupKind, seal_group_data
from nyth.proto.identity import Identity
from nyth.runtime.devnet import DISCOVERY_KEY_FILE, Devnet, PeerHandle, wait_until
from nyth.tor.endpoints import SocksEndpoint
from nyth.tor.socks import onion_http_client

from benchmarks.common import Results, percentile, workdir

PROBES = 30
ENTRIES = 1000
SYNC_ROUNDS = 3
PROBE_INTERVAL = 300.0


def _traffic(net: Devnet) -> int:
    """Bytes the gateway's tor read + wrote so far. A raw control connection, not stem's
    Controller: this process launched the gateway, and stem takes ownership of a tor its
    own process started (TAKEOWNERSHIP), so closing that controller would stop tor."""
    assert net.gateway is not None
    control = net.gateway.control
    with socket.create_connection((control.host, control.port), timeout=10) as sock:
        stream = sock.makefile("rwb")
        stream.write(f'AUTHENTICATE "{control.password}"\r\n'
                     "GETINFO traffic/read traffic/written\r\nQUIT\r\n".encode())
        stream.flush()
        values = dict(line.decode().strip()[4:].split("=", 1)
                      for line in stream if line.startswith(b"250-traffic/"))
    return int(values["traffic/read"]) + int(values["traffic/written"])


def _measure(net: Devnet, once: Any, n: int) -> dict[str, float]:
    """n sequential calls of the coroutine function `once`: wall per call (median, p95),
    CPU of this process per call, gateway bytes per call."""
    walls: list[float] = []
    before_bytes, before_cpu = _traffic(net), time.process_time()
    for _ in range(n):
        started = time.perf_counter()
        asyncio.run(once())
        walls.append(time.perf_counter() - started)
    cpu = (time.process_time() - before_cpu) / n
    return {"median_s": percentile(walls, 50), "p95_s": percentile(walls, 95), "cpu_s": cpu,
            "bytes": (_traffic(net) - before_bytes) / n}


def _probe_cost(net: Devnet, server_onion: str, res: Results) -> None:
    from nyth_discovery.policy import Listing
    from nyth_discovery.prober import probe_once
    from nyth_discovery.reach import Reach

    assert net.gateway is not None
    socks = SocksEndpoint(net.gateway.socks.host, net.gateway.socks.port)

    async def raw() -> None:
        async with onion_http_client(socks, timeout=60.0) as http:
            answer = await http.get(f"http://{server_onion}.onion/healthz")
            answer.raise_for_status()

    async def raw_fresh() -> None:
        # A SOCKS credential of its own: tor builds a new rendezvous circuit, as the
        # index does for every probe (a server cannot link one probe to the next).
        async with onion_http_client(socks, timeout=60.0, username="bench",
                                     password=secrets.token_hex(16)) as http:
            answer = await http.get(f"http://{server_onion}.onion/healthz")
            answer.raise_for_status()

    async def bundle() -> bytes:
        async with onion_http_client(socks, timeout=60.0) as http:
            answer = await http.get(f"http://{server_onion}.onion/v1/bundle")
            return base64.b64decode(answer.json()["bundle"])

    signed = asyncio.run(bundle())
    listing = Listing(ServerKind.GROUP_SERVER, server_onion, signed, "bench", 0, 0, 1)
    reach = Reach(socks)

    async def probe() -> None:
        result = await probe_once(reach, listing)
        if not result.ok:
            raise RuntimeError(f"probe failed: {result.error}")

    asyncio.run(raw())  # warm: descriptor fetched, as the index has it after its first probe
    reused = _measure(net, raw, PROBES)
    limit = _measure(net, raw_fresh, PROBES)
    cost = _measure(net, probe, PROBES)
    for what, key, unit, scale in (("wall", "median_s", "ms", 1000), ("CPU", "cpu_s", "ms", 1000),
                                   ("bytes over Tor", "bytes", "KB", 1 / 1000)):
        res.add(f"probe {what}", f"{cost[key] * scale:.1f} {unit}",
                f"raw connect + GET on a new circuit: {limit[key] * scale:.1f} {unit}, ratio "
                f"{cost[key] / limit[key]:.2f}; on a reused circuit: "
                f"{reused[key] * scale:.1f} {unit}")
    res.add("probe wall p95", f"{cost['p95_s'] * 1000:.0f} ms",
            f"raw p95 {limit['p95_s'] * 1000:.0f} ms (new circuit), "
            f"{reused['p95_s'] * 1000:.0f} ms (reused)")
    by_cpu = PROBE_INTERVAL / cost["cpu_s"]
    from nyth_discovery.prober import CONCURRENCY

    by_wait = PROBE_INTERVAL * CONCURRENCY / cost["median_s"]
    res.add(f"servers kept measured at {PROBE_INTERVAL:.0f} s", f"{min(by_cpu, by_wait):,.0f}",
            f"CPU-bound (one core) {by_cpu:,.0f}; concurrency-bound ({CONCURRENCY} at once) "
            f"{by_wait:,.0f}; {cost['bytes'] * 3600 / PROBE_INTERVAL / 1e3:.0f} KB over Tor "
            "per server per hour")


def _entries(n: int, now: int) -> tuple[Entry, ...]:
    made = []
    for i in range(n):
        server = Identity.generate()
        bundle = ServerBundle(server.public_key, bytes(32), 2048, 100_000, 14 * 86400,
                              now).sign(server)
        made.append(Entry(ServerKind.GROUP_SERVER, bundle, f"operator {i % 50}", now - 86400,
                          now + 86400, probes=20, probes_ok=19 - i % 3, consecutive_failures=0,
                          last_probe_at=now - 30, last_ok_at=now - 30,
                          latency_p50_ms=800 + i % 400, latency_p95_ms=2500 + i % 900,
                          audit=AuditState.KEPT, audits_passed=3, audit_at=now - 600))
    return discovery.sorted_entries(made)


def _give_directory(net: Devnet, index: Identity, directory: bytes, epoch: int,
                    server_onion: str, group_key: bytes, group_id: bytes) -> int:
    """The directory into the index's Redis (as if issued) and, chunked, into the
    directory group on the group server; returns the number of chunks."""
    import redis.asyncio as aioredis
    from nyth.group_server_client import GroupServerClient, TokenPurse
    from nyth_discovery.storage import DiscoveryStore, StoredDirectory, set_digest

    assert net.redis is not None and net.gateway is not None
    chunks = discovery.chunk_directory(directory, epoch)
    socks = SocksEndpoint(net.gateway.socks.host, net.gateway.socks.port)

    async def store() -> None:
        assert net.redis is not None
        redis = aioredis.Redis.from_url(net.redis.url_for_db(net.redis_db))
        try:
            await DiscoveryStore(redis, key_prefix="nyth:discovery", max_entries=ENTRIES,
                                 probe_window=20).save_directory(
                StoredDirectory(directory, epoch, set_digest([f"bench-{epoch}"])))
        finally:
            await redis.aclose()

    async def post() -> None:
        purse = TokenPurse()
        async with onion_http_client(socks, timeout=60.0) as http:
            gs = GroupServerClient(http, server_onion)
            bundle = await gs.bundle()
            for chunk in chunks:
                blob, _ = seal_group_data(index, group_key, group_id, kind=GroupKind.DIRECTORY,
                                          timestamp_ms=int(time.time() * 1000), parents=(),
                                          data=chunk.encode())
                await gs.post_blob(blob, await purse.take(gs, bundle))
    asyncio.run(store())
    asyncio.run(post())
    return len(chunks)


def _refresh_until(peer: PeerHandle, epoch: int, source: str) -> float:
    started = time.perf_counter()
    with peer.client(timeout=300) as c:
        def holds() -> bool:
            view = c.post("/v1/discovery/refresh")
            return any(i["epoch"] == epoch and i["source"] == source for i in view["indexes"])
        wait_until(holds, 180, interval=0.2, what=f"{peer.name} to hold epoch {epoch} "
                                                   f"from the {source}",
                   state=lambda: c.get("/v1/discovery")["indexes"])
    return time.perf_counter() - started


def run() -> Results:
    res = Results("discovery index: probes and directory sync (devnet, private Tor)")
    base = workdir("discovery")
    net = Devnet(base / "devnet")
    try:
        net.start_infrastructure()
        index_onion = net.index_onion()
        server = net.add_group_server(NYTH_MAX_BLOBS="100000")
        server_onion = server.wait_online()
        # The index issues once at start and then not for an hour, so the benchmark's
        # directory stays the one served; it probes rarely, so its traffic stays out.
        index = net.add_discovery(directory_servers=[server_onion],
                                  NYTH_DIRECTORY_INTERVAL_SECONDS="3600",
                                  NYTH_PUBLISH_INTERVAL_SECONDS="3600",
                                  NYTH_PROBE_INTERVAL_SECONDS="3600")
        peers = [net.add_peer(name, NYTH_DISCOVERY_INDEXES=index_onion,
                              NYTH_DISCOVERY_REFRESH_SECONDS="3600")
                 for name in ("from-index", "from-group")]
        index.wait_online()
        for peer in peers:
            peer.wait_online()
        _probe_cost(net, server_onion, res)
        _sync(net, index, server_onion, peers, res)
    finally:
        net.stop()
    return res


def _sync(net: Devnet, index_handle: Any, server_onion: str, peers: list[PeerHandle],
          res: Results) -> None:
    index = net.service_identity("discovery", DISCOVERY_KEY_FILE)
    bundle = discovery.IndexBundle.verify(
        (net.base_dir / "discovery" / "index_bundle.bin").read_bytes())
    from_index, from_group = peers
    for peer in peers:  # both pin the index and hold its first directory
        with peer.client(timeout=300) as c:
            wait_until(lambda c=c: any(i["epoch"] for i in
                                       c.post("/v1/discovery/refresh")["indexes"]),
                       120, interval=1, what="the first directory")
    now = int(time.time())
    entries = _entries(ENTRIES, now)
    index_times, group_times = [], []
    chunks = size = 0
    for round_ in range(SYNC_ROUNDS):
        epoch = int(time.time() * 1000) + 10**9 + round_
        signed = Directory(index.public_key, epoch, now, now + 86400, entries).sign(index)
        size = len(signed)
        if round_:
            # Started before it gets the directory: an index issues one of its own at start.
            index_handle.process.start()
            index_handle.wait_online()
        chunks = _give_directory(net, index, signed, epoch, server_onion, bundle.group_key,
                                 bundle.directory_group_id)
        index_times.append(_refresh_until(from_index, epoch, "index"))
        index_handle.process.stop()
        group_times.append(_refresh_until(from_group, epoch, "directory group"))
    index_s, group_s = statistics.median(index_times), statistics.median(group_times)
    res.add(f"directory of {ENTRIES} entries", f"{size / 1000:.0f} KB",
            f"{chunks} chunks = {chunks} group messages of 2048 bytes")
    res.add("sync from the directory group", f"{group_s:.1f} s",
            f"median of {SYNC_ROUNDS}: {', '.join(f'{t:.1f}' for t in group_times)}")
    res.add("sync straight from the index", f"{index_s:.1f} s",
            f"median of {SYNC_ROUNDS}: {', '.join(f'{t:.1f}' for t in index_times)}")
    res.add("group / index", f"{group_s / index_s:.2f}", "ratio of the medians")
    res.note(f"probe figures: {PROBES} sequential calls each; CPU is this process's "
             f"(os.cpu_count()={os.cpu_count()})")
