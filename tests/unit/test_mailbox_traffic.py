"""The mailbox traffic policy (sans-IO): credentials per purpose, post delays, the card
cache's schedule. The peer's use of it is in test_peer_mailbox_traffic.py."""

from __future__ import annotations

import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nyth.mailbox_traffic import Isolation, Purpose, TrafficPolicy, new_isolation

POLICY = TrafficPolicy()
DAY = 86_400.0


class Fixed(random.Random):
    """A random source whose random() is always the given value (uniform() follows)."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def test_every_isolation_is_new_and_says_its_purpose() -> None:
    made = [new_isolation(p) for p in Purpose for _ in range(50)]
    assert len({(i.username, i.password) for i in made}) == len(made)
    for purpose in Purpose:
        iso = new_isolation(purpose)
        assert iso.purpose is purpose
        # RFC 1929: one byte of length each
        assert 0 < len(iso.username.encode()) <= 255 and 0 < len(iso.password.encode()) <= 255
    assert Isolation("someone-else", "x").purpose is None
    assert Isolation("nyth-mailbox-nonsense", "x").purpose is None


@given(st.floats(0, 1, exclude_max=True))
def test_post_delay_is_within_its_bounds(u: float) -> None:
    delay = POLICY.post_delay(Fixed(u))
    assert 0 <= delay <= POLICY.post_delay_cap


def test_post_delay_is_a_truncated_exponential() -> None:
    assert POLICY.post_delay(Fixed(0.0)) == 0.0
    assert POLICY.post_delay(Fixed(1 - 1e-12)) == pytest.approx(POLICY.post_delay_cap)
    rng = random.Random(8)   # seeded: the same draws every run
    draws = [POLICY.post_delay(rng) for _ in range(20_000)]
    # The mean of an exponential with mean 30 truncated at 120 is ~28.4 s.
    assert 27.0 < statistics.fmean(draws) < 30.0
    # No point mass at the cap: a clamped draw would make the longest delays recognisable.
    assert sum(d == POLICY.post_delay_cap for d in draws) == 0
    assert TrafficPolicy(post_delay_mean=0).post_delay(rng) == 0.0


@given(now=st.floats(1e9, 2e9), since_fetch=st.floats(0, 10 * DAY), delay=st.floats(0, 120))
def test_a_post_never_goes_within_the_gap_after_a_fetch_of_its_card(
        now: float, since_fetch: float, delay: float) -> None:
    fetched_at = now - since_fetch
    at = POLICY.post_at(now, fetched_at, delay)
    assert at >= fetched_at + POLICY.card_post_gap + delay - 1e-6
    assert at >= now + delay


def test_a_card_near_its_expiry_is_not_used() -> None:
    assert POLICY.card_usable(1000.0, 1000.0 + POLICY.usable_margin + 1)
    assert not POLICY.card_usable(1000.0, 1000.0 + POLICY.usable_margin)


@given(u=st.floats(0, 1, exclude_max=True), fetched_at=st.floats(1e9, 2e9),
       lifetime=st.floats(0, 30 * DAY))
def test_refreshes_are_random_and_before_the_card_stops_being_usable(
        u: float, fetched_at: float, lifetime: float) -> None:
    expires_at = fetched_at + lifetime
    at = POLICY.next_refresh_at(fetched_at, expires_at, Fixed(u))
    # never a tight loop, never later than the usual interval
    assert fetched_at + 0.5 * POLICY.stale_retry <= at <= fetched_at + POLICY.refresh_max
    if lifetime >= POLICY.refresh_max + POLICY.usable_margin + POLICY.first_fetch_spread:
        assert at == pytest.approx(fetched_at + POLICY.refresh_min
                                   + u * (POLICY.refresh_max - POLICY.refresh_min))
    elif at > fetched_at + 1.5 * POLICY.stale_retry:
        assert POLICY.card_usable(at, expires_at)


def test_first_fetches_and_our_renewals_are_spread() -> None:
    rng = random.Random(3)
    firsts = [POLICY.first_fetch_at(100.0, rng) for _ in range(1000)]
    assert all(100.0 <= t <= 100.0 + POLICY.first_fetch_spread for t in firsts)
    assert max(firsts) - min(firsts) > 0.9 * POLICY.first_fetch_spread
    renewals = [POLICY.renew_at(7 * DAY, rng) for _ in range(1000)]
    assert all(6 * DAY <= t <= 7 * DAY - POLICY.renew_latest for t in renewals)
    assert max(renewals) - min(renewals) > 0.9 * (POLICY.renew_earliest - POLICY.renew_latest)


def test_an_inconsistent_policy_is_refused() -> None:
    with pytest.raises(ValueError):
        TrafficPolicy(refresh_min=10, refresh_max=5)
    with pytest.raises(ValueError):
        TrafficPolicy(card_post_gap=-1)
