"""Mailbox detection end to end: POST /v1/detect on a real mailbox process, vs the FMD limit.

One redis-server (nyth.runtime.redis_server.RedisServer) and real ``python -m nyth_mailbox``
processes on it, reached over local HTTP (no Tor). Each stream is filled straight into
Redis in the storage layer's format (pipelined XADD of {"r": tag ‖ ciphertext, "w": W}),
with well-formed tags for other keys (uniform U, y, c: to a detector these are exactly
like tags flagged to another key, without 1.4 ms of ``flag`` each) plus a few tags flagged
to the recipient. A second stream holds the same records without "w" (the format before W
was stored): detection then recomputes W on every test.

A client then scans everything with a delegated key at n = 8 and n = 24 (POST /v1/detect,
paging while ``more``; one request at a time, so the server's tests run on one core).
Reported: tests per second of wall time and per CPU-second of the mailbox process (read
from /proc, so the client's CPU does not count), as a ratio to the limit measured in the
same run: the raw variable-base scalar-multiplication rate of rbcl / 2 (a non-matching
test needs ~2 multiplications x_i·U on average), re-measured just before each scan.
These processes run detection with one worker (NYTH_DETECT_WORKERS=1, in a thread of the
process), so the figures are per core.

Cores: two more mailbox processes on the same stored records, one with 1 detection
worker, pinned to one core (every thread), and one with one worker per core (the
default: worker processes, nyth_mailbox.detection), scan everything at n = 8,
alternately (1, N, N, 1, 1, N; the best of each kept). Reported: wall-clock tests/s of
each and their ratio (goal on 2 cores: >= 1.8x).
"""

from __future__ import annotations

import base64
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx
import rbcl
import redis
from nyth.proto import fmd
from nyth.proto.mailbox_record import RECOMMENDED_RECORD_SIZE
from nyth.runtime.redis_server import RedisServer
from nyth_mailbox.launch import MailboxProcess
from nyth_mailbox.storage import RECORD_FIELD, W_FIELD

from benchmarks.common import Results, workdir
from benchmarks.fmd import _rate

# The mailbox's default: what a deployment stores.
RECORD_SIZE = RECOMMENDED_RECORD_SIZE
RECORDS = 10_000
MINE = 5
POSTS = 300
STORED = "bench:mb"
LEGACY = "bench:mb-legacy"
_CLK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK


def _other_tag() -> bytes:
    u = rbcl.crypto_core_ristretto255_random()
    y = rbcl.crypto_core_ristretto255_scalar_random()
    return u + y + os.urandom(fmd.C_SIZE)


def _fill(r: redis.Redis, pk: fmd.FmdPublicKey) -> tuple[float, float]:
    """Both streams, same records; returns (tags/s making W, records/s filled)."""
    mine_at = {RECORDS * (i + 1) // (MINE + 1) for i in range(MINE)}
    tags = [bytes(fmd.flag(pk)) if i in mine_at else _other_tag() for i in range(RECORDS)]
    started = time.perf_counter()
    ws = [fmd.decode_tag(t).w for t in tags]
    w_rate = RECORDS / (time.perf_counter() - started)
    started = time.perf_counter()
    for start in range(0, RECORDS, 500):
        pipe = r.pipeline(transaction=False)
        for tag, w in zip(tags[start:start + 500], ws[start:start + 500], strict=True):
            record = tag + os.urandom(RECORD_SIZE)
            pipe.xadd(f"{STORED}:records", {RECORD_FIELD: record, W_FIELD: w})
            pipe.xadd(f"{LEGACY}:records", {RECORD_FIELD: record})
        pipe.execute()
    return w_rate, RECORDS / (time.perf_counter() - started)


def _scan(client: httpx.Client, pid: int, key: fmd.DetectionKey) -> tuple[int, int, float, float]:
    """Detect over everything: (scanned, matches, wall s, server CPU s)."""
    body = {"detection_key": base64.b64encode(key.encode()).decode(), "after": "0",
            "limit": 100_000}
    scanned = matches = 0
    cpu0, started = _cpu_seconds(pid), time.perf_counter()
    while True:
        response = client.post("/v1/detect", json=body)
        response.raise_for_status()
        page = response.json()
        scanned += page["scanned"]
        matches += len(page["records"])
        body["after"] = page["next"]
        if not page["more"]:
            break
    return scanned, matches, time.perf_counter() - started, _cpu_seconds(pid) - cpu0


def _tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and of its live children (the detection workers)."""
    total = _cpu_seconds(pid)
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                total += _cpu_seconds(int(child))
            except FileNotFoundError:  # exited meanwhile
                pass
    return total


def _mults_for(seconds: float) -> float:
    """Raw variable-base multiplications per second in this process, over seconds."""
    s = rbcl.crypto_core_ristretto255_scalar_random()
    p = rbcl.crypto_core_ristretto255_random()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(100):
            rbcl.crypto_scalarmult_ristretto255(s, p)
        count += 100
    return count / (time.perf_counter() - started)


def _raw_scaling(workers: int) -> tuple[float, float]:
    """The limit for the cores comparison: raw multiplications per second in 1 process,
    and in `workers` processes at once (vCPUs of a VM need not scale linearly)."""
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(_mults_for, 0.1).result()  # spawned and warm
        one = pool.submit(_mults_for, 2.0).result()
        many = sum(pool.map(_mults_for, [2.0] * workers))
    return one, many


def _pin(pid: int, cpu: int) -> None:
    """Every thread of a process onto one CPU (affinity is per thread)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), {cpu})


def _cores(res: Results, base_dir: Path, redis_url: str, env: dict[str, str],
           key: fmd.DetectionKey) -> None:
    workers = len(os.sched_getaffinity(0))
    procs: dict[int, MailboxProcess] = {}
    try:
        for count in (1, workers):
            proc = MailboxProcess(base_dir / f"cores-{count}", redis_url=redis_url,
                                  stream_key=STORED, env={**env, "NYTH_DETECT_WORKERS": str(count)},
                                  name=f"mailbox-{count}w")
            procs[count] = proc
            proc.start()
        # "1 core" means one core: with one worker the tests run in a thread, and the
        # event loop (HTTP, XRANGE of the next page) could otherwise run beside it on the
        # second core. Redis and this client stay free to use either core in both cases.
        _pin(procs[1].pid or 0, min(os.sched_getaffinity(0)))
        rates: dict[int, list[float]] = {1: [], workers: []}
        cpu: dict[int, float] = {}
        clients = {count: httpx.Client(base_url=proc.base_url, trust_env=False, timeout=120)
                   for count, proc in procs.items()}
        try:
            for count in procs:
                _scan(clients[count], procs[count].pid or 0, key)  # warm-up: spawns workers
            _pin(procs[1].pid or 0, min(os.sched_getaffinity(0)))  # threads made meanwhile
            for count in (1, workers, workers, 1, 1, workers):
                pid = procs[count].pid or 0
                cpu0 = _tree_cpu_seconds(pid)
                scanned, _matches, wall, _cpu = _scan(clients[count], pid, key)
                cpu[count] = _tree_cpu_seconds(pid) - cpu0
                rates[count].append(scanned / wall)
        finally:
            for client in clients.values():
                client.close()
        one, many = max(rates[1]), max(rates[workers])
        raw_one, raw_many = _raw_scaling(workers)
        res.add(f"limit: raw scalar mults, 1 process / {workers} at once",
                f"{raw_one:,.0f}/s / {raw_many:,.0f}/s",
                f"ratio {raw_many / raw_one:.2f}: what {workers} cores give at best")
        for count, rate in ((1, one), (workers, many)):
            res.add(f"detect n= 8, {count} worker{'s' if count > 1 else ' (1 core)'}",
                    f"{rate:,.0f} tests/s",
                    "wall, best of 3 (" + ", ".join(f"{r:,.0f}" for r in rates[count])
                    + f"); last scan used {cpu[count]:.1f} CPU-s (process + workers)")
        res.add(f"ratio {workers} workers / 1 worker", f"{many / one:.2f}",
                f"{workers} usable cores; goal on 2 cores >= 1.8; "
                f"{(many / one) / (raw_many / raw_one):.2f}x the raw ratio")
    finally:
        for proc in procs.values():
            proc.stop()


def _posts(client: httpx.Client, pk: fmd.FmdPublicKey) -> float:
    bodies = [{"tag": base64.b64encode(fmd.flag(pk)).decode(), "nonce": 0,
               "ciphertext": base64.b64encode(os.urandom(RECORD_SIZE)).decode()}
              for _ in range(POSTS)]
    started = time.perf_counter()
    for body in bodies:
        client.post("/v1/records", json=body).raise_for_status()
    return POSTS / (time.perf_counter() - started)


def run() -> Results:
    res = Results(f"mailbox detection (local HTTP, no Tor; {RECORDS:,} records)")
    base_dir = workdir("mailbox")
    redis_server = RedisServer(base_dir / "redis")
    procs: list[MailboxProcess] = []
    try:
        redis_server.start()
        s = rbcl.crypto_core_ristretto255_scalar_random()
        p = rbcl.crypto_core_ristretto255_random()

        def mult() -> None:
            rbcl.crypto_scalarmult_ristretto255(s, p)

        var = _rate(mult)
        limit = var / 2
        res.add("rbcl scalar mult (variable base)", f"{var:,.0f}/s", "this run")
        res.add("limit: non-matching test = 2 scalar mults", f"{limit:,.0f}/s", "rate / 2")

        recipient = fmd.FmdSecretKey.generate()
        with redis.Redis.from_url(redis_server.url) as r:
            w_rate, fill_rate = _fill(r, recipient.public_key())
        res.add("W = y·U + m·B at ingest", f"{w_rate:,.0f}/s", "once per record, 32 bytes stored")
        res.add("fill (pipelined XADD, both streams)", f"{fill_rate:,.0f}/s")

        env = {"NYTH_RECORD_SIZE": str(RECORD_SIZE), "NYTH_POW_BITS": "0",
               "NYTH_LOG_LEVEL": "warning", "NYTH_MAX_RECORDS": str(10 * RECORDS)}
        for prefix in (STORED, LEGACY):
            proc = MailboxProcess(base_dir / prefix.replace(":", "-"),
                                  redis_url=redis_server.url, stream_key=prefix,
                                  env={**env, "NYTH_DETECT_WORKERS": "1"})
            procs.append(proc)
            proc.start()

        for n in (8, 24):
            key = recipient.extract(n)
            for proc, label in ((procs[0], "W stored"), (procs[1], "no W (old records)")):
                with httpx.Client(base_url=proc.base_url, trust_env=False, timeout=120) as c:
                    _scan(c, proc.pid or 0, key)  # warm-up: imports, connections, caches
                    # The machine is shared: the limit is re-measured right before each scan.
                    limit = _rate(mult, 0.75) / 2
                    scanned, matches, wall, cpu = _scan(c, proc.pid or 0, key)
                if matches < MINE:
                    res.note(f"n={n} {label}: only {matches} of {MINE} true matches found")
                per_cpu = scanned / cpu if cpu > 0 else float("nan")
                res.add(f"detect n={n:>2}, {label}", f"{scanned / wall:,.0f} tests/s",
                        f"wall {wall:.2f} s, {limit / (scanned / wall):.2f}× the limit; "
                        f"{per_cpu:,.0f} per server CPU-s, {limit / per_cpu:.2f}×; "
                        f"{matches} matches ({MINE} true); limit {limit:,.0f}/s")

        with httpx.Client(base_url=procs[0].base_url, trust_env=False, timeout=60) as c:
            posts = _posts(c, recipient.public_key())
        res.add("POST /v1/records incl. W, PoW 0 bits", f"{posts:,.0f}/s",
                f"n={POSTS}, 1 client, AOF fsync each")
        res.note("both processes and the client share the machine's cores; one detect request "
                 "at a time, whose tests run in one worker thread")
        for proc in procs:
            proc.stop()
        print("cores: 1 detection worker vs one per core", flush=True)
        _cores(res, base_dir, redis_server.url, env, recipient.extract(8))
    finally:
        for proc in procs:
            proc.stop()
        redis_server.stop()
        shutil.rmtree(base_dir, ignore_errors=True)
    return res
