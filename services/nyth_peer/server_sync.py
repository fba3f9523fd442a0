"""Reading group servers over Tor: one task per server (its backlog, then its live stream),
and bounded re-reads from an earlier cursor for gap recovery.

Every blob goes to `ingest(onion, cursor, blob)`; which group it belongs to (if any) is the
group service's business. Nothing a server sends is trusted: every answer is size-bounded
and validated before a byte of it is used, and a server failing in any way is retried with
backoff, its state and reason shown to the user.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from typing import Annotated, Any, Protocol

import httpx
from nyth.config import OnionServiceSettings
from nyth.errors import BundleChangedError
from nyth.group_server_client import PAGE_HEADERS, page_limits, parse_page
from nyth.http_limits import (
    ITEM_SLACK,
    JSON_SLACK,
    StrictModel,
    UntrustedResponseError,
    b64_len,
    b64_validator,
    bounded_request,
    open_event_stream,
    printable,
    strict_b64,
)
from nyth.proto.delivery import RetryPolicy
from nyth.proto.group import BLOB_SIZE
from nyth.runtime.stream_store import CURSOR_PATTERN
from pydantic import Field, PlainValidator

from nyth_peer.events import EventBus
from nyth_peer.store import Store

log = logging.getLogger(__name__)

PAGE = 500
# A request through Tor to a server that died mid-rendezvous can hang without any
# socket error; every request gets a hard deadline so queues keep moving.
REQUEST_DEADLINE = 30.0
# A re-read for recovery reads at most this many pages (100 000 blobs): more than any
# server we pin keeps (max_blobs), so a server that says "more" forever is cut off.
MAX_REREAD_PAGES = 200

PAGE_ANSWER_BYTES = PAGE * (b64_len(BLOB_SIZE) + ITEM_SLACK) + JSON_SLACK
# A page comes as a binary page when the server offers them, else as JSON; each has its
# own size bound (a binary page's exact size for PAGE blobs is below the JSON bound).
PAGE_LIMITS = page_limits(PAGE_ANSWER_BYTES, PAGE, BLOB_SIZE)
# The live stream: "data: <base64 blob>" is the longest line a blob event has; with its
# "event: blob" and "id: <cursor>" lines an event is a little more.
STREAM_MAX_LINE = b64_len(BLOB_SIZE) + ITEM_SLACK
STREAM_MAX_EVENT = b64_len(BLOB_SIZE) + 3 * ITEM_SLACK
# Servers send a keep-alive comment every keepalive_seconds (this default unless their
# operator changed it); a stream silent for several of them is stalled, not just quiet.
SERVER_KEEPALIVE_SECONDS = float(OnionServiceSettings.model_fields["keepalive_seconds"].default)
STREAM_IDLE_SECONDS = 4 * SERVER_KEEPALIVE_SECONDS
_CURSOR = re.compile(CURSOR_PATTERN)

class Ingest(Protocol):
    """Takes one blob a server sent; `counted` is False for a recovery re-read, whose
    blobs are charged to the group that asked for it instead."""

    def __call__(self, onion: str, cursor: str, blob: bytes, *, counted: bool = True) -> None: ...
BundleCheck = Callable[[str, bytes], Any]
BundleFetch = Callable[[httpx.AsyncClient, str], Any]


class _BlobItem(StrictModel):
    id: str = Field(pattern=CURSOR_PATTERN)
    blob: Annotated[bytes, PlainValidator(b64_validator(size=BLOB_SIZE))]


class BlobPage(StrictModel):
    blobs: list[_BlobItem] = Field(max_length=PAGE)
    next: str = Field(pattern=CURSOR_PATTERN)
    more: bool


class ServerReadError(Exception):
    """A server answered a read with an error status."""


def server_url(onion: str, path: str) -> str:
    return f"http://{onion}.onion{path}"


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task crashed", exc_info=task.exception())


def failure_text(exc: BaseException) -> str:
    """Why a request failed, for the user. The text of an exception may carry the server's
    own bytes (an HTTP parser quoting a bad status line): cleaned and cut short."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {REQUEST_DEADLINE:.0f} s"
    return printable(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, 500)


class ServerSync:
    def __init__(self, store: Store, events: EventBus, new_http: Callable[[], httpx.AsyncClient],
                 retry: RetryPolicy, *, fetch_bundle: BundleFetch, check_bundle: BundleCheck,
                 ingest: Ingest) -> None:
        self.store = store
        self.events = events
        self._new_http = new_http
        self.retry = retry
        self._fetch_bundle = fetch_bundle
        self._check_bundle = check_bundle
        self._ingest = ingest
        self.server_state: dict[str, dict[str, Any]] = {}
        self.stream_idle_seconds = STREAM_IDLE_SECONDS
        self.on_onion_failure: Any = None  # set by the engine: forget tor's failed lookups
        self._syncers: dict[str, asyncio.Task[None]] = {}
        self._rereads: set[asyncio.Task[None]] = set()

    def reading(self, onion: str) -> bool:
        return onion in self._syncers

    def ensure(self, onion: str, restart: bool = False) -> None:
        task = self._syncers.get(onion)
        if task is not None and not task.done():
            if not restart:
                return
            task.cancel()
        self._syncers[onion] = asyncio.ensure_future(self._sync_loop(onion))
        self._syncers[onion].add_done_callback(_log_crash)

    def stop_reading(self, onion: str) -> None:
        """No group reads this server any more (a move's drain ended)."""
        task = self._syncers.pop(onion, None)
        if task is not None:
            task.cancel()
        self.server_state.pop(onion, None)

    async def stop(self) -> None:
        tasks = [*self._syncers.values(), *self._rereads]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def set_state(self, onion: str, state: str, reason: str | None = None,
                  next_retry_at: float | None = None) -> None:
        current = self.server_state.get(onion, {})
        if current.get("state") == state and current.get("reason") == reason:
            return
        self.server_state[onion] = {"state": state, "reason": reason, "since": time.time(),
                                    "next_retry_at": next_retry_at}
        self.events.publish("server", onion=onion, **self.server_state[onion])

    # -- the main read: backlog, then the live stream ---------------------------------------
    async def _sync_loop(self, onion: str) -> None:
        failures = 0
        while True:
            try:
                async with self._new_http() as http:
                    if self.server_state.get(onion, {}).get("state") != "bundle_changed":
                        # A re-check of a refused bundle is not a new connection attempt.
                        self.set_state(onion, "connecting")
                    # Checked on every (re)connection: a restart is when an operator's
                    # changed limits turn into a new bundle.
                    self._check_bundle(onion, await self._fetch_bundle(http, onion))
                    await self._read_pages(http, onion, self.cursor(onion), keep_cursor=True)
                    self.set_state(onion, "live")
                    failures = 0
                    await self._follow(http, onion)
                    reason = "the server closed the stream"
            except BundleChangedError:
                # Looked at again now and then, in case the operator restores the
                # pinned bundle; a re-pin restarts this loop at once.
                failures += 1
                await asyncio.sleep(self.retry.delay(failures))
                continue
            except Exception as exc:
                reason = failure_text(exc)
            failures += 1
            if self.on_onion_failure is not None:
                self.on_onion_failure()
            delay = self.retry.delay(failures)
            self.set_state(onion, "unreachable", reason, time.time() + delay)
            await asyncio.sleep(delay)

    def cursor(self, onion: str) -> str:
        row = self.store.get("cursors", onion)
        cursor = row.get("cursor") if row else "0"
        if not isinstance(cursor, str) or not _CURSOR.fullmatch(cursor):
            # Older versions stored whatever a server said; reading from the start again
            # costs bandwidth only (blobs we hold are recognised and skipped).
            log.info("server %s…: stored cursor is malformed; reading from the start", onion[:8])
            return "0"
        return cursor

    async def _read_pages(self, http: httpx.AsyncClient, onion: str, after: str, *,
                          keep_cursor: bool, max_pages: int | None = None,
                          on_blob: Callable[[], None] | None = None) -> None:
        """Pages of blobs after `after` to the end; keep_cursor: remember where we are (the
        main read), else leave the stored cursor alone (a re-read)."""
        pages = 0
        while True:
            answer = await bounded_request(
                http, "GET", server_url(onion, "/v1/blobs"), params={"after": after, "limit": PAGE},
                headers=PAGE_HEADERS, max_bytes=PAGE_LIMITS, deadline=REQUEST_DEADLINE,
                what="page of blobs")
            if answer.status_code != 200:
                raise ServerReadError(f"{answer.server} {answer.failure()} to a fetch")
            page = parse_page(answer, BlobPage, limit=PAGE, blob_size=BLOB_SIZE)
            if page.more and page.next == after:
                # Would have us ask for the same page again and again.
                raise UntrustedResponseError(f"{answer.server} says more blobs wait after "
                                             f"{after} but does not move its cursor")
            for item in page.blobs:
                if on_blob is not None:
                    on_blob()
                self._ingest(onion, item.id, item.blob, counted=keep_cursor)
            if keep_cursor:
                self.store.put("cursors", onion, {"cursor": page.next})
            after = page.next
            pages += 1
            if not page.more:
                return
            if max_pages is not None and pages >= max_pages:
                raise UntrustedResponseError(f"{answer.server} still says more after "
                                             f"{max_pages} pages of a re-read")

    async def _follow(self, http: httpx.AsyncClient, onion: str) -> None:
        url = server_url(onion, "/v1/blobs/stream")
        async with open_event_stream(
                http, url, params={"after": self.cursor(onion)}, deadline=REQUEST_DEADLINE,
                max_line=STREAM_MAX_LINE, max_event=STREAM_MAX_EVENT,
                idle_seconds=self.stream_idle_seconds) as stream:
            if stream.status_code != 200:
                raise ServerReadError(f"{stream.server} {await stream.failure()} to the stream")
            async for event in stream.events():
                if event.event != "blob" or not event.id:
                    continue
                if not _CURSOR.fullmatch(event.id):
                    raise UntrustedResponseError(f"{stream.server} sent a blob event whose id is "
                                                 "not a cursor")
                try:
                    blob = strict_b64(event.data, size=BLOB_SIZE)
                except ValueError as exc:
                    raise UntrustedResponseError(f"{stream.server} sent a blob event whose data "
                                                 f"{exc}") from None
                self._ingest(onion, event.id, blob)
                self.store.put("cursors", onion, {"cursor": event.id})

    # -- re-reads for recovery -------------------------------------------------------------
    def reread(self, onion: str, after: str, done: Callable[[str | None], None],
               on_blob: Callable[[], None] | None = None) -> None:
        """Read onion's blobs after `after` to the end (bounded), apart from the main read
        and without moving its cursor; on_blob() for each blob downloaded; then
        done(None), or done(why it failed)."""
        task = asyncio.ensure_future(self._reread(onion, after, done, on_blob))
        self._rereads.add(task)
        task.add_done_callback(self._rereads.discard)
        task.add_done_callback(_log_crash)

    async def _reread(self, onion: str, after: str, done: Callable[[str | None], None],
                      on_blob: Callable[[], None] | None) -> None:
        error: str | None = None
        try:
            async with self._new_http() as http:
                await self._read_pages(http, onion, after, keep_cursor=False,
                                       max_pages=MAX_REREAD_PAGES, on_blob=on_blob)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = failure_text(exc)
            log.info("re-reading %s… failed: %s", onion[:8], error)
        done(error)
