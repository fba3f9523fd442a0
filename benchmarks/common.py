"""Small helpers shared by the benchmarks: statistics and a plain results table."""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def summary_ms(samples_s: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples_s]
    return {"n": len(ms), "median_ms": statistics.median(ms), "p95_ms": percentile(ms, 95),
            "min_ms": min(ms), "max_ms": max(ms)}


@dataclass
class Results:
    title: str
    rows: list[tuple[str, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, what: str, value: str, detail: str = "") -> None:
        self.rows.append((what, value, detail))
        print(f"  {what}: {value}  {detail}".rstrip(), flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def render(self) -> str:
        w0 = max([len(r[0]) for r in self.rows] + [6])
        w1 = max([len(r[1]) for r in self.rows] + [5])
        lines = [f"== {self.title} ==", f"{'metric':<{w0}}  {'value':>{w1}}  detail",
                 f"{'-' * w0}  {'-' * w1}  ------"]
        lines += [f"{a:<{w0}}  {b:>{w1}}  {c}".rstrip() for a, b, c in self.rows]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def workdir(name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"nyth-bench-{name}-"))
