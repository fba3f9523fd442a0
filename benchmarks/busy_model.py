"""The anonymity-set model of docs/busy-servers.md: a population of groups spread over
group servers, and what one server sees in an hour. Pure (seeded), so it is unit-tested
(tests/unit/test_busy_model.py) and benchmarks/busy_server.py feeds it measured costs.

Assumptions (each one a parameter, the defaults the page's):

- **Groups.** `n_groups` groups. Sizes follow a discrete power law P(s) ∝ s^-SIZE_EXPONENT
  on [MIN_GROUP, MAX_GROUP] (many small groups, a few large ones, as in chat systems).
  Members are drawn uniformly without replacement from `n_users` users, so a user holds
  as many groups as chance gives (about n_groups × mean size / n_users on average).
- **Activity.** Each group posts at its own rate (posts/hour), log-normal with median
  RATE_MEDIAN and log-sd RATE_SIGMA (a heavy tail: a few chatty groups, most quiet).
  In each simulated hour a group's posts are Poisson(rate); each post's author is a
  uniformly drawn member.
- **Placement.** A group draws one uniform number u in [0, 1); with S servers its first
  server is floor(u × S) (uniform placement, the same u for every S, so spreading over m × S
  servers splits each of the S servers' groups and never merges them). With k > 1 the
  other servers are the next ones round the ring (k distinct servers, k ≤ S). A group
  posts every blob to each of its k servers (as peers do) and its members read all k.
- **What one server sees in an hour.** Blobs (all the same size, opaque) and who
  connects. The *anonymity set* of a post is what it mixes with there: the active
  groups (≥ 1 post that hour) and the active authors (distinct members who posted) on
  that server; also every member of every group on it, as each of them reads it.
"""

from __future__ import annotations

import bisect
import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

MIN_GROUP = 2
MAX_GROUP = 200
SIZE_EXPONENT = 2.0
RATE_MEDIAN = 2.0          # posts/hour of the median group
RATE_SIGMA = 1.5           # log-sd of the rate: mean = median × e^(σ²/2) ≈ 3.1 × median
MAX_RATE = 3600.0          # one post a second: a bound, no group in the model gets near it
MAX_GROUPS = 100_000       # bounds for the simulation's sizes
MAX_USERS = 1_000_000
MAX_SERVERS = 1_000
MAX_HOURS = 1_000
# Integer placement draws, so floor(u × S) is exact and nests for multiples of S.
PLACEMENT_BITS = 53


@dataclass(frozen=True)
class Group:
    members: tuple[int, ...]   # user ids, distinct
    rate: float                # posts/hour
    u: int                     # placement draw, uniform in [0, 2**PLACEMENT_BITS)


@dataclass(frozen=True)
class ServerHour:
    """What one server sees in one hour."""

    posts: int
    active_groups: int
    active_authors: int
    groups: int                # groups placed on it (active or not)
    readers: int               # distinct members of those groups


def _sizes_cdf() -> list[float]:
    weights = [s ** -SIZE_EXPONENT for s in range(MIN_GROUP, MAX_GROUP + 1)]
    total = sum(weights)
    out, acc = [], 0.0
    for w in weights:
        acc += w / total
        out.append(acc)
    return out


_CDF = _sizes_cdf()


def group_size(rng: random.Random) -> int:
    return MIN_GROUP + min(bisect.bisect_left(_CDF, rng.random()), len(_CDF) - 1)


def population(n_groups: int, n_users: int, seed: int) -> list[Group]:
    if not 1 <= n_groups <= MAX_GROUPS or not MAX_GROUP <= n_users <= MAX_USERS:
        raise ValueError("population out of bounds")
    rng = random.Random(seed)
    groups = []
    for _ in range(n_groups):
        size = group_size(rng)
        rate = min(MAX_RATE, RATE_MEDIAN * math.exp(rng.gauss(0.0, RATE_SIGMA)))
        groups.append(Group(tuple(rng.sample(range(n_users), size)), rate,
                            rng.getrandbits(PLACEMENT_BITS)))
    return groups


def servers_of(group: Group, n_servers: int, k: int) -> list[int]:
    """The k distinct servers (of n_servers) a group is placed on."""
    if not 1 <= n_servers <= MAX_SERVERS or not 1 <= k:
        raise ValueError("servers out of bounds")
    first = (group.u * n_servers) >> PLACEMENT_BITS
    return [(first + i) % n_servers for i in range(min(k, n_servers))]


def hour_posts(groups: Sequence[Group], rng: random.Random) -> list[list[int]]:
    """One hour: for each group, the authors of its posts (one entry per post)."""
    out = []
    for g in groups:
        out.append([rng.choice(g.members) for _ in range(_poisson(g.rate, rng))])
    return out


def _poisson(mean: float, rng: random.Random) -> int:
    if mean > 50:  # normal approximation: Knuth's loop costs O(mean) and underflows
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, n, p = math.exp(-mean), 0, rng.random()
    while p > limit:
        n += 1
        p *= rng.random()
    return n


def server_views(groups: Sequence[Group], authors: Sequence[Sequence[int]], n_servers: int,
                 k: int) -> list[ServerHour]:
    """What each of n_servers sees in the hour whose posts are `authors` (per group)."""
    posts = [0] * n_servers
    active: list[set[int]] = [set() for _ in range(n_servers)]
    who: list[set[int]] = [set() for _ in range(n_servers)]
    placed = [0] * n_servers
    readers: list[set[int]] = [set() for _ in range(n_servers)]
    for index, (g, by) in enumerate(zip(groups, authors, strict=True)):
        for s in servers_of(g, n_servers, k):
            placed[s] += 1
            readers[s].update(g.members)
            if by:
                posts[s] += len(by)
                active[s].add(index)
                who[s].update(by)
    return [ServerHour(posts[s], len(active[s]), len(who[s]), placed[s], len(readers[s]))
            for s in range(n_servers)]


@dataclass(frozen=True)
class Spread:
    """Summary over servers and hours for one number of servers."""

    servers: int
    k: int
    posts_per_hour: list[float]        # [min, median, max] over server-hours
    active_groups: list[float]
    active_authors: list[float]
    readers: list[float]
    member_blobs_per_hour: list[float]  # [p10, median, p90] over users holding a group
    member_trials_per_hour: list[float]


def _spread(values: Sequence[float]) -> list[float]:
    return [min(values), statistics.median(values), max(values)]


def _deciles(values: Sequence[float]) -> list[float]:
    ordered = sorted(values)
    return [ordered[len(ordered) // 10], statistics.median(ordered), ordered[9 * len(ordered) // 10]]


def simulate(groups: Sequence[Group], n_servers: int, k: int, hours: int,
             seed: int) -> Spread:
    """Run `hours` hours (the same posts for every n_servers given the seed) and
    summarise what servers see and what members download and trial-decrypt."""
    if not 1 <= hours <= MAX_HOURS:
        raise ValueError("hours out of bounds")
    rng = random.Random(seed)
    views: list[ServerHour] = []
    # What a member pays per hour: every blob of every server its groups are on
    # (downloads), times the number of its groups on that server (trial decryptions).
    loads = [0.0] * n_servers
    for _ in range(hours):
        hour = server_views(groups, hour_posts(groups, rng), n_servers, k)
        views += hour
        for s, v in enumerate(hour):
            loads[s] += v.posts / hours
    held: dict[int, dict[int, int]] = {}  # user -> server -> groups of theirs on it
    for g in groups:
        for s in servers_of(g, n_servers, k):
            for m in g.members:
                per = held.setdefault(m, {})
                per[s] = per.get(s, 0) + 1
    blobs = [sum(loads[s] for s in per) for per in held.values()]
    trials = [sum(loads[s] * n for s, n in per.items()) for per in held.values()]
    return Spread(n_servers, min(k, n_servers),
                  _spread([v.posts for v in views]), _spread([v.active_groups for v in views]),
                  _spread([v.active_authors for v in views]), _spread([v.readers for v in views]),
                  _deciles(blobs), _deciles(trials))
