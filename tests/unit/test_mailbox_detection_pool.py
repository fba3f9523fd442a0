"""The mailbox's detection over several processes: the same answers as one, bounded, and
no worker outlives the pool or the service."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import rbcl
from hypothesis import given
from hypothesis import strategies as st
from nyth.proto import fmd
from nyth_mailbox.detection import (
    MIN_CHUNK,
    PENDING_PER_WORKER,
    DetectionPool,
    Item,
    PoolBroken,
    match_tags,
    split,
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if _alive(pid)]
        if not alive:
            return []
        time.sleep(0.05)
    return [pid for pid in pids if _alive(pid)]


def _other_tag() -> bytes:
    u = rbcl.crypto_core_ristretto255_random()
    y = rbcl.crypto_core_ristretto255_scalar_random()
    return u + y + os.urandom(fmd.C_SIZE)


@pytest.fixture(scope="module")
def records() -> tuple[fmd.FmdSecretKey, list[Item]]:
    """Every kind of stored record: flagged to the key (with W, and without as older
    records are), for other keys, a wrong stored W, and malformed tags."""
    sk = fmd.FmdSecretKey.generate()
    pk = sk.public_key()
    items: list[Item] = []
    for i in range(300):
        if i % 37 == 0:
            tag = fmd.flag(pk)
            items.append((tag, fmd.decode_tag(tag).w if i % 2 else None))
        elif i % 41 == 0:
            items.append((_other_tag()[:32] + b"\xff" * 32 + bytes(3), None))  # y not canonical
        elif i % 43 == 0:
            items.append((b"short", None))
        elif i % 47 == 0:
            items.append((fmd.flag(pk), bytes(32)))  # wrong W: never a match
        else:
            tag = _other_tag()
            items.append((tag, fmd.decode_tag(tag).w if i % 3 else None))
    return sk, items


def test_match_tags_is_fmd_test(records: tuple[fmd.FmdSecretKey, list[Item]]) -> None:
    sk, items = records
    key = sk.extract(8)
    expected = []
    for tag, w in items:
        try:
            expected.append(fmd.test(key, fmd.decode_tag(tag, w=w)))
        except ValueError:
            expected.append(False)
    got = match_tags(key.encode(), items)
    assert got == expected
    assert sum(got) >= 8  # the flagged ones, plus any false positive at 2^-8


@pytest.mark.parametrize("workers", [2, 3])
async def test_n_workers_find_what_one_finds(
    records: tuple[fmd.FmdSecretKey, list[Item]], workers: int
) -> None:
    sk, items = records
    one, many = DetectionPool(1), DetectionPool(workers)
    try:
        for n in (0, 1, 8, 24):
            key = sk.extract(n).encode()
            for part in (items, items[:MIN_CHUNK + 1], items[:1], []):
                assert await many.match(key, part) == await one.match(key, part)
        assert many._executor is not None and len(many._executor._processes) >= 2
    finally:
        await asyncio.gather(one.close(), many.close())


@given(st.integers(0, 5000), st.integers(1, 64), st.integers(1, 500))
def test_split_covers_everything_in_order_evenly(count: int, workers: int,
                                                 min_chunk: int) -> None:
    ranges = split(count, workers, min_chunk)
    assert [i for a, b in ranges for i in range(a, b)] == list(range(count))
    assert len(ranges) <= workers
    sizes = [b - a for a, b in ranges]
    assert all(size > 0 for size in sizes)
    if len(ranges) > 1:
        assert min(sizes) >= min_chunk
        assert max(sizes) - min(sizes) <= 1
    if count >= workers * min_chunk:
        assert len(ranges) == workers  # enough work: every core gets some


async def test_close_leaves_no_worker_process(
    records: tuple[fmd.FmdSecretKey, list[Item]],
) -> None:
    sk, items = records
    pool = DetectionPool(2)
    await pool.match(sk.extract(4).encode(), items)
    assert pool._executor is not None
    pids = list(pool._executor._processes)
    assert len(pids) == 2
    await pool.close()
    assert _wait_gone(pids) == []
    with pytest.raises(PoolBroken):
        await pool.match(sk.extract(4).encode(), items)


async def test_a_killed_worker_is_refused_once_then_replaced(
    records: tuple[fmd.FmdSecretKey, list[Item]],
) -> None:
    sk, items = records
    key = sk.extract(8).encode()
    pool = DetectionPool(2)
    try:
        expected = await pool.match(key, items)
        assert pool._executor is not None
        old = list(pool._executor._processes)
        os.kill(old[0], signal.SIGKILL)
        assert _wait_gone(old[:1]) == []
        with pytest.raises(PoolBroken):
            # The executor notices the death at the latest when it next hands out work.
            for _ in range(50):
                await pool.match(key, items)
        assert await pool.match(key, items) == expected
        assert _wait_gone(old) == []
    finally:
        await pool.close()


async def test_chunks_in_flight_are_bounded(
    records: tuple[fmd.FmdSecretKey, list[Item]],
) -> None:
    """However many callers, at most PENDING_PER_WORKER chunks per worker are submitted
    and unfinished: the rest wait in the pool, not in the executor's queue."""
    sk, items = records
    pool = DetectionPool(2)
    peak = 0
    try:
        executor = pool._executor
        assert executor is not None
        submit = executor.submit

        def counting_submit(*args: object, **kwargs: object) -> object:
            nonlocal peak
            peak = max(peak, len(executor._pending_work_items) + 1)
            return submit(*args, **kwargs)  # type: ignore[arg-type]

        executor.submit = counting_submit  # type: ignore[method-assign,assignment]
        key = sk.extract(2).encode()
        answers = await asyncio.gather(*(pool.match(key, items) for _ in range(12)))
        assert all(answer == answers[0] for answer in answers)
        assert 2 < peak <= 2 * PENDING_PER_WORKER
    finally:
        await pool.close()


def test_workers_exit_when_the_service_is_killed() -> None:
    """SIGKILL leaves the service no chance to stop its pool: the workers must notice
    (their end of the task pipe closes) and exit on their own, not linger as orphans."""
    script = textwrap.dedent("""
        import asyncio, sys
        from nyth_mailbox.detection import DetectionPool

        async def main():
            pool = DetectionPool(2)
            await pool.match(bytes([1]) + bytes(31), [(bytes(67), None)] * 200)
            print(*pool._executor._processes, flush=True)
            await asyncio.sleep(60)

        asyncio.run(main())
    """)
    service = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                               text=True)
    try:
        assert service.stdout is not None
        pids = [int(pid) for pid in service.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(pid) for pid in pids)
        service.kill()
        service.wait(10)
        assert _wait_gone(pids) == []
    finally:
        if service.poll() is None:
            service.kill()
            service.wait(10)
