"""The least a post can cost on this stack: a bare ASGI app under uvicorn (the server
and HTTP parser every Nyth service runs on) that stores each POST body with one
redis-py XADD and answers 201 with its id. No framework, no validation, no Lua, no live
feed: no implementation of POST /v1/blobs on uvicorn and redis-py can be cheaper, so
benchmarks/group_server.py measures it in the same run as a ceiling for the API's
posts. Run as ``python -m uvicorn benchmarks.bare_post:app``, with NYTH_REDIS_URL and
BARE_POST_KEY (the stream) in the environment.
"""

from __future__ import annotations

import os
from typing import Any

import redis.asyncio as aioredis

Scope = dict[str, Any]
Message = dict[str, Any]

_redis = aioredis.Redis.from_url(os.environ["NYTH_REDIS_URL"])
_key = os.environ["BARE_POST_KEY"]


async def _answer(send: Any, status: int, body: bytes = b"") -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await _redis.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    if scope["method"] == "GET" and scope["path"] == "/healthz":
        await _answer(send, 200, b'{"status":"ok"}')
        return
    if scope["method"] != "POST":
        await _answer(send, 404)
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    entry_id = await _redis.xadd(_key, {"b": body})
    raw_id = entry_id if isinstance(entry_id, bytes) else entry_id.encode()
    await _answer(send, 201, b'{"id":"%s"}' % raw_id)
