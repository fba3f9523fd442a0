"""Moving a group: only the owner's move with a higher epoch is followed; old servers drain."""

from __future__ import annotations

import pytest
from nyth.proto.bundle import ServerBundle
from nyth.proto.dag import GroupDag
from nyth.proto.group import (
    BLOB_SIZE,
    GroupMessage,
    Invite,
    Move,
    seal_group_message,
    seal_group_move,
)
from nyth.proto.group_control import (
    MAX_DRAIN_MS,
    FollowedMove,
    GroupServers,
    MoveIgnored,
    history_to_carry,
    reposts_after_move,
)
from nyth.proto.identity import Identity

OWNER = Identity.from_seed(b"o" * 32)
MEMBER = Identity.from_seed(b"m" * 32)
SERVERS = [Identity.from_seed(bytes([i + 1]) * 32) for i in range(6)]
DAY_S = 86_400
AGES = [DAY_S, 2 * DAY_S, 3 * DAY_S, 400 * DAY_S, DAY_S, DAY_S]
SIGNED = [ServerBundle(s.public_key, bytes(32), BLOB_SIZE, 1000, age, 1_800_000_000).sign(s)
          for s, age in zip(SERVERS, AGES, strict=True)]
ONION = [s.onion for s in SERVERS]
KEY = bytes(range(32))
INVITE = Invite("club", KEY, (SIGNED[0], SIGNED[1]), OWNER.public_key)
GID = INVITE.group_id
NOW = 1_000_000


def move(epoch: int, servers: list[int], author: Identity = OWNER,
         parents: tuple[bytes, ...] = (), ts: int = 5) -> GroupMessage:
    _, message = seal_group_move(author, KEY, GID, timestamp_ms=ts, parents=parents,
                                 move=Move(epoch, tuple(SIGNED[i] for i in servers)))
    return message


def text(author: Identity, body: str, parents: tuple[bytes, ...] = (), ts: int = 1) -> GroupMessage:
    _, message = seal_group_message(author, KEY, GID, timestamp_ms=ts, parents=parents, body=body)
    return message


def test_from_invite() -> None:
    servers = GroupServers.from_invite(INVITE)
    assert (servers.owner, servers.epoch, servers.move_hash) == (OWNER.public_key, 0, None)
    assert servers.servers == (ONION[0], ONION[1]) == servers.read_servers()
    assert servers.bundles == INVITE.bundles and servers.next_expiry() is None


def test_a_higher_epoch_by_the_owner_is_followed_and_old_servers_drain() -> None:
    servers = GroupServers.from_invite(INVITE)
    first = move(1, [1, 2, 3])
    outcome = servers.offer(first, NOW)
    assert outcome == FollowedMove(1, first.hash, (SIGNED[1], SIGNED[2], SIGNED[3]),
                                   (ONION[1], ONION[2], ONION[3]), (ONION[2], ONION[3]),
                                   {ONION[0]: NOW + AGES[0] * 1000})
    assert servers.servers == (ONION[1], ONION[2], ONION[3])  # posts go here only
    assert servers.read_servers() == (ONION[1], ONION[2], ONION[3], ONION[0])
    assert (servers.epoch, servers.move_hash) == (1, first.hash)
    assert servers.next_expiry() == NOW + AGES[0] * 1000

    second = move(5, [0, 4])  # back to server 0: it stops draining; 1..3 drain, 3 capped
    outcome = servers.offer(second, NOW + 10)
    assert isinstance(outcome, FollowedMove)
    assert outcome.added == (ONION[0], ONION[4])
    assert outcome.draining == {ONION[1]: NOW + 10 + AGES[1] * 1000,
                                ONION[2]: NOW + 10 + AGES[2] * 1000,
                                ONION[3]: NOW + 10 + MAX_DRAIN_MS}
    assert servers.draining == outcome.draining

    assert servers.expire(NOW + 10 + AGES[1] * 1000 - 1) == []
    assert servers.expire(NOW + 10 + AGES[1] * 1000) == [ONION[1]]
    assert servers.read_servers() == (ONION[0], ONION[4], ONION[2], ONION[3])
    assert servers.expire(NOW + 10 + MAX_DRAIN_MS) == [ONION[2], ONION[3]]
    assert servers.read_servers() == servers.servers and servers.next_expiry() is None


def test_lower_or_equal_epochs_are_ignored() -> None:
    servers = GroupServers.from_invite(INVITE)
    current = move(3, [2])
    assert isinstance(servers.offer(current, NOW), FollowedMove)
    for stale, why in [(move(2, [4]), "older"), (move(3, [4]), "another move with the current"),
                       (current, "already followed")]:
        outcome = servers.offer(stale, NOW)
        assert isinstance(outcome, MoveIgnored) and why in outcome.reason
    assert (servers.epoch, servers.servers) == (3, (ONION[2],))


def test_a_move_by_anyone_but_the_owner_is_ignored() -> None:
    servers = GroupServers.from_invite(INVITE)
    outcome = servers.offer(move(9, [5], author=MEMBER), NOW)
    assert outcome == MoveIgnored("the move is not signed by the group's owner")
    assert (servers.epoch, servers.servers) == (0, (ONION[0], ONION[1]))


def test_nobody_may_move_a_v1_group() -> None:
    v1 = Invite("club", KEY, (SIGNED[0], SIGNED[1], SIGNED[0]))  # v1 allowed a server twice
    servers = GroupServers.from_invite(v1)
    assert servers.owner is None and servers.servers == (ONION[0], ONION[1])
    outcome = servers.offer(move(1, [2]), NOW)
    assert isinstance(outcome, MoveIgnored) and "v1 invite" in outcome.reason
    with pytest.raises(ValueError, match="v1"):
        GroupServers(owner=None, bundles=v1.bundles, epoch=1)


def test_joined_at_an_epoch_learns_that_moves_hash_without_moving() -> None:
    invite = Invite("club", KEY, (SIGNED[2],), OWNER.public_key, epoch=4)
    servers = GroupServers.from_invite(invite)
    current = move(4, [2])
    outcome = servers.offer(current, NOW)
    assert isinstance(outcome, MoveIgnored) and "from the invite" in outcome.reason
    assert servers.move_hash == current.hash and servers.draining == {}
    assert isinstance(servers.offer(move(4, [3]), NOW), MoveIgnored)


def test_text_is_not_a_move() -> None:
    assert GroupServers.from_invite(INVITE).offer(text(OWNER, "hi"), NOW) == MoveIgnored("not a move")


def test_reposts_are_my_messages_the_move_does_not_descend_from() -> None:
    root = text(OWNER, "root")
    mine_before = text(MEMBER, "before", (root.hash,), ts=2)
    the_move = move(1, [2], parents=(mine_before.hash,), ts=3)
    mine_during = text(MEMBER, "during", (mine_before.hash,), ts=4)   # concurrent with the move
    theirs_during = text(OWNER, "owner's", (root.hash,), ts=4)
    mine_after = text(MEMBER, "after", (the_move.hash, mine_during.hash), ts=6)
    dag = GroupDag([root, mine_before, the_move, mine_during, theirs_during, mine_after])
    assert reposts_after_move(dag, the_move.hash, MEMBER.public_key) == [mine_during.hash,
                                                                         mine_after.hash]
    assert reposts_after_move(dag, the_move.hash, OWNER.public_key) == [theirs_during.hash]
    assert history_to_carry(dag, the_move.hash) == [root.hash, mine_before.hash]
    assert history_to_carry(dag, the_move.hash, limit=1) == [mine_before.hash]
