"""The index's routes, one router per resource."""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from nyth.proto import discovery
from nyth.proto.discovery import NO_LATENCY, AuditState, ServerKind
from nyth.proto.pinning import bundle_limits
from nyth.proto.server_choice import Standing, rank
from nyth.web import ErrorResponse, error_json, error_responses

from nyth_discovery import policy
from nyth_discovery.models import (
    AdvertAccepted,
    AdvertBody,
    BundleResponse,
    DirectoryPage,
    DiscoveryHealth,
    PublishView,
    ServersPage,
    ServerView,
)
from nyth_discovery.policy import Measurements

if TYPE_CHECKING:
    from nyth_discovery.app import DiscoveryState

MAX_SERVERS_PAGE = 100


def _state(request: Request) -> DiscoveryState:
    state: DiscoveryState = request.app.state.nyth
    return state


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def bundle_routes() -> APIRouter:
    router = APIRouter(tags=["index"])

    @router.get("/v1/bundle", response_model=BundleResponse,
                summary="The index's signed bundle (pin it), its directory group and work")
    async def get_bundle(request: Request) -> BundleResponse:
        state = _state(request)
        return BundleResponse(bundle=_b64(state.bundle), onion=state.identity.onion,
                              advert_pow_bits=state.index.advert_pow_bits,
                              directory_servers=state.index.directory_onions,
                              directory_group_key=_b64(state.index.group_key))

    return router


def advert_routes() -> APIRouter:
    router = APIRouter(tags=["adverts"])

    @router.post(
        "/v1/adverts", status_code=201, response_model=AdvertAccepted,
        summary="List (or renew) a server: a signed advert, checked against what it serves",
        description=(
            "The index checks the advert's signature (by the advertised onion's key), that "
            "it names this index, its times and its proof of work, then fetches the "
            "server's bundle over Tor during the request: it must be a bundle of the "
            "advertised kind for that onion, with the SHA-256 the advert names. One advert "
            "per onion per advert_min_gap (429 otherwise). A renewal keeps first_seen."),
        responses={**error_responses(400, 403, 409, 422, 502, 503),
                   429: {"model": ErrorResponse,
                         "description": "The same onion submitted too recently (Retry-After)"},
                   504: {"model": ErrorResponse,
                         "description": "The server did not answer in time over Tor"},
                   507: {"model": ErrorResponse,
                         "description": "The index lists as many servers as it keeps"}},
    )
    async def post_advert(request: Request, body: AdvertBody) -> Response:
        try:
            data = base64.b64decode(body.advert, validate=True)
        except (binascii.Error, ValueError):
            return error_json(422, "advert is not valid base64")
        return await _state(request).desk.submit(data)

    return router


def directory_routes() -> APIRouter:
    router = APIRouter(tags=["directory"])

    @router.get(
        "/v1/directory", response_model=DirectoryPage,
        summary="One page of chunks of the latest signed directory (as in the directory group)",
        description="Fetch pages 0..pages-1 of one epoch and reassemble their chunks "
                    "(nyth.proto.discovery.assemble); the digest names the whole.",
        responses=error_responses(404, 422, 503),
    )
    async def get_directory(
        request: Request,
        page: Annotated[int, Query(ge=0, le=discovery.MAX_PAGES - 1,
                                   description="Page number, from 0")] = 0,
    ) -> Response:
        stored = await _state(request).store.directory()
        if stored is None:
            return error_json(503, "no directory issued yet; retry in a minute",
                              headers={"Retry-After": "10"})
        chunks = discovery.chunk_directory(stored.signed, stored.epoch)
        pages = discovery.page_count(len(chunks))
        if page >= pages:
            return error_json(404, f"epoch {stored.epoch} has {pages} pages "
                                   f"(0..{pages - 1}); page {page} does not exist")
        return JSONResponse(DirectoryPage(
            epoch=stored.epoch, digest=chunks[0].digest.hex(), page=page, pages=pages,
            chunks=[_b64(c.encode()) for c in discovery.page_of(chunks, page)]).model_dump())

    return router


def _ms(value: int) -> int | None:
    return None if value == NO_LATENCY else value


def server_view(standing: Standing, position: int, measured: Measurements) -> ServerView:
    entry, audit = standing.entry, measured.audit
    return ServerView(
        kind=entry.kind.label, onion=entry.onion, label=entry.label, state=standing.state,
        reason=standing.reason, rank=position, availability=round(standing.availability, 4),
        probes=entry.probes, probes_ok=entry.probes_ok,
        consecutive_failures=entry.consecutive_failures,
        last_probe_at=entry.last_probe_at or None, last_ok_at=entry.last_ok_at or None,
        latency_p50_ms=_ms(entry.latency_p50_ms), latency_p95_ms=_ms(entry.latency_p95_ms),
        audit=entry.audit.name.lower().replace("_", " "), audits_passed=entry.audits_passed,
        audit_at=entry.audit_at or None, audit_canaries_open=len(audit.canaries),
        audit_inconclusive=audit.inconclusive,
        lost_age_seconds=audit.lost_age_seconds if audit.state is AuditState.LOST else None,
        limits=bundle_limits(entry.verified_bundle), first_seen=entry.first_seen,
        advert_expires=entry.advert_expires, last_error=entry.last_error or None)


def server_routes() -> APIRouter:
    router = APIRouter(tags=["servers"])

    @router.get(
        "/v1/servers", response_model=ServersPage,
        summary="Listed servers as measured now, best ranked first (nyth.proto.server_choice)",
        responses=error_responses(422, 503),
    )
    async def get_servers(
        request: Request,
        kind: Annotated[Literal["group-server", "mailbox"] | None,
                        Query(description="Only servers of this kind")] = None,
        offset: Annotated[int, Query(ge=0, le=discovery.MAX_ENTRIES)] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_SERVERS_PAGE)] = 50,
    ) -> ServersPage:
        state = _state(request)
        measured = {m.listing.onion: m for m in await state.store.measurements()}
        entries = [policy.build_entry(m) for m in measured.values()]
        ranked = list(enumerate(rank(entries), start=1))
        if kind is not None:
            wanted = ServerKind.parse(kind)
            ranked = [(i, s) for i, s in ranked if s.kind is wanted]
        views = [server_view(s, i, measured[s.onion]) for i, s in ranked[offset: offset + limit]]
        return ServersPage(servers=views, total=len(ranked), offset=offset, limit=limit)

    return router


def operations_routes() -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get(
        "/healthz", response_model=DiscoveryHealth,
        summary="Liveness, Redis, the latest directory and its publication",
        responses={503: {"model": DiscoveryHealth, "description": "Redis is unreachable"}},
    )
    async def healthz(request: Request) -> Response:
        state = _state(request)
        extra: dict[str, Any] = {
            "tor_socks": state.reach.available,
            "publish": [PublishView(**s.view()) for s in state.directory.states.values()]}
        latest = state.directory.latest
        if latest is not None:
            extra["directory_epoch"] = latest.epoch
        try:
            extra["entries"] = await state.store.count()
        except Exception:  # noqa: S110 (health() itself reports Redis being down)
            pass
        return await state.health(DiscoveryHealth, **extra)

    return router
