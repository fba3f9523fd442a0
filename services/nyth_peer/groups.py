"""Groups: create, invite, join, post, and sync from untrusted group servers over Tor.

Every blob a server hands us is trial-decrypted with the key of each group we hold on
that server; a blob that opens is checked (signature, padding) and joins that group's
DAG. Posts go to every server of the group, retried until each acknowledges them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import logging
import re
import time
from collections.abc import Callable
from typing import Annotated, Any

import httpx
from nyth.config import TEST_READER_HEADER, OnionServiceSettings
from nyth.errors import AuthenticationError, BundleChangedError, DecodeError, NythError
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
from nyth.proto.bundle import MAX_BUNDLE_SIZE, ServerBundle
from nyth.proto.dag import GroupDag
from nyth.proto.delivery import RetryPolicy
from nyth.proto.group import (
    BLOB_SIZE,
    GroupKind,
    GroupMessage,
    Invite,
    new_group_key,
    open_group_message,
    seal_group_message,
)
from nyth.proto.identity import normalize_onion
from nyth.runtime.stream_store import CURSOR_PATTERN
from pydantic import Field, PlainValidator

from nyth_peer.events import EventBus
from nyth_peer.messenger import Messenger
from nyth_peer.pins import GROUP, Pins, UnusableBundleError
from nyth_peer.profile import Profile
from nyth_peer.tokens import TokensPending, TokenWallets

log = logging.getLogger(__name__)

PAGE = 500
MAX_INVITES = 100
# A request through Tor to a server that died mid-rendezvous can hang without any
# socket error; every request gets a hard deadline so queues keep moving.
REQUEST_DEADLINE = 30.0

# The most a valid answer can take, from the protocol's fixed sizes: anything longer is
# a hostile or broken server, and is dropped before it can cost us memory.
BUNDLE_ANSWER_BYTES = b64_len(MAX_BUNDLE_SIZE) + JSON_SLACK
POST_ANSWER_BYTES = JSON_SLACK  # {"id": "<cursor>"}
PAGE_ANSWER_BYTES = PAGE * (b64_len(BLOB_SIZE) + ITEM_SLACK) + JSON_SLACK
# The live stream: "data: <base64 blob>" is the longest line a blob event has; with its
# "event: blob" and "id: <cursor>" lines an event is a little more.
STREAM_MAX_LINE = b64_len(BLOB_SIZE) + ITEM_SLACK
STREAM_MAX_EVENT = b64_len(BLOB_SIZE) + 3 * ITEM_SLACK
# Servers send a keep-alive comment every keepalive_seconds (this default unless their
# operator changed it); a stream silent for several of them is stalled, not just quiet.
SERVER_KEEPALIVE_SECONDS = float(OnionServiceSettings.model_fields["keepalive_seconds"].default)
STREAM_IDLE_SECONDS = 4 * SERVER_KEEPALIVE_SECONDS
_CURSOR = re.compile(CURSOR_PATTERN)


class _BundleAnswer(StrictModel):
    bundle: Annotated[bytes, PlainValidator(b64_validator(max_size=MAX_BUNDLE_SIZE))]


class _BlobItem(StrictModel):
    id: str = Field(pattern=CURSOR_PATTERN)
    blob: Annotated[bytes, PlainValidator(b64_validator(size=BLOB_SIZE))]


class _BlobPage(StrictModel):
    blobs: list[_BlobItem] = Field(max_length=PAGE)
    next: str = Field(pattern=CURSOR_PATTERN)
    more: bool


class GroupError(Exception):
    """A user request about groups that cannot be honoured."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _received_at_ms(row: dict[str, Any]) -> int | None:
    """When we got a stored message, ms; None for rows stored before this was kept."""
    value = row.get("received_at_ms")
    return value if type(value) is int and 0 <= value < 1 << 63 else None


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task crashed", exc_info=task.exception())


def server_url(onion: str, path: str) -> str:
    return f"http://{onion}.onion{path}"


def with_test_reader(http_factory: Callable[[], httpx.AsyncClient],
                     label: str | None) -> Callable[[], httpx.AsyncClient]:
    """TEST HOOK (NYTH_DEV_MODE + NYTH_TEST_READER_LABEL only): clients from http_factory
    name us as reader `label` in every request to group servers, so a fault-injecting
    server (NYTH_FAULT_WITHHOLD_FROM) can withhold blobs from us. Without a label,
    http_factory itself: a real peer never tells a server who it is."""
    if label is None:
        return http_factory

    def labelled() -> httpx.AsyncClient:
        http = http_factory()
        http.headers[TEST_READER_HEADER] = label
        return http

    return labelled


class GroupService:
    def __init__(self, profile: Profile, events: EventBus, messenger: Messenger,
                 http_factory: Callable[[], httpx.AsyncClient], retry: RetryPolicy) -> None:
        self.profile = profile
        self.store = profile.store
        self.events = events
        self.messenger = messenger
        # Clients are cheap and short-lived on purpose: after a server or gateway restart a
        # pooled keep-alive connection through SOCKS can hang until the deadline instead of
        # failing, so a failure throws the pool away and the next attempt dials afresh.
        self._new_http = http_factory
        self.retry = retry
        self.dags: dict[str, GroupDag] = {}
        self.server_state: dict[str, dict[str, Any]] = {}
        self.pins = Pins(self.store)
        self._syncers: dict[str, asyncio.Task[None]] = {}
        self._poster: asyncio.Task[None] | None = None
        self._post_wake = asyncio.Event()
        self._groups_cache: list[dict[str, Any]] | None = None
        self.on_onion_failure: Any = None  # set by the engine: forget tor's failed lookups
        self.stream_idle_seconds = STREAM_IDLE_SECONDS
        self._last_receipt_ms = 0
        messenger.on_invite = self._on_invite
        # Servers that want a token per post (nyth_peer.tokens); the engine swaps in
        # clients with a Tor circuit of their own for issuance.
        self.tokens = TokenWallets(
            self.store, self.pins, http_factory, retry, on_tokens=self._post_now,
            on_refusal=lambda onion, reason: self._set_server_state(onion, "tokens_refused",
                                                                    reason))

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        for group in self.store.list("groups"):
            self._load_dag(group["id"])
            for onion in group["servers"]:
                self._ensure_syncer(onion)
        self._poster = asyncio.ensure_future(self._post_loop())
        self._poster.add_done_callback(_log_crash)
        self.tokens.start({o for g in self.store.list("groups") for o in g["servers"]})

    async def stop(self) -> None:
        tasks = [*self._syncers.values(), *([self._poster] if self._poster else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.tokens.stop()

    def _load_dag(self, gid: str) -> GroupDag:
        dag = GroupDag()
        for row in self.store.list(f"group_messages:{gid}"):
            received = _received_at_ms(row)
            dag.add(GroupMessage(bytes.fromhex(row["author"]), row["timestamp_ms"],
                                 tuple(bytes.fromhex(p) for p in row["parents"]), row["body"],
                                 bytes.fromhex(row["hash"])), received)
            # Receipts stay in order across a restart, even with a clock set back.
            self._last_receipt_ms = max(self._last_receipt_ms, received or 0)
        self.dags[gid] = dag
        return dag

    # -- servers ---------------------------------------------------------------------------
    async def pin_server(self, onion: str, presented: bytes | None = None) -> ServerBundle:
        """Fetch (or take from an invite) a server's bundle and pin it on first use."""
        onion = normalize_onion(onion)
        if presented is None:
            presented = await self.fetch_bundle(onion)
        try:
            return self._check_bundle(onion, presented)
        except BundleChangedError as exc:
            raise GroupError(str(exc)) from exc

    async def fetch_bundle(self, onion: str) -> bytes:
        """The bundle the server presents now, unchecked."""
        try:
            async with self._new_http() as http:
                return await self._fetch_bundle(http, onion)
        except TimeoutError as exc:
            raise GroupError(f"cannot fetch the key bundle of {onion}.onion: no answer within "
                             f"{REQUEST_DEADLINE:.0f} s") from exc
        except (httpx.HTTPError, NythError, GroupError) as exc:
            raise GroupError(f"cannot fetch the key bundle of {onion}.onion: "
                             f"{printable(str(exc), 500)}") from exc

    @staticmethod
    async def _fetch_bundle(http: httpx.AsyncClient, onion: str) -> bytes:
        answer = await bounded_request(http, "GET", server_url(onion, "/v1/bundle"),
                                       max_bytes=BUNDLE_ANSWER_BYTES, deadline=REQUEST_DEADLINE,
                                       what="key bundle")
        if answer.status_code != 200:
            raise GroupError(f"{answer.server} {answer.failure()} to a bundle request")
        return answer.parse(_BundleAnswer).bundle

    def _check_bundle(self, onion: str, presented: bytes) -> ServerBundle:
        """The verified, pinned bundle; BundleChangedError (state "bundle_changed") on a
        change, GroupError when it is invalid or unusable."""
        try:
            bundle: ServerBundle = self.pins.check(GROUP, onion, presented)
        except BundleChangedError as exc:
            self._set_server_state(onion, "bundle_changed", str(exc))
            raise
        except (DecodeError, AuthenticationError) as exc:
            raise GroupError(f"{onion}.onion sent an invalid key bundle: {exc}") from exc
        except UnusableBundleError as exc:
            raise GroupError(str(exc)) from exc
        return bundle

    def resume(self, onion: str, bundle: bytes) -> None:
        """After a re-pin: future invites carry the new bundle, sync starts again and
        posts that waited for this server go out now."""
        self._refresh_invites(onion, bundle)
        if onion in self._syncers:
            self._set_server_state(onion, "connecting")
            self._ensure_syncer(onion, restart=True)
        else:
            self.server_state.pop(onion, None)
        self._post_now(onion)

    def _post_now(self, onion: str) -> None:
        """Posts waiting for this server go out now (a re-pin, a batch of tokens)."""
        now = time.time()
        for row in self.store.list("group_outbox"):
            if onion in row["servers"]:
                row["next_attempt_at"] = now
                self.store.put("group_outbox", row["hash"], row)
        self._post_wake.set()

    def _refresh_invites(self, onion: str, bundle: bytes) -> None:
        # The group id binds servers' keys, not their bundles, so swapping the bundle keeps
        # the group; new members then pin what we accepted instead of meeting the refusal.
        for row in self.store.list("groups"):
            if onion not in row["servers"]:
                continue
            invite = Invite.decode(base64.b64decode(row["invite"]))
            bundles = tuple(bundle if b.onion == onion else raw
                            for raw, b in zip(invite.bundles, invite.servers, strict=True))
            row["invite"] = _b64(dataclasses.replace(invite, bundles=bundles).encode())
            self.store.put("groups", row["id"], row)
        self._groups_cache = None

    # -- groups ----------------------------------------------------------------------------
    def groups(self) -> list[dict[str, Any]]:
        return [self._group_view(g) for g in self.store.list("groups")]

    def group(self, gid: str) -> dict[str, Any]:
        return self._group_view(self._group_row(gid))

    def _group_row(self, gid: str) -> dict[str, Any]:
        row = self.store.get("groups", gid)
        if row is None:
            raise GroupError(f"no group {gid}")
        return row

    def _group_view(self, row: dict[str, Any]) -> dict[str, Any]:
        dag = self.dags.get(row["id"]) or GroupDag()
        return {"id": row["id"], "name": row["name"], "servers": row["servers"],
                "created_at": row["created_at"], "messages": len(dag),
                "missing": len(dag.missing()),
                "server_state": {s: self.server_state.get(s, {"state": "idle"})
                                 for s in row["servers"]}}

    async def create(self, name: str, servers: list[str]) -> dict[str, Any]:
        if not servers or len(servers) > 8:
            raise GroupError("a group needs 1 to 8 servers")
        bundles = [await self.pin_server(s) for s in servers]
        pinned = tuple(base64.b64decode(self.store.get("pins", b.onion)["bundle"])  # type: ignore[index]
                       for b in bundles)
        # A v1 invite carries only v1 bundles; a server that prices its tokens (a v2
        # bundle) needs a v2 invite, whose group has us as owner.
        invite = (Invite(name, new_group_key(), pinned) if all(b.version == 1 for b in bundles)
                  else Invite.create(name, self.profile.identity.public_key, pinned))
        invite.encode()  # validates name length and server count before we store anything
        return self._join(invite)

    def _join(self, invite: Invite) -> dict[str, Any]:
        gid = invite.group_id.hex()
        existing = self.store.get("groups", gid)
        if existing is not None:
            return self._group_view(existing)
        servers = [b.onion for b in invite.servers]
        row: dict[str, Any] = {"id": gid, "name": invite.name, "key": _b64(invite.key),
               "servers": servers,
               "invite": _b64(invite.encode()), "created_at": time.time()}
        self.store.put("groups", gid, row)
        self._groups_cache = None
        self.dags[gid] = GroupDag()
        for onion in servers:
            self._ensure_syncer(onion, restart=True)
        self.events.publish("group", group=self._group_view(row))
        return self._group_view(row)

    def invite(self, gid: str, contact: str) -> dict[str, Any]:
        row = self._group_row(gid)
        return self.messenger.send_invite(contact, base64.b64decode(row["invite"]))

    def _on_invite(self, onion: str, body: bytes) -> None:
        invite = Invite.decode(body)
        gid = invite.group_id.hex()
        if self.store.has("groups", gid):
            return
        if len(self.store.list("invites")) >= MAX_INVITES:
            log.info("invite dropped: too many pending invites")
            return
        row = {"id": gid, "name": invite.name, "from": onion, "invite": _b64(body),
               "servers": [b.onion for b in invite.servers], "received_at": time.time()}
        self.store.put("invites", gid, row)
        self.events.publish("group_invite", invite={k: v for k, v in row.items() if k != "invite"})

    def invites(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "invite"} for r in self.store.list("invites")]

    async def accept_invite(self, gid: str) -> dict[str, Any]:
        row = self.store.get("invites", gid)
        if row is None:
            raise GroupError("no such invite")
        invite = Invite.decode(base64.b64decode(row["invite"]))
        for bundle_bytes, bundle in zip(invite.bundles, invite.servers, strict=True):
            await self.pin_server(bundle.onion, bundle_bytes)
        group = self._join(invite)
        self.store.delete("invites", gid)
        return group

    # -- posting ---------------------------------------------------------------------------
    def post(self, gid: str, text: str) -> dict[str, Any]:
        row = self._group_row(gid)
        dag = self.dags[gid]
        blob, message = seal_group_message(
            self.profile.identity, base64.b64decode(row["key"]), bytes.fromhex(gid),
            timestamp_ms=int(time.time() * 1000), parents=dag.heads(), body=text)
        record = self._record(message, state="queued")
        record["received_at_ms"] = self._receipt_ms()
        record["pending_servers"] = list(row["servers"])
        with self.store.transaction():
            self.store.put(f"group_messages:{gid}", record["hash"], record)
            self.store.put("group_outbox", record["hash"],
                           {"gid": gid, "hash": record["hash"], "blob": _b64(blob),
                            "servers": list(row["servers"]), "attempts": 0,
                            "next_attempt_at": time.time()})
        dag.add(message, record["received_at_ms"])
        self.events.publish("group_message", group=gid, message=record)
        self._post_wake.set()
        return record

    def _receipt_ms(self) -> int:
        """Now in ms, and strictly after the previous receipt: a page of backlog ingested
        within one millisecond keeps its order, which history's order relies on."""
        self._last_receipt_ms = max(int(time.time() * 1000), self._last_receipt_ms + 1)
        return self._last_receipt_ms

    def _record(self, message: GroupMessage, *, state: str) -> dict[str, Any]:
        return {"hash": message.hash.hex(), "author": message.author.hex(),
                "timestamp_ms": message.timestamp_ms,
                "parents": [p.hex() for p in message.parents], "body": message.body,
                "state": state, "reason": None, "next_retry_at": None}

    async def _post_loop(self) -> None:
        http = self._new_http()
        try:
            while True:
                self._post_wake.clear()
                now = time.time()
                rows = self.store.list("group_outbox")
                due = [r for r in rows if r["next_attempt_at"] <= now]
                for row in due:
                    if not await self._post_one(http, row):
                        await http.aclose()
                        http = self._new_http()
                if due:
                    continue
                timeout = max(0.05, min(r["next_attempt_at"] for r in rows) - now) if rows else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._post_wake.wait(), timeout)
        finally:
            await http.aclose()

    async def _post_one(self, http: httpx.AsyncClient, row: dict[str, Any]) -> bool:
        """Post one blob to every server still missing it; False if any attempt failed."""
        blob = base64.b64decode(row["blob"])
        failures, waiting = [], []
        # A changed bundle means the server no longer promises what we pinned: nothing
        # goes to it until the user re-pins (resume() then sends at once).
        refusals = {o: self.pins.refusal(GROUP, o) for o in row["servers"]}
        refused = [reason for reason in refusals.values() if reason is not None]
        for onion in [o for o, reason in refusals.items() if reason is None]:
            try:
                token = self.tokens.headers(onion, row["hash"], blob)
                answer = await bounded_request(
                    http, "POST", server_url(onion, "/v1/blobs"), content=blob,
                    headers={"content-type": "application/octet-stream", **token},
                    max_bytes=POST_ANSWER_BYTES, deadline=REQUEST_DEADLINE,
                    what="post acknowledgement")
                self.tokens.settle(onion, row["hash"], answer.status_code)
                if answer.status_code != 201:
                    raise GroupError(answer.failure())
                row["servers"].remove(onion)
            except TokensPending as exc:
                waiting.append(str(exc))
            except TimeoutError:
                failures.append(f"{onion[:8]}….onion: no answer within {REQUEST_DEADLINE:.0f} s")
            except Exception as exc:
                # Anything a dead or restarting server causes through SOCKS (httpx,
                # httpcore and python-socks all have their own types) means: retry later.
                failures.append(f"{onion[:8]}….onion: "
                                + printable(f"{type(exc).__name__} {exc}", 300))
        gid, key = row["gid"], f"group_messages:{row['gid']}"
        record = self.store.get(key, row["hash"])
        if record is None:
            self.store.delete("group_outbox", row["hash"])
            return not failures
        record["pending_servers"] = list(row["servers"])
        if failures and self.on_onion_failure is not None:
            self.on_onion_failure()
        if not row["servers"]:
            record.update(state="posted", reason=None, next_retry_at=None)
            with self.store.transaction():
                self.store.put(key, row["hash"], record)
                self.store.delete("group_outbox", row["hash"])
        else:
            reason = "; ".join(failures + waiting + refused)
            log.info("group post not accepted yet: %s", reason)
            row["attempts"] += 1
            row["next_attempt_at"] = time.time() + self.retry.delay(row["attempts"])
            record.update(state="queued", reason=reason,
                          next_retry_at=row["next_attempt_at"])
            with self.store.transaction():
                self.store.put(key, row["hash"], record)
                self.store.put("group_outbox", row["hash"], row)
        self.events.publish("group_message", group=gid, message=record)
        return not failures

    # -- syncing ---------------------------------------------------------------------------
    def _ensure_syncer(self, onion: str, restart: bool = False) -> None:
        task = self._syncers.get(onion)
        if task is not None and not task.done():
            if not restart:
                return
            task.cancel()
        self._syncers[onion] = asyncio.ensure_future(self._sync_loop(onion))
        self._syncers[onion].add_done_callback(_log_crash)

    def _set_server_state(self, onion: str, state: str, reason: str | None = None,
                          next_retry_at: float | None = None) -> None:
        current = self.server_state.get(onion, {})
        if current.get("state") == state and current.get("reason") == reason:
            return
        self.server_state[onion] = {"state": state, "reason": reason, "since": time.time(),
                                    "next_retry_at": next_retry_at}
        self.events.publish("server", onion=onion, **self.server_state[onion])

    async def _sync_loop(self, onion: str) -> None:
        failures = 0
        while True:
            try:
                async with self._new_http() as http:
                    if self.server_state.get(onion, {}).get("state") != "bundle_changed":
                        # A re-check of a refused bundle is not a new connection attempt.
                        self._set_server_state(onion, "connecting")
                    # Checked on every (re)connection: a restart is when an operator's
                    # changed limits turn into a new bundle.
                    self._check_bundle(onion, await self._fetch_bundle(http, onion))
                    await self._fetch_backlog(http, onion)
                    self._set_server_state(onion, "live")
                    failures = 0
                    await self._follow(http, onion)
                    reason = "the server closed the stream"
            except BundleChangedError:
                # Looked at again now and then, in case the operator restores the
                # pinned bundle; a re-pin restarts this loop at once.
                failures += 1
                await asyncio.sleep(self.retry.delay(failures))
                continue
            except TimeoutError:
                reason = f"no answer within {REQUEST_DEADLINE:.0f} s"
            except Exception as exc:
                # The text of an exception may carry the server's own bytes (an HTTP parser
                # quoting a bad status line): shown only cleaned and cut short.
                reason = printable(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
                                   500)
            failures += 1
            if self.on_onion_failure is not None:
                self.on_onion_failure()
            delay = self.retry.delay(failures)
            self._set_server_state(onion, "unreachable", reason, time.time() + delay)
            await asyncio.sleep(delay)

    def _groups_on(self, onion: str) -> list[dict[str, Any]]:
        # Called for every blob a server sends: read (and decrypt) the group rows once,
        # again only after a join changes them.
        if self._groups_cache is None:
            self._groups_cache = self.store.list("groups")
        return [g for g in self._groups_cache if onion in g["servers"]]

    def _cursor(self, onion: str) -> str:
        row = self.store.get("cursors", onion)
        cursor = row.get("cursor") if row else "0"
        if not isinstance(cursor, str) or not _CURSOR.fullmatch(cursor):
            # Older versions stored whatever a server said; reading from the start again
            # costs bandwidth only (blobs we hold are recognised and skipped).
            log.info("server %s…: stored cursor is malformed; reading from the start", onion[:8])
            return "0"
        return cursor

    async def _fetch_backlog(self, http: httpx.AsyncClient, onion: str) -> None:
        while True:
            after = self._cursor(onion)
            answer = await bounded_request(
                http, "GET", server_url(onion, "/v1/blobs"), params={"after": after, "limit": PAGE},
                max_bytes=PAGE_ANSWER_BYTES, deadline=REQUEST_DEADLINE, what="page of blobs")
            if answer.status_code != 200:
                raise GroupError(f"{answer.server} {answer.failure()} to a fetch")
            page = answer.parse(_BlobPage)
            if page.more and page.next == after:
                # Would have us ask for the same page again and again.
                raise UntrustedResponseError(f"{answer.server} says more blobs wait after "
                                             f"{after} but does not move its cursor")
            for item in page.blobs:
                self._ingest(onion, item.id, item.blob)
            self.store.put("cursors", onion, {"cursor": page.next})
            if not page.more:
                return

    async def _follow(self, http: httpx.AsyncClient, onion: str) -> None:
        url = server_url(onion, "/v1/blobs/stream")
        async with open_event_stream(
                http, url, params={"after": self._cursor(onion)}, deadline=REQUEST_DEADLINE,
                max_line=STREAM_MAX_LINE, max_event=STREAM_MAX_EVENT,
                idle_seconds=self.stream_idle_seconds) as stream:
            if stream.status_code != 200:
                raise GroupError(f"{stream.server} {await stream.failure()} to the stream")
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

    def _ingest(self, onion: str, cursor: str, blob: bytes) -> None:
        if len(blob) != BLOB_SIZE:
            log.info("server %s… sent a %d-byte blob; ignored", onion[:8], len(blob))
            return
        for group in self._groups_on(onion):
            gid = group["id"]
            try:
                message = open_group_message(base64.b64decode(group["key"]), bytes.fromhex(gid), blob)
            except AuthenticationError:
                continue
            except NythError as exc:
                log.info("malformed message in group %s: %s", gid[:8], exc)
                continue
            if message.kind != GroupKind.TEXT:
                # Moves and later kinds are not handled here yet (nyth.proto.group_control,
                # recovery): dropped, as every v2 message was before they decoded.
                log.info("group %s: %s message not handled; dropped", gid[:8], message.kind)
                continue
            dag = self.dags.setdefault(gid, GroupDag())
            key = f"group_messages:{gid}"
            existing = self.store.get(key, message.hash.hex())
            if existing is not None:
                return  # ours coming back, or a copy from another server of the group
            record = self._record(message, state="received")
            record["server"] = onion
            # History's order bounds each author's claimed time by when we got it.
            record["received_at_ms"] = self._receipt_ms()
            self.store.put(key, record["hash"], record)
            dag.add(message, record["received_at_ms"])
            self.events.publish("group_message", group=gid, message=record)
            return

    def history(self, gid: str, limit: int = 500) -> dict[str, Any]:
        self._group_row(gid)
        dag = self.dags.get(gid) or self._load_dag(gid)
        key = f"group_messages:{gid}"
        messages = []
        for placed in dag.placed()[-limit:]:
            message = placed.message
            row = self.store.get(key, message.hash.hex()) or self._record(message, state="received")
            messages.append({**row, "received_at_ms": _received_at_ms(row),
                             "order_time_ms": placed.order_time_ms,
                             "time_adjusted": placed.time_adjusted})
        return {"group": gid, "messages": messages,
                "missing": sorted(h.hex() for h in dag.missing())}
