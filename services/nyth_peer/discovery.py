"""Reading discovery indexes: each index's signed directory of measured servers, kept in
the profile store, for `GET /v1/discovery` and for choosing a new group's servers
(docs/discovery.md, "Reading the directory").

Per index, every NYTH_DISCOVERY_REFRESH_SECONDS (and on POST /v1/discovery/refresh):

1. its signed bundle is fetched over Tor and pinned on first use; a changed bundle is
   refused loudly (the pinned one still names the index's key and directory group);
2. the directory's pages are fetched from the index, assembled and accepted
   (`nyth.proto.directory_reader.accept_pages`), unless the index serves the one held;
3. when that fails (index down, answer refused), the directory group named by the pinned
   bundle is read instead from its servers (each pinned like any group server), and only
   DIRECTORY messages by the index's key count (`DirectoryGroupReader`).

The newest accepted directory per index survives restarts; what was refused, and why, is
kept beside it (`last_refusal`). Every answer is bounded: the index's through
`nyth.index_http`, the group servers' pages as the group sync reads them, and at most
MAX_GROUP_PAGES pages per server per sync.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from nyth.errors import AuthenticationError, BundleChangedError, DecodeError
from nyth.group_server_client import PAGE_HEADERS, parse_page
from nyth.healthz import onion_from_healthz
from nyth.http_limits import UntrustedResponseError, bounded_request, printable
from nyth.index_http import failure_reason, fetch_directory_page, fetch_index_bundle
from nyth.proto.directory_reader import Accepted, DirectoryGroupReader, accept_pages
from nyth.proto.discovery import Directory, DirectoryRefused, IndexBundle
from nyth.proto.group import BLOB_SIZE

from nyth_peer.group_rows import GroupError
from nyth_peer.groups import fetch_server_bundle
from nyth_peer.pins import INDEX, Pins
from nyth_peer.server_sync import (
    PAGE,
    PAGE_LIMITS,
    REQUEST_DEADLINE,
    BlobPage,
    ServerReadError,
    failure_text,
    server_url,
)
from nyth_peer.store import Store

log = logging.getLogger(__name__)

TABLE = "discovery"
CURSORS = "discovery_cursors"
INDEX_SOURCE, GROUP_SOURCE = "index", "directory group"
# Pages of blobs read from one directory server per sync (PAGE blobs each); the cursor is
# kept, so a longer backlog is read over the next syncs.
MAX_GROUP_PAGES = 20
# A directory re-issued while its pages are read is read again from page 0, this often.
PAGE_ATTEMPTS = 3
REFRESH_JITTER = 0.1

HttpFactory = Callable[[], httpx.AsyncClient]
PinServer = Callable[[str, bytes], Awaitable[Any]]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Discovery:
    def __init__(self, store: Store, http_factory: HttpFactory, pin_server: PinServer, *,
                 indexes: list[str], healthz: list[str], refresh_seconds: float,
                 on_onion_failure: Callable[[], None] | None = None) -> None:
        self.store = store
        # After a failed read (an index or a directory server unreachable), as the rest of
        # the peer does: tor otherwise avoids the directories of a failed onion lookup for
        # a while, and an index that just came online would stay unreadable.
        self._on_onion_failure = on_onion_failure
        self.pins = Pins(store)
        self._http = http_factory  # a client with a Tor circuit of its own per call
        self._pin_server = pin_server  # pins a directory server's bundle (GroupError)
        self.indexes = list(indexes)
        self.healthz = list(healthz)
        self.refresh_seconds = refresh_seconds
        self.runtime: dict[str, dict[str, Any]] = {}
        self.directories: dict[str, Directory] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._refreshes: set[asyncio.Task[None]] = set()
        for onion in self.indexes:
            self._load(onion)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        if self.indexes or self.healthz:
            self._task = asyncio.ensure_future(self._loop())

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._refreshes) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def refresh_now(self) -> asyncio.Task[None]:
        """A refresh started now (kept referenced until it ends, whoever waits for it)."""
        task = asyncio.ensure_future(self.refresh())
        self._refreshes.add(task)
        task.add_done_callback(self._refreshes.discard)
        return task

    def _load(self, onion: str) -> None:
        """The directory held for this index, verified again: one that no longer verifies
        (the rules tightened) is left out and read afresh."""
        self.runtime[onion] = {"state": "waiting", "reason": "not read yet"}
        row = self.store.get(TABLE, onion)
        if row is None or not row.get("directory"):
            return
        try:
            self.directories[onion] = Directory.verify(base64.b64decode(row["directory"]))
        except (DecodeError, AuthenticationError) as exc:
            log.warning("the directory held for index %s… no longer verifies: %s",
                        onion[:8], exc)
        else:
            self.runtime[onion] = {"state": "ok", "reason": "loaded from the profile"}

    async def _loop(self) -> None:
        for url in self.healthz:
            onion = await onion_from_healthz(url)
            if onion is not None and onion not in self.indexes:
                self.indexes.append(onion)
                self._load(onion)
        while True:
            await self.refresh()
            spread = random.uniform(1 - REFRESH_JITTER, 1 + REFRESH_JITTER)
            await asyncio.sleep(self.refresh_seconds * spread)

    async def refresh(self) -> None:
        """Read every index now (one refresh at a time)."""
        async with self._lock:
            await asyncio.gather(*(self._sync_guarded(o) for o in list(self.indexes)))

    async def _sync_guarded(self, onion: str) -> None:
        try:
            await self._sync(onion)
        except Exception as exc:  # a bug must not stop the other indexes' refreshes
            log.exception("reading index %s… failed", onion[:8])
            self._set(onion, "failed", failure_text(exc))

    def uses(self, server: str) -> list[str]:
        """What reads this group server for discovery (for GET /v1/servers' used_for)."""
        roles = []
        for onion in self.indexes:
            pinned = self.pins.pinned(INDEX, onion)
            if pinned is not None and server in IndexBundle.verify(pinned).directory_onions:
                roles.append(f"directory group of index {onion[:8]}…")
        return roles

    def _failed(self) -> None:
        if self._on_onion_failure is not None:
            self._on_onion_failure()

    # -- state -----------------------------------------------------------------------------
    def row(self, onion: str) -> dict[str, Any]:
        return self.store.get(TABLE, onion) or {"onion": onion}

    def _set(self, onion: str, state: str, reason: str | None) -> None:
        self.runtime[onion] = {"state": state, "reason": reason}

    def _refused(self, onion: str, reason: str) -> None:
        row = self.row(onion)
        row.update(last_refusal=printable(reason, 1000), refused_at=time.time())
        self.store.put(TABLE, onion, row)
        log.info("index %s…: refused %s", onion[:8], row["last_refusal"])

    def _keep(self, onion: str, accepted: Accepted | None, source: str) -> None:
        """Hold a newly accepted directory (None: the held one confirmed) from source."""
        row = self.row(onion)
        if accepted is not None:
            row["directory"] = _b64(accepted.signed)
            self.directories[onion] = accepted.directory
        row.update(source=source, fetched_at=time.time())
        self.store.put(TABLE, onion, row)

    def _held(self, onion: str) -> tuple[int | None, bytes | None]:
        directory = self.directories.get(onion)
        if directory is None:
            return None, None
        signed = base64.b64decode(self.row(onion)["directory"])
        return directory.epoch, hashlib.sha256(signed).digest()

    def _state_of(self, onion: str) -> str:
        directory = self.directories.get(onion)
        if directory is None:
            return "unreachable"
        return "ok" if directory.expires_at > time.time() else "stale"

    # -- one index -------------------------------------------------------------------------
    async def _sync(self, onion: str) -> None:
        index_error = await self._sync_from_index(onion)
        if index_error is None:
            return
        self._failed()
        pinned = self.pins.pinned(INDEX, onion)
        if pinned is None:
            self._set(onion, "unreachable", f"the index: {index_error}; no bundle of it is "
                                            "pinned yet, so there is no directory group to read")
            return
        await self._sync_from_group(onion, IndexBundle.verify(pinned, onion), index_error)

    async def _sync_from_index(self, onion: str) -> str | None:
        """Read the directory from the index itself; None when that worked, else why not."""
        try:
            async with self._http() as http:
                index = self.pins.check(INDEX, onion, await fetch_index_bundle(http, onion))
                accepted = await self._read_pages(http, onion, index)
        except BundleChangedError as exc:
            reason = (f"the index presents a signed bundle that differs from the one pinned on "
                      f"first use ({'; '.join(exc.changes)}); refused")
            self._refused(onion, reason)
            return reason
        except (DecodeError, AuthenticationError, DirectoryRefused) as exc:
            reason = f"refused what the index served: {exc}"
            self._refused(onion, reason)
            return reason
        except Exception as exc:
            return f"no directory from the index ({failure_reason(exc)})"
        self._keep(onion, accepted, INDEX_SOURCE)
        epoch = self.directories[onion].epoch
        self._set(onion, self._state_of(onion),
                  f"epoch {epoch} {'read' if accepted else 'still current'} from the index")
        return None

    async def _read_pages(self, http: httpx.AsyncClient, onion: str,
                          index: IndexBundle) -> Accepted | None:
        """The index's current directory, accepted; None when it is the one held."""
        held_epoch, held_digest = self._held(onion)
        for _ in range(PAGE_ATTEMPTS):
            chunks, pages = await fetch_directory_page(http, onion, 0)
            first = chunks[0]
            if first.digest == held_digest:
                return None
            for page in range(1, pages):
                more, _ = await fetch_directory_page(http, onion, page)
                if (more[0].epoch, more[0].digest) != (first.epoch, first.digest):
                    break  # a new directory was issued meanwhile: read it from page 0
                chunks.extend(more)
            else:
                return accept_pages(chunks, index, now=int(time.time()), held_epoch=held_epoch)
        raise UntrustedResponseError(f"the index changed its directory during each of "
                                     f"{PAGE_ATTEMPTS} reads")

    async def _sync_from_group(self, onion: str, index: IndexBundle, index_error: str) -> None:
        held_epoch, held_digest = self._held(onion)
        reader = DirectoryGroupReader(index, int(time.time()), held_epoch, held_digest)
        errors: list[str] = []
        for server in index.directory_onions:
            try:
                await self._read_directory_server(onion, server, reader)
            except Exception as exc:
                errors.append(f"{server[:8]}…: {failure_reason(exc)}")
        if errors:
            self._failed()
        read = len(index.directory_onions) - len(errors)
        if reader.summary():
            self._refused(onion, reader.summary() or "")
        where = f"{index_error}; the directory group ({read} of {len(index.directory_onions)} " \
                "servers read" + (f"; {'; '.join(errors)}" if errors else "") + ")"
        if reader.best is not None:
            self._keep(onion, reader.best, GROUP_SOURCE)
            outcome = f"epoch {reader.best.directory.epoch} read from it and verified"
        elif reader.confirmed:
            self._keep(onion, None, GROUP_SOURCE)
            outcome = f"confirms epoch {held_epoch}, verified"
        elif held_epoch is not None:
            outcome = f"has nothing newer than epoch {held_epoch}"
        else:
            outcome = "holds no directory of this index"
        self._set(onion, self._state_of(onion), f"{where} {outcome}")

    async def _read_directory_server(self, onion: str, server: str,
                                     reader: DirectoryGroupReader) -> None:
        """Pin the directory server (like any group server) and read its blobs since the
        last sync, at most MAX_GROUP_PAGES pages."""
        key = f"{onion}:{server}"
        async with self._http() as http:
            try:
                await self._pin_server(server, await fetch_server_bundle(http, server))
            except GroupError as exc:
                raise ServerReadError(str(exc)) from None
            after = (self.store.get(CURSORS, key) or {}).get("cursor", "0")
            for _ in range(MAX_GROUP_PAGES):
                answer = await bounded_request(
                    http, "GET", server_url(server, "/v1/blobs"),
                    params={"after": after, "limit": PAGE}, headers=PAGE_HEADERS,
                    max_bytes=PAGE_LIMITS, deadline=REQUEST_DEADLINE, what="page of blobs")
                if answer.status_code != 200:
                    raise ServerReadError(f"{answer.server} {answer.failure()} to a fetch")
                page = parse_page(answer, BlobPage, limit=PAGE, blob_size=BLOB_SIZE)
                for item in page.blobs:
                    reader.blob(item.blob)
                self.store.put(CURSORS, key, {"cursor": page.next})
                if not page.more or page.next == after:
                    return
                after = page.next


def isolated_client(new_client: Callable[[str, str], httpx.AsyncClient]) -> HttpFactory:
    """Clients whose requests take a Tor circuit of their own (SOCKS credentials never
    reused: tor isolates streams by them), so reading a directory is not linked to the
    peer's other traffic."""
    def make() -> httpx.AsyncClient:
        return new_client(secrets.token_hex(8), secrets.token_hex(8))
    return make

