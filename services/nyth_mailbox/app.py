"""The mailbox's HTTP API: offline first contact and delivery with Fuzzy Message Detection.

The mailbox stores records (an FMD tag and a fixed-size ciphertext), all the same size,
and signed contact cards. It never learns who a record is for unless a recipient
delegates a detection key, and then only up to that key's false-positive rate. Posting
costs a proof of work; a replayed post is refused; the retention in the signed bundle
is enforced.
"""


import asyncio
import base64
import binascii
import contextlib
import importlib
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from nyth.advertiser import Advertiser, AdvertsField, AdvertView
from nyth.errors import AuthenticationError, DecodeError
from nyth.http_limits import b64_len
from nyth.proto.contact_card import CARD_SIZE, ContactCard
from nyth.proto.discovery import ServerKind
from nyth.proto.hashcash import U64_MAX
from nyth.proto.identity import Identity, public_key_from_onion
from nyth.proto.mailbox_bundle import MailboxBundle, card_pow_ok, pow_ok
from nyth.runtime.onion_service import Health as ServiceHealth
from nyth.runtime.onion_service import (
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
from nyth.web import error_json, error_responses, install_common
from prometheus_client import Counter, Gauge
from pydantic import AfterValidator, BaseModel, Field
from redis.exceptions import RedisError
from sse_starlette import EventSourceResponse, ServerSentEvent

from nyth_mailbox.detection import DetectionPool, PoolBroken, default_workers
from nyth_mailbox.settings import MailboxSettings
from nyth_mailbox.storage import Cursor, MailboxStore, Notifier, StoredRecord

log = logging.getLogger("nyth_mailbox")

SERVICE = "mailbox"
# FMD2 tags at γ = 24: U (32) ‖ y (32) ‖ 24 bits (3). Must equal nyth.proto.fmd.TAG_SIZE.
TAG_SIZE = 67
MAX_DETECTION_KEY_BYTES = 24 * 32
CURSOR_HELP = (
    'Cursor: "0" (from the start) or a stream id "<ms>-<seq>" returned by this server. '
    "Only records after it are returned."
)
ONION_PATTERN = r"^[a-z2-7]{56}$"
B64_PATTERN = r"^[A-Za-z0-9+/]*={0,2}$"
FEED_POLL_SECONDS = 5.0
DETECT_CHUNK = 500

POSTED = Counter("nyth_mailbox_records_posted_total", "Records stored.")
REPLAYS = Counter("nyth_mailbox_replays_refused_total", "Posts refused as replays.")
POW_FAILED = Counter("nyth_mailbox_pow_failed_total",
                     "Posts and cards refused for insufficient work.", ["what"])
TRIMMED = Counter("nyth_mailbox_records_trimmed_total", "Records dropped for age retention.")
CARDS = Counter("nyth_mailbox_cards_stored_total", "Contact cards stored or renewed.")
TESTS = Counter("nyth_mailbox_detection_tests_total", "(tag, detection key) tests run.")
DETECT_BUSY = Counter("nyth_mailbox_detect_busy_total",
                      "POST /v1/detect calls refused because max_concurrent_detects were running.")
STREAMS = Gauge("nyth_mailbox_detection_streams",
                "Open detection streams (registered detection keys).")


class InvalidInput(Exception):
    """A well-typed field whose content is wrong; answered 422 {"error": ...}."""


def fmd_module() -> ModuleType | None:
    """nyth.proto.fmd, imported lazily (it is developed separately); None if absent."""
    try:
        return importlib.import_module("nyth.proto.fmd")
    except ImportError:
        return None


def _b64decode(value: str, name: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{name} is not valid base64") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _check_onion(value: str) -> str:
    public_key_from_onion(value)  # DecodeError is a ValueError: pydantic reports it
    return value


CursorParam = Annotated[
    str,
    Query(description=CURSOR_HELP, max_length=40, json_schema_extra={"pattern": CURSOR_PATTERN}),
    AfterValidator(check_cursor),
]
OnionPath = Annotated[
    str,
    Path(description="The profile's onion service id (56 lowercase base32, no .onion).",
         min_length=56, max_length=56, json_schema_extra={"pattern": ONION_PATTERN}),
    AfterValidator(_check_onion),
]


# -- request / response models ---------------------------------------------------------


class BundleResponse(BaseModel):
    bundle: str = Field(description="Base64 of the signed MailboxBundle bytes (pin these).")
    onion: str = Field(description="The mailbox's onion service id (no .onion).")
    tag_size: int
    record_size: int = Field(description="Every ciphertext is exactly this many bytes.")
    max_records: int
    max_age_seconds: int
    pow_bits: int = Field(description="Leading zero bits the proof of work of a post needs.")


class CardBody(BaseModel):
    card: str = Field(description=f"Base64 of the signed contact card ({CARD_SIZE} bytes).",
                      min_length=b64_len(CARD_SIZE), max_length=b64_len(CARD_SIZE),
                      pattern=B64_PATTERN)
    nonce: int = Field(0, ge=0, le=U64_MAX, description=(
        "Proof of work: BLAKE2b-256(person='nyth-card-pow') of mailbox onion key ‖ card ‖ "
        "u64 nonce must start with pow_bits zero bits (0 needs none)."))


class CardResponse(BaseModel):
    card: str = Field(description="Base64 of the signed contact card.")
    issued_at: int
    expires_at: int


def record_body_model(record_size: int) -> type[BaseModel]:
    class RecordBody(BaseModel):
        tag: str = Field(description=f"Base64 of the FMD tag ({TAG_SIZE} bytes).",
                         min_length=b64_len(TAG_SIZE), max_length=b64_len(TAG_SIZE),
                         pattern=B64_PATTERN)
        ciphertext: str = Field(
            description=f"Base64 of the ciphertext, exactly {record_size} bytes.",
            min_length=b64_len(record_size), max_length=b64_len(record_size),
            pattern=B64_PATTERN,
        )
        nonce: int = Field(ge=0, le=(1 << 64) - 1, description=(
            "Proof of work: BLAKE2b-256(person='nyth-mailbox-pow') of mailbox onion key ‖ "
            "tag ‖ ciphertext ‖ u64 nonce must start with pow_bits zero bits."))

    return RecordBody


class PostResponse(BaseModel):
    id: str = Field(description="Cursor of the stored record.", pattern=CURSOR_PATTERN)


class RecordItem(BaseModel):
    id: str = Field(pattern=CURSOR_PATTERN)
    tag: str = Field(description="Base64 of the FMD tag.")
    ciphertext: str = Field(description="Base64 of the ciphertext.")


class RecordPage(BaseModel):
    records: list[RecordItem]
    next: str = Field(description="Pass as `after` to continue.", pattern=CURSOR_PATTERN)
    more: bool = Field(description="True when more records are already waiting after `next`.")


class DetectBody(BaseModel):
    detection_key: str = Field(
        description="Base64 of an FMD detection key: n × 32 bytes, n = 0..24 (n = 0 matches "
                    "every record).",
        max_length=b64_len(MAX_DETECTION_KEY_BYTES), pattern=B64_PATTERN,
    )
    after: str = Field("0", description=CURSOR_HELP, max_length=40, pattern=CURSOR_PATTERN)
    limit: int = Field(100, ge=1, le=100_000, description="At most this many matches.")


class DetectStreamBody(BaseModel):
    detection_key: str = Field(
        description="Base64 of an FMD detection key: n × 32 bytes, n = 0..24 (n = 0 matches "
                    "every record).",
        max_length=b64_len(MAX_DETECTION_KEY_BYTES), pattern=B64_PATTERN,
    )
    after: str = Field("0", description=CURSOR_HELP + " Last-Event-ID takes precedence.",
                       max_length=40, pattern=CURSOR_PATTERN)


class DetectPage(RecordPage):
    scanned: int = Field(description="Records tested in this call (bounded by the server).")


class Health(ServiceHealth):
    fmd: bool = Field(description="Whether detection (FMD) is available.")
    adverts: dict[str, AdvertView] | None = AdvertsField


# -- state --------------------------------------------------------------------------------


@dataclass
class MailboxState(OnionService[MailboxSettings]):
    log = log
    streams_gauge = STREAMS
    trimmed_counter = TRIMMED
    entries = "records"

    store: MailboxStore
    notifier: Notifier
    detection: DetectionPool
    detects_running: int = field(default=0, init=False)
    advertiser: Advertiser | None = field(default=None, init=False)  # None: no index configured


def wanted_bundle(settings: MailboxSettings, identity: Identity) -> MailboxBundle:
    """The bundle these settings promise; the one on disk is re-used while it says the same."""
    return MailboxBundle(identity.public_key, TAG_SIZE, settings.record_size,
                         settings.max_records, settings.max_age_seconds, settings.pow_bits,
                         issued_at=int(time.time()))


def _item(record: StoredRecord) -> RecordItem:
    return RecordItem(id=str(record.id), tag=_b64(record.tag),
                      ciphertext=_b64(record.ciphertext))


def _decode_detection_key(raw: bytes) -> Any:
    fmd = fmd_module()
    if fmd is None:
        raise DetectionUnavailable()
    if len(raw) % 32 or len(raw) > MAX_DETECTION_KEY_BYTES:
        raise InvalidInput("detection_key must be n × 32 bytes with n <= 24")
    try:
        return fmd.DetectionKey.decode(raw)
    except ValueError as exc:
        raise InvalidInput(f"detection_key: {exc}") from None


class DetectionUnavailable(Exception):
    pass


async def detect(state: MailboxState, key: Any, after: Cursor, limit: int,
                 budget: int) -> tuple[list[StoredRecord], Cursor, bool, int]:
    """Matches after a cursor, testing at most budget records: (matches, next, more, scanned).

    next is the last record examined, so a caller resuming from it never re-tests one.
    """
    raw_key = bytes(key.encode())

    async def read_and_test(cursor: Cursor, count: int) -> tuple[Any, list[bool]]:
        page = await state.store.read_after(cursor, count)
        if not page.records:
            return page, []
        return page, await state.detection.match(
            raw_key, [(record.tag, record.w) for record in page.records])

    matches: list[StoredRecord] = []
    cursor, scanned, more = after, 0, False
    pending: asyncio.Task[tuple[Any, list[bool]]] | None = asyncio.ensure_future(
        read_and_test(cursor, min(DETECT_CHUNK, budget)))
    try:
        while scanned < budget and len(matches) < limit:
            assert pending is not None
            page, results = await pending
            pending = None
            if not page.records:
                more = False
                break
            # The next page is read and handed to the workers before this one's results
            # are looked at, so the workers never wait for the event loop between pages.
            # Its tests are wasted when this page ends the call (limit reached): at most
            # one page, and never past the budget.
            left = budget - scanned - len(page.records)
            if left > 0:
                pending = asyncio.ensure_future(
                    read_and_test(page.records[-1].id, min(DETECT_CHUNK, left)))
            TESTS.inc(len(page.records))
            for record, hit in zip(page.records, results, strict=True):
                scanned += 1
                cursor = record.id
                if hit:
                    matches.append(record)
                    if len(matches) >= limit:
                        break
            more = page.more or cursor != page.next
        else:
            if scanned >= budget or len(matches) >= limit:
                # Whether anything is left: one cheap read of a single record.
                more = bool((await state.store.read_after(cursor, 1)).records)
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError, PoolBroken):
                await pending
    return matches, cursor, more, scanned


def create_app(settings: MailboxSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        identity, bundle = await unseal(settings, wanted_bundle, log)
        redis = redis_client(settings)
        store = MailboxStore(
            redis, key_prefix=settings.stream_key, tag_size=TAG_SIZE,
            record_size=settings.record_size, max_records=settings.max_records,
            max_age_seconds=settings.max_age_seconds, max_cards=settings.max_cards,
            wait=ReplicaWait.from_settings(settings),
        )
        notifier = Notifier(store, poll_interval=FEED_POLL_SECONDS)
        detection = DetectionPool(settings.detect_workers or default_workers())
        state = MailboxState(settings, identity, bundle, redis, store, notifier, detection)
        app.state.nyth = state
        state.spawn(notifier.run(), "notifier")
        state.start(store)
        state.advertiser = Advertiser.from_settings(
            settings, ServerKind.MAILBOX, identity, bundle,
            ready=lambda: onion_status(state.publisher)[0] is not False)
        if state.advertiser is not None:
            state.spawn(state.advertiser.run(), "advertiser")
        if fmd_module() is None:
            log.warning("nyth.proto.fmd is not available: tags are only length-checked and "
                        "detection answers 503")
        log.info("mailbox %s.onion listening on %s:%d (record %d B, keep %d / %d s, PoW %d "
                 "bits)", identity.onion, settings.listen_host, settings.listen_port,
                 settings.record_size, settings.max_records, settings.max_age_seconds,
                 settings.pow_bits)
        try:
            yield
        finally:
            notifier.close()
            if state.advertiser is not None:
                state.advertiser.close()  # its proof of work runs in a thread
            await state.stop()
            await detection.close()

    app = FastAPI(
        title="Nyth mailbox",
        version="1",
        description=(
            "Offline first contact and delivery. Records are an FMD tag and a ciphertext of "
            f"exactly `record_size` ({settings.record_size}) bytes; posting needs a proof of "
            f"work of `pow_bits` ({settings.pow_bits}) bits. Recipients download everything "
            "or delegate a detection key. Signed contact cards are published here."
        ),
        lifespan=lifespan,
    )
    app.include_router(_bundle_routes(settings))
    app.include_router(_card_routes(settings))
    app.include_router(_record_routes(settings))
    app.include_router(_detection_routes(settings))
    app.include_router(_operations_routes())
    answer_redis_errors(app, log)
    app.add_exception_handler(InvalidInput, _invalid_input)
    app.add_exception_handler(DetectionUnavailable, _no_detection)
    app.add_exception_handler(PoolBroken, _pool_broken)
    # The largest body is a record: base64 of tag and ciphertext plus JSON framing.
    install_common(app, SERVICE,
                   max_body_bytes=b64_len(settings.record_size) + b64_len(TAG_SIZE) + 4096)
    return app


def _server(request: Request) -> MailboxState:
    state: MailboxState = request.app.state.nyth
    return state


async def _invalid_input(request: Request, exc: Exception) -> Response:
    return error_json(422, str(exc))


async def _no_detection(request: Request, exc: Exception) -> Response:
    return error_json(503, "detection is not available on this mailbox (no FMD module)")


async def _pool_broken(request: Request, exc: Exception) -> Response:
    return error_json(503, "a detection worker stopped; retry later",
                      headers={"Retry-After": "2"})


def _bundle_routes(settings: MailboxSettings) -> APIRouter:
    router = APIRouter(tags=["mailbox"])

    @router.get("/v1/bundle", response_model=BundleResponse,
                summary="The mailbox's signed bundle and the limits it enforces")
    async def get_bundle(request: Request) -> BundleResponse:
        state = _server(request)
        return BundleResponse(
            bundle=_b64(state.bundle), onion=state.identity.onion, tag_size=TAG_SIZE,
            record_size=settings.record_size, max_records=settings.max_records,
            max_age_seconds=settings.max_age_seconds, pow_bits=settings.pow_bits,
        )

    return router


def _card_routes(settings: MailboxSettings) -> APIRouter:
    router = APIRouter(tags=["cards"])

    @router.put(
        "/v1/cards/{onion}", response_model=CardResponse,
        summary="Publish (or renew) the contact card of an onion",
        description="Only cards that verify for this onion, are unexpired and carry the "
                    "bundle's proof of work (`nonce`) are stored; the newest issued_at wins.",
        responses=error_responses(400, 403, 409, 422, 429, 503),
    )
    async def put_card(request: Request, onion: OnionPath, body: CardBody) -> Response:
        state = _server(request)
        data = _b64decode(body.card, "card")
        now = int(time.time())
        try:
            # A card naming another mailbox would be refused by every sender anyway.
            card = ContactCard.verify(data, onion, now, mailbox=state.identity.onion)
        except (DecodeError, AuthenticationError) as exc:
            return error_json(422, f"card refused: {exc}")
        if card.expires_at - now > settings.max_card_lifetime_seconds:
            return error_json(422, "card refused: valid for longer than this mailbox keeps "
                                   f"cards ({settings.max_card_lifetime_seconds} s)")
        # Checked after the signature: work is only worth checking for a card that could
        # be stored, and a forged card must say "forged", not "not enough work".
        if not card_pow_ok(state.identity.public_key, data, body.nonce, settings.pow_bits):
            POW_FAILED.labels("card").inc()
            return error_json(403, f"proof of work does not reach {settings.pow_bits} bits")
        result = await state.store.put_card(card.onion_public_key, data, card.issued_at,
                                            card.expires_at)
        if result in ("older", "conflict"):
            return error_json(409, "a card issued at the same time or later is already stored")
        if result == "full":
            return error_json(429, "this mailbox holds as many cards as it keeps; retry later",
                              headers={"Retry-After": "3600"})
        CARDS.inc()
        return JSONResponse(CardResponse(card=body.card, issued_at=card.issued_at,
                                         expires_at=card.expires_at).model_dump())

    @router.get("/v1/cards/{onion}", response_model=CardResponse,
                summary="The stored contact card of an onion (verify it yourself)",
                responses=error_responses(404, 422, 503))
    async def get_card(request: Request, onion: OnionPath) -> Response:
        state = _server(request)
        public_key = public_key_from_onion(onion)
        data = await state.store.get_card(public_key)
        card = None
        if data is not None:
            try:
                card = ContactCard.verify(data, onion, int(time.time()),
                                          mailbox=state.identity.onion)
            except (DecodeError, AuthenticationError):
                card = None  # expired between Redis' expiry ticks, or a v1 card stored
                # before an upgrade
        if data is None or card is None:
            return error_json(404, "no card for this onion")
        return JSONResponse(CardResponse(card=_b64(data), issued_at=card.issued_at,
                                         expires_at=card.expires_at).model_dump())

    return router


def _record_routes(settings: MailboxSettings) -> APIRouter:
    router = APIRouter(tags=["records"])
    RecordBody = record_body_model(settings.record_size)

    @router.post(
        "/v1/records", status_code=201, response_model=PostResponse,
        summary="Store one record (FMD tag + fixed-size ciphertext) with a proof of work",
        responses=error_responses(400, 403, 409, 413, 422, 503),
    )
    async def post_record(request: Request, body: RecordBody) -> Response:  # type: ignore[valid-type]
        state = _server(request)
        tag = _b64decode(body.tag, "tag")  # type: ignore[attr-defined]
        ciphertext = _b64decode(body.ciphertext, "ciphertext")  # type: ignore[attr-defined]
        nonce: int = body.nonce  # type: ignore[attr-defined]
        if len(tag) != TAG_SIZE:
            return error_json(422, f"tag must be {TAG_SIZE} bytes, got {len(tag)}")
        if len(ciphertext) != settings.record_size:
            return error_json(422, f"ciphertext must be exactly {settings.record_size} bytes, "
                                   f"got {len(ciphertext)}")
        fmd = fmd_module()
        decoded = None
        if fmd is not None:
            try:
                decoded = fmd.decode_tag(tag)
            except ValueError as exc:
                return error_json(422, f"tag: {exc}")
        if not pow_ok(state.identity.public_key, tag, ciphertext, nonce, settings.pow_bits):
            POW_FAILED.labels("record").inc()
            return error_json(403, f"proof of work does not reach {settings.pow_bits} bits")
        # W = y·U + m·B depends only on the tag: computed once here (after the PoW, so an
        # unpaid post costs no group operation) and stored, so detection never redoes it.
        w = None if decoded is None else bytes(decoded.w)
        cursor = await state.store.append(tag, ciphertext, w)
        if cursor is None:
            REPLAYS.inc()
            return error_json(409, "this record was already posted")
        POSTED.inc()
        return JSONResponse({"id": str(cursor)}, status_code=201)

    @router.get(
        "/v1/records", response_model=RecordPage,
        summary="Download everything: records after a cursor, oldest first, paged",
        responses=error_responses(422, 503),
    )
    async def get_records(
        request: Request,
        after: CursorParam = "0",
        limit: Annotated[int, Query(ge=1, le=settings.max_page,
                                    description="Page size")] = settings.max_page,
    ) -> RecordPage:
        page = await _server(request).store.read_after(Cursor.parse(after), limit)
        return RecordPage(records=[_item(r) for r in page.records], next=str(page.next),
                          more=page.more)

    return router


def _detection_routes(settings: MailboxSettings) -> APIRouter:
    router = APIRouter(tags=["detection"])

    @router.post(
        "/v1/detect", response_model=DetectPage,
        summary="Records after a cursor whose tags pass a delegated detection key",
        description=(
            f"Tests at most {settings.max_detect_scan} records per call; `next` is the last "
            "record tested, so continue from it while `more` is true."
        ),
        responses=error_responses(400, 422, 503),
    )
    async def post_detect(request: Request, body: DetectBody) -> Response:
        state = _server(request)
        key = _decode_detection_key(_b64decode(body.detection_key, "detection_key"))
        # Each call is up to max_detect_scan scalar-mult tests in a worker thread: refuse
        # at once when enough are running rather than queue unbounded CPU work.
        if state.detects_running >= settings.max_concurrent_detects:
            DETECT_BUSY.inc()
            return error_json(503, "too many detections running on this mailbox; retry later",
                              headers={"Retry-After": "2"})
        state.detects_running += 1
        try:
            matches, cursor, more, scanned = await detect(
                state, key, Cursor.parse(body.after), body.limit, settings.max_detect_scan)
        finally:
            state.detects_running -= 1
        page = DetectPage(records=[_item(r) for r in matches], next=str(cursor), more=more,
                          scanned=scanned)
        return JSONResponse(page.model_dump())

    @router.post(
        "/v1/detect/stream",
        summary="Server-Sent Events: matches for a detection key after the cursor, then live",
        description=(
            "Registers the detection key for the life of the stream. Each event has "
            "`id: <cursor>`, `event: record`, `data: {\"id\", \"tag\", \"ciphertext\"}` "
            "(JSON, base64 fields). Last-Event-ID takes precedence over `after`. The key "
            "travels in the body only: any query string is refused (422), so that no key "
            "ends up in a URL, where access logs and proxies keep it."
        ),
        response_class=EventSourceResponse,
        responses=event_stream_responses(),
    )
    async def detect_stream(
        request: Request,
        body: DetectStreamBody,
        last_event_id: LastEventId = None,
    ) -> Response:
        if request.url.query:
            # The old form was GET ?key=...; a client still sending the key in the URL
            # has already leaked it to whatever logs URLs: say so rather than ignore it.
            return error_json(422, "POST /v1/detect/stream takes no query parameters: send "
                                   "detection_key and after in the JSON body")
        detection_key = _decode_detection_key(_b64decode(body.detection_key, "detection_key"))
        start = Cursor.parse(last_event_id if last_event_id is not None else body.after)
        state = _server(request)
        return state.event_stream(_match_events(state, detection_key, start),
                                  close_feed=state.notifier.close)

    return router


def _operations_routes() -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get(
        "/healthz", response_model=Health, summary="Liveness and Redis",
        responses={503: {"model": Health, "description": "Redis is unreachable"}},
    )
    async def healthz(request: Request) -> Response:
        state = _server(request)
        return await state.health(Health, fmd=fmd_module() is not None,
                                  adverts=state.advertiser.view() if state.advertiser else None)

    return router


async def _match_events(state: MailboxState, key: Any,
                        start: Cursor) -> AsyncIterator[ServerSentEvent]:
    """Backlog matches after start, then live ones, for one detection stream."""
    notifier = state.notifier
    cursor = start
    budget = state.settings.max_detect_scan
    while True:
        woken = notifier.snapshot()
        try:
            matches, cursor, more, _scanned = await detect(state, key, cursor, budget, budget)
        except (RedisError, PoolBroken) as exc:
            log.warning("detection failed (%s); retrying", exc)
            await asyncio.sleep(1.0)
            continue
        for record in matches:
            data = json.dumps(_item(record).model_dump(), separators=(",", ":"))
            yield ServerSentEvent(data=data, id=str(record.id), event="record")
        if more:
            await asyncio.sleep(0)  # let other streams and requests run between batches
            continue
        if notifier.closing:
            return
        await notifier.wait(woken, FEED_POLL_SECONDS)
