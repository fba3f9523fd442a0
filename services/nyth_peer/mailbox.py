"""The peer's mailbox side: our contact card and detection, and offline sending to others.

Our profile names one mailbox (NYTH_MAILBOX). On it we publish a signed contact card
(FMD public key, X25519 key, expiry) and renew it before it expires; we poll it for
records whose FMD tags match our key — either downloading everything and testing
locally (the mailbox learns nothing) or delegating a detection key with a false-positive
rate of 2⁻ⁿ. To reach a contact who is offline, we fetch and verify their card from
*their* mailbox (cached, and refreshed on a schedule of its own: mailbox_traffic.py), seal
the message to them, tag it, pay the proof of work and post it, on a circuit of its own
after a random delay (nyth.mailbox_traffic says what the mailbox can still link).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import random
import re
import time
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import httpx
from nyth.errors import AuthenticationError, BundleChangedError, DecodeError, NythError
from nyth.http_limits import (
    ITEM_SLACK,
    JSON_SLACK,
    BoundedResponse,
    StrictModel,
    UntrustedResponseError,
    b64_len,
    b64_validator,
    bounded_request,
    printable,
    server_label,
)
from nyth.mailbox_traffic import Isolation, Purpose, TrafficPolicy, new_isolation
from nyth.proto import fmd
from nyth.proto.contact_card import CARD_SIZE, ContactCard
from nyth.proto.contact_id import ContactId
from nyth.proto.delivery import RetryPolicy
from nyth.proto.identity import onion_from_public_key, public_key_from_onion
from nyth.proto.mailbox_bundle import (
    MAILBOX_BUNDLE_SIZE,
    MAX_RECORD_SIZE,
    MailboxBundle,
    solve_card_pow,
    solve_pow,
)
from nyth.proto.mailbox_record import RECOMMENDED_RECORD_SIZE, open_record, seal_record
from nyth.proto.p2p import Envelope
from nyth.runtime.stream_store import CURSOR_PATTERN
from pydantic import Field, PlainValidator

from nyth_peer import pow_pool
from nyth_peer.card_keys import CardKeys
from nyth_peer.events import EventBus
from nyth_peer.mailbox_traffic import CardCache, CardRefresher, Pacing
from nyth_peer.pins import MAILBOX, Pins, UnusableBundleError
from nyth_peer.profile import Profile

log = logging.getLogger(__name__)

CARD_LIFETIME = 7 * 24 * 3600
CARD_RENEW_BEFORE = 24 * 3600
REQUEST_DEADLINE = 60.0
PAGE = 500
# How often (in polls) a healthy run re-checks the mailbox's bundle: a ~700-byte GET.
BUNDLE_RECHECK_POLLS = 10

# The most a valid answer can take, from the protocol's fixed sizes: anything longer is
# a hostile or broken mailbox (ours, or one a stranger's contact id named), and is
# dropped before it can cost us memory.
BUNDLE_ANSWER_BYTES = b64_len(MAILBOX_BUNDLE_SIZE) + JSON_SLACK
CARD_ANSWER_BYTES = b64_len(CARD_SIZE) + JSON_SLACK  # GET and PUT both answer the card
POST_ANSWER_BYTES = JSON_SLACK  # {"id": "<cursor>"}
_CURSOR = re.compile(CURSOR_PATTERN)


def record_item_bytes(record_size: int) -> int:
    """What one record of a page takes at most: base64 tag and ciphertext, keys, id."""
    return b64_len(fmd.TAG_SIZE) + b64_len(record_size) + ITEM_SLACK


# A page holds what PAGE records of the recommended size take: a mailbox with larger
# records is asked for fewer per page, so no answer is ever larger than this.
PAGE_BYTES = PAGE * record_item_bytes(RECOMMENDED_RECORD_SIZE)


def page_limit(record_size: int) -> int:
    """Records asked for per page from a mailbox whose records are record_size bytes."""
    return max(1, min(PAGE, PAGE_BYTES // record_item_bytes(record_size)))


def page_answer_bytes(limit: int, record_size: int) -> int:
    return limit * record_item_bytes(record_size) + JSON_SLACK


class _BundleAnswer(StrictModel):
    bundle: Annotated[bytes, PlainValidator(b64_validator(size=MAILBOX_BUNDLE_SIZE))]


class _CardAnswer(StrictModel):
    card: Annotated[bytes, PlainValidator(b64_validator(size=CARD_SIZE))]


class _RecordItem(StrictModel):
    id: str = Field(pattern=CURSOR_PATTERN)
    tag: Annotated[bytes, PlainValidator(b64_validator(size=fmd.TAG_SIZE))]
    # The exact size is the pinned bundle's, checked once the page is parsed.
    ciphertext: Annotated[bytes, PlainValidator(b64_validator(max_size=MAX_RECORD_SIZE))]


class _RecordPage(StrictModel):
    records: list[_RecordItem]
    next: str = Field(pattern=CURSOR_PATTERN)
    more: bool


class _DetectPage(_RecordPage):
    # Strict: 1e999 (inf), NaN, 1.5 or "7" are refused, not coerced.
    scanned: int = Field(ge=0)


class MailboxError(NythError):
    """Offline delivery failed; the message says why, for the user."""


class MailboxBundleChangedError(MailboxError):
    """The mailbox presents a bundle other than the pinned one; the user must re-pin."""


def _url(onion: str, path: str) -> str:
    return f"http://{onion}.onion{path}"


def _count(value: Any) -> float:
    """A stored counter, or 0 for junk (a non-finite or negative number from an older
    version that believed the mailbox's word)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value) if math.isfinite(value) and value >= 0 else 0.0


def _counters(row: dict[str, Any] | None) -> dict[str, Any]:
    """Our mailbox cursor row with every field usable."""
    row = dict(row or {})
    cursor = row.get("cursor")
    since = _count(row.get("since"))
    return {**row, "cursor": cursor if isinstance(cursor, str) and _CURSOR.fullmatch(cursor) else "0",
            "seen": _count(row.get("seen")), "ours": _count(row.get("ours")),
            "since": since if 0 < since <= time.time() else time.time()}


# False positives per true match the recommendation aims for. With k = 3 a detection is
# ours with probability at most 1/(k+1) = 1/4 in the mailbox's eyes (k = 1 made it a coin
# toss), while the download stays at about (k+1)·M records a period; each step of k
# towards 10 costs that much more traffic for a smaller gain in doubt.
COVER_FACTOR = 3


def recommend_bits(records_per_day: float, ours_per_day: float) -> int:
    """The largest n in 1..γ with 2⁻ⁿ·N ≥ k·M (k = COVER_FACTOR, M at least 1), or 0
    (download everything) when nothing was observed or even n = 1 gives less cover: then
    the mailbox cannot single out our detections among the false positives (DESIGN §5)."""
    if not (math.isfinite(records_per_day) and math.isfinite(ours_per_day)) or records_per_day <= 0:
        return 0
    ratio = records_per_day / (COVER_FACTOR * max(ours_per_day, 1.0))
    if ratio < 2:
        return 0
    return min(fmd.GAMMA, math.floor(math.log2(ratio)))


class MailboxService:
    """http_factory(isolation) makes a client whose connections carry that SOCKS
    credential: each purpose gets its own client and credential, so the mailbox never
    sees two purposes on one connection or circuit (nyth.mailbox_traffic)."""

    def __init__(self, profile: Profile, events: EventBus,
                 http_factory: Callable[[Isolation], httpx.AsyncClient],
                 *, mailbox_onion: str | None, poll_seconds: float, detection_bits: int | None,
                 on_record: Callable[[str, Envelope], bool], retry: RetryPolicy | None = None,
                 on_onion_failure: Callable[[], None] | None = None,
                 traffic: TrafficPolicy | None = None, rng: random.Random | None = None) -> None:
        self.profile = profile
        self.store = profile.store
        self.events = events
        self._new_http = http_factory
        self.traffic = traffic or TrafficPolicy()
        self._rng = rng or random.SystemRandom()
        self.mailbox_onion = mailbox_onion
        self.poll_seconds = poll_seconds
        self.detection_bits = detection_bits
        self._on_record = on_record
        # The engine's policy (as for P2P and group servers): a mailbox that was briefly
        # unreachable at start-up is tried again within seconds, not minutes.
        self.retry = retry or RetryPolicy()
        self._on_onion_failure = on_onion_failure
        self.state: dict[str, Any] = {"state": "off" if mailbox_onion is None else "starting",
                                      "reason": None}
        self._tasks: list[asyncio.Task[None]] = []
        self._secret = self._fmd_secret()
        self.card_keys = CardKeys(self.store)
        self.pins = Pins(self.store)
        self._wake = asyncio.Event()
        self.cards = CardCache(self.store)
        self.refresher = CardRefresher(self.store, self.cards, self.fetch_card, self.traffic,
                                       self.retry, self._rng)
        # Our polls share one credential (they are alike and the mailbox can link them by
        # timing anyway); a new one after a failure, so a retry gets a new circuit.
        self._poll_isolation = new_isolation(Purpose.POLL)
        self.pacing = Pacing(self.store, self.traffic, self._rng)

    def _fmd_secret(self) -> fmd.FmdSecretKey:
        row = self.store.get("mailbox", "fmd")
        if row is None:
            secret = fmd.FmdSecretKey.generate()
            self.store.put("mailbox", "fmd", {"secret": base64.b64encode(secret.encode()).decode()})
            return secret
        return fmd.FmdSecretKey.decode(base64.b64decode(row["secret"]))

    @property
    def contact_id(self) -> str | None:
        if self.mailbox_onion is None:
            return None
        return ContactId(self.profile.identity.public_key,
                         public_key_from_onion(self.mailbox_onion)).encode()

    def start(self) -> None:
        # Also when the mailbox is down or no longer configured: an expired card key must
        # not outlive its records because no poll came to delete it.
        self.card_keys.prune(time.time())
        # Contacts' cards are refreshed whether or not we have a mailbox of our own.
        self._tasks.append(asyncio.ensure_future(self.refresher.run()))
        if self.mailbox_onion is not None:
            self._tasks.append(asyncio.ensure_future(self._run()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _set_state(self, state: str, reason: str | None = None, *,
                   next_retry_at: float | None = None) -> None:
        if (self.state.get("state") != state or self.state.get("reason") != reason
                or self.state.get("next_retry_at") != next_retry_at):
            since = self.state.get("since") if self.state.get("state") == state else None
            self.state = {"state": state, "reason": reason, "since": since or time.time(),
                          "next_retry_at": next_retry_at}
            self.events.publish("mailbox", **self.state)

    # -- our own mailbox -------------------------------------------------------------------
    async def _bundle(self, http: httpx.AsyncClient, onion: str) -> MailboxBundle:
        """The mailbox's verified bundle, pinned on first use; a changed one is refused
        (and kept for the user to review and re-pin)."""
        presented = await self._fetch_bundle(http, onion)
        try:
            bundle: MailboxBundle = self.pins.check(MAILBOX, onion, presented)
        except BundleChangedError as exc:
            raise MailboxBundleChangedError(f"mailbox {exc}") from exc
        except (DecodeError, AuthenticationError) as exc:
            raise MailboxError(f"mailbox {onion}.onion sent an invalid bundle: {exc}") from exc
        except UnusableBundleError as exc:
            raise MailboxError(f"mailbox {exc}") from exc
        return bundle

    @staticmethod
    async def _fetch_bundle(http: httpx.AsyncClient, onion: str) -> bytes:
        answer = await _request(http, "GET", _url(onion, "/v1/bundle"),
                                max_bytes=BUNDLE_ANSWER_BYTES, what="bundle")
        if answer.status_code != 200:
            raise MailboxError(f"{answer.server} {answer.failure()} to a bundle request")
        return answer.parse(_BundleAnswer).bundle

    def _pinned(self, onion: str) -> MailboxBundle:
        """The bundle pinned for onion (checked by _bundle before any use of the mailbox)."""
        pinned = self.pins.pinned(MAILBOX, onion)
        assert pinned is not None
        return MailboxBundle.verify(pinned, onion)

    async def fetch_bundle(self, onion: str) -> bytes:
        """The bundle a mailbox presents now, unchecked (a re-pin verifies it)."""
        try:
            async with self._new_http(new_isolation(Purpose.REVIEW)) as http:
                return await self._fetch_bundle(http, onion)
        except MailboxError:
            raise
        except Exception as exc:
            raise MailboxError(f"cannot fetch the bundle of mailbox {onion}.onion: "
                               + printable(f"{type(exc).__name__} {exc}", 300)) from exc

    def resume(self, onion: str) -> None:
        """After a re-pin of our mailbox: try again now instead of at the next retry."""
        if onion == self.mailbox_onion:
            self._set_state("starting", "re-pinned; connecting again")
            self._wake.set()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    async def _publish_card(self, http: httpx.AsyncClient) -> None:
        assert self.mailbox_onion is not None
        now = int(time.time())
        if not self._card_due(now):
            return
        # _run pinned the mailbox's bundle before the first publish; it states the work,
        # and how long records sealed to this card's key may stay on the mailbox.
        bundle = self._pinned(self.mailbox_onion)
        x25519_public = self.card_keys.for_new_card(now + CARD_LIFETIME, bundle.max_age_seconds)
        card = ContactCard(self.profile.identity.public_key,
                           public_key_from_onion(self.mailbox_onion),
                           self._secret.public_key().encode(), x25519_public, now,
                           now + CARD_LIFETIME)
        data = card.sign(self.profile.identity)
        self._step(f"solving the card's proof of work ({bundle.pow_bits} bits)")
        nonce = await pow_pool.solve(solve_card_pow, bundle.onion_public_key, data,
                                     bundle.pow_bits, what="our card", error=MailboxError)
        self._step("uploading our contact card")
        answer = await _request(
            http, "PUT", _url(self.mailbox_onion, f"/v1/cards/{self.profile.identity.onion}"),
            json={"card": base64.b64encode(data).decode(), "nonce": nonce},
            max_bytes=CARD_ANSWER_BYTES, what="answer to our card")
        if answer.status_code not in (200, 201, 204):
            raise MailboxError(f"mailbox refused our card ({_status(answer)})")
        self.card_keys.published(x25519_public)
        self.store.put("mailbox", "card", {
            "expires_at": card.expires_at, "published": True,
            "x25519": base64.b64encode(x25519_public).decode(), "mailbox": self.mailbox_onion,
            "renew_at": self.traffic.renew_at(card.expires_at, self._rng)})

    async def _upload_card(self) -> None:
        async with self._new_http(new_isolation(Purpose.CARD_UPLOAD)) as upload:
            await self._publish_card(upload)

    async def _between_polls(self) -> None:
        """The pause between polls. A renewal of our (still valid) card goes at a random
        moment inside it, on its own circuit: not next to a poll's requests."""
        if not self._card_due(time.time()):
            await asyncio.sleep(self.poll_seconds)
            return
        offset = self._rng.uniform(0, self.poll_seconds)
        await asyncio.sleep(offset)
        await self._upload_card()
        await asyncio.sleep(self.poll_seconds - offset)

    def _card_valid(self, now: float) -> bool:
        row = self.store.get("mailbox", "card")
        return row is not None and bool(row.get("published")) and now < row["expires_at"]

    def _card_due(self, now: float) -> bool:
        """Whether our card must be uploaded: never published, its renewal time (drawn at
        random when it was published) has come, or it is from before random card keys (no
        "x25519" in its row) or names another mailbox than the configured one."""
        row = self.store.get("mailbox", "card")
        if (row is None or not row.get("published") or row.get("mailbox") != self.mailbox_onion
                or not self.card_keys.has(base64.b64decode(row.get("x25519") or ""))):
            return True
        renew_at = row.get("renew_at")
        if isinstance(renew_at, bool) or not isinstance(renew_at, int | float):
            renew_at = row["expires_at"] - CARD_RENEW_BEFORE   # a row from before renew_at
        return bool(now >= renew_at)

    async def _run(self) -> None:
        failures = 0
        polls_since_check = 0
        while True:
            try:
                # Polls and the card upload never share a connection or a circuit: the
                # card names us, our polls must not (nyth.mailbox_traffic).
                async with self._new_http(self._poll_isolation) as http:
                    # The bundle is checked after any failure and every few polls, not on
                    # every poll: a mailbox restarted with new limits between two polls
                    # need not make a poll fail, and must still be noticed.
                    if (failures or self.state.get("state") != "live"
                            or polls_since_check >= BUNDLE_RECHECK_POLLS):
                        self._step("checking the mailbox's bundle")
                        await self._bundle(http, self.mailbox_onion)  # type: ignore[arg-type]
                        polls_since_check = 0
                    if self._card_due(time.time()) and not self._card_valid(time.time()):
                        # No card of ours out there: nobody can reach us until it is.
                        await self._upload_card()
                    self._step("fetching records")
                    await self._poll(http)
                    polls_since_check += 1
                self._set_state("live")
                failures = 0
                await self._between_polls()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                delay = self.retry.delay(failures)
                self._poll_isolation = new_isolation(Purpose.POLL)
                if isinstance(exc, MailboxBundleChangedError):
                    self._set_state("bundle_changed", str(exc), next_retry_at=time.time() + delay)
                else:
                    if self._on_onion_failure is not None:
                        self._on_onion_failure()   # tor's failed lookups would stick
                    # Exception text may quote the server's bytes: cleaned and cut short.
                    self._set_state("unreachable",
                                    printable(f"{type(exc).__name__}: {exc}".rstrip(": "), 500),
                                    next_retry_at=time.time() + delay)
                await self._pause(delay)

    def _step(self, what: str) -> None:
        """Until the mailbox is live, say which step we are on: a slow start explains itself."""
        if self.state.get("state") != "live" and self.state.get("step") != what:
            self.state = {**self.state, "step": what}
            self.events.publish("mailbox", **self.state)

    async def _poll(self, http: httpx.AsyncClient) -> None:
        assert self.mailbox_onion is not None
        bundle = self._pinned(self.mailbox_onion)
        limit = page_limit(bundle.record_size)
        cursor_row = _counters(self.store.get("mailbox", "cursor"))
        full_key = self._secret.extract(fmd.GAMMA)
        # Also deletes the card keys whose records can no longer be on the mailbox.
        card_secrets = self.card_keys.secrets(time.time())
        while True:
            after = cursor_row["cursor"]
            page = await self._fetch_page(http, bundle, after, limit)
            if page.more and page.next == after:
                # Would have us ask for the same page again and again.
                raise UntrustedResponseError(f"mailbox {self.mailbox_onion[:8]}….onion says more "
                                             f"records wait but does not move its cursor")
            if isinstance(page, _DetectPage):
                # Delegated: only the mailbox knows how many it tested. It cannot truthfully
                # have tested more than it keeps (its signed bundle), nor fewer than it matched.
                if not len(page.records) <= page.scanned <= bundle.max_records:
                    raise UntrustedResponseError(
                        f"mailbox {self.mailbox_onion[:8]}….onion claims it scanned "
                        f"{page.scanned} records for {len(page.records)} matches; it keeps at "
                        f"most {bundle.max_records}")
                cursor_row["seen"] += page.scanned
            else:
                cursor_row["seen"] += len(page.records)  # counted, not taken on its word
            for item in page.records:
                # Our full key leaves a 2⁻²⁴ false-positive rate: trial-open only those.
                try:
                    if not fmd.test(full_key, item.tag):
                        continue
                    sender_pk, envelope = open_record(self.profile.identity.public_key,
                                                      card_secrets, item.ciphertext)
                except NythError:
                    continue
                cursor_row["ours"] += 1
                try:
                    self._on_record(onion_from_public_key(sender_pk), envelope)
                except NythError as exc:
                    # One bad message must not stop the poll at this page forever.
                    log.info("skipped a record from our mailbox that could not be handled: %s",
                             printable(f"{type(exc).__name__}: {exc}"))
            cursor_row["cursor"] = page.next
            self.store.put("mailbox", "cursor", cursor_row)
            if not page.more:
                return

    async def _fetch_page(self, http: httpx.AsyncClient, bundle: MailboxBundle, after: str,
                          limit: int) -> _RecordPage:
        """One page of records after the cursor, every one checked against the bundle."""
        assert self.mailbox_onion is not None
        max_bytes = page_answer_bytes(limit, bundle.record_size)
        if self.detection_bits is None:
            answer = await _request(http, "GET", _url(self.mailbox_onion, "/v1/records"),
                                    params={"after": after, "limit": limit},
                                    max_bytes=max_bytes, what="page of records")
            model: type[_RecordPage] = _RecordPage
        else:
            key = self._secret.extract(self.detection_bits).encode()
            answer = await _request(http, "POST", _url(self.mailbox_onion, "/v1/detect"),
                                    json={"detection_key": base64.b64encode(key).decode(),
                                          "after": after, "limit": limit},
                                    max_bytes=max_bytes, what="page of detected records")
            model = _DetectPage
        if answer.status_code != 200:
            raise MailboxError(f"{answer.server} {answer.failure()} to a poll")
        page = answer.parse(model)
        if len(page.records) > limit:
            raise UntrustedResponseError(f"{answer.server} sent {len(page.records)} records "
                                         f"when asked for at most {limit}")
        wrong = [len(r.ciphertext) for r in page.records if len(r.ciphertext) != bundle.record_size]
        if wrong:
            raise UntrustedResponseError(f"{answer.server} sent a {wrong[0]}-byte record; its "
                                         f"bundle promises {bundle.record_size}-byte records")
        return page

    def privacy(self) -> dict[str, Any]:
        """What the mailbox can learn with the current setting, and our recommendation."""
        row = _counters(self.store.get("mailbox", "cursor"))
        days = max((time.time() - row["since"]) / 86400, 1 / 24)
        n_day, m_day = row["seen"] / days, row["ours"] / days
        n = self.detection_bits
        return {"mailbox": self.mailbox_onion, "contact_id": self.contact_id,
                "mode": "download everything" if n is None else f"delegated detection key, n={n}",
                "false_positive_rate": None if n is None else 2.0 ** -n,
                "records_per_day": round(n_day, 1), "ours_per_day": round(m_day, 1),
                "expected_detections_per_day": None if n is None else round(n_day * 2.0 ** -n + m_day, 1),
                "recommended_bits": recommend_bits(n_day, m_day), "state": self.state}

    # -- sending to someone else's mailbox -------------------------------------------------
    async def send(self, onion: str, mailbox_onion: str, envelope: Envelope) -> None:
        """Post envelope for onion to its mailbox; raises MailboxError with a reason.

        The card comes from the cache (fetched on the refresher's schedule), or on a miss
        from its own connection and circuit; the post waits a random delay, never goes
        within card_post_gap of a fetch of this card, and has a circuit of its own."""
        with _as_mailbox_error():
            card = await self._card_for(onion, mailbox_onion)
            async with self.pacing.posting(onion):
                await self._post(mailbox_onion, card, envelope)

    async def _post(self, mailbox_onion: str, card: ContactCard, envelope: Envelope) -> None:
        """Seal, tag and post one record, on a connection and circuit of its own."""
        async with self._new_http(new_isolation(Purpose.POST)) as http:
            bundle = await self._bundle(http, mailbox_onion)
            record = seal_record(self.profile.identity, card.onion_public_key,
                                 card.x25519_public_key, envelope, bundle.record_size)
            tag = fmd.flag(fmd.FmdPublicKey.decode(card.fmd_public_key))
            nonce = await pow_pool.solve(solve_pow, bundle.onion_public_key, tag, record,
                                         bundle.pow_bits, what="the record", error=MailboxError)
            answer = await _request(
                http, "POST", _url(mailbox_onion, "/v1/records"),
                json={"tag": base64.b64encode(tag).decode(),
                      "ciphertext": base64.b64encode(record).decode(), "nonce": nonce},
                max_bytes=POST_ANSWER_BYTES, what="answer to our record")
            if answer.status_code not in (201, 409):
                raise MailboxError(f"mailbox refused the record ({_status(answer)})")

    async def _card_for(self, onion: str, mailbox_onion: str) -> ContactCard:
        """onion's verified card: the cached one while it stays usable, else a fresh one."""
        row = self.cards.get(onion, mailbox_onion)
        if row is not None:
            try:
                card = _verified_card(row["card"], onion, mailbox_onion)
            except MailboxError:
                self.cards.drop(onion)   # expired, or a format we no longer read
            else:
                if self.traffic.card_usable(time.time(), card.expires_at):
                    return card
        return await self.fetch_card(onion, mailbox_onion)

    async def fetch_card(self, onion: str, mailbox_onion: str) -> ContactCard:
        """Fetch, verify and cache onion's card, on a connection and circuit of its own
        (a fresh credential: two fetches are not linked to each other either)."""
        with _as_mailbox_error():
            async with self.pacing.fetching(onion):
                async with self._new_http(new_isolation(Purpose.CARD_FETCH)) as http:
                    # A mailbox whose bundle we refuse (changed, or demanding more work
                    # than we pay) is not asked for anything else.
                    await self._bundle(http, mailbox_onion)
                    answer = await _request(
                        http, "GET", _url(mailbox_onion, f"/v1/cards/{onion}"),
                        max_bytes=CARD_ANSWER_BYTES, what="contact card")
        if answer.status_code == 404:
            raise MailboxError("the contact has no card on its mailbox")
        if answer.status_code != 200:
            raise MailboxError(f"{answer.server} {answer.failure()} for the card")
        try:
            data = answer.parse(_CardAnswer).card
        except UntrustedResponseError as exc:
            raise MailboxError(f"the contact's card was refused: {exc}") from exc
        card = _verified_card(data, onion, mailbox_onion)
        self.cards.put(onion, mailbox_onion, data, card.expires_at, time.time())
        return card


@contextlib.contextmanager
def _as_mailbox_error() -> Iterator[None]:
    """Any failure talking to a contact's mailbox, as a MailboxError whose text tells the
    user why (a server's own words cleaned and cut short)."""
    try:
        yield
    except MailboxError:
        raise
    except UntrustedResponseError as exc:
        raise MailboxError(str(exc)) from exc
    except TimeoutError as exc:
        raise MailboxError("the contact's mailbox did not answer in time") from exc
    except Exception as exc:
        raise MailboxError("cannot reach the contact's mailbox: "
                           + printable(f"{type(exc).__name__} {exc}", 300)) from exc


def _verified_card(data: bytes, onion: str, mailbox_onion: str) -> ContactCard:
    """A contact's card, checked as a sender must (the mailbox is untrusted). It must name
    the mailbox we ask: a contact id's mailbox key is only checksummed, so a mailbox serving
    a copy of the real card is refused here, before it gets (and can drop or time) a record."""
    try:
        card = ContactCard.verify(data, onion, int(time.time()), mailbox=mailbox_onion)
    except (DecodeError, AuthenticationError) as exc:
        raise MailboxError(f"the contact's card was refused: {exc}") from exc
    return card


async def _request(http: httpx.AsyncClient, method: str, url: str, *, max_bytes: int, what: str,
                   **kwargs: Any) -> BoundedResponse:
    return await bounded_request(http, method, url, max_bytes=max_bytes, what=what,
                                 deadline=REQUEST_DEADLINE, server=f"mailbox {server_label(url)}",
                                 **kwargs)



def _status(answer: BoundedResponse) -> str:
    """"403: <what the mailbox said>", its words cleaned and cut short."""
    excerpt = answer.excerpt()
    return f"{answer.status_code}: {excerpt}" if excerpt else str(answer.status_code)
