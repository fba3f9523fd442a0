"""The group server's HTTP API: an untrusted store of same-size opaque blobs.

The server never parses a blob; it cannot tell groups apart. Clients fetch everything
after a cursor (paged, or as a Server-Sent Events stream) and trial-decrypt.
"""


import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import anyio
import redis.asyncio as aioredis
from fastapi import FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from nyth.keystore import load_or_create_identity, write_private_file
from nyth.proto.bundle import ServerBundle
from nyth.proto.identity import Identity
from nyth.web import error_json, error_responses, install_common
from prometheus_client import Counter, Gauge
from pydantic import AfterValidator, BaseModel, Field
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask

from nyth_group_server.settings import GroupServerSettings
from nyth_group_server.storage import BlobStore, Cursor, LiveFeed

log = logging.getLogger("nyth_group_server")

SERVICE = "group-server"
CURSOR_PATTERN = r"^(0|[0-9]{1,19}-[0-9]{1,19})$"
CURSOR_HELP = (
    'Cursor: "0" (from the start) or a stream id "<ms>-<seq>" returned by this server. '
    "Only blobs after it are returned."
)
# Pub-sub wakes the live feed at once; this periodic read only covers lost wake-ups.
FEED_POLL_SECONDS = 5.0
# Tokens are not implemented yet; an all-zero key tells clients none are required.
NO_TOKEN_KEY = bytes(32)

POSTED = Counter("nyth_group_blobs_posted_total", "Blobs stored (acknowledged by Redis).")
TRIMMED = Counter("nyth_group_blobs_trimmed_total", "Blobs dropped for age retention.")
STREAMS = Gauge("nyth_group_sse_streams", "Open Server-Sent Events streams.")


def _check_cursor(value: str) -> str:
    Cursor.parse(value)  # DecodeError is a ValueError: pydantic reports its message
    return value


def _check_optional_cursor(value: str | None) -> str | None:
    return None if value is None else _check_cursor(value)


CursorParam = Annotated[
    str,
    Query(description=CURSOR_HELP, max_length=40, json_schema_extra={"pattern": CURSOR_PATTERN}),
    AfterValidator(_check_cursor),
]


# -- response models ------------------------------------------------------------------


class BundleResponse(BaseModel):
    bundle: str = Field(description="Base64 of the signed ServerBundle bytes (pin these).")
    onion: str = Field(description="The server's onion service id (56 characters, no .onion).")
    blob_size: int = Field(description="Every blob is exactly this many bytes.")
    max_blobs: int = Field(description="The server keeps at most this many blobs.")
    max_age_seconds: int = Field(description="Blobs older than this are dropped.")


class PostResponse(BaseModel):
    id: str = Field(description="Cursor of the stored blob.", pattern=CURSOR_PATTERN)


class BlobItem(BaseModel):
    id: str = Field(pattern=CURSOR_PATTERN)
    blob: str = Field(description="Base64 of the blob bytes.")


class BlobPage(BaseModel):
    blobs: list[BlobItem]
    next: str = Field(description="Pass as `after` to continue.", pattern=CURSOR_PATTERN)
    more: bool = Field(description="True when more blobs are already waiting after `next`.")


class Health(BaseModel):
    status: str = Field(description='"ok" or "unavailable".')
    onion: str
    redis: str = Field(description='"ok" or why Redis cannot be used.')
    onion_published: bool | None = Field(
        description="Whether the onion service is published; null when no tor is configured."
    )
    onion_state: str | None = None
    onion_reason: str | None = None
    reason: str | None = Field(None, description="Why the service is unavailable.")


# -- state ------------------------------------------------------------------------------


@dataclass
class ServerState:
    settings: GroupServerSettings
    identity: Identity
    bundle: bytes
    redis: aioredis.Redis
    store: BlobStore
    feed: LiveFeed
    publisher: Any = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    active_streams: int = 0


def load_or_issue_bundle(settings: GroupServerSettings, identity: Identity) -> bytes:
    """The signed bundle, re-used across restarts while keys and limits are unchanged.

    Clients pin the exact bytes: re-signing with a fresh issued_at on every restart
    would look like a key change to every one of them.
    """
    path = settings.bundle_path
    if path.exists():
        try:
            data = path.read_bytes()
            old = ServerBundle.verify(data, identity.onion)
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable bundle at %s: %s", path, exc)
        else:
            if (old.token_public_key, old.blob_size, old.max_blobs, old.max_age_seconds) == (
                NO_TOKEN_KEY, settings.blob_size, settings.max_blobs, settings.max_age_seconds
            ):
                return data
            log.warning(
                "limits changed (blob_size %d->%d, max_blobs %d->%d, max_age %d->%d s): "
                "issuing a new bundle; clients that pinned the old one will refuse it until "
                "they re-pin", old.blob_size, settings.blob_size, old.max_blobs,
                settings.max_blobs, old.max_age_seconds, settings.max_age_seconds,
            )
    bundle = ServerBundle(
        onion_public_key=identity.public_key,
        token_public_key=NO_TOKEN_KEY,
        blob_size=settings.blob_size,
        max_blobs=settings.max_blobs,
        max_age_seconds=settings.max_age_seconds,
        issued_at=int(time.time()),
    )
    data = bundle.sign(identity)
    write_private_file(path, data)
    return data


def _status_fields(publisher: Any) -> tuple[bool | None, str | None, str | None]:
    """(published, state, reason) from the publisher's status, tolerant of its shape."""
    if publisher is None:
        return None, None, None
    status = getattr(publisher, "status", None)
    raw_state = getattr(status, "state", status)
    state = getattr(raw_state, "value", raw_state)
    state_text = None if state is None else str(state)
    reason = getattr(status, "reason", None)
    published = state_text is not None and state_text.lower() in {"published", "up", "online"}
    return published, state_text, None if reason is None else str(reason)


async def _trim_loop(state: ServerState) -> None:
    while True:
        try:
            removed = await state.store.trim_by_age()
            if removed:
                TRIMMED.inc(removed)
                log.info("trimmed %d blobs past max age", removed)
        except RedisError as exc:
            log.warning("age trim failed: %s", exc)
        await asyncio.sleep(state.settings.trim_interval_seconds)


def _start_publisher(state: ServerState) -> None:
    settings = state.settings
    assert settings.tor_control is not None
    # Imported here: only deployments that publish an onion need tor/stem wiring.
    from nyth.tor.endpoints import ControlEndpoint
    from nyth.tor.publisher import OnionPublisher

    password = (
        settings.tor_control_password.get_secret_value()
        if settings.tor_control_password is not None else None
    )
    control = ControlEndpoint.from_string(settings.tor_control, password)

    def on_status(*args: Any) -> None:
        _published, state_text, reason = _status_fields(state.publisher)
        log.info("onion %s.onion: %s%s", state.identity.onion, state_text,
                 f" ({reason})" if reason else "")

    state.publisher = OnionPublisher(
        control, state.identity, virtual_port=settings.onion_port,
        target=settings.effective_onion_target, on_status=on_status,
    )
    state.tasks.append(asyncio.create_task(state.publisher.run(), name="onion-publisher"))
    log.info("publishing %s.onion:%d -> %s through tor at %s", state.identity.onion,
             settings.onion_port, settings.effective_onion_target, control)


async def _cancel_and_wait(task: asyncio.Task[Any], timeout: float = 5.0) -> None:
    # Cancel repeatedly: on Python 3.11 a cancel that lands while redis-py's read
    # timeout fires can be swallowed, and a single cancel() then waits forever.
    deadline = asyncio.get_running_loop().time() + timeout
    while not task.done() and asyncio.get_running_loop().time() < deadline:
        task.cancel()
        await asyncio.wait([task], timeout=0.1)
    if not task.done():
        log.warning("task %s did not stop within %.0f s", task.get_name(), timeout)
    elif not task.cancelled() and task.exception() is not None:
        log.warning("task %s failed: %r", task.get_name(), task.exception())


def _redis_client(url: str) -> aioredis.Redis:
    # A few quick retries ride out a Redis restart; beyond that the caller gets a 503
    # promptly instead of hanging (and may retry: blobs are idempotent for clients).
    return aioredis.Redis.from_url(
        url, socket_timeout=5.0, socket_connect_timeout=2.0,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
        health_check_interval=15,
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def create_app(settings: GroupServerSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Argon2id unsealing takes a moment of CPU: keep the loop free meanwhile.
        identity = await asyncio.to_thread(
            load_or_create_identity, settings.key_path, settings.passphrase()
        )
        bundle = await asyncio.to_thread(load_or_issue_bundle, settings, identity)
        redis = _redis_client(settings.redis_url)
        store = BlobStore(
            redis, key_prefix=settings.stream_key, blob_size=settings.blob_size,
            max_blobs=settings.max_blobs, max_age_seconds=settings.max_age_seconds,
        )
        # The ring never holds more than the retention allows, so the live feed cannot
        # hand out a blob that count retention already dropped long ago.
        feed = LiveFeed(store, poll_interval=FEED_POLL_SECONDS,
                        ring_size=min(1024, settings.max_blobs))
        state = ServerState(settings, identity, bundle, redis, store, feed)
        app.state.nyth = state
        state.tasks.append(asyncio.create_task(feed.run(), name="live-feed"))
        state.tasks.append(asyncio.create_task(_trim_loop(state), name="age-trim"))
        if settings.tor_control:
            _start_publisher(state)
        log.info("group server %s.onion listening on %s:%d (blob %d B, keep %d blobs / %d s)",
                 identity.onion, settings.listen_host, settings.listen_port,
                 settings.blob_size, settings.max_blobs, settings.max_age_seconds)
        try:
            yield
        finally:
            for task in state.tasks:
                task.cancel()
            await asyncio.gather(*(_cancel_and_wait(task) for task in state.tasks))
            await redis.aclose()

    app = FastAPI(
        title="Nyth group server",
        version="1",
        description=(
            "Untrusted store of fixed-size encrypted group messages. Every blob is exactly "
            f"`blob_size` ({settings.blob_size}) bytes; the server cannot read them or tell "
            "which group one belongs to. Clients fetch everything after a cursor."
        ),
        lifespan=lifespan,
    )

    def server(request: Request) -> ServerState:
        state: ServerState = request.app.state.nyth
        return state

    @app.get("/v1/bundle", response_model=BundleResponse, tags=["group"],
             summary="The server's signed key bundle and the limits it enforces")
    async def get_bundle(request: Request) -> BundleResponse:
        state = server(request)
        return BundleResponse(
            bundle=_b64(state.bundle), onion=state.identity.onion,
            blob_size=settings.blob_size, max_blobs=settings.max_blobs,
            max_age_seconds=settings.max_age_seconds,
        )

    @app.post(
        "/v1/blobs", status_code=201, response_model=PostResponse, tags=["group"],
        summary="Store one opaque blob of exactly blob_size bytes",
        responses=error_responses(413, 415, 422, 503),
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/octet-stream": {"schema": {
                "type": "string", "format": "binary",
                "minLength": settings.blob_size, "maxLength": settings.blob_size,
            }},
        }}},
    )
    async def post_blob(request: Request) -> Response:
        content_type = request.headers.get("content-type")
        if content_type is not None and content_type.split(";")[0].strip().lower() not in (
            "application/octet-stream", ""
        ):
            return error_json(415, "blobs are posted as application/octet-stream")
        # The body limit middleware already refused anything longer than blob_size.
        body = await request.body()
        if len(body) != settings.blob_size:
            return error_json(
                422, f"blob must be exactly {settings.blob_size} bytes, got {len(body)}"
            )
        cursor = await server(request).store.append(body)
        POSTED.inc()
        return JSONResponse({"id": str(cursor)}, status_code=201)

    @app.get(
        "/v1/blobs", response_model=BlobPage, tags=["group"],
        summary="Blobs after a cursor, oldest first, one page at a time",
        responses=error_responses(422, 503),
    )
    async def get_blobs(
        request: Request,
        after: CursorParam = "0",
        limit: Annotated[int, Query(ge=1, le=settings.max_page,
                                    description="Page size")] = settings.max_page,
    ) -> BlobPage:
        page = await server(request).store.read_after(Cursor.parse(after), limit)
        return BlobPage(
            blobs=[BlobItem(id=str(b.id), blob=_b64(b.blob)) for b in page.blobs],
            next=str(page.next), more=page.more,
        )

    @app.get(
        "/v1/blobs/stream", tags=["group"],
        summary="Server-Sent Events: the backlog after the cursor, then live blobs",
        description=(
            "Each event has `id: <cursor>`, `event: blob`, `data: <base64 blob>`. A "
            "reconnecting client sends Last-Event-ID, which takes precedence over `after`. "
            "Keep-alive comments are sent periodically."
        ),
        response_class=EventSourceResponse,
        responses={
            200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                  "description": "An endless event stream"},
            **error_responses(422, 503),
        },
    )
    async def stream_blobs(
        request: Request,
        after: CursorParam = "0",
        last_event_id: Annotated[
            str | None,
            Header(alias="Last-Event-ID", max_length=40,
                   description="Resume after this cursor (sent by EventSource on reconnect)"),
            AfterValidator(_check_optional_cursor),
        ] = None,
    ) -> Response:
        state = server(request)
        if state.active_streams >= settings.max_streams:
            return error_json(503, "too many open streams on this server; retry later",
                              headers={"Retry-After": "5"})
        start = Cursor.parse(last_event_id if last_event_id is not None else after)
        state.active_streams += 1
        STREAMS.inc()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                state.active_streams -= 1
                STREAMS.dec()

        # sse-starlette sets this when uvicorn begins shutting down; streams then end
        # cooperatively (a proper end of body) instead of being cut off mid-response.
        shutdown = anyio.Event()

        async def events() -> AsyncIterator[ServerSentEvent]:
            async def close_feed_on_shutdown() -> None:
                await shutdown.wait()
                state.feed.close()

            watcher = asyncio.create_task(close_feed_on_shutdown())
            try:
                async for event in _blob_events(state, start):
                    yield event
            finally:
                watcher.cancel()
                release()

        async def release_after_response() -> None:
            release()

        return EventSourceResponse(
            events(), ping=settings.keepalive_seconds,
            background=BackgroundTask(release_after_response),
            # A client that stops reading would otherwise hold its slot forever.
            send_timeout=60,
            shutdown_event=shutdown, shutdown_grace_period=2.0,
        )

    @app.get(
        "/healthz", response_model=Health, tags=["operations"], summary="Liveness and Redis",
        responses={503: {"model": Health, "description": "Redis is unreachable"}},
    )
    async def healthz(request: Request) -> Response:
        state = server(request)
        published, onion_state, onion_reason = _status_fields(state.publisher)
        health = Health(status="ok", onion=state.identity.onion, redis="ok",
                        onion_published=published, onion_state=onion_state,
                        onion_reason=onion_reason, reason=None)
        try:
            await asyncio.wait_for(state.redis.ping(), timeout=2.0)
        except (RedisError, OSError, TimeoutError) as exc:
            health.status = "unavailable"
            health.redis = f"unreachable: {exc.__class__.__name__}"
            health.reason = "redis is unreachable"
            return JSONResponse(health.model_dump(), status_code=503)
        return JSONResponse(health.model_dump())

    async def redis_down(request: Request, exc: Exception) -> Response:
        log.warning("storage unavailable: %s", exc)
        return error_json(503, "storage is unavailable, retry later",
                          headers={"Retry-After": "2"})

    app.add_exception_handler(RedisError, redis_down)
    install_common(app, SERVICE, max_body_bytes=settings.blob_size)
    return app


async def _blob_events(state: ServerState, start: Cursor) -> AsyncIterator[ServerSentEvent]:
    """Backlog after start, then live blobs, for one SSE client."""
    store, feed = state.store, state.feed
    page_size = state.settings.max_page
    cursor = start
    while True:
        # Snapshot before reading: everything up to head already existed, so once a
        # read found nothing more, the cursor may skip to head (expired entries
        # in between would otherwise make wait_beyond return at once, forever).
        covered_to = feed.head
        try:
            cached = feed.cached_after(cursor)
            if cached is not None:
                blobs, more = cached, False
            else:
                page = await store.read_after(cursor, page_size)
                blobs, more = page.blobs, page.more
        except RedisError as exc:
            log.warning("stream read failed (%s); retrying", exc)
            await asyncio.sleep(1.0)
            continue
        for blob in blobs:
            yield ServerSentEvent(data=_b64(blob.blob), id=str(blob.id), event="blob")
            cursor = blob.id
        if more:
            continue
        if feed.closing:
            return
        if covered_to is not None and covered_to > cursor:
            cursor = covered_to
        await feed.wait_beyond(cursor, timeout=feed.poll_interval)
