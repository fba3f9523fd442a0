"""Ranking measured servers and choosing a group's servers (nyth.proto.server_choice).

Only what an index measured ranks a server; what a server declares (its bundle's limits,
its operator label) never raises it. Standing, worst to best: lost < never < down < up."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nyth.errors import NythError
from nyth.proto.bundle import ServerBundle
from nyth.proto.discovery import NO_LATENCY, AuditState, Entry, ServerKind
from nyth.proto.identity import Identity
from nyth.proto.mailbox_bundle import MailboxBundle
from nyth.proto.server_choice import (
    DOWN,
    DOWN_AFTER,
    LOST,
    NEVER,
    UP,
    NotEnoughServers,
    Policy,
    Standing,
    assess,
    choose,
    disagreements,
    ineligibility,
    merge,
    rank,
    worst,
)

NOW = 1_800_000_000
SERVERS = [Identity.from_seed(bytes([0x60 + i]) * 32) for i in range(10)]
INDEXES = ["a" * 56, "b" * 56, "c" * 56]
# (max blobs, max age): what a server may promise; none of it may raise its rank
LIMITS = [(100_000, 7 * 86400), (1, 1), ((1 << 63) - 1, (1 << 63) - 1)]
NUMBER = {s.onion: i for i, s in enumerate(SERVERS)}


@functools.cache
def bundle(i: int, limits: int = 0, kind: ServerKind = ServerKind.GROUP_SERVER) -> bytes:
    s = SERVERS[i]
    if kind is ServerKind.MAILBOX:
        return MailboxBundle(s.public_key, 67, 2304, 1000, 86400, 20, NOW).sign(s)
    blobs, age = LIMITS[limits]
    return ServerBundle(s.public_key, bytes(32), 2048, blobs, age, NOW).sign(s)


def up(i: int, **overrides: Any) -> Entry:
    """A healthy group server: 10/10 probes answered, 0.8 s median, 2 audits kept."""
    kind = overrides.pop("kind", ServerKind.GROUP_SERVER)
    fields: dict[str, Any] = {
        "kind": kind, "bundle": bundle(i, overrides.pop("limits", 0), kind),
        "label": f"operator {i}", "first_seen": NOW - 86400, "advert_expires": NOW + 86400,
        "probes": 10, "probes_ok": 10, "consecutive_failures": 0, "last_probe_at": NOW - 60,
        "last_ok_at": NOW - 60, "latency_p50_ms": 800, "latency_p95_ms": 2000,
        "audit": AuditState.KEPT, "audits_passed": 2, "audit_at": NOW - 600, "last_error": "",
    }
    return Entry(**{**fields, **overrides})


def never(i: int, **overrides: Any) -> Entry:
    return up(i, **{"probes_ok": 0, "last_ok_at": 0, "consecutive_failures": 10,
                    "latency_p50_ms": NO_LATENCY, "latency_p95_ms": NO_LATENCY,
                    "audit": AuditState.NOT_AUDITED, "audits_passed": 0,
                    "last_error": "connection refused", **overrides})


def down(i: int, **overrides: Any) -> Entry:
    return up(i, **{"probes_ok": 7, "consecutive_failures": DOWN_AFTER,
                    "last_error": "timed out", **overrides})


def lost(i: int, **overrides: Any) -> Entry:
    return up(i, **{"audit": AuditState.LOST, **overrides})


def onions(standings: list[Standing]) -> list[str]:
    return [s.onion for s in standings]


def short(i: int) -> str:
    return SERVERS[i].onion[:8] + "…"


# -- standing --------------------------------------------------------------------------------


def test_each_state_and_its_reason() -> None:
    s = assess(up(0))
    assert (s.state, s.availability, s.kind, s.onion) == (UP, 1.0, ServerKind.GROUP_SERVER,
                                                         SERVERS[0].onion)
    assert s.reason == ("up: 10/10 probes answered (100%), latency p50 0.8 s p95 2.0 s, "
                        "kept 2 canaries")
    assert "not audited yet" in assess(up(0, audit=AuditState.NOT_AUDITED, audits_passed=0)).reason
    assert "latency p50 none p95 none" in assess(
        up(0, latency_p50_ms=NO_LATENCY, latency_p95_ms=NO_LATENCY)).reason
    n = assess(never(0))
    assert (n.state, n.availability) == (NEVER, 0.0)
    assert n.reason == "never answered a probe (connection refused)"
    assert assess(never(0, last_error="")).reason == "never answered a probe"
    d = assess(down(0))
    assert d.state == DOWN
    assert d.reason == (f"down: the last {DOWN_AFTER} probes failed (timed out); last answered "
                        f"at {NOW - 60}")
    lo = assess(lost(0, audit_at=NOW - 5))
    assert lo.state == LOST and f"lost a canary before its promised retention (found at " \
        f"{NOW - 5})" in lo.reason
    assert assess(up(0, probes=0, probes_ok=0)).availability == 0.0


def test_down_after_consecutive_failures() -> None:
    assert assess(up(0, consecutive_failures=DOWN_AFTER - 1)).state == UP
    assert assess(up(0, consecutive_failures=DOWN_AFTER)).state == DOWN
    assert assess(up(0, consecutive_failures=0xFFFF)).state == DOWN


@settings(max_examples=60)
@given(probes=st.integers(0, 0xFFFF), data=st.data(), failures=st.integers(0, 0xFFFF),
       p50=st.integers(0, NO_LATENCY), passed=st.integers(0, 0xFFFF),
       audit=st.sampled_from([AuditState.NOT_AUDITED, AuditState.KEPT]))
def test_a_server_that_never_answered_is_never_up(probes: int, data: st.DataObject,
                                                   failures: int, p50: int, passed: int,
                                                   audit: AuditState) -> None:
    """Whatever else its entry says (answers counted, latency, audits kept, no
    failures): without a last answer it is 'never', ranked below every down server."""
    e = up(0, probes=probes, probes_ok=data.draw(st.integers(0, probes)),
           consecutive_failures=failures, latency_p50_ms=p50, audits_passed=passed,
           audit=audit, last_ok_at=0)
    s = assess(e)
    assert s.state == NEVER
    assert onions(rank([e, down(1, probes_ok=0, audits_passed=0)]))[-1] == SERVERS[0].onion
    with pytest.raises(NotEnoughServers):
        choose([s], policy=Policy(k=1, min_probes=0, min_availability=0))


def test_lost_ranks_below_never_even_if_otherwise_perfect() -> None:
    """A canary lost is lower than anything, including a server that never answered."""
    assert assess(lost(0, last_ok_at=0)).state == LOST
    ranked = rank([lost(0, audits_passed=0xFFFF, latency_p50_ms=1), never(1), down(2), up(3)])
    assert [s.state for s in ranked] == [UP, DOWN, NEVER, LOST]
    assert onions(ranked) == [SERVERS[i].onion for i in (3, 2, 1, 0)]


@settings(max_examples=60)
@given(st.permutations([lost(0), never(1), down(2), up(3), lost(4), never(5), down(6), up(7)]))
def test_the_standing_order_holds_in_any_input_order(entries: list[Entry]) -> None:
    order = {LOST: 0, NEVER: 1, DOWN: 2, UP: 3}
    states = [order[s.state] for s in rank(entries)]
    assert states == sorted(states, reverse=True)
    assert onions(rank(entries)) == onions(rank(reversed(entries)))


def test_up_servers_rank_by_availability_then_audits_then_latency() -> None:
    ranked = rank([
        up(0, probes_ok=9, audits_passed=9, latency_p50_ms=10),   # less available
        up(1, audits_passed=1, latency_p50_ms=10),               # fewer audits
        up(2, audits_passed=2, latency_p50_ms=3000),             # slower
        up(3, audits_passed=2, latency_p50_ms=200),
        up(4, audits_passed=2, latency_p50_ms=NO_LATENCY),       # latency unknown: last
    ])
    assert onions(ranked) == [SERVERS[i].onion for i in (3, 2, 4, 1, 0)]


def test_availability_ties_within_a_percent() -> None:
    """Availability compares to 2 decimals, so 995/1000 and 99/100 tie and audits decide."""
    ranked = rank([up(0, probes=1000, probes_ok=995, audits_passed=1),
                   up(1, probes=100, probes_ok=99, audits_passed=5)])
    assert onions(ranked) == [SERVERS[1].onion, SERVERS[0].onion]


@st.composite
def measured(draw: st.DrawFn) -> list[Entry]:
    servers = draw(st.lists(st.integers(0, len(SERVERS) - 1), unique=True, min_size=1,
                            max_size=len(SERVERS)))
    entries = []
    for i in servers:
        probes = draw(st.integers(0, 30))
        entries.append(up(
            i, probes=probes, probes_ok=draw(st.integers(0, probes)),
            consecutive_failures=draw(st.integers(0, 3)),
            last_ok_at=draw(st.sampled_from([0, NOW - 60])),
            latency_p50_ms=draw(st.sampled_from([100, 800, 800, NO_LATENCY])),
            audit=draw(st.sampled_from(AuditState)), audits_passed=draw(st.integers(0, 3)),
            label=draw(st.sampled_from(["", "a", "b"]))))
    return entries


@settings(max_examples=80, deadline=None)
@given(measured(), st.data())
def test_nothing_declared_raises_a_rank(entries: list[Entry], data: st.DataObject) -> None:
    """Re-issuing bundles with other limits, or claiming other labels, never changes the
    order (nor what choose picks when labels are left alone)."""
    declared = [dataclasses.replace(
        e, bundle=bundle(NUMBER[e.onion], data.draw(st.integers(0, len(LIMITS) - 1))),
        label=data.draw(st.sampled_from(["", "a", "b", "Trusted Big Operator"])))
        for e in entries]
    assert onions(rank(declared)) == onions(rank(entries))
    relimited = [dataclasses.replace(e, bundle=bundle(NUMBER[e.onion], len(LIMITS) - 1))
                 for e in entries]
    policy = Policy(k=1, min_probes=0, min_availability=0)
    try:
        chosen: list[str] | None = [c.onion for c in choose(rank(entries), policy=policy)]
    except NotEnoughServers:
        chosen = None
    try:
        again: list[str] | None = [c.onion for c in choose(rank(relimited), policy=policy)]
    except NotEnoughServers:
        again = None
    assert chosen == again


# -- several indexes -------------------------------------------------------------------------


def test_merge_groups_views_by_server() -> None:
    merged = merge({INDEXES[0]: [up(0), down(1)], INDEXES[1]: [up(0)]})
    assert set(merged) == {SERVERS[0].onion, SERVERS[1].onion}
    assert set(merged[SERVERS[0].onion]) == {INDEXES[0], INDEXES[1]}
    assert merged[SERVERS[1].onion][INDEXES[0]].state == DOWN


def test_agreeing_indexes_show_no_disagreement() -> None:
    merged = merge({INDEXES[0]: [up(0)], INDEXES[1]: [up(0, probes_ok=9, latency_p50_ms=900)]})
    assert disagreements(merged[SERVERS[0].onion], INDEXES[:2]) == []
    assert disagreements({}, INDEXES) == []


def test_disagreements_name_state_retention_bundle_and_listing() -> None:
    merged = merge({
        INDEXES[0]: [up(0)],
        INDEXES[1]: [lost(0, limits=1)],
    })
    found = disagreements(merged[SERVERS[0].onion], INDEXES)
    assert found == [
        f"listed by {INDEXES[0][:8]}…, {INDEXES[1][:8]}…, not by {INDEXES[2][:8]}…",
        f"state: {INDEXES[0][:8]}… says up, {INDEXES[1][:8]}… says lost",
        f"retention: {INDEXES[0][:8]}… says kept, {INDEXES[1][:8]}… says lost",
        "the indexes saw different signed bundles from it",
    ]
    one = disagreements(merge({INDEXES[0]: [down(0)], INDEXES[1]: [never(0)]})[SERVERS[0].onion],
                        INDEXES[:2])
    assert one[0] == f"state: {INDEXES[0][:8]}… says down, {INDEXES[1][:8]}… says never"
    assert f"{INDEXES[1][:8]}… says not audited" in one[1]


def test_worst_is_the_most_cautious_view() -> None:
    """It used to pick the *best* state (min of a negated order)."""
    views = merge({INDEXES[0]: [up(0)], INDEXES[1]: [lost(0)], INDEXES[2]: [down(0)]})
    assert worst(views[SERVERS[0].onion]).state == LOST
    views = merge({INDEXES[0]: [up(0)], INDEXES[1]: [down(0)]})
    assert worst(views[SERVERS[0].onion]).state == DOWN
    views = merge({INDEXES[0]: [up(0)], INDEXES[1]: [up(0, probes_ok=5)],
                   INDEXES[2]: [up(0, probes_ok=8)]})
    assert worst(views[SERVERS[0].onion]).availability == 0.5
    views = merge({INDEXES[0]: [up(0, latency_p50_ms=100)],
                   INDEXES[1]: [up(0, latency_p50_ms=5000)]})
    assert worst(views[SERVERS[0].onion]).entry.latency_p50_ms == 5000


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([up(0), up(0, probes_ok=3), down(0), never(0), lost(0),
                                 up(0, audits_passed=0)]), min_size=1, max_size=3))
def test_worst_is_ranked_last_among_the_views(views_list: list[Entry]) -> None:
    views = {INDEXES[i]: assess(e) for i, e in enumerate(views_list)}
    w = worst(views)
    assert all(w.sort_key >= s.sort_key for s in views.values())


# -- choosing --------------------------------------------------------------------------------


def test_choose_takes_the_k_best_with_a_reason_each() -> None:
    ranked = rank([up(0, latency_p50_ms=900), up(1, latency_p50_ms=100),
                   up(2, latency_p50_ms=500)])
    chosen = choose(ranked)
    assert [c.onion for c in chosen] == [SERVERS[1].onion, SERVERS[2].onion]
    assert chosen[0].reason.startswith(
        "rank 1 of 3 group servers; operator 'operator 1'; up: 10/10")
    assert [c.onion for c in choose(ranked, policy=Policy(k=3))] == onions(ranked)
    assert [c.onion for c in choose(ranked, policy=Policy(k=1))] == [SERVERS[1].onion]


def test_eligibility_thresholds_with_reasons() -> None:
    ranked = rank([up(0), up(1, probes=2, probes_ok=2), up(2, probes_ok=7),
                   down(3), never(4), lost(5)])
    with pytest.raises(NotEnoughServers) as caught:
        choose(ranked, policy=Policy(minimum=2))
    message = str(caught.value)
    assert message.startswith("the policy wants 2 group servers and only 1 is eligible "
                              "(not eligible: ")
    for part in (f"{short(1)} measured by only 2 probes", f"{short(2)} answered 70%",
                 f"{short(3)} down", f"{short(4)} never", f"{short(5)} lost"):
        assert part in message
    assert short(0) not in message
    assert isinstance(caught.value, NythError)
    # What the peer's view shows per server is what choose went by.
    assert [ineligibility(s) for s in ranked] == [
        None, "measured by only 2 probes", "answered 70%, the policy wants 80%", "down",
        "never", "lost"]
    # the thresholds are the policy's: at the limit a server is eligible
    loose = Policy(k=3, min_probes=2, min_availability=0.7)
    assert {c.onion for c in choose(ranked, policy=loose)} == {
        SERVERS[i].onion for i in (0, 1, 2)}
    with pytest.raises(NotEnoughServers, match=r"wants 4 .* only 3 are eligible"):
        choose(ranked, policy=dataclasses.replace(loose, k=4, minimum=4))


def test_fewer_than_k_eligible_still_make_a_group_and_each_choice_says_so() -> None:
    ranked = rank([up(0), down(3)])
    (only,) = choose(ranked)
    assert only.onion == SERVERS[0].onion
    assert only.reason.endswith("the policy wants 2 group servers and only 1 is eligible "
                                f"(not eligible: {short(3)} down)")
    with pytest.raises(NotEnoughServers, match=r"only 0 are eligible"):
        choose(rank([down(3)]))


def test_no_candidates_at_all() -> None:
    with pytest.raises(NotEnoughServers, match=r"only 0 are eligible$"):
        choose([])


def test_mailboxes_are_never_chosen_as_group_servers() -> None:
    ranked = rank([up(0, kind=ServerKind.MAILBOX, latency_p50_ms=1), up(1), up(2)])
    assert ranked[0].kind is ServerKind.MAILBOX
    assert {c.onion for c in choose(ranked)} == {SERVERS[1].onion, SERVERS[2].onion}
    only_mailboxes = rank([up(0, kind=ServerKind.MAILBOX), up(1, kind=ServerKind.MAILBOX)])
    with pytest.raises(NotEnoughServers, match="only 0 are eligible"):
        choose(only_mailboxes, known=[SERVERS[0].onion], policy=Policy(k=1))


def test_known_servers_come_first() -> None:
    ranked = rank([up(0, latency_p50_ms=100), up(1, latency_p50_ms=200),
                   up(2, latency_p50_ms=3000)])
    chosen = choose(ranked, known=[SERVERS[2].onion])
    assert [c.onion for c in chosen] == [SERVERS[2].onion, SERVERS[0].onion]
    assert chosen[0].reason.startswith("already used by you; operator 'operator 2'")
    assert chosen[1].reason.startswith("rank 1 of 3")
    no_pref = choose(ranked, known=[SERVERS[2].onion], policy=Policy(prefer_known=False))
    assert [c.onion for c in no_pref] == [SERVERS[0].onion, SERVERS[1].onion]
    assert "already used" not in no_pref[0].reason


def test_a_known_server_that_is_not_eligible_is_not_chosen() -> None:
    ranked = rank([up(0), up(1), down(2)])
    chosen = choose(ranked, known=[SERVERS[2].onion])
    assert SERVERS[2].onion not in [c.onion for c in chosen]


def test_distinct_operators_first_then_shared_with_a_reason() -> None:
    ranked = rank([up(0, label="Same", latency_p50_ms=100), up(1, label="Same", latency_p50_ms=200),
                   up(2, label="Other", latency_p50_ms=3000)])
    chosen = choose(ranked)
    assert [c.onion for c in chosen] == [SERVERS[0].onion, SERVERS[2].onion]
    assert "operator 'Other'" in chosen[1].reason
    # only one operator left to spread over: the fallback says so
    same = rank([up(0, label="Same"), up(1, label="Same", latency_p50_ms=900)])
    chosen = choose(same)
    assert [c.onion for c in chosen] == [SERVERS[0].onion, SERVERS[1].onion]
    assert "shares operator 'Same': no other eligible operator left" in chosen[1].reason
    assert "shares operator" not in chosen[0].reason
    # without the rule, rank alone decides
    assert [c.onion for c in choose(ranked, policy=Policy(distinct_operators=False))] == [
        SERVERS[0].onion, SERVERS[1].onion]


def test_unlabelled_servers_are_not_one_operator() -> None:
    ranked = rank([up(0, label=""), up(1, label="", latency_p50_ms=900), up(2, label="X",
                                                                           latency_p50_ms=5000)])
    chosen = choose(ranked)
    assert [c.onion for c in chosen] == [SERVERS[0].onion, SERVERS[1].onion]
    assert not any("operator" in c.reason.split(";")[1] for c in chosen)


def test_choose_takes_each_server_once() -> None:
    """Standings from several indexes (without `worst`) may name a server twice."""
    views = [assess(up(0)), assess(up(0, probes_ok=9)), assess(up(1, latency_p50_ms=5000))]
    assert [c.onion for c in choose(views)] == [SERVERS[0].onion, SERVERS[1].onion]


@settings(max_examples=80, deadline=None)
@given(measured(), st.integers(1, 4), st.booleans(), st.booleans(), st.data())
def test_choose_invariants(entries: list[Entry], k: int, prefer: bool, distinct: bool,
                           data: st.DataObject) -> None:
    ranked = rank(entries)
    known = data.draw(st.lists(st.sampled_from([s.onion for s in ranked]), max_size=3))
    policy = Policy(k=k, minimum=k, min_probes=3, min_availability=0.8, prefer_known=prefer,
                    distinct_operators=distinct)
    eligible = [s for s in ranked if s.state == UP and s.entry.probes >= 3
                and s.availability >= 0.8]
    try:
        chosen = choose(ranked, known=known, policy=policy)
    except NotEnoughServers as exc:
        assert len(eligible) < k
        for s in ranked:
            if s not in eligible:
                assert s.onion[:8] in str(exc)
        return
    picked = [c.onion for c in chosen]
    assert len(picked) == k == len(set(picked))
    assert set(picked) <= {s.onion for s in eligible}
    if prefer and not distinct:  # eligible known servers first, then the others
        flags = [o in known for o in picked]
        assert flags == sorted(flags, reverse=True)
        assert sum(flags) == min(k, len({s.onion for s in eligible if s.onion in known}))
    if not prefer:  # rank alone decides, but for operators
        assert [s.onion for s in eligible][:k] == picked or distinct
    if distinct:  # a label repeats only once no eligible server of another one is left
        labels = [next(s.entry.label for s in ranked if s.onion == o) for o in picked]
        if any(x and labels.count(x) > 1 for x in labels):
            assert not {s.entry.label for s in eligible} - set(labels)
