"""The detection-rate recommendation: false positives at least k = 3 times the true matches."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from nyth_peer.mailbox import COVER_FACTOR, recommend_bits


def test_cover_factor_is_at_least_three():
    assert COVER_FACTOR >= 3


def test_examples():
    assert recommend_bits(0, 0) == 0            # nothing observed yet: download everything
    # The review's example: 2⁻⁹·10⁴ ≈ 19.5 ≥ 3·5 > 2⁻¹⁰·10⁴ ≈ 9.8 (n = 10 was a coin toss).
    assert recommend_bits(10_000, 5) == 9
    assert recommend_bits(100, 200) == 0        # we are most of the traffic: no cover
    assert recommend_bits(6, 1) == 1            # 2⁻¹·6 = 3 = 3·1: just enough
    assert recommend_bits(5, 1) == 0            # even n = 1 gives fewer than 3 per match
    assert recommend_bits(1e12, 1) == 24        # capped at γ


@given(st.floats(0, 1e9), st.floats(0, 1e6))
def test_recommended_rate_gives_enough_cover(total, ours):
    n = recommend_bits(total, ours)
    assert 0 <= n <= 24
    if n > 0:
        assert total * 2.0 ** -n >= 3 * max(ours, 1.0) - 1e-9
        if n < 24:
            # The largest such n: one more bit would fall short of the cover.
            assert total * 2.0 ** -(n + 1) < 3 * max(ours, 1.0) + 1e-9
