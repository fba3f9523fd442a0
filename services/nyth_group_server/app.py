"""The group server's HTTP API: an untrusted store of same-size opaque blobs.

The server never parses a blob; it cannot tell groups apart. Clients fetch everything
after a cursor (paged, or as a Server-Sent Events stream) and trial-decrypt.

With NYTH_TOKENS_REQUIRED every post pays with a Privacy Pass token, issued for proof of
work at POST /v1/tokens (nyth_group_server.tokens): a flood without tokens stores, and
so evicts, nothing.

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
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from nyth.advertiser import Advertiser, AdvertsField, AdvertView
from nyth.proto.blob_page import MEDIA_TYPE as BINARY_PAGE
from nyth.proto.blob_page import encode_page
from nyth.proto.bundle import ServerBundle
from nyth.proto.discovery import ServerKind
from nyth.proto.identity import Identity
from nyth.proto.tokens import NO_TOKENS, TokenSecretKey
from nyth.runtime.onion_service import (
    Health,
    LastEventId,
    OnionService,
    answer_redis_errors,
    check_cursor,
    event_stream_responses,
    onion_status,
    redis_client,
    unseal,
)
from nyth.runtime.redis_link import ReplicaWait
from nyth.runtime.stream_store import CURSOR_PATTERN
from nyth.web import ErrorResponse, error_json, error_responses, install_common
from prometheus_client import Counter, Gauge
from pydantic import AfterValidator, BaseModel, Field
from redis.exceptions import RedisError
from sse_starlette import EventSourceResponse, ServerSentEvent

from nyth_group_server.faults import FaultPolicy, FaultsView, reader_dependency
from nyth_group_server.group_commit import QueueFull
from nyth_group_server.negotiation import NotAcceptable, choose_page_type
from nyth_group_server.settings import GroupServerSettings
from nyth_group_server.storage import AlreadySpent, BlobStore, Cursor, LiveFeed, Page
from nyth_group_server.tokens import (
    MAX_ISSUE_BODY,
    POST_REFUSALS,
    REDEEMED,
    REDEMPTION_B64_CHARS,
    REDEMPTION_PATTERN,
    TOKEN_HEADER,
    TokenGate,
    TokenRefused,
    load_or_create_token_key,
    token_routes,
    wrong_key,
)

log = logging.getLogger("nyth_group_server")

SERVICE = "group-server"
CURSOR_HELP = (
    'Cursor: "0" (from the start) or a stream id "<ms>-<seq>" returned by this server. '
    "Only blobs after it are returned."
)
# Pub-sub wakes the live feed at once; this periodic read only covers lost wake-ups.
FEED_POLL_SECONDS = 5.0
DEV_MODE_NOTE = (
    "\n\n**Dev mode (NYTH_DEV_MODE): this server may misbehave on purpose** (drop, "
    "withhold, forget, delay or reorder blobs; /healthz lists what it does), and reads "
    "the test hook header `Nyth-Test-Reader`. Never run it in production."
)

POSTED = Counter("nyth_group_blobs_posted_total", "Blobs stored (acknowledged by Redis).")
TRIMMED = Counter("nyth_group_blobs_trimmed_total", "Blobs dropped for age retention.")
STREAMS = Gauge("nyth_group_sse_streams", "Open Server-Sent Events streams.")

# Caches must not hand a JSON page to a client that asked for a binary one, or back.
VARY_ACCEPT = {"vary": "Accept"}

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
    tokens_required: bool = Field(description="Whether every post needs a token.")
    token_pow_bits: int = Field(
        description="Proof of work (leading zero bits) one issue request costs.")


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
    tokens_required: bool = Field(
        False, description="Whether every post needs a token (NYTH_TOKENS_REQUIRED).")
    adverts: dict[str, AdvertView] | None = AdvertsField


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
    tokens: TokenGate | None  # None: no tokens required
    advertiser: Advertiser | None = None  # None: no discovery index configured


def wanted_bundle(settings: GroupServerSettings, identity: Identity,
                  token_key: TokenSecretKey | None = None) -> ServerBundle:
    """The bundle these settings promise; the one on disk is re-used while it says the same."""
    return ServerBundle(
        onion_public_key=identity.public_key,
        token_public_key=NO_TOKENS if token_key is None else token_key.public_key,
        blob_size=settings.blob_size,
        max_blobs=settings.max_blobs,
        max_age_seconds=settings.max_age_seconds,
        issued_at=int(time.time()),
        token_pow_bits=settings.token_pow_bits if token_key is not None else 0,
    )


async def _token_key(settings: GroupServerSettings) -> TokenSecretKey | None:
    if not settings.tokens_required:
        return None
    # Off the event loop: unsealing is an Argon2id derivation.
    return await asyncio.to_thread(load_or_create_token_key, settings.token_key_path,
                                   settings.passphrase())


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _binary_page(page: Page, blob_size: int) -> bytes:
    return encode_page([(b.id.ms, b.id.seq) for b in page.blobs], [b.blob for b in page.blobs],
                       (page.next.ms, page.next.seq), page.more, blob_size)


def create_app(settings: GroupServerSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        token_key = await _token_key(settings)
        identity, bundle = await unseal(
            settings, lambda s, i: wanted_bundle(s, i, token_key), log)
        redis = redis_client(settings)
        faults = FaultPolicy.from_settings(settings, identity.onion)
        gate = None if token_key is None else TokenGate(
            token_key, settings.token_pow_bits, redis, settings.stream_key,
            settings.token_replay_seconds,
            wrong_key(token_key) if faults.token_wrong_key else token_key)
        store = BlobStore(
            redis, key_prefix=settings.stream_key, blob_size=settings.blob_size,
            max_blobs=settings.max_blobs, max_age_seconds=settings.max_age_seconds,
            spent_key=None if gate is None else gate.spent_key,
            wait=ReplicaWait.from_settings(settings),
        )
        # The ring never holds more than the retention allows, so the live feed cannot
        # hand out a blob that count retention already dropped long ago.
        feed = LiveFeed(store, poll_interval=FEED_POLL_SECONDS,
                        ring_size=min(1024, settings.max_blobs))
        state = ServerState(settings, identity, bundle, redis, store, feed, faults, gate)
        app.state.nyth = state
        state.spawn(feed.run(), "live-feed")
        state.start(store)
        if faults.forget_after_seconds is not None:
            state.spawn(faults.forget_loop(store, settings.trim_interval_seconds), "fault-forget")
        # Behind an Onionbalance front every replica is the same server: the first
        # instance alone advertises it (the others' adverts would only repeat it, each one
        # paying the index's proof of work and most of them refused as too frequent).
        if settings.onionbalance_instance in (None, 1):
            state.advertiser = Advertiser.from_settings(
                settings, ServerKind.GROUP_SERVER, identity, bundle,
                ready=lambda: onion_status(state.publisher)[0] is not False)
        if state.advertiser is not None:
            state.spawn(state.advertiser.run(), "advertiser")
        log.info("group server %s.onion listening on %s:%d (blob %d B, keep %d blobs / %d s; "
                 "%s)", identity.onion, settings.listen_host, settings.listen_port,
                 settings.blob_size, settings.max_blobs, settings.max_age_seconds,
                 f"a token per post, {settings.token_pow_bits}-bit work per 32"
                 if gate else "no tokens")
        if faults.dev_mode:
            log.warning("DEV MODE: test hooks on; injected faults: %s (details on /healthz)",
                        ", ".join(faults.active) or "none")
        try:
            yield
        finally:
            if state.advertiser is not None:
                state.advertiser.close()  # its proof of work runs in a thread
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
    app.include_router(_bundle_routes(settings))
    app.include_router(_blob_routes(settings))
    if settings.tokens_required:
        app.include_router(token_routes())
    app.include_router(_operations_routes())
    answer_redis_errors(app, log)
    install_common(app, SERVICE, max_body_bytes=settings.blob_size,
                   path_body_bytes={"/v1/tokens": MAX_ISSUE_BODY}
                   if settings.tokens_required else None)
    return app


def _server(request: Request) -> ServerState:
    state: ServerState = request.app.state.nyth
    return state


def _bundle_routes(settings: GroupServerSettings) -> APIRouter:
    router = APIRouter(tags=["group"])

    @router.get("/v1/bundle", response_model=BundleResponse,
                summary="The server's signed key bundle and the limits it enforces")
    async def get_bundle(request: Request) -> BundleResponse:
        state = _server(request)
        return BundleResponse(
            bundle=_b64(state.bundle), onion=state.identity.onion,
            blob_size=settings.blob_size, max_blobs=settings.max_blobs,
            max_age_seconds=settings.max_age_seconds,
            tokens_required=state.tokens is not None,
            token_pow_bits=settings.token_pow_bits if state.tokens is not None else 0,
        )

    return router


def _blob_routes(settings: GroupServerSettings) -> APIRouter:
    router = APIRouter(tags=["group"])
    # Who reads: always None outside dev mode (see nyth_group_server.faults).
    Reader = Annotated[str | None, Depends(reader_dependency(settings.dev_mode))]

    @router.post(
        "/v1/blobs", status_code=201, response_model=PostResponse,
        summary="Store one opaque blob of exactly blob_size bytes",
        description=("Every post pays with one token (docs/protocol.md §9), bound to the "
                     f"blob, in the `{TOKEN_HEADER}` header." if settings.tokens_required
                     else "This server wants no tokens."),
        responses=_post_responses(settings.tokens_required),
        openapi_extra=_post_openapi(settings),
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
        try:
            cursor = await _store(state, body, request.headers.get(TOKEN_HEADER))
        except TokenRefused as exc:
            return exc.response()
        except QueueFull:
            return error_json(503, "too many posts are waiting on this server; retry later",
                              headers={"Retry-After": "2"})
        return JSONResponse({"id": str(cursor)}, status_code=201)

    @router.get(
        "/v1/blobs", response_model=BlobPage,
        summary="Blobs after a cursor, oldest first, one page at a time",
        description=(
            "JSON (base64 blobs) by default. A client that sends "
            f"`Accept: {BINARY_PAGE}` (ranked above `application/json`) gets a binary "
            "page instead: a fixed header with the cursor to continue from, then each "
            "blob's stream id, then the blobs back to back (docs/protocol.md §4.1). An "
            "Accept header that allows neither type is answered 406."
        ),
        responses={
            200: {"description": "A page of blobs", "content": {BINARY_PAGE: {"schema": {
                "type": "string", "format": "binary",
                "description": "A binary page (docs/protocol.md §4.1)"}}}},
            **error_responses(406, 422, 503),
        },
    )
    async def get_blobs(
        request: Request,
        reader: Reader,
        after: CursorParam = "0",
        limit: Annotated[int, Query(ge=1, le=settings.max_page,
                                    description="Page size")] = settings.max_page,
    ) -> Response:
        try:
            media_type = choose_page_type(request.headers.get("accept"))
        except NotAcceptable as exc:
            return error_json(406, str(exc), headers=VARY_ACCEPT)
        state = _server(request)
        await state.faults.delay()
        if media_type == BINARY_PAGE and not state.faults.alters_reads:
            data = await state.store.read_binary_page(Cursor.parse(after), limit)
            return Response(data, media_type=BINARY_PAGE, headers=VARY_ACCEPT)
        page = await state.faults.read_page(state.store, Cursor.parse(after), limit, reader)
        if media_type == BINARY_PAGE:
            return Response(_binary_page(page, settings.blob_size), media_type=BINARY_PAGE,
                            headers=VARY_ACCEPT)
        # The BlobPage shape, built as plain dicts: the model would re-validate every item.
        return JSONResponse({
            "blobs": [{"id": str(b.id), "blob": _b64(b.blob)} for b in page.blobs],
            "next": str(page.next), "more": page.more,
        }, headers=VARY_ACCEPT)

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


def _post_responses(tokens_required: bool) -> dict[int | str, dict[str, Any]]:
    responses = error_responses(413, 415, 422, 503)
    if tokens_required:
        responses.update({code: {"model": ErrorResponse, "description": text}
                          for code, text in POST_REFUSALS.items()})
    return responses


def _post_openapi(settings: GroupServerSettings) -> dict[str, Any]:
    """The raw body (read by hand, so it is never parsed) and, when tokens are required,
    the token header: documented as optional, since its absence has its own answer (402)."""
    extra: dict[str, Any] = {"requestBody": {"required": True, "content": {
        "application/octet-stream": {"schema": {
            "type": "string", "format": "binary",
            "minLength": settings.blob_size, "maxLength": settings.blob_size,
        }},
    }}}
    if settings.tokens_required:
        extra["parameters"] = [{
            "name": TOKEN_HEADER, "in": "header", "required": False,
            "description": "Base64 of the 64-byte redemption of one token, bound to this blob",
            "schema": {"type": "string", "pattern": REDEMPTION_PATTERN,
                       "minLength": REDEMPTION_B64_CHARS, "maxLength": REDEMPTION_B64_CHARS},
        }]
    return extra


async def _store(state: ServerState, body: bytes, token: str | None) -> Cursor:
    """Store a post (paid for, when tokens are required); TokenRefused if its token is
    not good for it. The drop fault answers as if it had stored it."""
    gate = state.tokens
    spend_id = None if gate is None else gate.check_post(token, body)
    if state.faults.drops(body):
        dropped = await state.faults.drop(state.store, spend_id)
        if dropped is None:
            assert gate is not None
            raise gate.spent()
        return dropped
    try:
        cursor = await state.store.append(body, spend_id)
    except AlreadySpent:
        assert gate is not None
        raise gate.spent() from None
    POSTED.inc()
    if spend_id is not None:
        REDEEMED.inc()
    return cursor


def _operations_routes() -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get(
        "/healthz", response_model=GroupHealth, summary="Liveness, Redis, and dev mode",
        responses={503: {"model": GroupHealth, "description": "Redis is unreachable"}},
    )
    async def healthz(request: Request) -> Response:
        state = _server(request)
        return await state.health(GroupHealth, dev_mode=state.faults.dev_mode,
                                  faults=state.faults.view(),
                                  tokens_required=state.tokens is not None,
                                  adverts=state.advertiser.view() if state.advertiser else None)

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
