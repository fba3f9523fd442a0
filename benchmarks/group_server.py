"""Group server throughput against raw Redis on the same redis-server, same run.

One redis-server (AOF, appendfsync always: nyth.runtime.redis_server.RedisServer, the
configuration the service relies on) and one `python -m nyth_group_server` process on
it, reached over its local HTTP port (no Tor: this isolates the service's own cost).

(a) writes: raw XADD of 2048-byte values from redis-py (sequential; pipelined; and N
    concurrent asyncio clients, which lets redis-server group fsyncs the way it does for
    the service) vs POST /v1/blobs with N concurrent httpx clients, and with N clients of
    a minimal HTTP/1.1 client (asyncio streams): on 2 shared cores httpx costs more CPU
    per request than the server, so its figure measures the client as much as the
    server. The CPU each side used is printed with each rate. Two same-run ceilings
    beside them, both from the minimal client: the HTTP floor (a 404 through the
    service's own stack, no Redis) and a bare post (benchmarks/bare_post.py: uvicorn
    and one redis-py XADD, no framework, no Lua, no live feed), the cheapest post
    any implementation on uvicorn and redis-py can make.
(b)+(c) reads: for 10^3, 10^4, 10^5 stored blobs (filled by pipelined XADD straight into
    the server's stream key), a full read by raw XRANGE pages vs a full read through
    GET /v1/blobs pages, as JSON (base64 decoded by the client) and as binary pages
    (Accept: application/vnd.nyth.blob-page; decoded by nyth.proto.blob_page, as the
    peer does), the binary one read with httpx and with a minimal stdlib client. The
    raw and the binary reads run READ_REPEATS times, alternately, and the fastest of
    each is kept: this VM's speed drifts between seconds, and the best time is the
    least disturbed one of each.
(d) tokens: POST /v1/blobs on a second server process on the same Redis that requires a
    token per post (NYTH_TOKENS_REQUIRED; the server checks each redemption, one
    ristretto255 scalar multiplication, and spends it in the append script) vs posts to
    the first server without tokens, at the same concurrency, same run. The tokens are
    issued and their redemptions computed before the clock starts: issuance and
    redemption against raw scalar multiplications are benchmarks/tokens.py's.
(e) replication: a Redis primary with one replica and three sentinels
    (nyth.runtime.redis_sentinel); two server processes reaching it through the
    sentinels, one acknowledging posts once the primary has them, one only once the
    replica has them too (NYTH_REDIS_WAIT_REPLICAS=1); each as a ratio to raw XADD on
    that primary at the same concurrency, same run.
(f) replicas: 1, 2 and 4 server processes of one server (one data dir, one stream
    prefix) on one Redis primary with one replica (through the sentinels, as (e)), with
    and without WAIT; lean clients send their posts round-robin over the processes'
    ports, as one onion address in front of them spreads its clients over them (an
    even spread, the best case of it). Each rate as a ratio to raw XADD on that
    primary at the same concurrency (measured before and after, the better taken),
    and to the rate of 1 process; with the CPU that clients, servers and Redis used,
    and the append round trips and live-feed reads Redis served per post.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import cast

import httpx
import redis
import redis.asyncio as aioredis
from nyth.ports import free_port
from nyth.proto import blob_page, tokens
from nyth.runtime.process import ManagedProcess, ServiceProcess
from nyth.runtime.redis_sentinel import SentinelCluster
from nyth.runtime.redis_server import RedisServer

from benchmarks.common import Results, workdir

BLOB_SIZE = 2048
STREAM_PREFIX = "bench:gs"          # NYTH_STREAM_KEY; storage.py appends ":blobs"
STREAM_KEY = f"{STREAM_PREFIX}:blobs"
RAW_KEY = "bench:raw:blobs"
PAGE = 1000                         # the server's default max_page
SEQ_WRITES = 2000
PIPE_WRITES = 20000
PIPE_BATCH = 100
HTTP_WRITES = 2000
CONCURRENCY_LEVELS = (1, 4, 16)
LEAN_WARM_UP = 5                    # posts per lean client before the clock starts
REPLICA_COUNTS = (1, 2, 4)
# One client posts one at a time: more server processes cannot serve it faster.
REPLICA_CLIENTS = (4, 16)
SIZES = (1_000, 10_000, 100_000)
READ_REPEATS = 3
BARE_KEY = "bench:bare:blobs"
_CLK = os.sysconf("SC_CLK_TCK")


def _blob() -> bytes:
    return os.urandom(BLOB_SIZE)


def _raw_sequential(r: redis.Redis, n: int) -> float:
    blob = _blob()
    started = time.perf_counter()
    for _ in range(n):
        r.xadd(RAW_KEY, {"b": blob})
    return n / (time.perf_counter() - started)


def _pipelined_fill(r: redis.Redis, key: str, n: int, batch: int = PIPE_BATCH) -> float:
    blob = _blob()
    started = time.perf_counter()
    done = 0
    while done < n:
        step = min(batch, n - done)
        pipe = r.pipeline(transaction=False)
        for _ in range(step):
            pipe.xadd(key, {"b": blob})
        pipe.execute()
        done += step
    return n / (time.perf_counter() - started)


async def _raw_concurrent(url: str, n: int, concurrency: int) -> float:
    client = aioredis.Redis.from_url(url, max_connections=concurrency)
    blob = _blob()
    per = n // concurrency

    async def worker() -> None:
        for _ in range(per):
            await client.xadd(RAW_KEY, {"b": blob})

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    rate = per * concurrency / (time.perf_counter() - started)
    await client.aclose()
    return rate


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK


def _pids(*processes: ManagedProcess) -> list[int]:
    return [pid for pid in (process.pid for process in processes) if pid is not None]


async def _http_posts(base: str, n: int, concurrency: int, blob: bytes | None = None,
                      paid: Iterator[str] | None = None,
                      cpu: dict[str, float] | None = None, server_pid: int = 0) -> float:
    """Posts per second; with paid, each post carries the next redemption (of blob). With
    cpu, it gets the share of one core the client (this process) and the server (its
    pid) used over the timed part: whether the client or the server is the bound."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, trust_env=False,
                                 timeout=30) as client:
        blob = blob or _blob()
        plain = {"content-type": "application/octet-stream"}
        per = n // concurrency

        async def worker() -> None:
            for _ in range(per):
                headers = plain if paid is None else {**plain, "Nyth-Token": next(paid)}
                response = await client.post("/v1/blobs", content=blob, headers=headers)
                if response.status_code != 201:
                    raise RuntimeError(f"POST /v1/blobs -> {response.status_code}")

        await worker()  # warm-up: connections, first request
        client0 = time.process_time()
        server0 = _cpu_seconds(server_pid) if server_pid else 0.0
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
        if cpu is not None:
            cpu["client"] = (time.process_time() - client0) / wall
            if server_pid:
                cpu["server"] = (_cpu_seconds(server_pid) - server0) / wall
        return per * concurrency / wall


async def _lean_posts(bases: Sequence[str], n: int, concurrency: int,
                      cpu: dict[str, float] | None = None,
                      pids: Mapping[str, Sequence[int]] | None = None,
                      *, floor: bool = False) -> float:
    """Posts per second from a minimal HTTP/1.1 keep-alive client (asyncio streams, one
    connection per client and server): what the servers sustain when the load generator
    costs next to nothing, where httpx spends more CPU per request than the server does.

    floor: GET a path no route has instead (a 404 through the same middlewares and
    router, no Redis): the most requests per second this HTTP stack answers at all.

    Each client sends its posts round-robin over bases (starting at its own offset), as
    one onion address in front of several server processes spreads them. With cpu, it
    gets the share of one core this process ("client") and each group of pids used over
    the timed part.
    """
    targets = [base.removeprefix("http://").rsplit(":", 1) for base in bases]
    blob = _blob()
    requests = [(b"POST /v1/blobs HTTP/1.1\r\nhost: %s\r\ncontent-type: "
                 b"application/octet-stream\r\ncontent-length: %d\r\n\r\n"
                 % (host.encode(), len(blob))) + blob for host, _port in targets]
    expected = b"HTTP/1.1 201"
    if floor:
        requests = [b"GET /v1/no-such-path HTTP/1.1\r\nhost: %s\r\n\r\n" % host.encode()
                    for host, _port in targets]
        expected = b"HTTP/1.1 404"
    per = n // concurrency

    async def worker(count: int, offset: int) -> None:
        links = [await asyncio.open_connection(host, int(port)) for host, port in targets]
        try:
            for k in range(count):
                index = (offset + k) % len(links)
                reader, writer = links[index]
                writer.write(requests[index])
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(expected):
                    raise RuntimeError(f"{requests[index][:24]!r} -> {head[:40]!r}")
                length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
        finally:
            for _reader, writer in links:
                writer.close()

    await asyncio.gather(*(worker(LEAN_WARM_UP, i) for i in range(concurrency)))
    groups = dict(pids or {})
    client0 = time.process_time()
    before = {name: sum(map(_cpu_seconds, group)) for name, group in groups.items()}
    started = time.perf_counter()
    await asyncio.gather(*(worker(per, i) for i in range(concurrency)))
    wall = time.perf_counter() - started
    if cpu is not None:
        cpu["client"] = (time.process_time() - client0) / wall
        for name, group in groups.items():
            cpu[name] = (sum(map(_cpu_seconds, group)) - before[name]) / wall
    return per * concurrency / wall


def _raw_full_read(r: redis.Redis, key: str) -> tuple[int, float]:
    started = time.perf_counter()
    count, start = 0, "-"
    while True:
        # redis-py types the reply loosely (Optional, str | bytes); without decode_responses
        # a sync XRANGE returns a list of (id, fields) with bytes throughout
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]],
                       r.xrange(key, min=start, max="+", count=PAGE))
        for _id, fields in entries:
            count += len(fields[b"b"]) // BLOB_SIZE
        if len(entries) < PAGE:
            break
        start = "(" + entries[-1][0].decode()
    return count, time.perf_counter() - started


def _api_full_read(client: httpx.Client) -> tuple[int, float]:
    started = time.perf_counter()
    count, after = 0, "0"
    while True:
        page = client.get("/v1/blobs", params={"after": after, "limit": PAGE}).json()
        for item in page["blobs"]:
            count += len(base64.b64decode(item["blob"])) // BLOB_SIZE
        after = page["next"]
        if not page["more"]:
            break
    return count, time.perf_counter() - started


def _binary_full_read(fetch: Callable[[str], bytes]) -> tuple[int, float]:
    """Every blob through binary pages; fetch(after) answers one page's body."""
    started = time.perf_counter()
    count, after = 0, "0"
    while True:
        page = blob_page.decode_page(fetch(after), blob_size=BLOB_SIZE, max_count=PAGE)
        count += len(page.blobs)
        after = str(page.next)
        if not page.more:
            break
    return count, time.perf_counter() - started


def _api_full_read_binary(client: httpx.Client) -> tuple[int, float]:
    headers = {"accept": blob_page.MEDIA_TYPE}
    return _binary_full_read(lambda after: client.get(
        "/v1/blobs", params={"after": after, "limit": PAGE}, headers=headers).content)


def _api_full_read_binary_lean(base: str) -> tuple[int, float]:
    """The binary full read from a minimal client (the standard library's keep-alive
    HTTP/1.1 connection): what the server sustains when the reader costs next to
    nothing, where httpx spends ≈ 40 % more time per 2 MB page than http.client."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)

    def fetch(after: str) -> bytes:
        connection.request("GET", f"/v1/blobs?after={after}&limit={PAGE}",
                           headers={"accept": blob_page.MEDIA_TYPE})
        answer = connection.getresponse()
        if answer.status != 200:
            raise RuntimeError(f"binary page: HTTP {answer.status}")
        return answer.read()

    try:
        return _binary_full_read(fetch)
    finally:
        connection.close()


def _fastest_of(*reads: Callable[[], tuple[int, float]]) -> list[tuple[int, float]]:
    """Each full read READ_REPEATS times, in turn: per read, the fewest blobs any of its
    runs got (so a short read is reported) and the fastest run's seconds."""
    runs: list[list[tuple[int, float]]] = [[] for _ in reads]
    for _ in range(READ_REPEATS):
        for index, read in enumerate(reads):
            runs[index].append(read())
    return [(min(n for n, _ in done), min(t for _, t in done)) for done in runs]


def _start_server(base_dir: Path, name: str, redis_url: str | None, prefix: str,
                  data_dir: str | None = None, **env: str) -> tuple[ServiceProcess, str]:
    """A server process; those given the same data_dir are replicas of one server (one
    key, one bundle) when they also share the prefix."""
    port = free_port()
    secret = base_dir / "passphrase"
    if not secret.exists():
        secret.write_text("bench-passphrase")
        secret.chmod(0o600)
    process = ServiceProcess.python_module(
        name, "nyth_group_server",
        {"NYTH_DATA_DIR": str(base_dir / (data_dir or name)), "NYTH_LISTEN_PORT": str(port),
         "NYTH_STREAM_KEY": prefix,
         # None: env names the sentinels instead.
         **({"NYTH_REDIS_URL": redis_url} if redis_url is not None else {}),
         "NYTH_KEY_PASSPHRASE_FILE": str(secret), "NYTH_LOG_LEVEL": "warning", **env},
        health_url=f"http://127.0.0.1:{port}/healthz", log_path=base_dir / f"{name}.log")
    process.start()
    return process, f"http://127.0.0.1:{port}"


def _start_bare(base_dir: Path, redis_url: str) -> tuple[ServiceProcess, str]:
    """benchmarks/bare_post.py under uvicorn, as the services run (h11, asyncio)."""
    port = free_port()
    process = ServiceProcess(
        "bare-post", [sys.executable, "-m", "uvicorn", "benchmarks.bare_post:app",
                      "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
                      "--no-server-header", "--no-proxy-headers", "--lifespan", "on"],
        {"NYTH_REDIS_URL": redis_url, "BARE_POST_KEY": BARE_KEY},
        health_url=f"http://127.0.0.1:{port}/healthz", log_path=base_dir / "bare-post.log",
        cwd=Path(__file__).resolve().parent.parent)
    process.start()
    return process, f"http://127.0.0.1:{port}"


def _redemptions(base: str, blob: bytes, n: int) -> list[str]:
    """n tokens from the server at base, each redeemed for blob (as base64 headers)."""
    from nyth.proto.bundle import ServerBundle

    with httpx.Client(base_url=base, trust_env=False, timeout=60) as client:
        bundle = ServerBundle.verify(base64.b64decode(client.get("/v1/bundle").json()["bundle"]))
        out: list[str] = []
        while len(out) < n:
            pending = tokens.prepare_issue(min(tokens.MAX_BATCH, n - len(out)))
            nonce = tokens.solve_issue_pow(bundle.token_public_key, pending.blinded,
                                           bundle.token_pow_bits)
            answer = client.post("/v1/tokens", json={
                "issue_request": base64.b64encode(pending.request(nonce).encode()).decode()})
            answer.raise_for_status()
            batch = tokens.finalize_batch(bundle.token_public_key, pending,
                                          base64.b64decode(answer.json()["issue_response"]))
            out += [base64.b64encode(tokens.redeem(t, blob)).decode() for t in batch]
    return out


def _token_posts(res: Results, plain_base: str, paid_base: str) -> None:
    """(d): posts with a token vs without, per concurrency level, in the same run: each
    measured twice, in the order plain, paid, paid, plain (so drift hits both alike),
    and the better of the two taken."""
    print("(d) posts with tokens", flush=True)
    for level in CONCURRENCY_LEVELS:
        blob = _blob()
        per = HTTP_WRITES // level
        paid = iter(_redemptions(paid_base, blob, 2 * (per * level + per)))  # + warm-ups
        plain_rates, paid_rates = [], []
        for with_token in (False, True, True, False):
            if with_token:
                paid_rates.append(asyncio.run(
                    _http_posts(paid_base, HTTP_WRITES, level, blob, paid)))
            else:
                plain_rates.append(asyncio.run(_http_posts(plain_base, HTTP_WRITES, level, blob)))
        plain, with_tokens = max(plain_rates), max(paid_rates)
        res.add(f"API POST /v1/blobs with a token, {level:>2} clients", f"{with_tokens:,.0f}/s",
                f"n={HTTP_WRITES} x2 (" + ", ".join(f"{r:,.0f}" for r in paid_rates) + ")")
        res.add(f"API POST /v1/blobs without,      {level:>2} clients", f"{plain:,.0f}/s",
                f"n={HTTP_WRITES} x2 (" + ", ".join(f"{r:,.0f}" for r in plain_rates) + ")")
        res.add(f"ratio with tokens / without at {level:>2} clients",
                f"{with_tokens / plain:.3f}", "goal >= 0.8")
    res.note("(d) tokens are issued and redeemed before timing; the server's check is one "
             "VOPRF evaluation (hash to group + scalar multiplication) per post")


def _replicated_posts(res: Results, base_dir: Path) -> None:
    """(e): posts with and without WAIT on a primary with one replica."""
    print("(e) posts acknowledged on a replica (WAIT)", flush=True)
    cluster = SentinelCluster(base_dir / "redis-ha")
    processes: list[ServiceProcess] = []
    try:
        cluster.start()
        bases = {}
        for wait in (0, 1):
            proc, bases[wait] = _start_server(
                base_dir, f"gs-wait{wait}", None, f"bench:gs-wait{wait}",
                NYTH_REDIS_WAIT_REPLICAS=str(wait), NYTH_MAX_BLOBS=str(10 * HTTP_WRITES),
                **cluster.redis_env())
            processes.append(proc)
        for level in CONCURRENCY_LEVELS:
            raw = asyncio.run(_raw_concurrent(cluster.primary.url, HTTP_WRITES, level))
            rates: dict[int, list[float]] = {0: [], 1: []}
            for wait in (0, 1, 1, 0):  # so drift hits both alike
                rates[wait].append(asyncio.run(_http_posts(bases[wait], HTTP_WRITES, level)))
            for wait, label in ((0, "no WAIT"), (1, "WAIT 1 ")):
                best = max(rates[wait])
                res.add(f"API POST via Sentinel, {label}, {level:>2} clients", f"{best:,.0f}/s",
                        f"n={HTTP_WRITES} x2 ("
                        + ", ".join(f"{r:,.0f}" for r in rates[wait]) + ")")
                res.add(f"ratio ({label}) / raw XADD on the primary at {level:>2} clients",
                        f"{best / raw:.3f}", f"raw {raw:,.0f}/s")
            res.add(f"ratio WAIT 1 / no WAIT at {level:>2} clients",
                    f"{max(rates[1]) / max(rates[0]):.3f}")
        res.note("(e) primary, replica and sentinels are local processes on the same 2 cores; "
                 "WAIT costs one replication round trip on loopback")
    finally:
        for proc in processes:
            proc.stop()
        cluster.stop()


# posts/s; the CPU share of each group of processes; Redis calls per post
Sample = tuple[float, dict[str, float], dict[str, float]]


def _calls_per_post(url: str, posts: int) -> dict[str, float]:
    """Since the last CONFIG RESETSTAT: append round trips (a group commit carries several
    posts) and live-feed reads (every server process reads every burst of posts)."""
    with redis.Redis.from_url(url) as r:
        stats = r.info("commandstats")

    def calls(*names: str) -> float:
        return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in names) / posts

    return {"appends": calls("eval", "evalsha"), "feed reads": calls("xrange")}


def _replica_samples(base_dir: Path, cluster: SentinelCluster,
                     count: int) -> dict[tuple[int, int], list[Sample]]:
    """By (wait, clients): count replicas per wait setting, each measured twice (no WAIT,
    WAIT, WAIT, no WAIT, so drift hits both alike)."""
    sets: dict[int, list[tuple[ServiceProcess, str]]] = {0: [], 1: []}
    # Its own prefix per set: every process of a prefix follows its live feed (one
    # XRANGE per burst of posts), so replicas of another set would still cost CPU.
    names = {wait: f"gs-r{count}-wait{wait}" for wait in sets}
    try:
        for wait, name in names.items():
            for i in range(count):
                sets[wait].append(_start_server(
                    base_dir, f"{name}-{i}", None, f"bench:{name}", data_dir=name,
                    NYTH_REDIS_WAIT_REPLICAS=str(wait), NYTH_MAX_BLOBS=str(10 * HTTP_WRITES),
                    **cluster.redis_env()))
        pids = {"redis": _pids(cluster.primary, cluster.replica)}
        samples: dict[tuple[int, int], list[Sample]] = {}
        for level in REPLICA_CLIENTS:
            for wait in (0, 1, 1, 0):
                shares: dict[str, float] = {}
                with redis.Redis.from_url(cluster.primary.url) as r:
                    r.config_resetstat()
                rate = asyncio.run(_lean_posts(
                    [base for _proc, base in sets[wait]], HTTP_WRITES, level, cpu=shares,
                    pids={"servers": _pids(*(proc for proc, _base in sets[wait])), **pids}))
                posts = (HTTP_WRITES // level + LEAN_WARM_UP) * level
                samples.setdefault((wait, level), []).append(
                    (rate, shares, _calls_per_post(cluster.primary.url, posts)))
        return samples
    finally:
        for processes in sets.values():
            for proc, _base in processes:
                proc.stop()
        # A small data set keeps the AOF rewrites of later measurements short.
        with redis.Redis.from_url(cluster.primary.url) as r:
            r.delete(*(f"bench:{name}:blobs" for name in names.values()))


def _replica_posts(res: Results, base_dir: Path) -> None:
    """(f): posts to 1, 2 and 4 server processes on one Redis primary, round-robin."""
    print("(f) server replicas on one Redis", flush=True)
    cluster = SentinelCluster(base_dir / "redis-replicas")
    try:
        cluster.start()
        raw: dict[int, list[float]] = {level: [] for level in REPLICA_CLIENTS}

        def measure_raw() -> None:
            for level in REPLICA_CLIENTS:
                raw[level].append(asyncio.run(
                    _raw_concurrent(cluster.primary.url, HTTP_WRITES, level)))
                with redis.Redis.from_url(cluster.primary.url) as r:
                    r.delete(RAW_KEY)

        measure_raw()
        by_count = {count: _replica_samples(base_dir, cluster, count)
                    for count in REPLICA_COUNTS}
        measure_raw()  # before and after: the limit is the better of the two
    finally:
        cluster.stop()
    for level in REPLICA_CLIENTS:
        limit = max(raw[level])
        res.add(f"raw XADD on the primary, {level:>2} clients", f"{limit:,.0f}/s",
                "before / after: " + " / ".join(f"{r:,.0f}" for r in raw[level]))
        for wait, label in ((0, "no WAIT"), (1, "WAIT 1 ")):
            one = max(sample[0] for sample in by_count[1][(wait, level)])
            for count in REPLICA_COUNTS:
                samples = by_count[count][(wait, level)]
                best, shares, calls = max(samples, key=lambda sample: sample[0])
                servers = f"{count} server{'s' if count > 1 else ' '}"
                res.add(f"{servers}, {label}, {level:>2} lean clients", f"{best:,.0f}/s",
                        f"n={HTTP_WRITES} x2 (" + ", ".join(f"{r[0]:,.0f}" for r in samples)
                        + "); best run: CPU of a core "
                        + ", ".join(f"{k} {v:.0%}" for k, v in shares.items())
                        + "; Redis calls per post "
                        + ", ".join(f"{k} {v:.2f}" for k, v in calls.items()))
                res.add(f"  ratio to raw XADD at {level:>2} clients", f"{best / limit:.3f}",
                        f"x{best / one:.2f} the rate of 1 server")
    res.note("(f) clients, servers, Redis primary + replica and sentinels share the same "
             "2 cores: more than 2 server processes cannot add CPU")


def run() -> Results:
    res = Results("group-server (local HTTP, no Tor; redis AOF appendfsync always)")
    base_dir = workdir("gs")
    redis_server = RedisServer(base_dir / "redis")
    process: ServiceProcess | None = None
    paid_process: ServiceProcess | None = None
    bare_process: ServiceProcess | None = None
    try:
        redis_server.start()
        process, base = _start_server(base_dir, "gs", redis_server.url, STREAM_PREFIX)
        bare_process, bare_base = _start_bare(base_dir, redis_server.url)
        paid_process, paid_base = _start_server(
            base_dir, "gs-tokens", redis_server.url, "bench:gs-tokens",
            NYTH_TOKENS_REQUIRED="true", NYTH_TOKEN_POW_BITS="0",
            NYTH_MAX_BLOBS=str(10 * HTTP_WRITES))
        r = redis.Redis.from_url(redis_server.url)

        # -- (a) writes -------------------------------------------------------------------
        print("(a) writes", flush=True)
        seq = _raw_sequential(r, SEQ_WRITES)
        res.add("raw XADD sequential", f"{seq:,.0f}/s", f"n={SEQ_WRITES}, 1 client, 1 fsync each")
        pipe = _pipelined_fill(r, RAW_KEY, PIPE_WRITES)
        res.add("raw XADD pipelined", f"{pipe:,.0f}/s", f"n={PIPE_WRITES}, batches of {PIPE_BATCH}")
        r.delete(RAW_KEY)
        ratios: list[float] = []
        lean_ratios: list[float] = []
        bare_ratios: list[float] = []
        for level in CONCURRENCY_LEVELS:
            conc = asyncio.run(_raw_concurrent(redis_server.url, HTTP_WRITES, level))
            r.delete(RAW_KEY)
            cpu: dict[str, float] = {}
            posts = asyncio.run(_http_posts(base, HTTP_WRITES, level, cpu=cpu,
                                            server_pid=process.pid or 0))
            lean_cpu: dict[str, float] = {}
            lean = asyncio.run(_lean_posts([base], HTTP_WRITES, level, cpu=lean_cpu,
                                           pids={"server": _pids(process)}))
            res.add(f"raw XADD, {level:>2} concurrent clients", f"{conc:,.0f}/s",
                    f"n={HTTP_WRITES}, redis.asyncio")
            res.add(f"API POST /v1/blobs, {level:>2} concurrent clients", f"{posts:,.0f}/s",
                    f"n={HTTP_WRITES}, httpx keep-alive; CPU: client "
                    f"{cpu['client']:.0%}, server {cpu.get('server', 0):.0%} of a core")
            res.add(f"ratio API / raw XADD at {level:>2} clients", f"{posts / conc:.3f}")
            res.add(f"API POST /v1/blobs, {level:>2} lean clients", f"{lean:,.0f}/s",
                    f"n={HTTP_WRITES}, minimal HTTP/1.1 client; CPU: client "
                    f"{lean_cpu['client']:.0%}, server {lean_cpu.get('server', 0):.0%} of a core")
            res.add(f"ratio API (lean client) / raw XADD at {level:>2} clients",
                    f"{lean / conc:.3f}")
            floor = asyncio.run(_lean_posts([base], HTTP_WRITES, level, floor=True))
            res.add(f"HTTP floor (a 404, no Redis), {level:>2} lean clients", f"{floor:,.0f}/s",
                    f"ratio to raw XADD {floor / conc:.3f}: no request through this HTTP "
                    "stack is answered faster")
            bare_cpu: dict[str, float] = {}
            bare = asyncio.run(_lean_posts([bare_base], HTTP_WRITES, level, cpu=bare_cpu,
                                           pids={"server": _pids(bare_process)}))
            r.delete(BARE_KEY)
            res.add(f"bare post (uvicorn + 1 XADD), {level:>2} lean clients", f"{bare:,.0f}/s",
                    f"ratio to raw XADD {bare / conc:.3f}, server "
                    f"{bare_cpu.get('server', 0):.0%} of a core: no post on uvicorn and "
                    f"redis-py is faster; the API's is {lean / bare:.2f} of it")
            ratios.append(posts / conc)
            lean_ratios.append(lean / conc)
            bare_ratios.append(bare / conc)
            if level == 1:
                res.add("ratio API (1 client) / raw sequential XADD", f"{posts / seq:.3f}")
        levels = " / ".join(map(str, CONCURRENCY_LEVELS))
        res.add(f"ratios API / raw XADD at {levels} clients (httpx)",
                " / ".join(f"{x:.2f}" for x in ratios), "goal >= 0.5 at every level")
        res.add(f"ratios API / raw XADD at {levels} clients (lean client)",
                " / ".join(f"{x:.2f}" for x in lean_ratios), "goal >= 0.5 at every level")
        res.add(f"ceiling: bare post / raw XADD at {levels} clients",
                " / ".join(f"{x:.2f}" for x in bare_ratios),
                "uvicorn + redis-py with nothing else: what any API post can reach")
        res.add("ratio API (16 clients) / raw pipelined XADD", f"{posts / pipe:.3f}")
        res.note("client and server share the 2 cores: the httpx client's CPU counts against the API")
        _token_posts(res, base, paid_base)
        r.delete(STREAM_KEY, "bench:gs-tokens:blobs")
        _replicated_posts(res, base_dir)
        _replica_posts(res, base_dir)

        # -- (b)+(c) reads ----------------------------------------------------------------
        print("(b)+(c) reads", flush=True)
        r.delete(STREAM_KEY)
        stored = 0
        with httpx.Client(base_url=base, trust_env=False, timeout=60) as client:
            for size in SIZES:
                fill = _pipelined_fill(r, STREAM_KEY, size - stored, batch=500)
                stored = size
                api_n, api_t = _api_full_read(client)
                (raw_n, raw_t), (bin_n, bin_t), (lean_n, lean_t) = _fastest_of(
                    lambda: _raw_full_read(r, STREAM_KEY),
                    lambda: _api_full_read_binary(client),
                    lambda: _api_full_read_binary_lean(base))
                if raw_n != size or api_n != size or bin_n != size or lean_n != size:
                    res.note(f"size {size}: raw read {raw_n}, API read {api_n} (JSON), "
                             f"{bin_n} (binary), {lean_n} (binary, lean client) blobs")
                res.add(f"{size:>7,} blobs: fetch all via API, JSON", f"{api_t:.2f} s",
                        f"{api_n / api_t:,.0f} blobs/s, {api_n * BLOB_SIZE / api_t / 1e6:.1f} MB/s")
                res.add(f"{size:>7,} blobs: fetch all via API, binary", f"{bin_t:.2f} s",
                        f"{bin_n / bin_t:,.0f} blobs/s, {bin_n * BLOB_SIZE / bin_t / 1e6:.1f} MB/s")
                res.add(f"{size:>7,} blobs: fetch all via raw XRANGE", f"{raw_t:.2f} s",
                        f"{raw_n / raw_t:,.0f} blobs/s (fill {fill:,.0f}/s)")
                res.add(f"{size:>7,} blobs: ratio API JSON rate / raw rate",
                        f"{(api_n / api_t) / (raw_n / raw_t):.2f}")
                res.add(f"{size:>7,} blobs: ratio API binary rate / raw rate",
                        f"{(bin_n / bin_t) / (raw_n / raw_t):.2f}", "goal >= 0.5 (httpx)")
                res.add(f"{size:>7,} blobs: ratio API binary rate / raw rate, lean client",
                        f"{(lean_n / lean_t) / (raw_n / raw_t):.2f}",
                        f"goal >= 0.5; {lean_n * BLOB_SIZE / lean_t / 1e6:.1f} MB/s")
        r.close()
    finally:
        for proc in (process, paid_process, bare_process):
            if proc is not None:
                proc.stop()
        redis_server.stop()
        shutil.rmtree(base_dir, ignore_errors=True)
    return res
