"""Summarise a soak (scripts/soak): one row per run, then every test that failed in any
run with how often and its first failure line. Standard library only, so it runs
before any virtualenv exists.

    python3 scripts/soak_report.py soak-results/<time>
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Run:
    number: int
    exit_code: int
    seconds: int
    tests: int = 0
    failed: int = 0
    skipped: int = 0
    failures: dict[str, str] = field(default_factory=dict)  # test id -> first line of why
    seconds_by_test: dict[str, float] = field(default_factory=dict)
    has_report: bool = False


def _test_id(case: ET.Element) -> str:
    # pytest writes "tests.unit.test_x.TestY" as the classname: back to a node id.
    parts = case.get("classname", "").split(".")
    path = [p for p in parts if not p[:1].isupper()]
    classes = [p for p in parts if p[:1].isupper()]
    return "/".join(path) + ".py::" + "::".join([*classes, case.get("name", "")])


def read_run(folder: Path, number: int, exit_code: int, seconds: int) -> Run:
    run = Run(number, exit_code, seconds)
    report = folder / f"run-{number}.xml"
    if not report.exists():
        return run   # died before pytest wrote anything (lint, types, setup)
    run.has_report = True
    # Our own pytest wrote this file in the run above: not untrusted input.
    for case in ET.parse(report).getroot().iter("testcase"):  # noqa: S314
        run.tests += 1
        run.seconds_by_test[_test_id(case)] = float(case.get("time") or 0)
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        if case.find("skipped") is not None:
            run.skipped += 1
        if problem is not None:
            run.failed += 1
            text = (problem.get("message") or problem.text or "").strip()
            run.failures[_test_id(case)] = text.splitlines()[0][:160] if text else "?"
    return run


def read_soak(folder: Path) -> list[Run]:
    runs = []
    for line in (folder / "runs").read_text().split("\n"):
        if line.strip():
            number, exit_code, seconds = (int(x) for x in line.split())
            runs.append(read_run(folder, number, exit_code, seconds))
    return runs


def _tier(test: str) -> str:
    parts = test.split("/")
    return parts[1] if len(parts) > 2 else "other"


def timings(runs: list[Run], slowest: int = 12) -> list[str]:
    """Where the time goes: seconds per tier and the slowest tests (median over runs; a
    session fixture's start-up is charged to the first test that used it)."""
    by_test: dict[str, list[float]] = defaultdict(list)
    for r in runs:
        for test, seconds in r.seconds_by_test.items():
            by_test[test].append(seconds)
    if not by_test:
        return []
    median = {t: sorted(v)[len(v) // 2] for t, v in by_test.items()}
    # Per run, then the median: a session fixture's start-up lands on whichever test of
    # the tier ran first (the order is shuffled), so per-test medians would hide it.
    per_run: dict[str, list[float]] = defaultdict(list)
    for r in runs:
        totals: dict[str, float] = defaultdict(float)
        for test, seconds in r.seconds_by_test.items():
            totals[_tier(test)] += seconds
        for tier, seconds in totals.items():
            per_run[tier].append(seconds)
    tiers = {tier: sorted(v)[len(v) // 2] for tier, v in per_run.items()}
    lines = ["", "seconds per tier (median over runs): " + ", ".join(
        f"{tier} {seconds:.0f}" for tier, seconds in sorted(tiers.items(), key=lambda kv: -kv[1]))]
    lines.append(f"slowest {slowest} tests (median seconds):")
    for test, seconds in sorted(median.items(), key=lambda kv: -kv[1])[:slowest]:
        lines.append(f"  {seconds:7.1f}  {test}")
    return lines


def report(runs: list[Run]) -> str:
    lines = [f"{'run':>4} {'exit':>4} {'minutes':>8} {'tests':>6} {'failed':>6} {'skipped':>7}"]
    for r in runs:
        tests = str(r.tests) if r.has_report else "-"
        lines.append(f"{r.number:>4} {r.exit_code:>4} {r.seconds / 60:>8.1f} {tests:>6} "
                     f"{r.failed:>6} {r.skipped:>7}"
                     + ("" if r.has_report else "  (no test report: see the run's log)"))
    passed = sum(r.exit_code == 0 for r in runs)
    lines.append(f"{passed} of {len(runs)} runs passed")
    by_test: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for r in runs:
        for test, why in r.failures.items():
            by_test[test].append((r.number, why))
    if by_test:
        lines.append("")
        lines.append("failures per test:")
        for test, seen in sorted(by_test.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            lines.append(f"  {len(seen)}/{len(runs)}  {test}  (runs {', '.join(str(n) for n, _ in seen)})")
            lines.append(f"        {seen[0][1]}")
    lines.extend(timings(runs))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    runs = read_soak(Path(argv[1]))
    print(report(runs))
    return 0 if runs and all(r.exit_code == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
