"""Cursor parsing: the only thing the group server parses out of a client's request."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nyth.errors import DecodeError
from nyth_group_server.app import CURSOR_PATTERN
from nyth_group_server.storage import Cursor

U64 = (1 << 64) - 1


def test_zero_forms_mean_the_start() -> None:
    assert Cursor.parse("0") == Cursor.ZERO == Cursor.parse("0-0")
    assert str(Cursor.ZERO) == "0-0"


@pytest.mark.parametrize("text", [
    "", " 0", "0 ", "-1", "1", "1-", "-1-0", "1--1", "1-2-3", "+1-0", "1_0-0", "0x10-0",
    "１-0",  # fullwidth digit: isdigit() would accept it, the cursor must not
    "abc", "1.5-0", "1-0\n", "\x00", "9" * 21 + "-0", "0-" + "9" * 21,
])
def test_malformed_cursors_are_refused_with_a_clear_message(text: str) -> None:
    with pytest.raises(DecodeError, match="cursor"):
        Cursor.parse(text)


def test_parts_beyond_64_bits_are_refused() -> None:
    assert Cursor.parse(f"{U64}-{U64}") == Cursor(U64, U64)
    with pytest.raises(DecodeError, match="64 bits"):
        Cursor.parse(f"{U64 + 1}-0")
    with pytest.raises(DecodeError, match="64 bits"):
        Cursor.parse(f"0-{U64 + 1}")


def test_order_is_numeric_not_lexicographic() -> None:
    assert Cursor.parse("9-0") < Cursor.parse("10-0")
    assert Cursor.parse("10-9") < Cursor.parse("10-10")


def test_successor() -> None:
    assert Cursor(5, 7).successor() == Cursor(5, 8)
    assert Cursor(5, U64).successor() == Cursor(6, 0)
    assert Cursor(U64, U64).successor() is None


@given(st.integers(0, U64), st.integers(0, U64))
def test_round_trip(ms: int, seq: int) -> None:
    cursor = Cursor(ms, seq)
    assert Cursor.parse(str(cursor)) == cursor
    successor = cursor.successor()
    assert successor is None or successor > cursor


@given(st.from_regex(CURSOR_PATTERN, fullmatch=True))
def test_everything_the_openapi_pattern_allows_parses(text: str) -> None:
    # Schema-driven clients generate from the pattern; none of those may be refused.
    Cursor.parse(text)


@given(st.text(max_size=45))
def test_parse_never_raises_anything_but_decode_error(text: str) -> None:
    try:
        Cursor.parse(text)
    except DecodeError:
        pass
