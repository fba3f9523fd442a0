"""When and over which Tor circuit a peer talks to mailboxes (sans-IO: no sockets, no clock,
the caller passes `now` and a random source).

A mailbox sees every request it serves, the connection it came on and, through its own
tor, the rendezvous circuit behind that connection. Two requests on one connection or
one circuit are linked for it; so are two requests close in time when little else
happens. The rules here keep the requests that name someone (a card upload names its
profile, a card fetch names the contact) apart from the ones that must stay anonymous
(polls, posted records):

* every purpose has its own SOCKS credential, so tor's IsolateSOCKSAuth (on by default
  for a SocksPort) never puts two purposes on one circuit; a post and a contact-card
  fetch get a fresh credential each, so they are not linked to one another either;
* a contact's card is fetched on its own schedule (random times over its lifetime) and
  cached; a send uses the cached card, and a post never follows a fetch of the
  recipient's card by less than `card_post_gap` seconds;
* every post waits a random, bounded delay, so its time says little about when the user
  pressed send or when anything else happened.

See docs/protocol.md, "What the mailbox can link".
"""

from __future__ import annotations

import enum
import math
import random
import secrets
from dataclasses import dataclass


class Purpose(enum.StrEnum):
    CARD_UPLOAD = "card-upload"    # our own card, to our mailbox: names us
    POLL = "poll"                  # our own records (bundle check, pages, detection)
    CARD_FETCH = "card-fetch"      # a contact's card, from their mailbox: names them
    POST = "post"                  # a record for a contact: must name no one
    REVIEW = "bundle-review"       # a bundle fetched for the user to review and re-pin


# A SOCKS5 username and password are at most 255 bytes each (RFC 1929).
_TOKEN_BYTES = 16


@dataclass(frozen=True)
class Isolation:
    """A SOCKS5 username/password pair: tor never shares a circuit between streams whose
    pairs differ. Only the local tor gateway sees it.

    The username says the purpose (so a gateway's STREAM events can be read by a
    person); the password is random, so two holders of one purpose are still apart."""

    username: str
    password: str

    @property
    def purpose(self) -> Purpose | None:
        prefix = "nyth-mailbox-"
        name = self.username.removeprefix(prefix)
        return Purpose(name) if self.username.startswith(prefix) and name in set(Purpose) else None


def new_isolation(purpose: Purpose) -> Isolation:
    return Isolation(f"nyth-mailbox-{purpose.value}", secrets.token_hex(_TOKEN_BYTES))


@dataclass(frozen=True)
class TrafficPolicy:
    """Delays and schedules, in seconds. The defaults are for real use; tests shorten the
    two that the peer's settings expose (post delay, card-to-post gap)."""

    # Mean of the post delay: exponential (memoryless: how long a post has waited says
    # nothing about when it will go), truncated at post_delay_cap.
    post_delay_mean: float = 30.0
    post_delay_cap: float = 120.0
    # A post is never sent sooner than this after a fetch of the recipient's card.
    card_post_gap: float = 120.0
    # A contact's cached card is fetched again at a uniform time in this range after the
    # last fetch: several times over a 7-day card, each time unrelated to sending.
    refresh_min: float = 6 * 3600.0
    refresh_max: float = 18 * 3600.0
    # A card is used for a post only if it stays valid this much longer (a post waits
    # at most card_post_gap + post_delay_cap, far less).
    usable_margin: float = 3600.0
    # A card not cached yet (new contact, or expired) is fetched within this many
    # seconds, at a uniform random time: not in step with adding the contact.
    first_fetch_spread: float = 120.0
    # A card that will not be usable for long (its owner has not renewed it yet, being
    # offline) is asked for again about this often, not in a loop.
    stale_retry: float = 1800.0
    # Our own card: renewed at a uniform time in this range before it expires (cards
    # live 7 days), not at a fixed offset the mailbox could predict from issued_at.
    renew_earliest: float = 24 * 3600.0
    renew_latest: float = 6 * 3600.0

    def __post_init__(self) -> None:
        if not (0 <= self.post_delay_mean and 0 <= self.post_delay_cap
                and 0 <= self.card_post_gap and 0 < self.refresh_min <= self.refresh_max
                and 0 <= self.first_fetch_spread and 0 < self.stale_retry
                and 0 <= self.renew_latest <= self.renew_earliest):
            raise ValueError(f"inconsistent mailbox traffic policy: {self}")

    def post_delay(self, rng: random.Random) -> float:
        """A truncated exponential draw in [0, post_delay_cap] (inverse CDF, so the cap
        is never a point mass the mailbox could recognise)."""
        if self.post_delay_mean <= 0 or self.post_delay_cap <= 0:
            return 0.0
        tail = 1.0 - math.exp(-self.post_delay_cap / self.post_delay_mean)
        return min(self.post_delay_cap, -self.post_delay_mean * math.log1p(-rng.random() * tail))

    def post_at(self, now: float, card_fetched_at: float, delay: float) -> float:
        """When a post whose delay was drawn as `delay` may go: after the delay, and never
        within card_post_gap of the last fetch of the recipient's card."""
        return max(now, card_fetched_at + self.card_post_gap) + delay

    def card_usable(self, now: float, expires_at: float) -> bool:
        return now < expires_at - self.usable_margin

    def first_fetch_at(self, now: float, rng: random.Random) -> float:
        return now + rng.uniform(0, self.first_fetch_spread)

    def next_refresh_at(self, fetched_at: float, expires_at: float, rng: random.Random) -> float:
        """When to fetch a cached card again: at a random time after fetched_at, and in
        time to pick up the renewal before the cached one stops being usable."""
        due = fetched_at + rng.uniform(self.refresh_min, self.refresh_max)
        latest = expires_at - self.usable_margin - self.first_fetch_spread
        return max(fetched_at + rng.uniform(0.5, 1.5) * self.stale_retry, min(due, latest))

    def renew_at(self, expires_at: float, rng: random.Random) -> float:
        """When our own card, valid until expires_at, is uploaded again."""
        return expires_at - rng.uniform(self.renew_latest, self.renew_earliest)
