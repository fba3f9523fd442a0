"""Group commit of concurrent posts (nyth_group_server.group_commit), without Redis."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nyth.errors import DecodeError
from nyth.runtime.stream_store import Cursor
from nyth_group_server.group_commit import (
    MAX_BATCH,
    Batcher,
    Failed,
    QueueFull,
    Spent,
    batch_limit,
    parse_outcomes,
    script_args,
)


def test_a_lone_post_goes_at_once_alone() -> None:
    b: Batcher[int] = Batcher(max_batch=8)
    b.add(1)
    assert b.take() == [1]
    assert b.in_flight


def test_posts_queue_while_a_round_trip_is_in_flight_then_go_together() -> None:
    b: Batcher[int] = Batcher(max_batch=8)
    b.add(1)
    assert b.take() == [1]
    for i in range(2, 6):
        b.add(i)
    assert b.take() == []  # one round trip at a time
    b.done()
    assert b.take() == [2, 3, 4, 5]
    b.done()
    assert b.take() == []
    assert not b.in_flight  # nothing waited: nothing is in flight


def test_drain_empties_the_queue() -> None:
    b: Batcher[int] = Batcher(max_batch=1)
    for i in range(3):
        b.add(i)
    assert b.take() == [0]
    assert b.drain() == [1, 2]
    assert len(b) == 0


def test_done_without_a_batch_is_a_bug() -> None:
    b: Batcher[int] = Batcher(max_batch=2)
    with pytest.raises(RuntimeError):
        b.done()


def test_the_queue_is_bounded() -> None:
    b: Batcher[int] = Batcher(max_batch=2, max_queued=3)
    for i in range(3):
        b.add(i)
    with pytest.raises(QueueFull):
        b.add(3)
    assert b.take() == [0, 1]
    b.add(3)  # room again
    assert len(b) == 2


@given(st.lists(st.one_of(st.just("take"), st.just("done"), st.integers(0, 10**6)),
                max_size=300),
       st.integers(1, 10))
def test_every_post_is_sent_once_in_order_in_bounded_batches(ops: list[object],
                                                            max_batch: int) -> None:
    b: Batcher[int] = Batcher(max_batch=max_batch, max_queued=10**6)
    added: list[int] = []
    sent: list[int] = []
    for op in ops:
        if op == "take":
            was_in_flight = b.in_flight
            batch = b.take()
            assert len(batch) <= max_batch
            if was_in_flight:
                assert batch == []
            sent += batch
        elif op == "done":
            if b.in_flight:
                b.done()
        else:
            assert isinstance(op, int)
            b.add(op)
            added.append(op)
    while True:  # drain
        if b.in_flight:
            b.done()
        batch = b.take()
        if not batch:
            break
        sent += batch
    assert sent == added


def test_batch_limit_bounds_posts_and_bytes() -> None:
    assert batch_limit(2048) == MAX_BATCH
    assert batch_limit(1 << 16) == 16  # 1 MiB of 64 KiB blobs
    assert batch_limit(1 << 21) == 1  # never zero
    assert batch_limit(10, max_batch=4) == 4


def test_script_args_pair_each_blob_with_its_spend_id() -> None:
    assert script_args(100, [(b"a", None), (b"b", b"spend")]) == [100, b"a", b"", b"b", b"spend"]
    with pytest.raises(ValueError):
        script_args(100, [(b"a", b"")])  # would read as "no token": a free post


def test_outcomes_per_post() -> None:
    raw = [b"5-0", b"S", b"EOOM command not allowed", "6-1"]
    assert parse_outcomes(raw, 4) == [Cursor(5, 0), Spent(), Failed("OOM command not allowed"),
                                      Cursor(6, 1)]


@pytest.mark.parametrize(("raw", "count"), [
    (None, 1), (b"5-0", 1), ([b"5-0"], 2), ([b"5-0", b"6-0"], 1), ([5], 1), ([b"x-y"], 1),
    ([b"\xff"], 1), ([[b"5-0"]], 1),
])
def test_anything_else_is_refused(raw: object, count: int) -> None:
    with pytest.raises(DecodeError):
        parse_outcomes(raw, count)
