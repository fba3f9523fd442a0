"""The detection-rate recommendation: false positives at least as many as true matches."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from nyth_peer.mailbox import recommend_bits


def test_examples():
    assert recommend_bits(0, 0) == 0            # nothing observed yet: download everything
    assert recommend_bits(10_000, 5) == 10      # 2⁻¹⁰·10⁴ ≈ 9.8 ≥ 5 > 2⁻¹¹·10⁴
    assert recommend_bits(100, 200) == 0        # we are most of the traffic: no cover
    assert recommend_bits(1e12, 1) == 24        # capped at γ


@given(st.floats(0, 1e9), st.floats(0, 1e6))
def test_recommended_rate_gives_enough_cover(total, ours):
    n = recommend_bits(total, ours)
    assert 0 <= n <= 24
    if n > 0:
        assert total * 2.0 ** -n >= max(ours, 1.0) - 1e-9
