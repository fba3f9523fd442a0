"""The CLI prints what contacts and servers wrote: it must print it literally, never run it
as Rich markup or terminal escape sequences, and survive any timestamp a sender claims."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nyth_cli.main import _state_text, _when, t
from rich.console import Console
from rich.table import Table


def _render(markup: str) -> str:
    console = Console(record=True, width=200, color_system=None)
    console.print(markup)
    return console.export_text().rstrip("\n")


@pytest.mark.parametrize("text", ["[/]", "[bold]delivered[/bold]", "[link=http://x]y[/link]",
                                  "a\\[b]", "[red]", "plain"])
def test_markup_in_remote_text_prints_literally(text: str) -> None:
    assert _render(f"from {t(text)}") == f"from {text}"


def test_a_markup_name_cannot_break_a_table() -> None:
    table = Table("name")
    table.add_row(t("[/]"))
    console = Console(record=True, width=80, color_system=None)
    console.print(table)
    assert "[/]" in console.export_text()


def test_escape_sequences_and_bidi_overrides_are_replaced() -> None:
    hostile = "ok\x1b[2J\x1b]0;title\x07\x9b31m\u202egnp.exe\nnext\tline"
    shown = t(hostile)
    assert "\x1b" not in shown and "\x07" not in shown and "\x9b" not in shown
    assert "\u202e" not in shown
    assert "\n" in shown and "\t" in shown  # multi-line messages stay readable


@given(st.text(max_size=60))
def test_any_text_renders_without_error_and_without_controls(text: str) -> None:
    out = _render(t(text))
    assert not any(ord(c) < 32 and c not in "\n\t" for c in out)


@pytest.mark.parametrize("ts", [2**63 / 1000, -(2**63) / 1000, float("inf"), 1e300])
def test_absurd_timestamps_do_not_crash(ts: float) -> None:
    assert _when(ts) == "?"


def test_state_text_escapes_the_reason() -> None:
    row = {"state": "queued", "reason": "[green]delivered[/green]", "next_retry_at": None}
    assert _render(_state_text(row)) == "queued ([green]delivered[/green])"
