"""Round trips to servers as the peer waits them, and how the API shows round trips.

Every HTTP client the peer uses for group servers, token issuance and mailboxes comes
from a factory; `timed` wraps such a factory so that each request that gets an answer
(any status) records, under the server's onion, the time from the request's start to
the answer's status line and headers. For a fresh connection that includes reaching the
onion through Tor (the clients are short-lived on purpose, so most requests pay it);
it excludes reading the body (a page of blobs, a long-lived event stream). Requests
that fail (no answer, a time-out) record nothing: their cost shows as a server state
with a reason instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ParamSpec

import httpx
from nyth.latency import LatencyBook
from pydantic import BaseModel, Field

P = ParamSpec("P")

_STARTED = "nyth_started"


class LatencyView(BaseModel):
    """Recent round trips (the last 64 at most, kept in memory since the peer started)."""

    p50_ms: float | None = Field(description="median, in milliseconds; null without samples")
    p95_ms: float | None = Field(description="95th percentile (nearest rank), in milliseconds; "
                                             "null without samples")
    samples: int = Field(description="how many round trips the figures are drawn from")


def timed(factory: Callable[P, httpx.AsyncClient], book: LatencyBook,
          clock: Callable[[], float] = time.monotonic) -> Callable[P, httpx.AsyncClient]:
    """factory, whose clients record each answered request's duration in book, keyed by
    the onion it went to (requests to other hosts are not servers of ours: not kept)."""

    async def started(request: httpx.Request) -> None:
        request.extensions[_STARTED] = clock()

    async def answered(response: httpx.Response) -> None:
        began = response.request.extensions.get(_STARTED)
        host = response.request.url.host
        if isinstance(began, float) and host.endswith(".onion"):
            book.record(host.removesuffix(".onion"), max(0.0, clock() - began) * 1000)

    def make(*args: P.args, **kwargs: P.kwargs) -> httpx.AsyncClient:
        http = factory(*args, **kwargs)
        hooks = http.event_hooks
        http.event_hooks = {"request": [*hooks.get("request", []), started],
                            "response": [*hooks.get("response", []), answered]}
        return http

    return make
