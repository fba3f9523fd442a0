"""Taking an advert (POST /v1/adverts): every check, cheapest first, each refusal with
its own status and reason.

    malformed                                   422
    not signed by the advertised onion's key    403
    for another index / missing or weak work    403
    expired / issued in the future              422
    the same onion again within the min gap     429 + Retry-After
    directory full (and the onion not listed)   507
    no Tor / too many fetches running           503
    the server unreachable / answers garbage    502 (504 when it timed out)
    bundle mismatch (kind, onion or hash)       409

Only after the signature is the rate limit spent (nobody can use up another server's
submissions), and only after the rate limit is Tor used (the fetch is the expensive part).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

from fastapi.responses import JSONResponse, Response
from nyth.errors import AuthenticationError, DecodeError
from nyth.proto import discovery
from nyth.proto.discovery import Advert, DirectoryRefused
from nyth.web import error_json
from prometheus_client import Counter

from nyth_discovery.policy import Listing
from nyth_discovery.reach import Reach, Unreachable
from nyth_discovery.storage import DiscoveryStore

ACCEPTED = Counter("nyth_discovery_adverts_accepted_total", "Adverts accepted (new or renewed).")
REFUSED = Counter("nyth_discovery_adverts_refused_total", "Adverts refused, by reason.",
                  ["reason"])
# Each fetch holds a Tor circuit for up to the deadline; more wait for a 503 instead.
MAX_FETCHES = 8


class Refusal(Exception):
    """An advert refused: HTTP status, metric label, and what the submitter is told."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message

    def response(self, headers: dict[str, str] | None = None) -> Response:
        REFUSED.labels(self.reason).inc()
        return error_json(self.status, self.message, headers=headers)


def classify(advert: Advert, *, index_key: bytes, pow_bits: int, now: int) -> Refusal | None:
    """check_advert's verdict as a status and a metric label (None: acceptable)."""
    try:
        discovery.check_advert(advert, index_key=index_key, pow_bits=pow_bits, now=now)
    except DirectoryRefused as exc:
        if advert.index_key != index_key:
            return Refusal(403, "other_index", str(exc))
        if advert.expires_at <= now:
            return Refusal(422, "expired", str(exc))
        if advert.issued_at > now + discovery.CLOCK_SKEW:
            return Refusal(422, "future", str(exc))
        return Refusal(403, "pow", str(exc))
    return None


def decode(data: bytes) -> Advert:
    try:
        return Advert.decode(data)
    except DecodeError as exc:
        raise Refusal(422, "malformed", f"malformed advert: {exc}") from None
    except AuthenticationError as exc:
        raise Refusal(403, "signature", str(exc)) from None


@dataclass
class AdvertDesk:
    store: DiscoveryStore
    reach: Reach
    index_key: bytes
    pow_bits: int
    min_gap: float
    max_entries: int

    def __post_init__(self) -> None:
        self._fetches = asyncio.Semaphore(MAX_FETCHES)

    async def submit(self, data: bytes) -> Response:
        try:
            advert = decode(data)
            now = int(time.time())
            refusal = classify(advert, index_key=self.index_key, pow_bits=self.pow_bits, now=now)
            if refusal is not None:
                raise refusal
            wait = await self.store.claim_submission(advert.onion, self.min_gap)
            if wait is not None:
                return Refusal(429, "rate", f"{advert.onion}.onion submitted an advert less "
                               f"than {self.min_gap:g} s ago; retry later").response(
                    headers={"Retry-After": str(max(1, math.ceil(wait)))})
            listed = await self.store.listing(advert.onion) is not None
            if not listed and await self.store.count() >= self.max_entries:
                raise self._full()
            bundle = await self._fetch(advert)
        except Refusal as refusal:
            return refusal.response()
        listing = Listing(advert.kind, advert.onion, bundle, advert.label, now,
                          advert.issued_at, advert.expires_at)
        result = await self.store.upsert(listing)
        if result == "full":
            return self._full().response()
        ACCEPTED.inc()
        return JSONResponse({"onion": advert.onion, "kind": advert.kind.label,
                             "expires_at": advert.expires_at, "listed": result == "renewed"},
                            status_code=201)

    def _full(self) -> Refusal:
        return Refusal(507, "full", f"this index lists as many servers as it keeps "
                                    f"({self.max_entries}); try another index")

    async def _fetch(self, advert: Advert) -> bytes:
        """The bundle the server serves now, if it is the one the advert names."""
        if not self.reach.available:
            raise Refusal(503, "no_tor", "this index cannot reach servers: no Tor SOCKS port "
                                         "is configured")
        if self._fetches.locked():
            raise Refusal(503, "busy", "too many adverts are being checked; retry later")
        where = f"{advert.onion[:8]}….onion"
        async with self._fetches:
            try:
                bundle = await self.reach.fetch_bundle(advert.kind, advert.onion, "advert")
            except Unreachable as exc:
                # No NEWNYM here (the prober's business): an advert is anyone's to send.
                raise Refusal(504 if exc.timeout else 502, "unreachable",
                              f"could not fetch the bundle of {where}: {exc}") from None
            except (DecodeError, AuthenticationError) as exc:
                raise Refusal(409, "bundle_mismatch",
                              f"{where} does not serve a {advert.kind.label} bundle of its "
                              f"own: {exc}") from None
            except Exception as exc:
                # Anything else the server managed (garbage, oversize) is its failure.
                raise Refusal(502, "unreachable", f"{where} answered GET /v1/bundle with "
                                                  f"garbage: {self.reach.reason(exc)}") from None
        if discovery.bundle_hash(bundle) != advert.bundle_sha256:
            raise Refusal(409, "bundle_mismatch",
                          f"the advert names a bundle with SHA-256 {advert.bundle_sha256.hex()}"
                          f", but {where} serves one with SHA-256 "
                          f"{discovery.bundle_hash(bundle).hex()}")
        return bundle
