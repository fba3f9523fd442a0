"""GroupDag: heads, gaps, implicit acks and a deterministic topological order."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st
from nyth.proto.dag import GroupDag
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
    order = GroupDag(messages).ordered()
    held = {m.hash for m in messages}
    done: set[bytes] = set()
    for chosen in order:
        ready = [m for m in messages if m.hash not in done
                 and all(p in done or p not in held for p in m.parents)]
        assert chosen == min(ready, key=lambda m: (m.timestamp_ms, m.hash))
        done.add(chosen.hash)


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
