"""The group server's HTTP API: an untrusted store of same-size opaque blobs.

The server never parses a blob; it cannot tell groups apart. Clients fetch everything
after a cursor (paged, or as a Server-Sent Events stream) and trial-decrypt.

In dev mode (NYTH_DEV_MODE) it can misbehave on purpose; every route consults its
`FaultPolicy` (nyth_group_server.faults), which changes nothing otherwise.
"""


import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from nyth.proto.bundle import ServerBundle
from nyth.proto.identity import Identity
from nyth.runtime.onion_service import (
    Health,
    LastEventId,
    OnionService,
    answer_redis_errors,
    check_cursor,
    event_stream_responses,
    redis_client,
    unseal,
)
from nyth.runtime.stream_store import CURSOR_PATTERN
from nyth.web import error_json, error_responses, install_common
from prometheus_client import Counter, Gauge
from pydantic import AfterValidator, BaseModel, Field
from redis.exceptions import RedisError
from sse_starlette import EventSourceResponse, ServerSentEvent

from nyth_group_server.faults import FaultPolicy, FaultsView, reader_dependency
from nyth_group_server.settings import GroupServerSettings
from nyth_group_server.storage import BlobStore, Cursor, LiveFeed

log = logging.getLogger("nyth_group_server")

SERVICE = "group-server"
CURSOR_HELP = (
    'Cursor: "0" (from the start) or a stream id "<ms>-<seq>" returned by this server. '
    "Only blobs after it are returned."
)
# Pub-sub wakes the live feed at once; this periodic read only covers lost wake-ups.
FEED_POLL_SECONDS = 5.0
# Tokens are not implemented yet; an all-zero key tells clients none are required.
NO_TOKEN_KEY = bytes(32)
DEV_MODE_NOTE = (
    "\n\n**Dev mode (NYTH_DEV_MODE): this server may misbehave on purpose** (drop, "
    "withhold, forget, delay or reorder blobs; /healthz lists what it does), and reads "
    "the test hook header `Nyth-Test-Reader`. Never run it in production."
)

POSTED = Counter("nyth_group_blobs_posted_total", "Blobs stored (acknowledged by Redis).")
TRIMMED = Counter("nyth_group_blobs_trimmed_total", "Blobs dropped for age retention.")
STREAMS = Gauge("nyth_group_sse_streams", "Open Server-Sent Events streams.")

CursorParam = Annotated[
    str,
    Query(description=CURSOR_HELP, max_length=40, json_schema_extra={"pattern": CURSOR_PATTERN}),
    AfterValidator(check_cursor),
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


class GroupHealth(Health):
    dev_mode: bool = Field(
        False, description="Test hooks allowed (NYTH_DEV_MODE); never true in production.")
    faults: FaultsView | None = Field(
        None, description="The faults this server injects on purpose; null outside dev mode.")


# -- state ------------------------------------------------------------------------------


@dataclass
class ServerState(OnionService[GroupServerSettings]):
    log = log
    streams_gauge = STREAMS
    trimmed_counter = TRIMMED
    entries = "blobs"

    store: BlobStore
    feed: LiveFeed
    faults: FaultPolicy


def wanted_bundle(settings: GroupServerSettings, identity: Identity) -> ServerBundle:
    """The bundle these settings promise; the one on disk is re-used while it says the same."""
    return ServerBundle(
        onion_public_key=identity.public_key,
        token_public_key=NO_TOKEN_KEY,
        blob_size=settings.blob_size,
        max_blobs=settings.max_blobs,
        max_age_seconds=settings.max_age_seconds,
        issued_at=int(time.time()),
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def create_app(settings: GroupServerSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        identity, bundle = await unseal(settings, wanted_bundle, log)
        redis = redis_client(settings.redis_url)
        store = BlobStore(
            redis, key_prefix=settings.stream_key, blob_size=settings.blob_size,
            max_blobs=settings.max_blobs, max_age_seconds=settings.max_age_seconds,
        )
        # The ring never holds more than the retention allows, so the live feed cannot
        # hand out a blob that count retention already dropped long ago.
        feed = LiveFeed(store, poll_interval=FEED_POLL_SECONDS,
                        ring_size=min(1024, settings.max_blobs))
        faults = FaultPolicy.from_settings(settings, identity.onion)
        state = ServerState(settings, identity, bundle, redis, store, feed, faults)
        app.state.nyth = state
        state.spawn(feed.run(), "live-feed")
        state.start(store)
        if faults.forget_after_seconds is not None:
            state.spawn(faults.forget_loop(store, settings.trim_interval_seconds), "fault-forget")
        log.info("group server %s.onion listening on %s:%d (blob %d B, keep %d blobs / %d s)",
                 identity.onion, settings.listen_host, settings.listen_port,
                 settings.blob_size, settings.max_blobs, settings.max_age_seconds)
        if faults.dev_mode:
            log.warning("DEV MODE: test hooks on; injected faults: %s (details on /healthz)",
                        ", ".join(faults.active) or "none")
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(
        title="Nyth group server",
        version="1",
        description=(
            "Untrusted store of fixed-size encrypted group messages. Every blob is exactly "
            f"`blob_size` ({settings.blob_size}) bytes; the server cannot read them or tell "
            "which group one belongs to. Clients fetch everything after a cursor."
            + (DEV_MODE_NOTE if settings.dev_mode else "")
        ),
        lifespan=lifespan,
    )
    app.include_router(_group_routes(settings))
    app.include_router(_operations_routes())
    answer_redis_errors(app, log)
    install_common(app, SERVICE, max_body_bytes=settings.blob_size)
    return app


def _server(request: Request) -> ServerState:
    state: ServerState = request.app.state.nyth
    return state


def _group_routes(settings: GroupServerSettings) -> APIRouter:
    router = APIRouter(tags=["group"])
    # Who reads: always None outside dev mode (see nyth_group_server.faults).
    Reader = Annotated[str | None, Depends(reader_dependency(settings.dev_mode))]

    @router.get("/v1/bundle", response_model=BundleResponse,
                summary="The server's signed key bundle and the limits it enforces")
    async def get_bundle(request: Request) -> BundleResponse:
        state = _server(request)
        return BundleResponse(
            bundle=_b64(state.bundle), onion=state.identity.onion,
            blob_size=settings.blob_size, max_blobs=settings.max_blobs,
            max_age_seconds=settings.max_age_seconds,
        )

    @router.post(
        "/v1/blobs", status_code=201, response_model=PostResponse,
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
        state = _server(request)
        await state.faults.delay()
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
        if state.faults.drops(body):
            cursor = await state.faults.drop(state.store)
        else:
            cursor = await state.store.append(body)
            POSTED.inc()
        return JSONResponse({"id": str(cursor)}, status_code=201)

    @router.get(
        "/v1/blobs", response_model=BlobPage,
        summary="Blobs after a cursor, oldest first, one page at a time",
        responses=error_responses(422, 503),
    )
    async def get_blobs(
        request: Request,
        reader: Reader,
        after: CursorParam = "0",
        limit: Annotated[int, Query(ge=1, le=settings.max_page,
                                    description="Page size")] = settings.max_page,
    ) -> BlobPage:
        state = _server(request)
        await state.faults.delay()
        page = await state.faults.read_page(state.store, Cursor.parse(after), limit, reader)
        return BlobPage(
            blobs=[BlobItem(id=str(b.id), blob=_b64(b.blob)) for b in page.blobs],
            next=str(page.next), more=page.more,
        )

    @router.get(
        "/v1/blobs/stream",
        summary="Server-Sent Events: the backlog after the cursor, then live blobs",
        description=(
            "Each event has `id: <cursor>`, `event: blob`, `data: <base64 blob>`. A "
            "reconnecting client sends Last-Event-ID, which takes precedence over `after`. "
            "Keep-alive comments are sent periodically."
        ),
        response_class=EventSourceResponse,
        responses=event_stream_responses(),
    )
    async def stream_blobs(
        request: Request, reader: Reader, after: CursorParam = "0",
        last_event_id: LastEventId = None,
    ) -> Response:
        start = Cursor.parse(last_event_id if last_event_id is not None else after)
        state = _server(request)
        return state.event_stream(_blob_events(state, start, reader),
                                  close_feed=state.feed.close)

    return router


def _operations_routes() -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get(
        "/healthz", response_model=GroupHealth, summary="Liveness, Redis, and dev mode",
        responses={503: {"model": GroupHealth, "description": "Redis is unreachable"}},
    )
    async def healthz(request: Request) -> Response:
        state = _server(request)
        return await state.health(GroupHealth, dev_mode=state.faults.dev_mode,
                                  faults=state.faults.view())

    return router


async def _blob_events(state: ServerState, start: Cursor,
                       reader: str | None) -> AsyncIterator[ServerSentEvent]:
    """Backlog after start, then live blobs, for one SSE client."""
    store, feed, faults = state.store, state.feed, state.faults
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
        if blobs:
            cursor = blobs[-1].id
            served = faults.serve(blobs, reader)  # = blobs, unless faults are injected
            if served:
                await faults.delay()
            for blob in served:
                yield ServerSentEvent(data=_b64(blob.blob), id=str(blob.id), event="blob")
        if more:
            continue
        if feed.closing:
            return
        if covered_to is not None and covered_to > cursor:
            cursor = covered_to
        await feed.wait_beyond(cursor, timeout=feed.poll_interval)
