"""A real HTTP/1.1 server on 127.0.0.1 that misbehaves on purpose, for tests of how the
peer reads answers from untrusted servers.

It speaks raw HTTP over asyncio streams so it can do what no well-behaved framework
would: endless bodies, lines without an end, silence, compressed bodies nobody asked for.
Clients reach it as an HTTP proxy (`client()`), so the peer's own
"http://<onion>.onion/..." URLs arrive here unchanged, with no Tor involved.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Reply:
    """Writes one answer; `sent` counts the body bytes that made it into the socket."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.sent = 0

    async def head(self, status: int, headers: dict[str, str]) -> None:
        lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in headers.items()]
        lines.append("connection: close")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self.writer.drain()

    async def body(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()
        self.sent += len(data)

    async def chunk(self, data: bytes) -> None:
        await self.body(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    async def json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        await self.raw(status, json.dumps(obj).encode(),
                       {"content-type": "application/json", **(headers or {})})

    async def raw(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
        await self.head(status, {"content-length": str(len(data)), **(headers or {})})
        await self.body(data)

    async def chunked(self, status: int, chunks: AsyncIterator[bytes],
                      headers: dict[str, str] | None = None) -> None:
        """A body of unknown length (no content-length): as long as chunks goes on."""
        await self.head(status, {"transfer-encoding": "chunked", **(headers or {})})
        async for data in chunks:
            await self.chunk(data)
        await self.body(b"0\r\n\r\n")


Handler = Callable[[Request, Reply], Awaitable[None]]


@dataclass
class HostileServer:
    routes: dict[tuple[str, str], Handler]
    requests: list[Request] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def __aenter__(self) -> HostileServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        """A plain httpx client whose every http:// request lands on this server."""
        return httpx.AsyncClient(proxy=f"http://127.0.0.1:{self.port}", trust_env=False, **kwargs)

    def seen(self, method: str, path: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and r.path == path]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, target, _ = request_line.split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in
                       (line.partition(":") for line in header_lines if line)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            url = urlsplit(target)  # absolute-form: we are the client's proxy
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            request = Request(method, url.path, query, headers, body)
            self.requests.append(request)
            reply = Reply(writer)
            self.replies.append(reply)
            handler = self.routes.get((method, url.path))
            if handler is None:
                await reply.json(404, {"error": "no such route"})
            else:
                await handler(request, reply)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client hung up: what a bounded reader is expected to do
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._tasks.discard(task)


async def forever(data: bytes) -> AsyncIterator[bytes]:
    while True:
        yield data


async def until(condition: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    """Poll condition() on the running loop until it is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
