"""Delivery states and the retry policy."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nyth.proto.delivery import DeliveryState, RetryPolicy

policies = st.builds(
    RetryPolicy,
    initial=st.floats(0.1, 60), factor=st.floats(1.0, 10), cap=st.floats(0.1, 3600),
    jitter=st.floats(0, 0.9),
)


def test_states_are_the_user_visible_strings() -> None:
    assert [s.value for s in DeliveryState] == ["queued", "sending", "delivered", "failed"]
    assert DeliveryState("delivered") is DeliveryState.DELIVERED


@settings(max_examples=120)
@given(policies, st.integers(-5, 100_000), st.integers(0, 2**32))
def test_delay_stays_within_bounds(policy: RetryPolicy, attempts: int, seed: int) -> None:
    base = policy.cap
    try:
        base = min(policy.cap, policy.initial * policy.factor ** max(0, attempts - 1))
    except OverflowError:
        pass
    delay = policy.delay(attempts, random.Random(seed))
    assert 0.1 <= delay
    assert delay <= max(0.1, base * (1 + policy.jitter)) * (1 + 1e-9)
    assert delay >= max(0.1, base * (1 - policy.jitter)) * (1 - 1e-9)
    assert delay <= max(0.1, policy.cap * (1 + policy.jitter)) * (1 + 1e-9)


def test_default_backoff_doubles_from_two_seconds_to_five_minutes() -> None:
    policy = RetryPolicy(jitter=0)
    assert [policy.delay(n) for n in range(1, 11)] == [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    assert policy.delay(0) == policy.delay(-3) == 2


@pytest.mark.parametrize("attempts", [1025, 10_000, 10**9])
def test_long_outages_do_not_overflow(attempts: int) -> None:
    """A contact offline for days keeps being retried at the cap, without a crash."""
    assert RetryPolicy(jitter=0).delay(attempts) == 300
    assert 240 <= RetryPolicy().delay(attempts) <= 360


def test_jitter_spreads_retries() -> None:
    rng = random.Random(1)
    delays = {RetryPolicy().delay(5, rng) for _ in range(50)}
    assert len(delays) > 40
    assert min(delays) >= 32 * 0.8 and max(delays) <= 32 * 1.2


def test_same_rng_same_delays() -> None:
    a = [RetryPolicy().delay(n, random.Random(7)) for n in range(1, 6)]
    b = [RetryPolicy().delay(n, random.Random(7)) for n in range(1, 6)]
    assert a == b
