"""FMD detection over all cores: stored tags tested against a delegated key in worker
processes.

A non-matching test is ~2 rbcl scalar multiplications (C, ≈ 100 µs), but the loop around
them (decode, hash, compare) is Python and holds the GIL: threads would run it on one
core at a time. So the work goes to a pool of processes, in chunks large enough that the
IPC (a pickled list of 100-byte tags and a list of booleans back, ≈ 0.1 ms) is small
next to the tests themselves (≥ 64 tests, ≈ 6 ms).

With one worker nothing is spawned: the pass runs in a thread of the service's own
process, as it always did. `match_tags` is the one function both paths run, so the
results of 1 and N workers are the same by construction (and tested to be).

This module is what worker processes import: it needs nyth.proto.fmd only, never the
web app.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nyth.proto.fmd import DetectionKey

log = logging.getLogger(__name__)

# (tag, W stored at ingest or None for records older than that)
Item = tuple[bytes, bytes | None]

# Tests per task at least: IPC per task is ≈ 0.1 ms, 64 tests ≈ 6 ms.
MIN_CHUNK = 64
MAX_WORKERS = 256
# Chunks submitted and not finished, per worker: one running, one queued behind it so a
# worker never waits on the event loop; anything more would only be memory.
PENDING_PER_WORKER = 2
# How soon a worker notices that the service is gone (see _watch_parent).
PARENT_POLL_SECONDS = 0.5


def default_workers() -> int:
    """The cores this process may run on (a cpuset or taskset counts, unlike cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@functools.lru_cache(maxsize=64)
def _key(raw: bytes) -> DetectionKey:
    from nyth.proto import fmd

    return fmd.DetectionKey.decode(raw)


def _watch_parent(parent: int) -> None:
    """In each worker: exit once the service is gone. A worker blocks reading its task
    queue, and holds that queue's write end itself, so a SIGKILLed service would leave it
    waiting forever as an orphan; re-parenting is what shows the service died."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(0)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def match_tags(key: bytes, items: Sequence[Item]) -> list[bool]:
    """For each (tag, W) whether it passes the encoded detection key: the detection pass
    itself, the same in the service's process and in a worker."""
    from nyth.proto import fmd

    dk = _key(key)
    decode_tag, test = fmd.decode_tag, fmd.test
    out = []
    for tag, w in items:
        try:
            # W stored at ingest: a non-matching test is then ~2 scalar multiplications.
            # Tags were validated at ingest; only records with a stored W skip the re-check.
            out.append(bool(test(dk, decode_tag(tag, w=w, validated=w is not None))))
        except ValueError:  # a tag stored before validation existed; never a match
            out.append(False)
    return out


def split(count: int, workers: int, min_chunk: int = MIN_CHUNK) -> list[tuple[int, int]]:
    """[start, end) ranges covering range(count) in order: one per worker where each gets
    at least min_chunk items, fewer (down to one) where it would not; sizes differ by at
    most one, so no worker finishes long after the others."""
    if count <= 0:
        return []
    parts = max(1, min(workers, count // max(1, min_chunk)))
    base, extra = divmod(count, parts)
    ranges, start = [], 0
    for i in range(parts):
        end = start + base + (1 if i < extra else 0)
        ranges.append((start, end))
        start = end
    return ranges


class PoolBroken(Exception):
    """The worker pool broke (a worker was killed) and is being replaced: retry later."""


class DetectionPool:
    """Runs `match_tags` over chunks of a page, on `workers` processes (or, with one, in a
    thread of this process). At most PENDING_PER_WORKER chunks per worker are submitted
    and unfinished at any time: callers wait their turn here, not in an unbounded queue."""

    def __init__(self, workers: int) -> None:
        if not 1 <= workers <= MAX_WORKERS:
            raise ValueError(f"workers must be 1..{MAX_WORKERS}")
        self.workers = workers
        self._slots = asyncio.Semaphore(workers * PENDING_PER_WORKER)
        self._thread_turn = asyncio.Lock()
        self._executor: concurrent.futures.ProcessPoolExecutor | None = (
            self._new_executor() if workers > 1 else None)
        self._closed = False

    def _new_executor(self) -> concurrent.futures.ProcessPoolExecutor:
        # spawn, not fork: the service has threads (uvicorn, redis, to_thread) by now, and
        # a forked child of a threaded process can inherit a lock held forever.
        return concurrent.futures.ProcessPoolExecutor(
            self.workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_watch_parent, initargs=(os.getpid(),))

    async def match(self, key: bytes, items: Sequence[Item]) -> list[bool]:
        if self._closed:
            raise PoolBroken("the detection pool is shut down")
        if self._executor is None:
            # One worker is one thread: callers take turns, never two passes at once.
            async with self._thread_turn:
                return await asyncio.to_thread(match_tags, key, items)
        ranges = split(len(items), self.workers)
        parts = await asyncio.gather(*(self._run(key, list(items[a:b])) for a, b in ranges))
        return [hit for part in parts for hit in part]

    async def _run(self, key: bytes, chunk: list[Item]) -> list[bool]:
        executor = self._executor
        assert executor is not None
        loop = asyncio.get_running_loop()
        await self._slots.acquire()
        try:
            future = executor.submit(match_tags, key, chunk)
        except BaseException as exc:
            self._slots.release()
            if isinstance(exc, BrokenProcessPool):
                self._replace(executor)
                raise PoolBroken("a detection worker died; retry") from None
            raise

        # The slot is held until the work is really over, not until this caller stops
        # waiting (a cancelled request's chunk may still be running in a worker).
        def release(_done: concurrent.futures.Future[list[bool]]) -> None:
            try:
                loop.call_soon_threadsafe(self._slots.release)
            except RuntimeError:  # the loop is closed: nobody is left to wait
                pass

        future.add_done_callback(release)
        try:
            return await asyncio.wrap_future(future)
        except BrokenProcessPool:
            self._replace(executor)
            raise PoolBroken("a detection worker died; retry") from None

    def _replace(self, broken: concurrent.futures.ProcessPoolExecutor) -> None:
        """A killed worker breaks the whole executor for good: start a fresh one (once,
        however many chunks saw the same breakage)."""
        if self._executor is not broken or self._closed:
            return
        log.warning("a detection worker process died; starting a new pool")
        broken.shutdown(wait=False, cancel_futures=True)
        self._executor = self._new_executor()

    async def close(self) -> None:
        """Stop the workers and wait for them to exit (queued chunks are cancelled)."""
        self._closed = True
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
