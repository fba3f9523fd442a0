"""Reaching listed servers over Tor: fetching a server's signed bundle, and turning any
failure into a short reason. A listed server is hostile until measured: every answer is
size-bounded, validated and deadline-bound (nyth.http_limits)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Annotated

import httpx
from nyth.errors import AuthenticationError, DecodeError, NythError
from nyth.http_limits import JSON_SLACK, StrictModel, b64_len, b64_validator, bounded_request
from nyth.proto import discovery
from nyth.proto.discovery import MAX_BUNDLE_IN_ENTRY, ServerKind
from nyth.tor.endpoints import ControlEndpoint, SocksEndpoint
from nyth.tor.socks import forget_onion_failures, onion_connect_error, onion_http_client
from pydantic import PlainValidator
from python_socks import ProxyConnectionError, ProxyError, ProxyTimeoutError

log = logging.getLogger("nyth_discovery.reach")

# A request through Tor to a server that died mid-rendezvous can hang without any socket
# error: every exchange has this hard deadline, body included.
DEADLINE = 30.0
BUNDLE_ANSWER_BYTES = b64_len(MAX_BUNDLE_IN_ENTRY) + JSON_SLACK
NEWNYM_GAP = 10.0
# httpx-socks lets python-socks' own errors through (tor's onion replies among them).
CONNECT_ERRORS = (httpx.HTTPError, OSError, ProxyError, ProxyConnectionError, ProxyTimeoutError)
# Everything a request to a listed server may fail with, its answer's faults included.
REQUEST_ERRORS = (NythError, ValueError, TimeoutError, *CONNECT_ERRORS)


class _BundleAnswer(StrictModel):
    bundle: Annotated[bytes, PlainValidator(b64_validator(max_size=MAX_BUNDLE_IN_ENTRY))]


class Unreachable(NythError):
    """The server could not be reached or did not answer in time; `timeout` tells which."""

    def __init__(self, reason: str, *, timeout: bool = False) -> None:
        super().__init__(reason)
        self.timeout = timeout


@dataclass
class Reach:
    """Outbound Tor for the index: circuits isolated per purpose, and a NEWNYM (at most
    every NEWNYM_GAP s) after a failure, so a server that comes back is seen again soon
    (tor otherwise avoids the directories of a failed lookup for minutes)."""

    socks: SocksEndpoint | None
    control: ControlEndpoint | None = None
    _last_newnym: float = field(default=0.0, init=False)
    _newnym: asyncio.Future[None] | None = field(default=None, init=False)

    @property
    def available(self) -> bool:
        return self.socks is not None

    def client(self, purpose: str) -> httpx.AsyncClient:
        """A client on circuits of its own (a fresh SOCKS credential: tor's
        IsolateSOCKSAuth): a server cannot tie a probe to a canary post or its check."""
        if self.socks is None:
            raise Unreachable("this index has no Tor SOCKS port configured (NYTH_TOR_SOCKS)")
        return onion_http_client(self.socks, timeout=DEADLINE, username=f"nyth-index-{purpose}",
                                 password=secrets.token_hex(16))

    def reason(self, exc: BaseException) -> str:
        """Why a request to a server failed, short and printable."""
        if isinstance(exc, Unreachable):
            return discovery.short_error(str(exc))
        if isinstance(exc, ProxyError | ProxyConnectionError | httpx.ProxyError
                      | httpx.ConnectError) and self.socks is not None:
            return discovery.short_error(
                onion_connect_error(exc, socks=self.socks, target="the server").reason)
        if isinstance(exc, TimeoutError | httpx.TimeoutException):
            return f"no answer within {DEADLINE:.0f} s"
        if isinstance(exc, AuthenticationError | DecodeError):
            return discovery.short_error(f"invalid bundle: {exc}")
        text = str(exc) or type(exc).__name__
        return discovery.short_error(text)

    def failed(self) -> None:
        if self.control is None or time.monotonic() - self._last_newnym < NEWNYM_GAP:
            return
        self._last_newnym = time.monotonic()
        # Kept referenced until done (the loop holds tasks weakly); best effort: a gateway
        # that is down shows in every probe's reason anyway.
        task = asyncio.ensure_future(forget_onion_failures(self.control))
        self._newnym = task
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def fetch_bundle(self, kind: ServerKind, onion: str, purpose: str) -> bytes:
        """The signed bundle `onion` serves now, verified as a bundle of `kind` for that
        onion. Unreachable (with timeout set for a deadline), DecodeError or
        AuthenticationError otherwise."""
        try:
            async with self.client(purpose) as http:
                answer = await bounded_request(
                    http, "GET", f"http://{onion}.onion/v1/bundle",
                    max_bytes=BUNDLE_ANSWER_BYTES, deadline=DEADLINE, what="bundle")
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise Unreachable(self.reason(exc), timeout=True) from None
        except CONNECT_ERRORS as exc:
            raise Unreachable(self.reason(exc)) from None
        if answer.status_code != 200:
            raise Unreachable(f"GET /v1/bundle {answer.failure()}")
        data = answer.parse(_BundleAnswer).bundle
        bundle = discovery.verify_server_bundle(kind, data)
        if bundle.onion != onion:
            raise DecodeError(f"the server at {onion[:8]}….onion serves the bundle of "
                              f"{bundle.onion[:8]}….onion")
        return data
