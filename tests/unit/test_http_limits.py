"""Bounded reads from untrusted servers, against a real misbehaving HTTP server on
127.0.0.1: oversized and endless bodies, trickles, compression nobody asked for, and
event streams with endless lines, endless events or no keep-alives at all."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import AsyncIterator

import pytest
from nyth.http_limits import (
    ResponseTooLargeError,
    StreamIdleError,
    StrictModel,
    UntrustedResponseError,
    b64_len,
    bounded_request,
    open_event_stream,
    printable,
    strict_b64,
)
from pydantic import Field

from tests.unit.hostile_http import HostileServer, Reply, Request, forever

URL = "http://" + "a" * 56 + ".onion"


class Page(StrictModel):
    items: list[int] = Field(max_length=3)
    more: bool


async def get(server: HostileServer, path: str, max_bytes: int = 1000, deadline: float = 10):
    async with server.client() as http:
        return await bounded_request(http, "GET", URL + path, max_bytes=max_bytes,
                                     deadline=deadline, what="page of things")


async def test_a_valid_answer_is_read_and_parsed() -> None:
    async def ok(request: Request, reply: Reply) -> None:
        assert request.headers["accept-encoding"] == "identity"
        await reply.json(200, {"items": [1, 2], "more": False, "extra": "ignored"})

    async with HostileServer({("GET", "/p"): ok}) as server:
        answer = await get(server, "/p")
    assert answer.status_code == 200
    assert answer.parse(Page) == Page(items=[1, 2], more=False)


async def test_a_declared_oversized_body_is_refused_before_reading_it() -> None:
    async def big(request: Request, reply: Reply) -> None:
        await reply.head(200, {"content-length": str(28 << 20)})
        await reply.body(b"[" + b"{}," * 1000)
        await asyncio.sleep(30)

    async with HostileServer({("GET", "/p"): big}) as server:
        started = time.monotonic()
        with pytest.raises(ResponseTooLargeError) as caught:
            await get(server, "/p")
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert "aaaaaaaa….onion" in message and "1,000 bytes" in message and "page of things" in message


async def test_an_endless_body_of_unknown_length_is_cut_at_the_limit() -> None:
    async def endless(request: Request, reply: Reply) -> None:
        await reply.chunked(200, forever(b"[{}," * 16384))  # the ~800 MB-RSS shape, endless

    async with HostileServer({("GET", "/p"): endless}) as server:
        with pytest.raises(ResponseTooLargeError):
            await get(server, "/p", max_bytes=100_000)
        await asyncio.sleep(0.2)
        # The client hung up: what the server managed to push is socket buffers, not more.
        assert server.replies[0].sent < 16 << 20


async def test_an_error_answer_is_truncated_and_never_refused_for_its_size() -> None:
    async def teapot(request: Request, reply: Reply) -> None:
        text = "\x1b[31mred alert\x1b[0m\nfake: line\u202e" + "x" * 50_000
        await reply.json(503, {"error": text})

    async with HostileServer({("GET", "/p"): teapot}) as server:
        answer = await get(server, "/p", max_bytes=1_000_000)
    assert answer.status_code == 503 and len(answer.content) <= 2048
    excerpt = answer.excerpt()
    assert len(excerpt) <= 200 and excerpt.startswith("[31mred alert")
    assert all(ch.isprintable() for ch in excerpt)
    assert answer.failure().startswith("answered 503 (")


async def test_a_compressed_body_is_refused() -> None:
    async def bomb(request: Request, reply: Reply) -> None:
        await reply.raw(200, gzip.compress(b"[" + b"{}," * 1_000_000), {"content-encoding": "gzip"})

    async with HostileServer({("GET", "/p"): bomb}) as server:
        with pytest.raises(UntrustedResponseError, match="gzip-encoded"):
            await get(server, "/p", max_bytes=1_000_000)


async def test_a_trickled_body_hits_the_deadline() -> None:
    async def trickle(request: Request, reply: Reply) -> None:
        async def slowly() -> AsyncIterator[bytes]:
            while True:
                yield b" "
                await asyncio.sleep(0.05)
        await reply.chunked(200, slowly())

    async with HostileServer({("GET", "/p"): trickle}) as server:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await get(server, "/p", max_bytes=1_000_000, deadline=0.5)
        assert time.monotonic() - started < 3


@pytest.mark.parametrize(("body", "expected"), [
    (b'{"items": [1, 2, 3, 4], "more": false}', "items: List should have at most 3 items"),
    (b'{"items": [1], "more": "yes"}', "more: Input should be a valid boolean"),
    (b'{"items": [1e999], "more": false}', "items.0: Input should be a valid integer"),
    (b'{"items": [NaN], "more": false}', "items.0"),
    (b"[" * 100_000, "Invalid JSON"),
    (b"not json \x1b[2J", "Invalid JSON"),
])
async def test_a_malformed_answer_is_refused_without_echoing_it(body: bytes, expected: str) -> None:
    async def send(request: Request, reply: Reply) -> None:
        await reply.raw(200, body)

    async with HostileServer({("GET", "/p"): send}) as server:
        answer = await get(server, "/p", max_bytes=1_000_000)
    with pytest.raises(UntrustedResponseError) as caught:
        answer.parse(Page)
    message = str(caught.value)
    assert expected in message and "aaaaaaaa….onion sent a malformed page of things" in message
    assert "\x1b" not in message and "yes" not in message


def test_strict_base64() -> None:
    assert strict_b64("AAAA", size=3) == bytes(3)
    for bad in ("AAA", "AA=A", "AAAA\n", 3, None, "A" * 8):
        with pytest.raises(ValueError):
            strict_b64(bad, size=3)
    with pytest.raises(ValueError, match="longer"):
        strict_b64("A" * 10**6, max_size=30)
    assert b64_len(2048) == 2732 and b64_len(0) == 0


def test_printable() -> None:
    assert printable("ok\n\x00\x1b[1mbold\u202egnp.exe  x") == "ok [1mbold gnp.exe x"
    assert printable("é" * 500, 10) == "é" * 9 + "…"


# -- event streams ---------------------------------------------------------------------

async def collect(server: HostileServer, *, max_line: int = 100, max_event: int = 300,
                  idle: float = 5.0, count: int | None = None) -> list[tuple[str, str, str | None]]:
    events: list[tuple[str, str, str | None]] = []
    async with server.client() as http, open_event_stream(
            http, URL + "/s", deadline=5, max_line=max_line, max_event=max_event,
            idle_seconds=idle) as stream:
        assert stream.status_code == 200
        async for event in stream.events():
            events.append((event.event, event.data, event.id))
            if count is not None and len(events) == count:
                break
    return events


def sse(*writes: bytes, pause: float = 0.0, then_wait: float = 0.0):
    async def handler(request: Request, reply: Reply) -> None:
        assert request.headers["accept"] == "text/event-stream"

        async def chunks() -> AsyncIterator[bytes]:
            for data in writes:
                yield data
                await asyncio.sleep(pause)
            await asyncio.sleep(then_wait)
        await reply.chunked(200, chunks(), {"content-type": "text/event-stream"})
    return handler


async def test_events_are_parsed_with_any_line_end_even_split_across_reads() -> None:
    writes = (b": ping\r\n\r\nid: 1-0\r", b"\nevent: blob\rdata: AAAA\n", b"\n",
              b"data: a\ndata: b\n\n", b"event: blob\ndata: tail-without-end")
    async with HostileServer({("GET", "/s"): sse(*writes, pause=0.05)}) as server:
        events = await collect(server)
    assert events == [("blob", "AAAA", "1-0"), ("message", "a\nb", "1-0")]


async def test_an_endless_line_drops_the_stream() -> None:
    async def endless(request: Request, reply: Reply) -> None:
        await reply.chunked(200, forever(b"data: " + b"A" * 4096),
                            {"content-type": "text/event-stream"})

    async with HostileServer({("GET", "/s"): endless}) as server:
        with pytest.raises(UntrustedResponseError, match="line longer than 100 bytes"):
            await collect(server)
        await asyncio.sleep(0.2)
        assert server.replies[0].sent < 16 << 20


async def test_endless_data_lines_drop_the_stream() -> None:
    async def endless(request: Request, reply: Reply) -> None:
        await reply.chunked(200, forever(b"data: AAAA\n" * 100),
                            {"content-type": "text/event-stream"})

    async with HostileServer({("GET", "/s"): endless}) as server:
        with pytest.raises(UntrustedResponseError, match="event larger than 300 bytes"):
            await collect(server)


async def test_a_silent_stream_is_dropped_at_the_idle_deadline() -> None:
    async with HostileServer({("GET", "/s"): sse(b": hello\n\n", then_wait=30)}) as server:
        started = time.monotonic()
        with pytest.raises(StreamIdleError, match=r"nothing on the event stream for 0\.5 s"):
            await collect(server, idle=0.5)
        assert 0.5 <= time.monotonic() - started < 3


async def test_a_trickle_that_never_ends_a_line_is_idle_too() -> None:
    async with HostileServer({("GET", "/s"): sse(*[b"d"] * 80, pause=0.05)}) as server:
        with pytest.raises(StreamIdleError):
            await collect(server, idle=0.5)


async def test_keep_alives_keep_a_quiet_stream_open() -> None:
    writes = [b": ping\n\n"] * 8 + [b"event: blob\nid: 2-0\ndata: x\n\n"]
    async with HostileServer({("GET", "/s"): sse(*writes, pause=0.1, then_wait=30)}) as server:
        events = await collect(server, idle=0.4, count=1)
    assert events == [("blob", "x", "2-0")]


async def test_a_stream_that_is_not_an_event_stream_is_refused() -> None:
    async def html(request: Request, reply: Reply) -> None:
        await reply.raw(200, b"<html>", {"content-type": "text/html"})

    async with HostileServer({("GET", "/s"): html}) as server:
        with pytest.raises(UntrustedResponseError, match="text/html, not text/event-stream"):
            await collect(server)
