"""Round-trip latency as users of the network wait it: a bounded window of recent samples
per peer (a contact, a server) and its median and 95th percentile.

Sans-IO: callers time with a monotonic clock and hand in milliseconds. Memory is bounded
twice over: each window keeps its last `size` samples, and a book keeps at most
`max_keys` windows, forgetting the one recorded to least recently (the keys are onions,
and whoever makes us talk to many onions must not grow the peer's memory).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from typing import TypedDict

WINDOW = 64
MAX_KEYS = 1024


class LatencySummary(TypedDict):
    p50_ms: float | None
    p95_ms: float | None
    samples: int


EMPTY: LatencySummary = {"p50_ms": None, "p95_ms": None, "samples": 0}


def nearest_rank(ordered: list[float], percent: float) -> float:
    """The nearest-rank percentile of sorted samples: always one of them (no value nobody
    waited is reported), and monotone in `percent`, so p50 ≤ p95 whatever the samples."""
    if not ordered:
        raise ValueError("no samples")
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


class LatencyWindow:
    """The last `size` round trips, in milliseconds."""

    def __init__(self, size: int = WINDOW) -> None:
        if size < 1:
            raise ValueError("a window holds at least one sample")
        self._samples: deque[float] = deque(maxlen=size)

    def __len__(self) -> int:
        return len(self._samples)

    def record(self, ms: float) -> None:
        # A monotonic clock gives neither; refusing them keeps one bad caller from
        # poisoning every percentile after it.
        if not math.isfinite(ms) or ms < 0:
            raise ValueError(f"a round trip is a finite, non-negative duration, not {ms!r}")
        self._samples.append(float(ms))

    def summary(self) -> LatencySummary:
        if not self._samples:
            return LatencySummary(**EMPTY)
        ordered = sorted(self._samples)
        return {"p50_ms": round(nearest_rank(ordered, 50), 1),
                "p95_ms": round(nearest_rank(ordered, 95), 1), "samples": len(ordered)}


class LatencyBook:
    """One window per key (an onion), at most `max_keys` of them."""

    def __init__(self, size: int = WINDOW, max_keys: int = MAX_KEYS) -> None:
        if max_keys < 1:
            raise ValueError("a book holds at least one window")
        self.size = size
        self.max_keys = max_keys
        self._windows: OrderedDict[str, LatencyWindow] = OrderedDict()

    def __len__(self) -> int:
        return len(self._windows)

    def record(self, key: str, ms: float) -> None:
        window = self._windows.get(key)
        if window is None:
            window = LatencyWindow(self.size)
            window.record(ms)   # before inserting: a refused sample adds no key
            self._windows[key] = window
            while len(self._windows) > self.max_keys:
                self._windows.popitem(last=False)
            return
        window.record(ms)
        self._windows.move_to_end(key)

    def summary(self, key: str) -> LatencySummary:
        window = self._windows.get(key)
        return window.summary() if window is not None else LatencySummary(**EMPTY)

    def forget(self, key: str) -> None:
        self._windows.pop(key, None)
