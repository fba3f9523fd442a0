"""The round-trip window (nyth.latency): nearest-rank percentiles of the last samples,
bounded in samples and in keys, refusing what no clock measures."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nyth.latency import LatencyBook, LatencyWindow, nearest_rank

durations = st.floats(min_value=0, max_value=1e7, allow_nan=False, allow_infinity=False)


def test_empty_window_has_no_percentiles() -> None:
    assert LatencyWindow().summary() == {"p50_ms": None, "p95_ms": None, "samples": 0}
    assert LatencyBook().summary("nobody") == {"p50_ms": None, "p95_ms": None, "samples": 0}


def test_nearest_rank_on_known_samples() -> None:
    window = LatencyWindow(size=100)
    for ms in range(1, 101):   # 100..1 ms: the order they came in does not matter
        window.record(float(101 - ms))
    assert window.summary() == {"p50_ms": 50.0, "p95_ms": 95.0, "samples": 100}
    window.record(0.5)         # 100 ms leaves the window
    assert window.summary() == {"p50_ms": 49.0, "p95_ms": 94.0, "samples": 100}
    one = LatencyWindow()
    one.record(812.34)
    assert one.summary() == {"p50_ms": 812.3, "p95_ms": 812.3, "samples": 1}


def test_the_window_keeps_only_the_latest() -> None:
    window = LatencyWindow(size=3)
    for ms in (1000.0, 1000.0, 1000.0, 1.0, 2.0, 3.0):
        window.record(ms)
    assert window.summary() == {"p50_ms": 2.0, "p95_ms": 3.0, "samples": 3}


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, -math.inf])
def test_impossible_durations_are_refused(bad: float) -> None:
    window = LatencyWindow()
    with pytest.raises(ValueError):
        window.record(bad)
    book = LatencyBook()
    with pytest.raises(ValueError):
        book.record("x", bad)
    assert len(window) == 0 and len(book) == 0


@given(st.lists(durations, min_size=1, max_size=300), st.integers(min_value=1, max_value=80))
def test_p50_never_exceeds_p95_and_the_window_is_bounded(samples: list[float],
                                                         size: int) -> None:
    window = LatencyWindow(size)
    for ms in samples:
        window.record(ms)
    summary = window.summary()
    kept = samples[-size:]
    assert summary["samples"] == len(kept) <= size
    assert summary["p50_ms"] is not None and summary["p95_ms"] is not None
    assert summary["p50_ms"] <= summary["p95_ms"]
    # Reported values are samples someone waited (to the rounding), within the window's.
    assert round(min(kept), 1) <= summary["p50_ms"] and summary["p95_ms"] <= round(max(kept), 1)


@given(st.lists(durations, min_size=1, max_size=100),
       st.floats(min_value=0, max_value=100), st.floats(min_value=0, max_value=100))
def test_nearest_rank_is_monotone(samples: list[float], a: float, b: float) -> None:
    ordered = sorted(samples)
    low, high = sorted((a, b))
    assert nearest_rank(ordered, low) <= nearest_rank(ordered, high)
    assert nearest_rank(ordered, high) in ordered


@given(st.lists(st.tuples(st.integers(min_value=0, max_value=50), durations), max_size=200),
       st.integers(min_value=1, max_value=10))
def test_a_book_keeps_at_most_max_keys_the_most_recent(records: list[tuple[int, float]],
                                                       max_keys: int) -> None:
    book = LatencyBook(size=4, max_keys=max_keys)
    for key, ms in records:
        book.record(str(key), ms)
    assert len(book) <= max_keys
    recent: list[str] = []
    for key, _ms in reversed(records):
        if str(key) not in recent:
            recent.append(str(key))
    for name in recent[:max_keys]:
        assert book.summary(name)["samples"] >= 1
    for name in recent[max_keys:]:
        assert book.summary(name)["samples"] == 0


def test_forget() -> None:
    book = LatencyBook()
    book.record("a", 5.0)
    book.forget("a")
    book.forget("never")
    assert book.summary("a")["samples"] == 0 and len(book) == 0
