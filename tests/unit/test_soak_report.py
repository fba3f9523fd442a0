"""scripts/soak's summary: runs, failures per test and where the time goes, from the
JUnit XML pytest writes."""

from __future__ import annotations

from pathlib import Path

from scripts.soak_report import read_soak, report


def _junit(cases: str) -> str:
    return f'<?xml version="1.0"?><testsuites><testsuite name="pytest">{cases}</testsuite></testsuites>'


OK = '<testcase classname="tests.unit.test_a" name="test_one" time="0.5"/>'
SLOW = '<testcase classname="tests.integration.test_b.TestMailbox" name="test_live[kill]" time="40"/>'
FAILED = ('<testcase classname="tests.integration.test_b.TestMailbox" name="test_live[kill]" time="61">'
          '<failure message="TimeoutError: timed out after 60 s waiting for x">trace</failure></testcase>')


def test_a_flaky_test_is_counted_per_run_with_its_first_failure_line(tmp_path: Path) -> None:
    (tmp_path / "runs").write_text("1 0 500\n2 1 560\n3 2 30\n")
    (tmp_path / "run-1.xml").write_text(_junit(OK + SLOW))
    (tmp_path / "run-2.xml").write_text(_junit(OK + FAILED))
    # run 3 died before pytest (lint): no XML
    runs = read_soak(tmp_path)
    assert [(r.number, r.tests, r.failed, r.has_report) for r in runs] == [
        (1, 2, 0, True), (2, 2, 1, True), (3, 0, 0, False)]
    text = report(runs)
    assert "1 of 3 runs passed" in text
    assert "1/3  tests/integration/test_b.py::TestMailbox::test_live[kill]  (runs 2)" in text
    assert "TimeoutError: timed out after 60 s waiting for x" in text
    assert "(no test report: see the run's log)" in text
    assert "integration 61, unit 0" in text   # per-run totals 40 and 61: the upper median


def test_all_green_says_so_and_lists_no_failures(tmp_path: Path) -> None:
    (tmp_path / "runs").write_text("1 0 500\n")
    (tmp_path / "run-1.xml").write_text(_junit(OK))
    text = report(read_soak(tmp_path))
    assert "1 of 1 runs passed" in text and "failures per test" not in text
