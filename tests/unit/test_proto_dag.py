"""GroupDag: heads, gaps, implicit acks and a deterministic topological order."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st
from nyth.proto.dag import BEFORE_PARENTS, FUTURE, LATE, MAX_CLOCK_SKEW_MS, GroupDag
from nyth.proto.group import MAX_PARENTS, GroupMessage, seal_group_message
from nyth.proto.identity import Identity

AUTHORS = [bytes([i]) * 32 for i in range(4)]


def h(label: object) -> bytes:
    return hashlib.blake2b(repr(label).encode(), digest_size=32).digest()


def msg(label: object, parents: tuple[bytes, ...] = (), ts: int = 0,
        author: bytes = AUTHORS[0]) -> GroupMessage:
    return GroupMessage(author, ts, parents, str(label), h(label))


@st.composite
def dags(draw: st.DrawFn) -> list[GroupMessage]:
    """Random DAGs: each message names up to MAX_PARENTS earlier messages or unknown
    hashes (gaps), possibly the same one twice (nothing in the codec forbids it);
    timestamps are arbitrary (clocks skew), with many ties."""
    n = draw(st.integers(0, 12))
    messages: list[GroupMessage] = []
    for i in range(n):
        candidates = [m.hash for m in messages] + [h(("gap", j)) for j in range(3)]
        parents = draw(st.lists(st.sampled_from(candidates), max_size=MAX_PARENTS))
        messages.append(msg(("m", i), tuple(parents), draw(st.integers(0, 3)),
                            draw(st.sampled_from(AUTHORS))))
    return messages


def is_topological(order: list[GroupMessage]) -> bool:
    held = {m.hash for m in order}
    seen: set[bytes] = set()
    for message in order:
        if any(p in held and p not in seen for p in message.parents):
            return False
        seen.add(message.hash)
    return True


@settings(max_examples=60)
@given(dags(), st.randoms(use_true_random=False))
def test_ordered_is_a_topological_order_independent_of_insertion_order(
        messages: list[GroupMessage], rnd: object) -> None:
    shuffled = list(messages)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    a, b = GroupDag(messages), GroupDag(shuffled)
    order = a.ordered()
    assert sorted(m.hash for m in order) == sorted(m.hash for m in messages)  # all, once
    assert is_topological(order)
    assert [m.hash for m in b.ordered()] == [m.hash for m in order]


@settings(max_examples=40)
@given(dags())
def test_ordered_takes_the_oldest_ready_message_first(messages: list[GroupMessage]) -> None:
    """Oldest by timestamp, raised to the parents' times (no receipt times known)."""
    order = GroupDag(messages).ordered()
    held = {m.hash for m in messages}
    done: dict[bytes, int] = {}

    def clamped(m: GroupMessage) -> int:
        return max([m.timestamp_ms, *(done[p] for p in m.parents if p in done)])

    for chosen in order:
        ready = [m for m in messages if m.hash not in done
                 and all(p in done or p not in held for p in m.parents)]
        assert chosen == min(ready, key=lambda m: (clamped(m), m.hash))
        done[chosen.hash] = clamped(chosen)


def old_order(messages: list[GroupMessage]) -> list[bytes]:
    """The order before receipt times and clamping (commit dc165a0), as a reference."""
    held = {m.hash: m for m in messages}
    done: set[bytes] = set()
    out: list[bytes] = []
    while len(out) < len(held):
        ready = [m for m in held.values() if m.hash not in done
                 and all(p in done or p not in held for p in m.parents)]
        chosen = min(ready, key=lambda m: (m.timestamp_ms, m.hash))
        out.append(chosen.hash)
        done.add(chosen.hash)
    return out


SKEW = MAX_CLOCK_SKEW_MS


@st.composite
def honest(draw: st.DrawFn) -> list[tuple[GroupMessage, int]]:
    """Honest histories: each message is written after the ones it names (clocks within
    a second of each other) and arrives within half the skew, in any order (several
    servers, delays); many equal timestamps. (message, received at)."""
    n = draw(st.integers(0, 12))
    out: list[tuple[GroupMessage, int]] = []
    now = 1_700_000_000_000
    for i in range(n):
        now += draw(st.sampled_from([0, 1, 1000, 60_000]))
        candidates = [m.hash for m, _ in out] + [h(("gap", j)) for j in range(2)]
        parents = tuple(draw(st.lists(st.sampled_from(candidates), max_size=MAX_PARENTS)))
        floor = max((m.timestamp_ms for m, _ in out if m.hash in parents), default=now)
        ts = max(floor, now - draw(st.integers(0, 1000)))
        received = ts + draw(st.integers(0, SKEW // 2))
        out.append((msg(("m", i), parents, ts, draw(st.sampled_from(AUTHORS))), received))
    return out


@settings(max_examples=80)
@given(honest(), st.booleans(), st.randoms(use_true_random=False))
def test_honest_histories_order_exactly_as_before(history: list[tuple[GroupMessage, int]],
                                                  receipts_known: bool, rnd: object) -> None:
    arrival = list(history)
    rnd.shuffle(arrival)  # type: ignore[attr-defined]
    dag = GroupDag()
    for message, received in arrival:
        dag.add(message, received if receipts_known else None)
    placed = dag.placed()
    assert [p.message.hash for p in placed] == old_order([m for m, _ in history])
    assert all(p.time_adjusted is None and p.order_time_ms == p.message.timestamp_ms
               for p in placed)


def group_so_far() -> tuple[GroupDag, list[GroupMessage]]:
    """Three honest messages, an hour apart, each received a second after it was sent."""
    t0 = 1_700_000_000_000
    a = msg("a", ts=t0)
    b = msg("b", (a.hash,), t0 + 3_600_000, AUTHORS[1])
    c = msg("c", (b.hash,), t0 + 7_200_000, AUTHORS[2])
    dag = GroupDag()
    for m in (a, b, c):
        dag.add(m, m.timestamp_ms + 1000)
    return dag, [a, b, c]


def test_a_message_at_time_zero_with_no_parents_cannot_jump_before_the_group() -> None:
    dag, [_, _, c] = group_so_far()
    forged = msg("forged", (), 0, AUTHORS[3])
    dag.add(forged, c.timestamp_ms + 5000)
    placed = dag.placed()
    assert [p.message.body for p in placed] == ["a", "b", "c", "forged"]
    assert placed[-1].time_adjusted == LATE
    assert placed[-1].order_time_ms == c.timestamp_ms  # shown where it arrived
    assert [p.time_adjusted for p in placed[:3]] == [None, None, None]


def test_naming_only_the_first_message_does_not_jump_either() -> None:
    """(Backdating by less than the skew is not caught: that is what the skew allows.)"""
    dag, [a, _, c] = group_so_far()
    forged = msg("forged", (a.hash,), a.timestamp_ms, AUTHORS[3])
    dag.add(forged, c.timestamp_ms + 5000)
    reply = msg("reply", (forged.hash,), c.timestamp_ms + 6000, AUTHORS[1])
    dag.add(reply, c.timestamp_ms + 7000)
    placed = dag.placed()
    assert [p.message.body for p in placed] == ["a", "b", "c", "forged", "reply"]
    assert [p.time_adjusted for p in placed] == [None, None, None, LATE, None]


def test_a_far_future_timestamp_is_clamped_to_receipt_plus_skew() -> None:
    dag, [_, _, c] = group_so_far()
    received = c.timestamp_ms + 5000
    future = msg("future", (c.hash,), received + 365 * 86_400_000, AUTHORS[3])
    dag.add(future, received)
    # Written after the future one arrived, within the skew: shown before it, as its
    # clamped time is still ahead; one written after the skew is shown after it.
    soon = msg("soon", (c.hash,), received + 60_000, AUTHORS[1])
    dag.add(soon, received + 61_000)
    later = msg("later", (c.hash,), received + SKEW + 60_000, AUTHORS[2])
    dag.add(later, received + SKEW + 61_000)
    placed = {p.message.body: p for p in dag.placed()}
    assert [p.message.body for p in dag.placed()] == ["a", "b", "c", "soon", "future", "later"]
    assert placed["future"].order_time_ms == received + SKEW
    assert placed["future"].time_adjusted == FUTURE
    assert placed["soon"].time_adjusted is None and placed["later"].time_adjusted is None


def test_a_message_older_than_its_parent_is_ordered_at_the_parents_time() -> None:
    dag, [_, _, c] = group_so_far()
    skewed = msg("skewed", (c.hash,), c.timestamp_ms - 30_000, AUTHORS[3])
    dag.add(skewed, c.timestamp_ms + 2000)
    last = dag.placed()[-1]
    assert last.message == skewed and last.order_time_ms == c.timestamp_ms
    assert last.time_adjusted == BEFORE_PARENTS


def test_a_delayed_honest_message_within_the_skew_keeps_its_place() -> None:
    dag, [_, b, c] = group_so_far()
    delayed = msg("delayed", (b.hash,), c.timestamp_ms - SKEW // 2, AUTHORS[3])
    dag.add(delayed, c.timestamp_ms + 1000 + SKEW // 4)
    assert [p.message.body for p in dag.placed()] == ["a", "b", "delayed", "c"]
    assert all(p.time_adjusted is None for p in dag.placed())


@settings(max_examples=60)
@given(dags())
def test_heads_missing_and_acks(messages: list[GroupMessage]) -> None:
    dag = GroupDag()
    for message in messages:
        assert dag.add(message)
        assert not dag.add(message)
        assert message.hash in dag
    assert len(dag) == len(messages)
    held = {m.hash: m for m in messages}
    named = {p for m in messages for p in m.parents}
    tips = sorted((m for m in messages if m.hash not in named),
                  key=lambda m: (m.timestamp_ms, m.hash), reverse=True)
    assert dag.heads() == sorted(m.hash for m in tips[:MAX_PARENTS])
    assert len(dag.heads()) <= MAX_PARENTS
    assert dag.missing() == named - set(held)
    for message in messages:
        assert dag.acknowledged_by(message.hash) == {
            m.author for m in messages if message.hash in m.parents}


def test_small_example() -> None:
    root = msg("root", ts=1)
    left = msg("left", (root.hash,), ts=3, author=AUTHORS[1])
    right = msg("right", (root.hash,), ts=2, author=AUTHORS[2])
    merge = msg("merge", (left.hash, right.hash), ts=2)
    orphan = msg("orphan", (h("never seen"),), ts=0)
    dag = GroupDag([merge, orphan, right, left, root])
    assert [m.body for m in dag.ordered()] == ["orphan", "root", "right", "left", "merge"]
    assert dag.heads() == sorted([merge.hash, orphan.hash])
    assert dag.missing() == {h("never seen")}
    assert dag.acknowledged_by(root.hash) == {AUTHORS[1], AUTHORS[2]}
    assert dag.acknowledged_by(merge.hash) == set()
    assert dag.acknowledged_by(h("unknown")) == set()


def test_filling_a_gap_clears_it() -> None:
    first = msg("first")
    second = msg("second", (first.hash,), ts=1)
    dag = GroupDag([second])
    assert dag.missing() == {first.hash}
    assert dag.heads() == [second.hash]
    dag.add(first)
    assert dag.missing() == set()
    assert [m.body for m in dag.ordered()] == ["first", "second"]


def test_message_naming_a_parent_twice_is_still_ordered() -> None:
    first = msg("first")
    twice = msg("twice", (first.hash, first.hash), ts=1)
    child = msg("child", (twice.hash,), ts=2)
    dag = GroupDag([first, twice, child])
    assert [m.body for m in dag.ordered()] == ["first", "twice", "child"]


def test_heads_keep_the_newest_max_parents() -> None:
    tips = [msg(("tip", i), ts=i) for i in range(MAX_PARENTS + 3)]
    dag = GroupDag(tips)
    assert dag.heads() == sorted(m.hash for m in tips[3:])


def test_works_with_real_sealed_messages() -> None:
    author = Identity.from_seed(b"x" * 32)
    key, gid = bytes(32), bytes(16)
    _, first = seal_group_message(author, key, gid, timestamp_ms=1, parents=[], body="a")
    dag = GroupDag([first])
    _, second = seal_group_message(author, key, gid, timestamp_ms=2, parents=dag.heads(),
                                   body="b")
    dag.add(second)
    assert dag.heads() == [second.hash]
    assert dag.acknowledged_by(first.hash) == {author.public_key}
    assert [m.body for m in dag.ordered()] == ["a", "b"]


@settings(max_examples=60)
@given(dags())
def test_get_messages_named_by_and_ancestors(messages: list[GroupMessage]) -> None:
    dag = GroupDag(messages)
    held = {m.hash: m for m in messages}
    assert [m.hash for m in dag.messages()] == list(held)
    for message in messages:
        assert dag.get(message.hash) is message
        assert [m.hash for m in dag.named_by(message.hash)] == sorted(
            m.hash for m in messages if message.hash in m.parents)
        # ancestors: the closure of held parents, by a slow independent computation
        expected: set[bytes] = set()
        frontier = {p for p in message.parents if p in held}
        while frontier:
            expected |= frontier
            frontier = {p for f in frontier for p in held[f].parents if p in held} - expected
        assert dag.ancestors(message.hash) == expected
    assert dag.get(h("unknown")) is None and dag.ancestors(h("unknown")) == set()
    for gap in dag.missing():
        assert {m.hash for m in dag.named_by(gap)} == {m.hash for m in messages if gap in m.parents}


def test_acks_count_only_direct_children() -> None:
    """A member naming a descendant of my post may lack my post (a gap of its own right
    there), so it is not counted as having seen it."""
    mine = msg("mine", author=AUTHORS[0])
    reply = msg("reply", (mine.hash,), ts=1, author=AUTHORS[1])
    later = msg("later", (reply.hash,), ts=2, author=AUTHORS[2])
    dag = GroupDag([mine, reply, later])
    assert dag.acknowledged_by(mine.hash) == {AUTHORS[1]}
    assert dag.ancestors(later.hash) == {mine.hash, reply.hash}
