"""Retention audits: does a server keep what it stores as long as its bundle promises?

Every audit_interval the index posts a *canary* to each server that is up: for a group
server 2048 random bytes (indistinguishable from a sealed group message, paid with a
token when the bundle wants one), for a mailbox a record with a fresh FMD tag and random
ciphertext of the bundle's size (with the post's proof of work). It keeps the canary's id
and hash, never the bytes, and looks for it at 0.25, 0.5 and 0.9 of the promised max_age
(policy.check_times) by reading the one entry after the id just before it.

- found, the same bytes, at every check: KEPT (audits_passed + 1);
- missing or different while the promise still held: LOST, kept while the server is
  listed, with the canary's age and the promised limits recorded;
- a read that failed: inconclusive, tried again next tick (not counted either way).

Limit (docs/discovery.md): a server that evicts by count (max_blobs / max_records) before
max_age because others posted a lot is, to this audit, indistinguishable from one that
forgets early. Both promised numbers are recorded with the loss so a reader can judge.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import time
from dataclasses import dataclass, field, replace
from typing import Annotated, Protocol

import httpx
from nyth.errors import NythError
from nyth.group_server_client import GroupServerClient, TokenPurse
from nyth.http_limits import (
    ITEM_SLACK,
    JSON_SLACK,
    StrictModel,
    b64_len,
    b64_validator,
    bounded_request,
)
from nyth.proto import fmd
from nyth.proto.bundle import ServerBundle
from nyth.proto.discovery import ServerKind
from nyth.proto.mailbox_bundle import MAX_RECORD_SIZE, MailboxBundle, solve_pow
from nyth.runtime.stream_store import CURSOR_PATTERN, Cursor
from prometheus_client import Counter
from pydantic import Field, PlainValidator
from redis.exceptions import RedisError

from nyth_discovery import policy
from nyth_discovery.keyed_tasks import KeyedTasks
from nyth_discovery.policy import Audit, Canary, Listing
from nyth_discovery.reach import DEADLINE, REQUEST_ERRORS, Reach
from nyth_discovery.storage import DiscoveryStore

log = logging.getLogger("nyth_discovery.audits")

AUDITS = Counter("nyth_discovery_audits_total",
                 "Retention audit events: canaries posted, checks passed, audits kept, "
                 "lost, void (too late to tell), inconclusive (read failed).", ["result"])
TICK = 1.0
# Checks of one canary are never closer than this (a check takes a Tor round trip).
CHECK_MIN_GAP = 2.0
CONCURRENCY = 4
# After a failed post or read, the server is left alone this long (at most the interval).
RETRY_AFTER = 30.0
MAX_TAG_SIZE = 256


def cursor_before(cursor: str) -> str:
    """The largest cursor below `cursor` that a server's reads accept: reading after it
    returns `cursor` first, if the server still has it."""
    c = Cursor.parse(cursor)
    if c.seq > 0:
        return f"{c.ms}-{c.seq - 1}"
    # Sequence numbers stay far below 19 digits; this is what schemas allow.
    return f"{c.ms - 1}-9999999999999999999" if c.ms > 0 else "0"


def digest(*parts: bytes) -> str:
    return hashlib.sha256(b"".join(parts)).hexdigest()


class CanaryTarget(Protocol):
    @property
    def onion(self) -> str: ...

    @property
    def max_age(self) -> int: ...

    @property
    def max_count(self) -> int: ...

    async def post(self) -> tuple[str, str]:
        """Post a fresh canary: (its id, its digest)."""
        ...

    async def first_after(self, before: str) -> tuple[str, str] | None:
        """(id, digest) of the first entry after `before`; None if there is none."""
        ...


@dataclass
class GroupServerTarget:
    client: GroupServerClient
    bundle: ServerBundle
    purse: TokenPurse

    @property
    def onion(self) -> str:
        return self.client.onion

    @property
    def max_age(self) -> int:
        return self.bundle.max_age_seconds

    @property
    def max_count(self) -> int:
        return self.bundle.max_blobs

    async def post(self) -> tuple[str, str]:
        blob = os.urandom(self.bundle.blob_size)
        token = await self.purse.take(self.client, self.bundle)
        return await self.client.post_blob(blob, token), digest(blob)

    async def first_after(self, before: str) -> tuple[str, str] | None:
        page = await self.client.read_page(before, 1, self.bundle.blob_size)
        return (page.blobs[0].id, digest(page.blobs[0].blob)) if page.blobs else None


class _RecordItem(StrictModel):
    id: str = Field(pattern=CURSOR_PATTERN)
    tag: Annotated[bytes, PlainValidator(b64_validator(max_size=MAX_TAG_SIZE))]
    ciphertext: Annotated[bytes, PlainValidator(b64_validator(max_size=MAX_RECORD_SIZE))]


class _RecordPage(StrictModel):
    records: list[_RecordItem] = Field(max_length=1)


class _Posted(StrictModel):
    id: str = Field(pattern=CURSOR_PATTERN)


@dataclass
class MailboxTarget:
    http: httpx.AsyncClient
    onion: str
    bundle: MailboxBundle

    @property
    def max_age(self) -> int:
        return self.bundle.max_age_seconds

    @property
    def max_count(self) -> int:
        return self.bundle.max_records

    async def post(self) -> tuple[str, str]:
        tag = await asyncio.to_thread(lambda: fmd.flag(fmd.FmdSecretKey.generate().public_key()))
        if len(tag) != self.bundle.tag_size:
            raise NythError(f"the mailbox wants {self.bundle.tag_size}-byte tags, this index "
                            f"makes {len(tag)}-byte FMD tags: it cannot audit it")
        ciphertext = os.urandom(self.bundle.record_size)
        nonce = await asyncio.to_thread(solve_pow, self.bundle.onion_public_key, tag,
                                        ciphertext, self.bundle.pow_bits)
        body = {"tag": base64.b64encode(tag).decode(), "nonce": nonce,
                "ciphertext": base64.b64encode(ciphertext).decode()}
        answer = await bounded_request(self.http, "POST", f"http://{self.onion}.onion/v1/records",
                                       json=body, max_bytes=JSON_SLACK, deadline=DEADLINE,
                                       what="post answer")
        if answer.status_code != 201:
            raise NythError(f"{answer.server} {answer.failure()} to a canary post")
        return answer.parse(_Posted).id, digest(tag, ciphertext)

    async def first_after(self, before: str) -> tuple[str, str] | None:
        limit = b64_len(self.bundle.tag_size) + b64_len(self.bundle.record_size) + ITEM_SLACK
        answer = await bounded_request(
            self.http, "GET", f"http://{self.onion}.onion/v1/records",
            params={"after": before, "limit": 1}, max_bytes=limit + JSON_SLACK,
            deadline=DEADLINE, what="page of records")
        if answer.status_code != 200:
            raise NythError(f"{answer.server} {answer.failure()} to a read")
        records = answer.parse(_RecordPage).records
        return (records[0].id, digest(records[0].tag, records[0].ciphertext)) if records else None


@dataclass
class Auditor:
    store: DiscoveryStore
    reach: Reach
    interval: float
    purse: TokenPurse = field(default_factory=TokenPurse)
    inflight: KeyedTasks = field(default_factory=KeyedTasks)
    not_before: dict[str, float] = field(default_factory=dict)

    async def run(self) -> None:
        while True:
            try:
                await self.start_due(time.time())
            except RedisError as exc:
                log.warning("audit scheduling failed: %s", exc)
            await asyncio.sleep(TICK)

    async def start_due(self, now: float) -> list[str]:
        """Start audit work on servers with a check due, or due a new canary while up."""
        listings = await self.store.listings()
        statuses = await self.store.statuses()
        audits = await self.store.audits()
        started: list[str] = []
        for onion, listing in listings.items():
            if len(self.inflight) >= CONCURRENCY:
                break
            if onion in self.inflight or self.not_before.get(onion, 0) > now:
                continue
            audit = audits.get(onion, Audit())
            status = statuses.get(onion)
            up = status is not None and status.last_ok_at > 0 and not status.consecutive_failures
            if policy.due_checks(audit, now) or (up and policy.new_canary_due(
                    audit, now, self.interval)):
                self.inflight.start(onion, self._audit(listing, up), "audit")
                started.append(onion)
        return started

    async def _audit(self, listing: Listing, up: bool) -> None:
        try:
            before = await self.store.audit(listing.onion)
            async with self.reach.client("audit") as http:
                target = self.target(listing, http)
                audit = await self.run_checks(target, before)
                if up and policy.new_canary_due(audit, time.time(), self.interval):
                    audit = await self.post_canary(target, audit)
            if audit.inconclusive > before.inconclusive:
                # Unreachable now: leave it to the prober for a while rather than pay a
                # Tor timeout every tick.
                self.not_before[listing.onion] = time.time() + min(RETRY_AFTER, self.interval)
                self.reach.failed()
            await self.store.save_audit(listing.onion, audit)
        except Exception as exc:
            # A last guard: a hostile server's answer must never end the auditor.
            log.warning("audit of %s….onion failed: %s", listing.onion[:8],
                        self.reach.reason(exc))

    def target(self, listing: Listing, http: httpx.AsyncClient) -> CanaryTarget:
        if listing.kind is ServerKind.GROUP_SERVER:
            return GroupServerTarget(GroupServerClient(http, listing.onion),
                                     ServerBundle.verify(listing.bundle), self.purse)
        return MailboxTarget(http, listing.onion, MailboxBundle.verify(listing.bundle))

    async def run_checks(self, target: CanaryTarget, audit: Audit) -> Audit:
        for canary in policy.due_checks(audit, time.time()):
            audit = await self.check(target, audit, canary)
        return audit

    async def check(self, target: CanaryTarget, audit: Audit, canary: Canary) -> Audit:
        try:
            found = await target.first_after(cursor_before(canary.cursor))
        except REQUEST_ERRORS as exc:
            AUDITS.labels("inconclusive").inc()
            return policy.after_check(audit, canary, "failed", time.time(),
                                      max_age=target.max_age, max_count=target.max_count,
                                      error=self.reach.reason(exc))
        now = time.time()
        outcome = policy.judge_read(found == (canary.cursor, canary.digest),
                                    posted_at=canary.posted_at, answered_at=now,
                                    max_age=target.max_age)
        after = policy.after_check(audit, canary, outcome, now, max_age=target.max_age,
                                   max_count=target.max_count)
        if outcome == "lost":
            log.warning("%s….onion lost a canary (%s) at most %.0f s after it was posted; "
                        "its bundle promises %d s", target.onion[:8], canary.cursor,
                        now - canary.posted_at, target.max_age)
        AUDITS.labels(outcome if outcome != "kept" else
                      "kept" if after.passed > audit.passed else "check_passed").inc()
        return after

    async def post_canary(self, target: CanaryTarget, audit: Audit) -> Audit:
        posted_at = time.time()
        try:
            cursor, canary_digest = await target.post()
            Cursor.parse(cursor)
        except REQUEST_ERRORS as exc:
            AUDITS.labels("post_failed").inc()
            return replace(audit, last_posted_at=posted_at, inconclusive=audit.inconclusive + 1,
                           last_error=self.reach.reason(exc))
        AUDITS.labels("posted").inc()
        canary = Canary(cursor, canary_digest, posted_at,
                        policy.check_times(posted_at, target.max_age, CHECK_MIN_GAP))
        return replace(audit, canaries=(*audit.canaries, canary), last_posted_at=posted_at)

    async def stop(self) -> None:
        await self.inflight.stop()
