"""The services' shared stream: cursor parsing (the only thing the group server parses
out of a client's request), retention by age and paging."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nyth.errors import DecodeError
from nyth.runtime.stream_store import CURSOR_PATTERN, Cursor, RetainedStream, follow_channel
from redis.exceptions import ConnectionError as RedisConnectionError

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


@dataclass(frozen=True)
class Item:
    id: Cursor


class FakeRedis:
    """XRANGE over an in-memory list of (id, fields), oldest first."""

    def __init__(self, ids: list[str]) -> None:
        self.entries: list[tuple[bytes, dict[bytes, bytes]]] = [
            (i.encode(), {b"v": b"x"}) for i in ids]
        self.calls: list[tuple[str, str, int]] = []

    async def xrange(self, key: str, min: str, max: str, count: int) -> list[Any]:
        self.calls.append((key, min, count))
        low = Cursor.parse(min)
        return [e for e in self.entries if Cursor.parse(e[0].decode()) >= low][:count]


class Items(RetainedStream[Item]):
    """An entry without the field "v" is someone else's (a shared Redis)."""

    def decode(self, entries: list[Any]) -> list[Item]:
        return [Item(Cursor.parse(raw.decode())) for raw, fields in entries if b"v" in fields]


def items_stream(ids: list[str], now: float = 1000.0,
                 max_age: int = 100) -> tuple[Items, FakeRedis]:
    redis = FakeRedis(ids)
    stream = Items(cast(Any, redis), key_prefix="P", name="things", max_age_seconds=max_age,
                   clock=lambda: now)
    return stream, redis


def test_keys_follow_the_prefix() -> None:
    stream, _ = items_stream([])
    assert (stream.stream_key, stream.channel) == ("P:things", "P:new")


def test_age_floor_is_now_minus_max_age_and_never_negative() -> None:
    assert items_stream([], now=1000.5, max_age=100)[0].age_floor() == Cursor(900_500, 0)
    assert items_stream([], now=10.0, max_age=100)[0].age_floor() == Cursor.ZERO


async def test_pages_tell_where_to_continue_and_whether_more_waits() -> None:
    stream, _ = items_stream(["950000-0", "950000-1", "960000-0"])
    page, nxt, more = await stream.read_page(Cursor.ZERO, 2)
    assert [i.id for i in page] == [Cursor(950_000, 0), Cursor(950_000, 1)]
    assert nxt == Cursor(950_000, 1) and more
    page, nxt, more = await stream.read_page(nxt, 2)
    assert [i.id for i in page] == [Cursor(960_000, 0)] and nxt == Cursor(960_000, 0)
    assert not more
    # Nothing after the last one: the cursor stays where it was.
    assert await stream.read_page(nxt, 2) == ([], nxt, False)


async def test_reads_start_at_the_age_floor_and_skip_foreign_entries() -> None:
    stream, redis = items_stream(["800000-0", "950000-0", "950000-1"])
    redis.entries[1] = (b"950000-0", {b"other": b"x"})
    page, _nxt, _more = await stream.read_page(Cursor.ZERO, 10)
    assert [i.id for i in page] == [Cursor(950_000, 1)]
    # One more than asked for, so "more" costs no second round trip.
    assert redis.calls == [("P:things", "900000-0", 11)]


async def test_after_the_last_possible_id_nothing_is_read() -> None:
    stream, redis = items_stream(["950000-0"])
    last = Cursor(U64, U64)
    assert await stream.read_page(last, 5) == ([], last, False)
    assert redis.calls == []
    with pytest.raises(ValueError, match="limit"):
        await stream.read_page(Cursor.ZERO, 0)


class FakePubSub:
    """Replays a script of get_message results: a message, None (a quiet poll) or an error."""

    def __init__(self, script: list[Any]) -> None:
        self.script = script
        self.subscribed: list[str] = []
        self.closed = False

    async def subscribe(self, channel: str) -> None:
        self.subscribed.append(channel)

    async def get_message(self, ignore_subscribe_messages: bool, timeout: float) -> Any:
        if not self.script:
            await asyncio.sleep(3600)
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    async def aclose(self) -> None:
        self.closed = True


async def test_follow_channel_reacts_once_per_burst_and_reconnects(
        caplog: pytest.LogCaptureFixture) -> None:
    msg = {"type": "message"}
    first = FakePubSub([msg, msg, msg, None, None, RedisConnectionError("gone")])
    second = FakePubSub([msg, None])
    pubsubs = [first, second]
    stream, redis = items_stream([])
    redis.pubsub = lambda: pubsubs.pop(0)  # type: ignore[attr-defined]
    calls: list[bool] = []

    async def on_change(woken: bool) -> None:
        calls.append(woken)

    with caplog.at_level(logging.WARNING):
        task = asyncio.create_task(follow_channel(
            stream, poll_interval=0.01, on_change=on_change, log=logging.getLogger("t"),
            name="the feed"))
        for _ in range(200):
            await asyncio.sleep(0.01)
            if not pubsubs and not second.script:
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    # Subscribed (True), a burst of three (True), a quiet poll (False); then, after the
    # reconnect, subscribed again (True) and one message (True).
    assert calls == [True, True, False, True, True]
    assert first.subscribed == second.subscribed == ["P:new"] and first.closed
    assert "the feed lost Redis (gone); retrying in 0.1 s" in caplog.text
