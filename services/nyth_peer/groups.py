"""Groups: create, invite, join, post, and keep each group's history from its untrusted
servers over Tor.

Every blob a server hands us (server_sync) is trial-decrypted with the key of each group
that reads that server; a blob that opens is checked (signature, padding) and joins that
group's DAG, and its wire form is kept so members can pull it from us. Posts go to every
server of the group, retried until each acknowledges them. Gaps are recovered by
group_recovery; moves are made and followed by group_moves.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Annotated, Any

import httpx
from nyth.config import TEST_READER_HEADER
from nyth.errors import AuthenticationError, BundleChangedError, DecodeError, NythError
from nyth.http_limits import (
    JSON_SLACK,
    StrictModel,
    b64_len,
    b64_validator,
    bounded_request,
    printable,
)
from nyth.proto.bundle import MAX_BUNDLE_SIZE, ServerBundle
from nyth.proto.dag import GroupDag
from nyth.proto.delivery import RetryPolicy
from nyth.proto.group import (
    GroupMessage,
    Invite,
    seal_group_message,
)
from nyth.proto.identity import normalize_onion
from nyth.proto.recovery import Local, RecoveryPolicy
from pydantic import PlainValidator

from nyth_peer import group_views
from nyth_peer.events import EventBus
from nyth_peer.group_moves import GroupMoves
from nyth_peer.group_receive import GroupReceiver
from nyth_peer.group_recovery import RecoveryDriver
from nyth_peer.group_rows import (
    GroupError,
    group_servers,
    message_from_row,
    read_servers,
)
from nyth_peer.messenger import Messenger
from nyth_peer.pins import GROUP, Pins, UnusableBundleError
from nyth_peer.profile import Profile
from nyth_peer.server_sync import REQUEST_DEADLINE, ServerSync, server_url
from nyth_peer.tokens import TokensPending, TokenWallets

log = logging.getLogger(__name__)

MAX_INVITES = 100
# Contacts remembered per group as having introduced us or been invited by us: they are
# members before they post (nyth.proto.recovery). More invitations still go out.
MAX_INTRODUCED = 256

# The most a valid answer can take, from the protocol's fixed sizes: anything longer is
# a hostile or broken server, and is dropped before it can cost us memory.
BUNDLE_ANSWER_BYTES = b64_len(MAX_BUNDLE_SIZE) + JSON_SLACK
POST_ANSWER_BYTES = JSON_SLACK  # {"id": "<cursor>"}


class _BundleAnswer(StrictModel):
    bundle: Annotated[bytes, PlainValidator(b64_validator(max_size=MAX_BUNDLE_SIZE))]


async def fetch_server_bundle(http: httpx.AsyncClient, onion: str) -> bytes:
    """The bundle a group server presents now, unchecked (bounded, parsed strictly)."""
    answer = await bounded_request(http, "GET", server_url(onion, "/v1/bundle"),
                                   max_bytes=BUNDLE_ANSWER_BYTES, deadline=REQUEST_DEADLINE,
                                   what="key bundle")
    if answer.status_code != 200:
        raise GroupError(f"{answer.server} {answer.failure()} to a bundle request")
    return answer.parse(_BundleAnswer).bundle


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _received_at_ms(row: dict[str, Any]) -> int | None:
    """When we got a stored message, ms; None for rows stored before this was kept."""
    value = row.get("received_at_ms")
    return value if type(value) is int and 0 <= value < 1 << 63 else None


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task crashed", exc_info=task.exception())


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
                 http_factory: Callable[[], httpx.AsyncClient], retry: RetryPolicy,
                 policy: RecoveryPolicy | None = None, heads_every: float | None = None) -> None:
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
        self.pins = Pins(self.store)
        self.receiver = GroupReceiver(self)
        self.sync = ServerSync(self.store, events, http_factory, retry,
                               fetch_bundle=self._fetch_bundle, check_bundle=self._check_bundle,
                               ingest=self.receiver.ingest)
        self.recovery = RecoveryDriver(self, policy or RecoveryPolicy(), heads_every=heads_every)
        self.moves = GroupMoves(self)
        self._poster: asyncio.Task[None] | None = None
        self._post_wake = asyncio.Event()
        self._last_receipt_ms = 0
        messenger.on_invite = self._on_invite
        # Servers that want a token per post (nyth_peer.tokens); the engine swaps in
        # clients with a Tor circuit of their own for issuance.
        self.tokens = TokenWallets(
            self.store, self.pins, http_factory, retry, on_tokens=self._post_now,
            on_refusal=lambda onion, reason: self.sync.set_state(onion, "tokens_refused", reason))
        messenger.on_group_sync = self.recovery.on_p2p
        messenger.on_session = self.recovery.on_session

    @property
    def server_state(self) -> dict[str, dict[str, Any]]:
        return self.sync.server_state

    @property
    def stream_idle_seconds(self) -> float:
        return self.sync.stream_idle_seconds

    @stream_idle_seconds.setter
    def stream_idle_seconds(self, value: float) -> None:
        self.sync.stream_idle_seconds = value

    @property
    def on_onion_failure(self) -> Any:
        return self.sync.on_onion_failure

    @on_onion_failure.setter
    def on_onion_failure(self, value: Any) -> None:
        self.sync.on_onion_failure = value

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        for group in self.store.list("groups"):
            self._load_dag(group["id"])
            self.recovery.add_group(group, group_servers(group))
            for onion in read_servers(group):
                self.sync.ensure(onion)
        self._poster = asyncio.ensure_future(self._post_loop())
        self._poster.add_done_callback(_log_crash)
        self.recovery.start()
        self.tokens.start({o for g in self.store.list("groups") for o in g["servers"]})

    async def stop(self) -> None:
        await self.recovery.stop()
        await self.sync.stop()
        if self._poster is not None:
            self._poster.cancel()
            await asyncio.gather(self._poster, return_exceptions=True)
        await self.tokens.stop()

    def _load_dag(self, gid: str) -> GroupDag:
        dag = GroupDag()
        for row in self.store.list(f"group_messages:{gid}"):
            received = _received_at_ms(row)
            dag.add(message_from_row(row), received)
            # Receipts stay in order across a restart, even with a clock set back.
            self._last_receipt_ms = max(self._last_receipt_ms, received or 0)
        self.dags[gid] = dag
        return dag

    def dag(self, gid: str) -> GroupDag:
        dag = self.dags.get(gid)
        return dag if dag is not None else self._load_dag(gid)

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

    def pinned_bundle(self, onion: str) -> bytes:
        pin = self.pins.pinned(GROUP, onion)
        if pin is None:
            raise GroupError(f"{onion}.onion is not pinned")
        return pin

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

    _fetch_bundle = staticmethod(fetch_server_bundle)

    def _check_bundle(self, onion: str, presented: bytes) -> ServerBundle:
        """The verified, pinned bundle; BundleChangedError (state "bundle_changed") on a
        change, GroupError when it is invalid or unusable."""
        try:
            bundle: ServerBundle = self.pins.check(GROUP, onion, presented)
        except BundleChangedError as exc:
            self.sync.set_state(onion, "bundle_changed", str(exc))
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
        if self.sync.reading(onion):
            self.sync.set_state(onion, "connecting")
            self.sync.ensure(onion, restart=True)
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
            self.put_group(row)

    # -- groups ----------------------------------------------------------------------------
    def groups(self) -> list[dict[str, Any]]:
        return [group_views.group_view(self, g) for g in self.store.list("groups")]

    def group(self, gid: str) -> dict[str, Any]:
        return group_views.group_view(self, self.group_row(gid))

    def group_row(self, gid: str) -> dict[str, Any]:
        row = self.store.get("groups", gid)
        if row is None:
            raise GroupError(f"no group {gid}")
        return row

    def put_group(self, row: dict[str, Any]) -> None:
        self.store.put("groups", row["id"], row)
        self.receiver.forget_groups()

    async def create(self, name: str, servers: list[str]) -> dict[str, Any]:
        if not servers or len(servers) > 8:
            raise GroupError("a group needs 1 to 8 servers")
        if len(set(servers)) != len(servers):
            raise GroupError("a server is named twice")
        bundles = [await self.pin_server(s) for s in servers]
        try:
            # v2: we own it (only we may move it), and its id survives moves.
            invite = Invite.create(name, self.profile.identity.public_key,
                                   [self.pinned_bundle(b.onion) for b in bundles])
        except DecodeError as exc:
            raise GroupError(str(exc)) from exc
        return self._join(invite)

    def _join(self, invite: Invite, introduced: tuple[str, ...] = ()) -> dict[str, Any]:
        gid = invite.group_id.hex()
        existing = self.store.get("groups", gid)
        if existing is not None:
            return group_views.group_view(self, existing)
        servers = [b.onion for b in invite.servers]
        row: dict[str, Any] = {
            "id": gid, "name": invite.name, "key": _b64(invite.key),
            "servers": list(dict.fromkeys(servers)),  # a v1 invite may name one twice
            "invite": _b64(invite.encode()), "created_at": time.time(), "draining": {},
            "move_hash": None, "introduced": list(introduced)[:MAX_INTRODUCED]}
        self.put_group(row)
        self.dags[gid] = GroupDag()
        self.recovery.add_group(row, group_servers(row))
        for onion in row["servers"]:
            self.sync.ensure(onion, restart=True)
        view = group_views.group_view(self, row)
        self.events.publish("group", group=view)
        return view

    def invite(self, gid: str, contact: str) -> dict[str, Any]:
        row = self.group_row(gid)
        sent = self.messenger.send_invite(contact, base64.b64decode(row["invite"]))
        introduced = row.setdefault("introduced", [])
        if contact not in introduced and len(introduced) < MAX_INTRODUCED:
            introduced.append(contact)
            self.put_group(row)
        self.recovery.add_introduced(gid, contact)
        return sent

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
        group = self._join(invite, introduced=(row["from"],))
        self.store.delete("invites", gid)
        return group

    def set_recovery(self, gid: str, strategies: list[str]) -> dict[str, Any]:
        """Switch the group's recovery strategies (group_recovery.STRATEGIES, in order)."""
        row = self.group_row(gid)
        row["recovery"] = list(strategies)
        self.put_group(row)
        self.recovery.set_strategies(gid, strategies)  # may follow a held move: row changes
        return self.group(gid)

    # -- posting ---------------------------------------------------------------------------
    def post(self, gid: str, text: str) -> dict[str, Any]:
        row = self.group_row(gid)
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
        self.events.publish("group_message", group=gid, message=group_views.public(record))
        self._post_wake.set()
        self.recovery.on_message(gid, message, Local())
        self.recovery.announce(gid)
        return group_views.public(record)

    def queue_blob(self, gid: str, message_hash: str, blob: bytes, servers: list[str], *,
                   carry: bool = False) -> None:
        """Post a blob of an existing message (a move, a re-post after one) to servers.
        carry: someone else's message re-posted by the mover; its row is not ours to mark."""
        outbox = self.store.get("group_outbox", message_hash)
        if outbox is not None:  # still on its way elsewhere: it goes there too
            servers = list(dict.fromkeys([*outbox["servers"], *servers]))
        self.store.put("group_outbox", message_hash,
                       {"gid": gid, "hash": message_hash, "blob": _b64(blob), "servers": servers,
                        "attempts": 0, "next_attempt_at": time.time(), "carry": carry})
        self._post_wake.set()

    def _receipt_ms(self) -> int:
        """Now in ms, and strictly after the previous receipt: a page of backlog ingested
        within one millisecond keeps its order, which history's order relies on."""
        self._last_receipt_ms = max(int(time.time() * 1000), self._last_receipt_ms + 1)
        return self._last_receipt_ms

    def _record(self, message: GroupMessage, *, state: str) -> dict[str, Any]:
        record: dict[str, Any] = {
            "hash": message.hash.hex(), "author": message.author.hex(),
            "timestamp_ms": message.timestamp_ms,
            "parents": [p.hex() for p in message.parents], "body": message.body,
            "kind": int(message.kind), "wire": _b64(message.wire),
            "state": state, "reason": None, "next_retry_at": None}
        if message.move is not None:
            record["move"] = {"epoch": message.move.epoch,
                              "servers": [b.onion for b in message.move.servers]}
        return record

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
        if row.get("carry") and record is not None and row["servers"]:
            # Someone else's message we carry to new servers: retried, its row untouched.
            row["attempts"] += 1
            row["next_attempt_at"] = time.time() + self.retry.delay(row["attempts"])
            self.store.put("group_outbox", row["hash"], row)
            return not failures
        if record is None or row.get("carry"):
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
        self.events.publish("group_message", group=gid, message=group_views.public(record))
        return not failures

    def history(self, gid: str, limit: int = 500) -> dict[str, Any]:
        self.group_row(gid)
        return group_views.history(self, gid, limit)
