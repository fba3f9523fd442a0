"""The anonymity-set model behind docs/busy-servers.md (benchmarks/busy_model.py)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.busy_model import (
    MAX_GROUP,
    MIN_GROUP,
    PLACEMENT_BITS,
    Group,
    group_size,
    hour_posts,
    population,
    server_views,
    servers_of,
    simulate,
)

groups_st = st.lists(
    st.builds(Group,
              members=st.lists(st.integers(0, 50), min_size=1, max_size=6, unique=True).map(tuple),
              rate=st.floats(0, 20),
              u=st.integers(0, (1 << PLACEMENT_BITS) - 1)),
    min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(groups_st, st.integers(1, 30), st.integers(1, 3), st.integers(0, 2**32))
def test_every_post_and_group_is_counted_once_per_server_it_is_on(
        groups: list[Group], n_servers: int, k: int, seed: int) -> None:
    authors = hour_posts(groups, random.Random(seed))
    views = server_views(groups, authors, n_servers, k)
    copies = min(k, n_servers)
    assert len(views) == n_servers
    assert sum(v.posts for v in views) == copies * sum(len(a) for a in authors)
    assert sum(v.active_groups for v in views) == copies * sum(1 for a in authors if a)
    assert sum(v.groups for v in views) == copies * len(groups)
    for v in views:
        assert v.active_groups <= v.groups and v.active_authors <= v.readers
        assert v.active_authors <= v.posts


@settings(max_examples=60, deadline=None)
@given(groups_st, st.integers(1, 10), st.integers(2, 5), st.integers(0, 2**32))
def test_spreading_over_more_servers_never_increases_what_one_server_sees(
        groups: list[Group], n_servers: int, factor: int, seed: int) -> None:
    authors = hour_posts(groups, random.Random(seed))
    coarse = server_views(groups, authors, n_servers, 1)
    fine = server_views(groups, authors, n_servers * factor, 1)
    whole = server_views(groups, authors, 1, 1)[0]
    for j, view in enumerate(fine):
        # each of the finer servers holds a part of one coarser server's groups
        parent = coarse[j // factor]
        assert view.posts <= parent.posts <= whole.posts
        assert view.active_groups <= parent.active_groups <= whole.active_groups
        assert view.active_authors <= parent.active_authors <= whole.active_authors
        assert view.readers <= parent.readers <= whole.readers


@given(st.integers(0, (1 << PLACEMENT_BITS) - 1), st.integers(1, 100), st.integers(1, 8))
def test_a_group_is_on_k_distinct_servers(u: int, n_servers: int, k: int) -> None:
    servers = servers_of(Group((1,), 1.0, u), n_servers, k)
    assert len(set(servers)) == len(servers) == min(k, n_servers)
    assert all(0 <= s < n_servers for s in servers)


def test_sizes_stay_in_bounds_and_small_groups_dominate() -> None:
    rng = random.Random(1)
    sizes = [group_size(rng) for _ in range(5000)]
    assert MIN_GROUP <= min(sizes) and max(sizes) <= MAX_GROUP
    assert sizes.count(2) > sizes.count(3) > sizes.count(10)


def test_members_pay_more_and_servers_see_fewer_as_groups_spread() -> None:
    groups = population(300, 2000, seed=7)
    one, many = simulate(groups, 1, 1, hours=3, seed=3), simulate(groups, 10, 1, hours=3, seed=3)
    assert one.active_groups[1] > many.active_groups[1]
    assert one.member_blobs_per_hour[1] > many.member_blobs_per_hour[1]
    # trial decryptions per member are the same placement-free quantity only at k = 1
    # when all of a member's groups share one server; spread, they can only fall
    assert many.member_trials_per_hour[1] <= one.member_trials_per_hour[1]


def test_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        population(0, 1000, seed=1)
    with pytest.raises(ValueError):
        servers_of(Group((1,), 1.0, 0), 0, 1)
    with pytest.raises(ValueError):
        simulate(population(5, 1000, seed=1), 1, 1, hours=0, seed=1)
