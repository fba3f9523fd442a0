"""The peer's mailbox side: our contact card and detection, and offline sending to others.

Our profile names one mailbox (NYTH_MAILBOX). On it we publish a signed contact card
(FMD public key, X25519 key, expiry) and renew it before it expires; we poll it for
records whose FMD tags match our key — either downloading everything and testing
locally (the mailbox learns nothing) or delegating a detection key with a false-positive
rate of 2⁻ⁿ. To reach a contact who is offline, we fetch and verify their card from
*their* mailbox, seal the message to them, tag it, pay the proof of work and post it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import httpx
from nyth.errors import AuthenticationError, BundleChangedError, DecodeError, NythError
from nyth.proto import fmd
from nyth.proto.contact_card import ContactCard
from nyth.proto.contact_id import ContactId
from nyth.proto.identity import onion_from_public_key, public_key_from_onion
from nyth.proto.mailbox_bundle import MailboxBundle, solve_card_pow, solve_pow
from nyth.proto.mailbox_record import open_record, seal_record
from nyth.proto.p2p import Envelope

from nyth_peer.events import EventBus
from nyth_peer.pins import MAILBOX, Pins, UnusableBundleError
from nyth_peer.profile import Profile

log = logging.getLogger(__name__)

CARD_LIFETIME = 7 * 24 * 3600
CARD_RENEW_BEFORE = 24 * 3600
REQUEST_DEADLINE = 60.0
PAGE = 500


class MailboxError(NythError):
    """Offline delivery failed; the message says why, for the user."""


class MailboxBundleChangedError(MailboxError):
    """The mailbox presents a bundle other than the pinned one; the user must re-pin."""


def _url(onion: str, path: str) -> str:
    return f"http://{onion}.onion{path}"


def recommend_bits(records_per_day: float, ours_per_day: float) -> int:
    """n such that false positives (2⁻ⁿ·N) are at least as many as our true matches (M):
    the mailbox then cannot tell which detections are really ours (DESIGN §5)."""
    if records_per_day <= 0:
        return 0
    ratio = records_per_day / max(ours_per_day, 1.0)
    return max(0, min(fmd.GAMMA, math.floor(math.log2(ratio)) if ratio >= 1 else 0))


class MailboxService:
    def __init__(self, profile: Profile, events: EventBus, http_factory: Callable[[], httpx.AsyncClient],
                 *, mailbox_onion: str | None, poll_seconds: float, detection_bits: int | None,
                 on_record: Callable[[str, Envelope], bool]) -> None:
        self.profile = profile
        self.store = profile.store
        self.events = events
        self._new_http = http_factory
        self.mailbox_onion = mailbox_onion
        self.poll_seconds = poll_seconds
        self.detection_bits = detection_bits
        self._on_record = on_record
        self.state: dict[str, Any] = {"state": "off" if mailbox_onion is None else "starting",
                                      "reason": None}
        self._tasks: list[asyncio.Task[None]] = []
        self._secret = self._fmd_secret()
        self.pins = Pins(self.store)
        self._wake = asyncio.Event()

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
        if self.mailbox_onion is not None:
            self._tasks.append(asyncio.ensure_future(self._run()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _set_state(self, state: str, reason: str | None = None) -> None:
        if self.state.get("state") != state or self.state.get("reason") != reason:
            self.state = {**self.state, "state": state, "reason": reason, "since": time.time()}
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
        response = await asyncio.wait_for(http.get(_url(onion, "/v1/bundle")), REQUEST_DEADLINE)
        if response.status_code != 200:
            raise MailboxError(f"mailbox {onion[:8]}… answered {response.status_code}")
        return base64.b64decode(response.json()["bundle"], validate=True)

    async def fetch_bundle(self, onion: str) -> bytes:
        """The bundle a mailbox presents now, unchecked (a re-pin verifies it)."""
        try:
            async with self._new_http() as http:
                return await self._fetch_bundle(http, onion)
        except MailboxError:
            raise
        except Exception as exc:
            raise MailboxError(f"cannot fetch the bundle of mailbox {onion}.onion: "
                               f"{type(exc).__name__} {exc}".rstrip()) from exc

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
        row = self.store.get("mailbox", "card")
        now = int(time.time())
        if row is not None and row["expires_at"] - now > CARD_RENEW_BEFORE and row.get("published"):
            return
        card = ContactCard(self.profile.identity.public_key, self._secret.public_key().encode(),
                           self.profile.identity.x25519_public(), now, now + CARD_LIFETIME)
        data = card.sign(self.profile.identity)
        # _run pinned the mailbox's bundle before the first publish; it states the work.
        pin = self.store.get("mailbox_pins", self.mailbox_onion)
        assert pin is not None
        bundle = MailboxBundle.verify(base64.b64decode(pin["bundle"]), self.mailbox_onion)
        nonce = await asyncio.to_thread(solve_card_pow, bundle.onion_public_key, data,
                                        bundle.pow_bits)
        response = await asyncio.wait_for(http.put(
            _url(self.mailbox_onion, f"/v1/cards/{self.profile.identity.onion}"),
            json={"card": base64.b64encode(data).decode(), "nonce": nonce}), REQUEST_DEADLINE)
        if response.status_code not in (200, 201, 204):
            raise MailboxError(f"mailbox refused our card ({response.status_code}: "
                               f"{response.text[:200]})")
        self.store.put("mailbox", "card", {"expires_at": card.expires_at, "published": True})

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                async with self._new_http() as http:
                    # The bundle is checked (and pinned) once per healthy run, not per poll.
                    if failures or self.state.get("state") != "live":
                        await self._bundle(http, self.mailbox_onion)  # type: ignore[arg-type]
                    await self._publish_card(http)
                    await self._poll(http)
                self._set_state("live")
                failures = 0
                await asyncio.sleep(self.poll_seconds)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                delay = min(300.0, 2.0 * 2 ** min(failures, 8))
                self.state["next_retry_at"] = time.time() + delay
                if isinstance(exc, MailboxBundleChangedError):
                    self._set_state("bundle_changed", str(exc))
                else:
                    self._set_state("unreachable", f"{type(exc).__name__}: {exc}".rstrip(": "))
                await self._pause(delay)

    async def _poll(self, http: httpx.AsyncClient) -> None:
        assert self.mailbox_onion is not None
        cursor_row = self.store.get("mailbox", "cursor") or {"cursor": "0", "seen": 0,
                                                              "since": time.time(), "ours": 0}
        full_key = self._secret.extract(fmd.GAMMA)
        while True:
            if self.detection_bits is None:
                response = await asyncio.wait_for(http.get(
                    _url(self.mailbox_onion, "/v1/records"),
                    params={"after": cursor_row["cursor"], "limit": PAGE}), REQUEST_DEADLINE)
            else:
                key = self._secret.extract(self.detection_bits).encode()
                response = await asyncio.wait_for(http.post(
                    _url(self.mailbox_onion, "/v1/detect"),
                    json={"detection_key": base64.b64encode(key).decode(),
                          "after": cursor_row["cursor"], "limit": PAGE}), REQUEST_DEADLINE)
            if response.status_code != 200:
                raise MailboxError(f"mailbox answered {response.status_code} to a poll")
            page = response.json()
            scanned = page.get("scanned", len(page["records"]))
            cursor_row["seen"] += scanned
            for item in page["records"]:
                tag = base64.b64decode(item["tag"])
                # Our full key leaves a 2⁻²⁴ false-positive rate: trial-open only those.
                try:
                    if not fmd.test(full_key, tag):
                        continue
                    sender_pk, envelope = open_record(self.profile.identity,
                                                      base64.b64decode(item["ciphertext"]))
                except (DecodeError, AuthenticationError):
                    continue
                cursor_row["ours"] += 1
                self._on_record(onion_from_public_key(sender_pk), envelope)
            cursor_row["cursor"] = page["next"]
            self.store.put("mailbox", "cursor", cursor_row)
            if not page["more"]:
                return

    def privacy(self) -> dict[str, Any]:
        """What the mailbox can learn with the current setting, and our recommendation."""
        row = self.store.get("mailbox", "cursor") or {"seen": 0, "ours": 0, "since": time.time()}
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
        """Post envelope for onion to its mailbox; raises MailboxError with a reason."""
        try:
            async with self._new_http() as http:
                bundle = await self._bundle(http, mailbox_onion)
                response = await asyncio.wait_for(
                    http.get(_url(mailbox_onion, f"/v1/cards/{onion}")), REQUEST_DEADLINE)
                if response.status_code == 404:
                    raise MailboxError("the contact has no card on its mailbox")
                if response.status_code != 200:
                    raise MailboxError(f"mailbox answered {response.status_code} for the card")
                data = base64.b64decode(response.json()["card"], validate=True)
                try:
                    card = ContactCard.verify(data, onion, int(time.time()))
                except (DecodeError, AuthenticationError) as exc:
                    raise MailboxError(f"the contact's card was refused: {exc}") from exc
                record = seal_record(self.profile.identity, card.onion_public_key,
                                     card.x25519_public_key, envelope, bundle.record_size)
                tag = fmd.flag(fmd.FmdPublicKey.decode(card.fmd_public_key))
                nonce = await asyncio.to_thread(solve_pow, bundle.onion_public_key, tag, record,
                                                bundle.pow_bits)
                response = await asyncio.wait_for(http.post(
                    _url(mailbox_onion, "/v1/records"),
                    json={"tag": base64.b64encode(tag).decode(),
                          "ciphertext": base64.b64encode(record).decode(), "nonce": nonce}),
                    REQUEST_DEADLINE)
                if response.status_code not in (201, 409):
                    raise MailboxError(f"mailbox refused the record ({response.status_code})")
        except MailboxError:
            raise
        except TimeoutError as exc:
            raise MailboxError("the contact's mailbox did not answer in time") from exc
        except Exception as exc:
            raise MailboxError(f"cannot reach the contact's mailbox: {type(exc).__name__} {exc}"
                               .rstrip()) from exc
