"""Moving a group to other servers: who may, which move wins, what following means (sans-IO).

A v2 group has an owner, its creator, whose key is bound into the group id
(nyth.proto.group). The owner moves the group by sealing a MOVE (`seal_group_move`: an
epoch and the new servers' signed bundles) and posting it to the old *and* the new
servers. Every member follows the valid MOVE with the highest epoch:

* valid: it opened under the group id (so its author signed it) and its author is the
  owner. A v1 group's owner is unknown, so nobody may move it: every MOVE is ignored.
* epoch: strictly above the current one (the invite's at join, then the last followed).
  Equal or lower is ignored, so a replayed old move cannot pull members back. An owner
  signing two different moves with the same epoch splits members by which they saw
  first; only the owner can do that (it can split the group in other ways anyway).

Following a move (`GroupServers.offer` returns a FollowedMove):

* from now on, posts go to the new servers only;
* old servers that are not new servers are still *read* ("draining") until
  now + min(their bundle's max_age_seconds, MAX_DRAIN_MS), then dropped (`expire`):
  messages posted there by members that had not yet learnt of the move, which the
  server keeps at most that long, are still fetched;
* the member re-posts to the new servers its own messages that are not ancestors of the
  MOVE (`reposts_after_move`): what it posted to the old servers while the move was
  under way. A member that was offline learns of the move from an old server (the MOVE is
  there), another server of the group, or a member P2P (HEADS carries the epoch and the
  MOVE's hash, nyth.proto.group_sync), then re-posts its own in turn.

So nothing posted during the move is lost: members read it from the old servers while they
drain, and it reaches the new servers as soon as its author follows. The mover also
re-posts the recent history (`history_to_carry`) so that members joining after the move
find it on the new servers; what is older than that stays reachable by peer pull
(nyth.proto.recovery) while some member holds it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from nyth.proto.bundle import ServerBundle
from nyth.proto.dag import GroupDag
from nyth.proto.group import GroupKind, GroupMessage, Invite, verify_server_set

MAX_DRAIN_MS = 30 * 24 * 3600 * 1000
# Messages the mover re-posts to the new servers: one page of a server's backlog.
CARRY_LIMIT = 500


@dataclass(frozen=True)
class FollowedMove:
    epoch: int
    move_hash: bytes
    bundles: tuple[bytes, ...]  # the new servers' signed bundles: pin them, read and post there
    servers: tuple[str, ...]  # their onions, in the MOVE's order
    added: tuple[str, ...]  # new servers that were not servers of the group: start reading
    draining: Mapping[str, int]  # old servers no longer in the group: read them until (ms)


@dataclass(frozen=True)
class MoveIgnored:
    reason: str


class GroupServers:
    """One group's servers and epoch; follows moves. Posts go to `servers`; reads go to
    `read_servers()` (servers and draining ones)."""

    def __init__(self, *, owner: bytes | None, bundles: Sequence[bytes], epoch: int = 0,
                 move_hash: bytes | None = None, draining: Mapping[str, int] | None = None) -> None:
        if owner is None and epoch != 0:
            raise ValueError("a group without an owner (v1) has no epoch")
        self.owner = owner
        self.epoch = epoch
        self.move_hash = move_hash  # the MOVE that set `epoch`; None at 0 or when unknown
        self._set(tuple(bundles))
        self.draining: dict[str, int] = {o: t for o, t in (draining or {}).items()
                                         if o not in self.servers}

    @classmethod
    def from_invite(cls, invite: Invite) -> GroupServers:
        return cls(owner=invite.owner, bundles=invite.bundles, epoch=invite.epoch)

    def _set(self, bundles: tuple[bytes, ...]) -> None:
        if self.owner is None:  # v1 invites could name a server twice: count it once
            seen: set[str] = set()
            kept = []
            for raw in bundles:
                onion = ServerBundle.verify(raw).onion
                if onion not in seen:
                    seen.add(onion)
                    kept.append(raw)
            bundles = tuple(kept)
        verified = verify_server_set(bundles, "a group")
        self.bundles = bundles
        self._max_age_ms = {b.onion: b.max_age_seconds * 1000 for b in verified}
        self.servers = tuple(b.onion for b in verified)

    def read_servers(self) -> tuple[str, ...]:
        return self.servers + tuple(sorted(self.draining))

    def offer(self, message: GroupMessage, now_ms: int) -> FollowedMove | MoveIgnored:
        """A message that opened under the group id: follow it if it is a valid move."""
        move = message.move
        if message.kind != GroupKind.MOVE or move is None:
            return MoveIgnored("not a move")
        if self.owner is None:
            return MoveIgnored("this group was created before moves (v1 invite): it has no "
                               "owner, so nobody may move it")
        if message.author != self.owner:
            return MoveIgnored("the move is not signed by the group's owner")
        if move.epoch < self.epoch:
            return MoveIgnored(f"the move's epoch {move.epoch} is older than the current {self.epoch}")
        if move.epoch == self.epoch:
            if self.move_hash is None:
                self.move_hash = message.hash  # joined at this epoch by invite: now we know it
                return MoveIgnored(f"already on the servers of epoch {move.epoch} (from the invite)")
            if self.move_hash == message.hash:
                return MoveIgnored(f"already followed (epoch {move.epoch})")
            return MoveIgnored(f"another move with the current epoch {move.epoch}: ignored")
        old, old_age = set(self.servers), dict(self._max_age_ms)
        self._set(move.bundles)
        self.epoch, self.move_hash = move.epoch, message.hash
        for onion in self.servers:
            self.draining.pop(onion, None)
        for onion in old - set(self.servers):
            self.draining[onion] = now_ms + min(old_age[onion], MAX_DRAIN_MS)
        return FollowedMove(move.epoch, message.hash, self.bundles, self.servers,
                            tuple(o for o in self.servers if o not in old),
                            {o: self.draining[o] for o in old - set(self.servers)})

    def expire(self, now_ms: int) -> list[str]:
        """Draining servers whose time is up, now forgotten: stop reading them."""
        done = sorted(o for o, until in self.draining.items() if until <= now_ms)
        for onion in done:
            del self.draining[onion]
        return done

    def next_expiry(self) -> int | None:
        return min(self.draining.values(), default=None)


def reposts_after_move(dag: GroupDag, move_hash: bytes, me: bytes) -> list[bytes]:
    """My messages that are not ancestors of the move (nor the move): posted to the old
    servers while the move was under way; re-post them to the new servers. Oldest first."""
    before = dag.ancestors(move_hash)
    mine = [m for m in dag.messages()
            if m.author == me and m.hash != move_hash and m.hash not in before]
    return [m.hash for m in sorted(mine, key=lambda m: (m.timestamp_ms, m.hash))]


def history_to_carry(dag: GroupDag, move_hash: bytes, limit: int = CARRY_LIMIT) -> list[bytes]:
    """For the mover: the newest `limit` ancestors of its move, in history order, to
    re-post (re-sealed, `seal_wire`) to the new servers with the move."""
    before = dag.ancestors(move_hash)
    return [p.message.hash for p in dag.placed() if p.message.hash in before][-limit:]
