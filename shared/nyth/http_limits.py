"""Bounded reads of answers from untrusted servers (group servers, mailboxes).

A server we talk to over Tor may be hostile, and so may any stranger: a contact id names
the contact's own mailbox. Reading a whole body with `response.json()` lets such a server
make us hold whatever it sends (a 28 MiB body of ``[{},…]`` costs ~800 MB once parsed).
Every answer is therefore read with a byte limit derived from the protocol's fixed sizes,
parsed into a strict model, and anything that breaks either becomes an
UntrustedResponseError: the caller treats it like that server failing, and the message
(which names the server and the limit) is what the user sees as the reason.

Server-Sent Events get the same treatment per line and per event, plus an idle deadline,
because a stream is a body that never ends by design.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import pydantic_core
from pydantic import BaseModel, ConfigDict, ValidationError

from nyth.errors import NythError

# Room for the keys, quotes, punctuation and small fields (an onion id, a few integers)
# of one JSON object around its one large base64 value; FastAPI answers are compact.
JSON_SLACK = 512
# Per item of a page: its keys, quotes, commas and a cursor id (at most 39 characters).
ITEM_SLACK = 100
# Error answers are only ever shown as an excerpt; more of them is never read.
ERROR_BODY_BYTES = 2048
EXCERPT_CHARS = 200

M = TypeVar("M", bound=BaseModel)


class UntrustedResponseError(NythError):
    """A server's answer broke a size limit or the shape the protocol promises."""


class ResponseTooLargeError(UntrustedResponseError):
    """The answer was longer than the limit for what was asked."""


class StreamIdleError(UntrustedResponseError):
    """An event stream sent nothing (not even a keep-alive) for too long."""


def b64_len(size: int) -> int:
    """Length of the padded base64 text of size bytes."""
    return 4 * ((size + 2) // 3)


def printable(text: str, limit: int = EXCERPT_CHARS) -> str:
    """text with control and formatting characters (newlines, escapes, bidi overrides)
    turned into spaces, whitespace collapsed and at most limit characters kept: safe to
    put server-supplied words into a reason shown in a terminal or a web page."""
    cleaned = " ".join("".join(ch if ch.isprintable() else " " for ch in text[: limit * 4]).split())
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def strict_b64(text: Any, *, size: int | None = None, max_size: int | None = None) -> bytes:
    """Decode canonical base64 of exactly size bytes (or at most max_size); ValueError
    otherwise, with the length checked before any decoding."""
    if not isinstance(text, str):
        raise ValueError("must be a base64 string")
    bound = size if size is not None else max_size
    if bound is not None and len(text) > b64_len(bound):
        raise ValueError(f"is longer than the base64 of {bound} bytes")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not valid base64") from None
    if size is not None and len(data) != size:
        raise ValueError(f"must decode to exactly {size} bytes, got {len(data)}")
    return data


def b64_validator(*, size: int | None = None, max_size: int | None = None) -> Callable[[Any], bytes]:
    """For `Annotated[bytes, PlainValidator(b64_validator(size=...))]` model fields."""
    def validate(value: Any) -> bytes:
        return strict_b64(value, size=size, max_size=max_size)
    return validate


class StrictModel(BaseModel):
    """Base of the models answers are parsed into: no type coercion ("1" is not 1, 1 is
    not True), unknown fields ignored (servers may add some)."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


def _describe(error: ValidationError) -> str:
    # Input values are left out: they are the server's words, possibly huge or hostile.
    first = error.errors(include_input=False, include_url=False, include_context=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "the answer"
    more = f" (and {error.error_count() - 1} more problems)" if error.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"


@dataclass(frozen=True)
class BoundedResponse:
    status_code: int
    content: bytes
    server: str
    what: str
    # The media type of the answer, lowercased, parameters dropped ("" when none given).
    media_type: str = ""

    def parse(self, model: type[M]) -> M:
        """The body as model; UntrustedResponseError naming the server when it is not."""
        try:
            return model.model_validate_json(self.content)
        except ValidationError as exc:
            raise UntrustedResponseError(
                f"{self.server} sent a malformed {self.what}: {_describe(exc)}") from None

    def excerpt(self) -> str:
        """The start of the body, safe to show (an error answer's explanation)."""
        try:
            # Partial: an error answer is read only in part, and may end mid-string.
            parsed = pydantic_core.from_json(self.content, allow_partial="trailing-strings")
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
            return printable(parsed["error"])
        return printable(self.content.decode("utf-8", "replace"))

    def failure(self) -> str:
        """"answered <status> (<excerpt>)", for an unexpected status."""
        excerpt = self.excerpt()
        return f"answered {self.status_code}" + (f" ({excerpt})" if excerpt else "")


def _too_large(server: str, what: str, limit: int) -> ResponseTooLargeError:
    return ResponseTooLargeError(
        f"{server} sent more than {limit:,} bytes for a {what} (the most a valid one can "
        "take); the answer was dropped")


def _check_encoding(response: httpx.Response, server: str) -> None:
    # Limits count bytes as received; a compressed body could expand far past them
    # before a single byte reaches us, so only identity bodies are read at all.
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UntrustedResponseError(
            f"{server} sent a {printable(encoding, 40)}-encoded answer though none was asked for")


async def read_bounded(response: httpx.Response, limit: int, *, server: str, what: str,
                       truncate: bool = False) -> bytes:
    """At most limit bytes of response's body; ResponseTooLargeError beyond it (or, with
    truncate, just the first limit bytes)."""
    _check_encoding(response, server)
    declared = response.headers.get("content-length")
    if not truncate and declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(server, what, limit)
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > limit:
            if truncate:
                return bytes(body[:limit])
            raise _too_large(server, what, limit)
    return bytes(body)


def server_label(url: str) -> str:
    """A short, readable name for the server behind url: "abcdefgh….onion"."""
    host = httpx.URL(url).host
    if host.endswith(".onion") and len(host) > 20:
        return f"{host[:8]}….onion"
    return host


def media_type(response: httpx.Response) -> str:
    return response.headers.get("content-type", "").split(";")[0].strip().lower()


async def bounded_request(http: httpx.AsyncClient, method: str, url: str, *,
                          max_bytes: int | Callable[[str], int], deadline: float, what: str,
                          server: str | None = None, **kwargs: Any) -> BoundedResponse:
    """Send one request and read at most max_bytes of a 2xx answer (ResponseTooLargeError
    beyond that) or the first ERROR_BODY_BYTES of any other; the whole exchange, body
    included, must finish within deadline seconds (TimeoutError), so a server trickling
    bytes cannot hold the caller either. When an answer may come in several media types
    of different sizes, max_bytes(media type) gives the limit for the one it came in."""
    server = server or server_label(url)
    headers = {**kwargs.pop("headers", {}), "accept-encoding": "identity"}
    async with asyncio.timeout(deadline), http.stream(method, url, headers=headers, **kwargs) as response:
        media = media_type(response)
        limit = max_bytes(media) if callable(max_bytes) else max_bytes
        if 200 <= response.status_code < 300:
            content = await read_bounded(response, limit, server=server, what=what)
        else:
            content = await read_bounded(response, min(limit, ERROR_BODY_BYTES),
                                         server=server, what=what, truncate=True)
    return BoundedResponse(response.status_code, content, server, what, media)


# -- Server-Sent Events ------------------------------------------------------------------

_EOL = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True)
class SseEvent:
    event: str
    data: str
    id: str | None


async def _lines(response: httpx.Response, *, server: str, max_line: int,
                 idle_seconds: float) -> AsyncIterator[bytes]:
    """The lines of an event stream (any of CRLF, LF, CR ends one), each at most
    max_line bytes; StreamIdleError when no line completes within idle_seconds."""
    loop = asyncio.get_running_loop()
    chunks = response.aiter_raw()
    buffer = bytearray()
    deadline = loop.time() + idle_seconds
    while True:
        start = 0
        while (end := _EOL.search(buffer, start)) is not None:
            if end.group() == b"\r" and end.end() == len(buffer):
                break  # an LF may follow in the next chunk: one line end, not two
            if end.start() - start > max_line:
                raise _line_too_long(server, max_line)
            line = bytes(buffer[start:end.start()])
            start = end.end()
            yield line
            deadline = loop.time() + idle_seconds
        del buffer[:start]
        if len(buffer) - buffer.endswith(b"\r") > max_line:
            raise _line_too_long(server, max_line)
        try:
            async with asyncio.timeout_at(deadline):
                chunk = await anext(chunks)
        except StopAsyncIteration:
            # What follows the last line end is an unfinished event: discarded (WHATWG).
            if buffer.endswith(b"\r"):
                yield bytes(buffer[:-1])
            return
        except TimeoutError:
            raise StreamIdleError(
                f"{server} sent nothing on the event stream for {idle_seconds:g} s, not even "
                "a keep-alive; reconnecting") from None
        buffer += chunk


def _line_too_long(server: str, max_line: int) -> UntrustedResponseError:
    return UntrustedResponseError(
        f"{server} sent an event-stream line longer than {max_line:,} bytes (the longest a "
        "valid event needs); the stream was dropped")


async def bounded_sse(response: httpx.Response, *, server: str, max_line: int, max_event: int,
                      idle_seconds: float) -> AsyncIterator[SseEvent]:
    """The events of an SSE response (the WHATWG event-stream format), with a line limit,
    an event limit (the sum of its field lines) and an idle deadline; a violation raises
    UntrustedResponseError and ends the stream."""
    _check_encoding(response, server)
    data: list[str] = []
    event, event_id, size = "", None, 0
    async for raw in _lines(response, server=server, max_line=max_line, idle_seconds=idle_seconds):
        if not raw:
            if data:
                yield SseEvent(event or "message", "\n".join(data), event_id)
            data, event, size = [], "", 0
            continue
        if raw.startswith(b":"):
            continue  # a comment: the server's keep-alive
        size += len(raw)
        if size > max_event:
            raise UntrustedResponseError(
                f"{server} sent an event larger than {max_event:,} bytes (the largest a valid "
                "event needs); the stream was dropped")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise UntrustedResponseError(f"{server} sent an event-stream line that is not UTF-8") from None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id" and "\0" not in value:
            event_id = value


@dataclass
class EventStream:
    """An open event stream: look at status_code, then iterate events() (or, for any
    other status, report failure())."""

    response: httpx.Response
    server: str
    max_line: int
    max_event: int
    idle_seconds: float

    @property
    def status_code(self) -> int:
        return self.response.status_code

    async def failure(self) -> str:
        body = await read_bounded(self.response, ERROR_BODY_BYTES, server=self.server,
                                  what="error", truncate=True)
        return BoundedResponse(self.status_code, body, self.server, "error").failure()

    def events(self) -> AsyncIterator[SseEvent]:
        content_type = self.response.headers.get("content-type", "")
        if content_type.partition(";")[0].strip().lower() != "text/event-stream":
            raise UntrustedResponseError(
                f"{self.server} answered the stream request with "
                f"{printable(content_type, 60) or 'no content type'}, not text/event-stream")
        return bounded_sse(self.response, server=self.server, max_line=self.max_line,
                           max_event=self.max_event, idle_seconds=self.idle_seconds)


@contextlib.asynccontextmanager
async def open_event_stream(http: httpx.AsyncClient, url: str, *, deadline: float, max_line: int,
                            max_event: int, idle_seconds: float, server: str | None = None,
                            **kwargs: Any) -> AsyncIterator[EventStream]:
    """GET url as Server-Sent Events: the answer's head must arrive within deadline
    seconds, then each line within idle_seconds of the previous one (keep-alives count)."""
    server = server or server_label(url)
    headers = {**kwargs.pop("headers", {}), "accept": "text/event-stream",
               "cache-control": "no-store", "accept-encoding": "identity"}
    # httpx's own read timeout only backs up the idle deadline, which gives the clearer reason.
    timeout = httpx.Timeout(deadline, read=2 * idle_seconds)
    async with contextlib.AsyncExitStack() as stack:
        async with asyncio.timeout(deadline):
            response = await stack.enter_async_context(
                http.stream("GET", url, headers=headers, timeout=timeout, **kwargs))
        yield EventStream(response, server, max_line, max_event, idle_seconds)
