"""Recovering a group's gaps: a sans-IO state machine, one per group (GroupRecovery).

A *gap* is a parent some held message names that we do not hold (GroupDag.missing). The
machine is fed events — a message ingested (from server S at cursor C, from member M, or
local), a re-read finished, a member online or offline, HEADS / PARTs / NOT_SERVED from a
member, and time, always as an explicit `now_ms` — and returns the actions the adapter
carries out: Refetch, Pull, SendHeads, Ingest, FollowMove, StopReading. It does no I/O, reads no
clock and draws randomness only from the `random.Random` it is given.

Strategies (RecoveryPolicy.strategies, in order; any subset):

* REFETCH — re-read the server the gap was found on, after an earlier cursor: first after
  the newest checkpoint (a cursor we ingested, remembered every few minutes) taken at
  least `refetch_window_ms` before the gap was found, from the next round on from the
  start ("0": all the server keeps).
* SERVER — the same re-read on every other server the group reads (k-server replication:
  reads merge and deduplicate by hash, so a message on any server fills the gap).
* MEMBER — PULL it from an online member: first the authors of the messages that name it
  (they held it when they wrote), then others in random order, at most
  `members_per_round` per round.

Each gap waits `first_delay_ms` after it is found (the ordinary streams usually fill it),
then runs a *round*: the strategies in order, each until it fails (the re-read ended and
the message was not there; the member answered NOT_SERVED, something that is not the
message, or nothing within `pull_timeout_ms`), skipping those that do not apply. A round
that fails waits `backoff_ms[round − 1]` (the last repeating), ± `jitter`, before the next.
Between rounds, a member coming online is asked at once by every waiting gap that has not
asked it in its last round. Every action is bounded: one re-read in flight per server
(gaps' requests merge into it), one PULL in flight per member (≤ MAX_PULL hashes), HEADS to
a member at most every `heads_every_ms`; at most `max_gaps` gaps tracked (more are counted
and picked up as room frees), `max_leads` hashes learnt from HEADS.

How a gap was recovered is where its message came from: `refetch` (the server re-read for
it), `server` (a server, by its stream or a re-read for another server), `member` (a PULL).

HEADS: sent to a member when it comes online and to online members when we find a gap. A
head (or the MOVE hash of a higher epoch) we lack is a *lead*, not a gap (it may simply be
in transit): after `first_delay_ms` it is pulled once from the member that announced it,
then forgotten. Leads are capped per member, so a member cannot fill our tables with
hashes that do not exist.

Membership (who gets HEADS and PULLs, and whose PULL we answer): the authors of messages
we hold in the group, its owner (v2 groups), and `introduced` — the contact who invited us
and those we invited (the adapter passes them, and `add_introduced` later ones). A PULL is
answered only to a member, for this group, within `answer_budget` hashes per member per
`answer_window_ms`; the rest is NOT_SERVED. To anyone else we answer nothing, which tells a
prober nothing about our groups.

Implicit acknowledgements (`seen_by`): a member has seen my post when one of its messages
names the post as a parent (GroupDag.acknowledged_by). Naming a *descendant* is not counted:
that member held the descendant, not necessarily my post (it may have a gap right there).
It undercounts (a post stops being a head as soon as anyone names it), but never claims a
member saw what it may not have.

Moves (nyth.proto.group_control): a MOVE passed to on_message is offered to the group's
GroupServers; when followed, FollowMove tells the adapter the new servers, the old ones to
drain and which messages to re-post; StopReading ends a drain. With
RecoveryPolicy.follow_moves off, a MOVE is only recorded as ignored.

State is in memory only: after a restart the adapter builds a new GroupRecovery from the
DAG, which finds the gaps again (counted from then on).
"""

from __future__ import annotations

import enum
import random
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from nyth.errors import AuthenticationError, DecodeError
from nyth.proto.dag import GroupDag
from nyth.proto.group import GroupKind, GroupMessage, decode_wire
from nyth.proto.group_control import (
    FollowedMove,
    GroupServers,
    MoveIgnored,
    history_to_carry,
    reposts_after_move,
)
from nyth.proto.group_sync import (
    MAX_HEADS,
    MAX_PULL,
    GroupHeads,
    GroupNotServed,
    GroupPart,
    GroupPull,
    Reassembly,
)
from nyth.proto.identity import onion_from_public_key

START_CURSOR = "0"  # a server's cursor before its first blob
MAX_SEEN_BY_POSTS = 100


class Strategy(enum.StrEnum):
    REFETCH = "refetch"
    SERVER = "server"
    MEMBER = "member"


class Method(enum.StrEnum):
    """Where a gap's message came from."""

    REFETCH = "refetch"  # the server re-read for it
    SERVER = "server"  # a server of the group (its stream, or a re-read for another gap)
    MEMBER = "member"  # a member, by PULL
    LOCAL = "local"  # our own storage (the adapter loaded it late)


class GapState(enum.StrEnum):
    OPEN = "open"
    RECOVERED = "recovered"


# -- sources of messages (what on_message is told) -------------------------------------------

@dataclass(frozen=True)
class FromServer:
    server: str  # onion
    cursor: str  # the blob's cursor on that server


@dataclass(frozen=True)
class FromMember:
    member: str  # onion


@dataclass(frozen=True)
class Local:
    """Written here, or loaded from our own storage."""


Source = FromServer | FromMember | Local


# -- actions (what the adapter does) -----------------------------------------------------------

@dataclass(frozen=True)
class Refetch:
    """Read `server`'s blobs after `after_cursor` to the end, ingesting each (on_message with
    FromServer; the live stream's stored cursor stays where it is), then call
    on_refetch_done(server, token, now, error)."""

    server: str
    after_cursor: str
    token: int


@dataclass(frozen=True)
class Pull:
    """Send request (GROUP_PULL) to member; feed its PARTs / NOT_SERVED back."""

    member: str
    request: GroupPull


@dataclass(frozen=True)
class SendHeads:
    member: str
    heads: GroupHeads


@dataclass(frozen=True)
class Ingest:
    """A pulled message, complete and verified: store it (message.wire is its wire form),
    add it to the DAG, then call on_message(message, FromMember(member), now)."""

    message: GroupMessage
    member: str


@dataclass(frozen=True)
class FollowMove:
    """The group moved: pin move.bundles, read and post on move.servers, keep reading
    move.draining until their time; post `repost` (our own messages, by hash) and `carry`
    (history, when we are the mover) to the new servers, re-sealed with seal_wire."""

    move: FollowedMove
    repost: tuple[bytes, ...]
    carry: tuple[bytes, ...]


@dataclass(frozen=True)
class StopReading:
    """A draining server's time is up: stop reading it."""

    server: str


Action = Refetch | Pull | SendHeads | Ingest | FollowMove | StopReading


@dataclass(frozen=True)
class RecoveryPolicy:
    # The peer's default order (docs/recovery.md says why).
    strategies: tuple[Strategy, ...] = (Strategy.SERVER, Strategy.MEMBER, Strategy.REFETCH)
    first_delay_ms: int = 15_000
    backoff_ms: tuple[int, ...] = (60_000, 300_000, 1_800_000, 3_600_000)
    jitter: float = 0.2
    refetch_window_ms: int = 3_600_000
    checkpoint_every_ms: int = 300_000
    max_checkpoints: int = 48
    read_timeout_ms: int = 600_000
    pull_timeout_ms: int = 60_000
    members_per_round: int = 3
    heads_every_ms: int = 60_000
    max_gaps: int = 256
    max_leads: int = 64
    max_leads_per_member: int = MAX_HEADS + 1
    keep_recovered: int = 64
    # Off: MOVEs are kept in the DAG but not followed (shown in moves_ignored); the member
    # stays on its servers. A group switch ("move" among its recovery strategies).
    follow_moves: bool = True
    answer_budget: int = 2 * MAX_PULL
    answer_window_ms: int = 60_000

    def __post_init__(self) -> None:
        if len(set(self.strategies)) != len(self.strategies):
            raise ValueError("a strategy is listed twice")
        if not self.backoff_ms or min(self.backoff_ms) <= 0 or not 0 <= self.jitter < 1:
            raise ValueError("backoff needs positive delays and a jitter in [0, 1)")
        if min(self.max_gaps, self.max_leads, self.members_per_round, self.answer_budget,
               self.max_checkpoints, self.keep_recovered) < 1:
            raise ValueError("limits must be at least 1")


# -- what the UI sees ---------------------------------------------------------------------------

@dataclass(frozen=True)
class RecoveredBy:
    method: Method
    source: str  # the server's or the member's onion ("" for LOCAL)


@dataclass(frozen=True)
class GapView:
    hash: bytes
    state: GapState
    found_at_ms: int
    found_via: str  # "server <onion>", "member <onion>" or "history" (already missing at start)
    attempts: int
    reason: str | None  # why the last attempts failed
    doing: str | None  # the attempt under way, if any
    next_attempt_ms: int | None  # None while an attempt is under way, or once recovered
    recovered_at_ms: int | None = None
    recovered_by: RecoveredBy | None = None


@dataclass(frozen=True)
class RecoveryStatus:
    found: int  # gaps found since this machine started
    recovered: Mapping[str, int]  # by Method
    open: tuple[GapView, ...]  # oldest first
    recent: tuple[GapView, ...]  # recovered gaps, newest first (at most keep_recovered)
    untracked: int  # open gaps beyond max_gaps, not worked on yet
    epoch: int
    servers: tuple[str, ...]
    draining: Mapping[str, int]
    moves_ignored: tuple[tuple[bytes, str], ...]  # (move hash, why), newest last
    seen_by: Mapping[bytes, frozenset[str]]  # my newest posts -> members that named them


# -- internals ----------------------------------------------------------------------------------

@dataclass
class _Gap:
    hash: bytes
    found_at_ms: int
    found_via: str
    found_server: str | None
    found_member: str | None
    next_attempt_ms: int | None
    round: int = 1
    stage: int = 0
    attempts: int = 0
    reason: str | None = None
    round_reasons: list[str] = field(default_factory=list)
    waiting_servers: set[str] = field(default_factory=set)
    waiting_member: str | None = None
    tried: set[str] = field(default_factory=set)  # members asked this round
    recovered_at_ms: int | None = None
    recovered_by: RecoveredBy | None = None

    @property
    def busy(self) -> bool:
        return bool(self.waiting_servers) or self.waiting_member is not None


@dataclass
class _Read:
    server: str
    cursor: str
    since_ms: int  # what the cursor covers from (our clock); 0 for START_CURSOR
    gaps: set[bytes]
    token: int = 0
    deadline_ms: int = 0


@dataclass
class _PullReq:
    pending: dict[bytes, Reassembly]
    deadline_ms: int


@dataclass
class _Lead:
    member: str
    due_ms: int
    asked: bool = False


def _short(onion: str) -> str:
    return onion[:8] + "…"


class GroupRecovery:
    def __init__(self, gid: bytes, dag: GroupDag, servers: GroupServers, *, me: bytes,
                 now_ms: int, introduced: Iterable[str] = (),
                 policy: RecoveryPolicy | None = None, rng: random.Random | None = None) -> None:
        """dag: the group's DAG, which the adapter keeps (and adds to before on_message).
        servers: its servers and epoch (GroupServers.from_invite at join). me: my ed25519
        key. introduced: onions of the contact who invited us and those we invited."""
        self.gid = gid
        self.dag = dag
        self.servers = servers
        self.policy = policy or RecoveryPolicy()
        self._rng = rng or random.Random()
        self._me = me
        self.me_onion = onion_from_public_key(me)
        self._members: set[str] = set(introduced)
        if servers.owner is not None:
            self._members.add(onion_from_public_key(servers.owner))
        for message in dag.messages():
            self._members.add(onion_from_public_key(message.author))
        self._online: set[str] = set()
        self._gaps: dict[bytes, _Gap] = {}
        self._recent: deque[_Gap] = deque(maxlen=self.policy.keep_recovered)
        self._found = 0
        self._recovered: dict[str, int] = {}
        self._overflow = False  # some gaps were left untracked: look again when room frees
        self._checkpoints: dict[str, deque[tuple[int, str]]] = {}
        self._reads: dict[str, _Read] = {}
        self._planned: dict[str, _Read] = {}
        self._next_token = 1
        self._pulls: dict[str, _PullReq] = {}
        self._queue: dict[str, dict[bytes, None]] = {}
        self._leads: dict[bytes, _Lead] = {}
        self._heads_sent: dict[str, int] = {}
        self._buckets: dict[str, tuple[float, int]] = {}
        self._moves_ignored: deque[tuple[bytes, str]] = deque(maxlen=8)
        self.dropped = 0  # parts and answers nobody asked for
        self._out: list[Action] = []
        self._rescan(now_ms, "history")

    # -- membership ------------------------------------------------------------------------
    def is_member(self, onion: str) -> bool:
        return onion in self._members and onion != self.me_onion

    def add_introduced(self, onion: str) -> None:
        """A contact we invited (or who invited us) to this group."""
        self._members.add(onion)

    # -- events ----------------------------------------------------------------------------
    def on_message(self, message: GroupMessage, source: Source, now_ms: int) -> list[Action]:
        """A message of this group, already added to the DAG (also a repeat, or our own
        post: Local). Finds gaps, recovers them, follows moves."""
        self._members.add(onion_from_public_key(message.author))
        if isinstance(source, FromServer):
            self._checkpoint(source.server, source.cursor, now_ms)
        gap = self._gaps.get(message.hash)
        if gap is not None:
            self._recover(gap, self._how(gap, source), now_ms)
        lead = self._leads.get(message.hash)
        if lead is not None and not lead.asked:
            del self._leads[message.hash]
        found = False
        for parent in message.parents:
            if parent not in self.dag and parent not in self._gaps:
                found |= self._track(parent, source, now_ms)
        if found:
            for member in sorted(self._online):
                self._send_heads(member, now_ms)
        if message.kind == GroupKind.MOVE:
            self._offer_move(message, source, now_ms)
        return self._flush(now_ms)

    def on_refetch_done(self, server: str, token: int, now_ms: int,
                        error: str | None = None) -> list[Action]:
        """The re-read asked for by Refetch(server, …, token) reached the end (or failed)."""
        read = self._reads.get(server)
        if read is not None and read.token == token:
            del self._reads[server]
            self._finish_read(read, now_ms, error)
        return self._flush(now_ms)

    def on_member_online(self, member: str, now_ms: int) -> list[Action]:
        """A P2P session with member (any contact; non-members are ignored) is up."""
        self._online.add(member)
        if self.is_member(member):
            self._send_heads(member, now_ms)
            if Strategy.MEMBER in self.policy.strategies:
                for gap in self._open_gaps():
                    # Between rounds (not in the first delay, which is for the streams).
                    if gap.round > 1 and not gap.busy and member not in gap.tried \
                            and gap.next_attempt_ms is not None and gap.next_attempt_ms > now_ms:
                        self._ask(gap, member, extra=True)
        return self._flush(now_ms)

    def on_member_offline(self, member: str, now_ms: int) -> list[Action]:
        self._online.discard(member)
        self._fail_member(member, f"member {_short(member)} went offline", now_ms)
        return self._flush(now_ms)

    def on_heads(self, member: str, heads: GroupHeads, now_ms: int) -> list[Action]:
        """GROUP_HEADS from member: what it has that we lack becomes a lead."""
        if heads.gid != self.gid or not self.is_member(member):
            self.dropped += 1
            return []
        if heads.epoch < self.servers.epoch:
            self._send_heads(member, now_ms)  # it lags behind a move: tell it ours
        # What a member holds and we lack is pulled from it only with the member strategy
        # on; a move it names, whenever moves are followed (how an offline member learns
        # of one when the old servers are gone).
        wanted = list(heads.heads) if Strategy.MEMBER in self.policy.strategies else []
        if (heads.epoch > self.servers.epoch and heads.move_hash is not None
                and self.policy.follow_moves):
            wanted.insert(0, heads.move_hash)
        mine = sum(1 for lead in self._leads.values() if lead.member == member)
        for h in wanted:
            if h in self.dag or h in self._gaps or h in self._leads:
                continue
            if mine >= self.policy.max_leads_per_member or len(self._leads) >= self.policy.max_leads:
                break
            self._leads[h] = _Lead(member, now_ms + self.policy.first_delay_ms)
            mine += 1
        return self._flush(now_ms)

    def on_part(self, member: str, part: GroupPart, now_ms: int) -> list[Action]:
        """GROUP_PART from member. Anything not asked of it is dropped."""
        request = self._pulls.get(member)
        if part.gid != self.gid or request is None or part.message_hash not in request.pending:
            self.dropped += 1
            return []
        h = part.message_hash
        try:
            wire = request.pending[h].add(part)
        except DecodeError as exc:
            self._pull_failed(member, h, f"member {_short(member)} sent broken parts: {exc}", now_ms)
            return self._flush(now_ms)
        if wire is None:
            return []
        try:
            message = decode_wire(self.gid, wire)
        except (DecodeError, AuthenticationError) as exc:
            self._pull_failed(member, h, f"member {_short(member)} sent a message that does not "
                                         f"verify: {exc}", now_ms)
            return self._flush(now_ms)
        if message.hash != h:
            self._pull_failed(member, h, f"member {_short(member)} sent another message than the "
                                         "one asked for", now_ms)
            return self._flush(now_ms)
        self._pull_done(member, h, now_ms)
        self._out.append(Ingest(message, member))
        return self._flush(now_ms)

    def on_not_served(self, member: str, answer: GroupNotServed, now_ms: int) -> list[Action]:
        request = self._pulls.get(member)
        if answer.gid != self.gid or request is None:
            self.dropped += 1
            return []
        for h in answer.hashes:
            if h in request.pending:
                self._pull_failed(member, h, f"member {_short(member)} does not have it", now_ms)
        return self._flush(now_ms)

    def on_pull_failed(self, member: str, now_ms: int, reason: str) -> list[Action]:
        """The adapter could not send a Pull to member (or the session died)."""
        self._fail_member(member, f"asking member {_short(member)} failed: {reason}", now_ms)
        return self._flush(now_ms)

    def tick(self, now_ms: int) -> list[Action]:
        """Time passes: due attempts, time-outs, drains that end."""
        for server in self.servers.expire(now_ms):
            self._out.append(StopReading(server))
            self._checkpoints.pop(server, None)
            for reads in (self._reads, self._planned):
                read = reads.pop(server, None)
                if read is not None:
                    self._finish_read(read, now_ms, "the group no longer reads this server")
        for read in [r for r in self._reads.values() if r.deadline_ms <= now_ms]:
            del self._reads[read.server]
            self._finish_read(read, now_ms, f"no end of the re-read within "
                                            f"{self.policy.read_timeout_ms // 1000} s")
        for member, request in list(self._pulls.items()):
            if request.deadline_ms <= now_ms:
                for h in list(request.pending):
                    self._pull_failed(member, h, f"member {_short(member)} did not answer within "
                                                 f"{self.policy.pull_timeout_ms // 1000} s", now_ms)
        if self._overflow and len(self._gaps) < self.policy.max_gaps:
            self._rescan(now_ms, "history")
        for h, lead in list(self._leads.items()):
            if lead.asked or lead.due_ms > now_ms:
                continue
            if h in self.dag or h in self._gaps or not self._can_ask(lead.member):
                del self._leads[h]
            else:
                lead.asked = True
                self._queue.setdefault(lead.member, {})[h] = None
        for gap in self._open_gaps():
            if gap.hash in self.dag:  # added to the DAG without on_message (loaded from storage)
                self._recover(gap, RecoveredBy(Method.LOCAL, ""), now_ms)
            elif not gap.busy and gap.next_attempt_ms is not None and gap.next_attempt_ms <= now_ms:
                gap.round_reasons.clear()
                gap.tried.clear()
                self._run(gap, now_ms)
        return self._flush(now_ms)

    def next_wakeup(self) -> int | None:
        """When tick should next be called (ms), if anything is scheduled."""
        times = [g.next_attempt_ms for g in self._gaps.values()
                 if not g.busy and g.next_attempt_ms is not None]
        times += [lead.due_ms for lead in self._leads.values() if not lead.asked]
        times += [r.deadline_ms for r in self._reads.values()]
        times += [p.deadline_ms for p in self._pulls.values()]
        drain = self.servers.next_expiry()
        if drain is not None:
            times.append(drain)
        return min(times, default=None)

    # -- answering PULLs -------------------------------------------------------------------
    def answer_pull(self, member: str, request: GroupPull, now_ms: int) -> PullAnswer:
        """May member have these? `serve`: look them up and send group_sync.answer(gid,
        [(hash, wire or None), …] + [(hash, None) for not_served]); `refused`: send nothing."""
        if request.gid != self.gid:
            return PullAnswer((), (), "not this group")
        if not self.is_member(member):
            return PullAnswer((), (), "not a member of the group")
        tokens, last = self._buckets.get(member, (float(self.policy.answer_budget), now_ms))
        rate = self.policy.answer_budget / self.policy.answer_window_ms
        tokens = min(float(self.policy.answer_budget), tokens + max(0, now_ms - last) * rate)
        n = min(len(request.hashes), int(tokens))
        self._buckets[member] = (tokens - n, now_ms)
        return PullAnswer(request.hashes[:n], request.hashes[n:], None)

    # -- status ----------------------------------------------------------------------------
    def recovered_by(self, message_hash: bytes) -> RecoveredBy | None:
        """How this message filled a gap, if it did lately (among the keep_recovered newest)."""
        for gap in reversed(self._recent):
            if gap.hash == message_hash:
                return gap.recovered_by
        return None

    def seen_by(self, post_hash: bytes) -> frozenset[str]:
        """Members whose messages name this post as a parent (implicit acks)."""
        return frozenset(o for o in map(onion_from_public_key, self.dag.acknowledged_by(post_hash))
                         if o != self.me_onion)

    def status(self) -> RecoveryStatus:
        mine = sorted((m for m in self.dag.messages() if m.author == self._me),
                      key=lambda m: (m.timestamp_ms, m.hash))[-MAX_SEEN_BY_POSTS:]
        return RecoveryStatus(
            found=self._found, recovered=dict(self._recovered),
            open=tuple(self._view(g) for g in sorted(self._open_gaps(),
                                                     key=lambda g: (g.found_at_ms, g.hash))),
            recent=tuple(self._view(g) for g in reversed(self._recent)),
            untracked=len(self.dag.missing() - set(self._gaps)), epoch=self.servers.epoch,
            servers=self.servers.servers,
            draining=dict(self.servers.draining), moves_ignored=tuple(self._moves_ignored),
            seen_by={m.hash: self.seen_by(m.hash) for m in mine})

    def _view(self, gap: _Gap) -> GapView:
        doing = None
        if gap.waiting_servers:
            doing = "re-reading " + ", ".join(_short(s) for s in sorted(gap.waiting_servers))
        elif gap.waiting_member is not None:
            doing = f"asking member {_short(gap.waiting_member)}"
        state = GapState.OPEN if gap.recovered_by is None else GapState.RECOVERED
        return GapView(gap.hash, state, gap.found_at_ms, gap.found_via, gap.attempts,
                       gap.reason, doing,
                       None if gap.busy or state is GapState.RECOVERED else gap.next_attempt_ms,
                       gap.recovered_at_ms, gap.recovered_by)

    # -- gaps ------------------------------------------------------------------------------
    def _open_gaps(self) -> list[_Gap]:
        return list(self._gaps.values())

    def _track(self, h: bytes, source: Source | str, now_ms: int) -> bool:
        if len(self._gaps) >= self.policy.max_gaps:
            self._overflow = True
            return False
        if isinstance(source, FromServer):
            via, server, member = f"server {source.server}", source.server, None
        elif isinstance(source, FromMember):
            via, server, member = f"member {source.member}", None, source.member
        else:
            via, server, member = (source if isinstance(source, str) else "local"), None, None
        self._gaps[h] = _Gap(h, now_ms, via, server, member, now_ms + self.policy.first_delay_ms)
        self._found += 1
        lead = self._leads.get(h)
        if lead is not None and not lead.asked:
            del self._leads[h]
        return True

    def _rescan(self, now_ms: int, via: str) -> None:
        missing = sorted(h for h in self.dag.missing() if h not in self._gaps)
        room = max(0, self.policy.max_gaps - len(self._gaps))
        for h in missing[:room]:
            self._track(h, via, now_ms)
        self._overflow = len(missing) > room

    def _how(self, gap: _Gap, source: Source) -> RecoveredBy:
        if isinstance(source, FromServer):
            refetching = (gap.stage < len(self.policy.strategies)
                          and self.policy.strategies[gap.stage] is Strategy.REFETCH
                          and source.server in gap.waiting_servers)
            return RecoveredBy(Method.REFETCH if refetching else Method.SERVER, source.server)
        if isinstance(source, FromMember):
            return RecoveredBy(Method.MEMBER, source.member)
        return RecoveredBy(Method.LOCAL, "")

    def _recover(self, gap: _Gap, how: RecoveredBy, now_ms: int) -> None:
        del self._gaps[gap.hash]
        for reads in (self._reads, self._planned):
            for read in reads.values():
                read.gaps.discard(gap.hash)
        if gap.waiting_member is not None:
            self._queue.get(gap.waiting_member, {}).pop(gap.hash, None)
        gap.waiting_servers.clear()
        gap.waiting_member = None
        gap.recovered_at_ms, gap.recovered_by = now_ms, how
        self._recovered[how.method] = self._recovered.get(how.method, 0) + 1
        self._recent.append(gap)

    def _run(self, gap: _Gap, now_ms: int) -> None:
        """Launch the current strategy, or the next that applies; end the round if none."""
        strategies = self.policy.strategies
        while gap.stage < len(strategies):
            if self._launch(gap, strategies[gap.stage], now_ms):
                gap.next_attempt_ms = None
                return
            gap.stage += 1
        self._end_round(gap, now_ms)

    def _end_round(self, gap: _Gap, now_ms: int) -> None:
        if not self.policy.strategies:
            gap.round_reasons.append("recovery is off for this group")
        gap.reason = "; ".join(gap.round_reasons) or None
        backoff = self.policy.backoff_ms
        base = backoff[min(gap.round, len(backoff)) - 1]
        spread = self._rng.uniform(-self.policy.jitter, self.policy.jitter)
        gap.round += 1
        gap.stage = 0
        gap.next_attempt_ms = now_ms + max(1, int(base * (1 + spread)))

    def _launch(self, gap: _Gap, strategy: Strategy, now_ms: int) -> bool:
        readable = set(self.servers.read_servers())
        if strategy is Strategy.REFETCH:
            if gap.found_server is None or gap.found_server not in readable:
                gap.round_reasons.append("no server to re-read (not found on one the group reads)")
                return False
            targets = {gap.found_server}
        elif strategy is Strategy.SERVER:
            targets = readable - {gap.found_server} if gap.found_server else readable
            if not targets:
                gap.round_reasons.append("no other server")
                return False
        else:
            if len(gap.tried) >= self.policy.members_per_round:
                gap.round_reasons.append(f"asked {len(gap.tried)} members this round")
                return False
            candidates = self._candidates(gap)
            if not candidates:
                gap.round_reasons.append("no other member online" if gap.tried
                                         else "no member online")
                return False
            gap.attempts += 1
            self._ask(gap, candidates[0])
            return True
        gap.attempts += 1
        for server in sorted(targets):
            self._plan_read(server, gap, now_ms)
        return True

    def _candidates(self, gap: _Gap) -> list[str]:
        usable = {m for m in self._online if self.is_member(m)} - gap.tried
        first = [o for o in sorted({onion_from_public_key(m.author)
                                    for m in self.dag.named_by(gap.hash)}) if o in usable]
        if gap.found_member in usable and gap.found_member not in first:
            first.append(gap.found_member)
        rest = sorted(usable - set(first))
        self._rng.shuffle(rest)
        return first + rest

    def _ask(self, gap: _Gap, member: str, extra: bool = False) -> None:
        if extra:
            gap.attempts += 1
        gap.tried.add(member)
        gap.waiting_member = member
        self._queue.setdefault(member, {})[gap.hash] = None

    # -- re-reads --------------------------------------------------------------------------
    def _checkpoint(self, server: str, cursor: str, now_ms: int) -> None:
        if server not in self.servers.read_servers():
            return
        points = self._checkpoints.setdefault(server, deque(maxlen=self.policy.max_checkpoints))
        if not points or points[-1][0] + self.policy.checkpoint_every_ms <= now_ms:
            points.append((now_ms, cursor))

    def _cursor_for(self, server: str, gap: _Gap) -> tuple[str, int]:
        if gap.round == 1:
            limit = gap.found_at_ms - self.policy.refetch_window_ms
            earlier = [p for p in self._checkpoints.get(server, ()) if p[0] <= limit]
            if earlier:
                return earlier[-1][1], earlier[-1][0]
        return START_CURSOR, 0

    def _plan_read(self, server: str, gap: _Gap, now_ms: int) -> None:
        cursor, since = self._cursor_for(server, gap)
        planned = self._planned.get(server)
        if planned is None:
            self._planned[server] = _Read(server, cursor, since, {gap.hash})
        else:
            if since < planned.since_ms:
                planned.cursor, planned.since_ms = cursor, since
            planned.gaps.add(gap.hash)
        gap.waiting_servers.add(server)

    def _finish_read(self, read: _Read, now_ms: int, error: str | None) -> None:
        for h in sorted(read.gaps):
            gap = self._gaps.get(h)
            if gap is None or read.server not in gap.waiting_servers:
                continue
            gap.waiting_servers.discard(read.server)
            where = "from the start" if read.cursor == START_CURSOR else f"after {read.cursor}"
            why = (f"re-reading {_short(read.server)} failed: {error}" if error
                   else f"not on {_short(read.server)} (re-read {where})")
            gap.round_reasons.append(why)
            gap.reason = "; ".join(gap.round_reasons)
            if not gap.waiting_servers:
                gap.stage += 1  # every server of this strategy has been read: the next one
                self._run(gap, now_ms)

    # -- pulls -----------------------------------------------------------------------------
    def _can_ask(self, member: str) -> bool:
        return member in self._online and self.is_member(member)

    def _pull_done(self, member: str, h: bytes, now_ms: int) -> None:
        request = self._pulls[member]
        del request.pending[h]
        if not request.pending:
            del self._pulls[member]
        self._leads.pop(h, None)
        gap = self._gaps.get(h)
        if gap is not None and gap.waiting_member == member:
            # Recovered when the adapter ingests it (on_message); if it never does, the
            # gap's next round comes after first_delay_ms.
            gap.waiting_member = None
            if gap.next_attempt_ms is None:
                gap.next_attempt_ms = now_ms + self.policy.first_delay_ms

    def _pull_failed(self, member: str, h: bytes, reason: str, now_ms: int) -> None:
        request = self._pulls.get(member)
        if request is not None:
            request.pending.pop(h, None)
            if not request.pending:
                del self._pulls[member]
        self._queue.get(member, {}).pop(h, None)
        lead = self._leads.get(h)
        if lead is not None and lead.member == member:
            del self._leads[h]
        gap = self._gaps.get(h)
        if gap is not None and gap.waiting_member == member:
            gap.waiting_member = None
            gap.round_reasons.append(reason)
            gap.reason = "; ".join(gap.round_reasons)
            if gap.next_attempt_ms is None:  # in a round (not an extra ask between rounds):
                self._run(gap, now_ms)  # the next member, else the next strategy

    def _fail_member(self, member: str, reason: str, now_ms: int) -> None:
        hashes = list(self._pulls.get(member, _PullReq({}, 0)).pending)
        hashes += list(self._queue.get(member, {}))
        for h in hashes:
            self._pull_failed(member, h, reason, now_ms)
        self._queue.pop(member, None)

    def _send_heads(self, member: str, now_ms: int) -> None:
        if not self._can_ask(member):
            return
        last = self._heads_sent.get(member)
        if last is not None and last + self.policy.heads_every_ms > now_ms:
            return
        self._heads_sent[member] = now_ms
        self._out.append(SendHeads(member, GroupHeads(self.gid, self.servers.epoch,
                                                      self.servers.move_hash,
                                                      tuple(self.dag.heads()))))

    # -- moves -----------------------------------------------------------------------------
    def _offer_move(self, message: GroupMessage, source: Source, now_ms: int) -> None:
        if not self.policy.follow_moves:
            self._moves_ignored.append((message.hash, "following moves is off for this group"))
            return
        outcome = self.servers.offer(message, now_ms)
        if isinstance(outcome, MoveIgnored):
            self._moves_ignored.append((message.hash, outcome.reason))
            return
        carry = history_to_carry(self.dag, message.hash) if message.author == self._me else []
        self._out.append(FollowMove(outcome, tuple(reposts_after_move(self.dag, message.hash,
                                                                      self._me)), tuple(carry)))

    # -- output ----------------------------------------------------------------------------
    def _flush(self, now_ms: int) -> list[Action]:
        for member in [m for m, q in self._queue.items() if q and not self._can_ask(m)]:
            # Only online members are queued; this catches one that left meanwhile. The
            # gaps move on to online members or re-reads, planned before they go out below.
            self._fail_member(member, f"member {_short(member)} is not online", now_ms)
        for server, read in list(self._planned.items()):
            if server in self._reads:
                continue
            del self._planned[server]
            if not read.gaps:
                continue
            read.token, read.deadline_ms = self._next_token, now_ms + self.policy.read_timeout_ms
            self._next_token += 1
            self._reads[server] = read
            self._out.append(Refetch(server, read.cursor, read.token))
        for member, queue in list(self._queue.items()):
            if member in self._pulls or not queue or not self._can_ask(member):
                continue
            hashes = list(queue)[:MAX_PULL]
            for h in hashes:
                del queue[h]
            self._pulls[member] = _PullReq({h: Reassembly() for h in hashes},
                                           now_ms + self.policy.pull_timeout_ms)
            self._out.append(Pull(member, GroupPull(self.gid, tuple(hashes))))
        out, self._out = self._out, []
        return out


@dataclass(frozen=True)
class PullAnswer:
    serve: tuple[bytes, ...]  # look these up; send each found one's parts, the rest NOT_SERVED
    not_served: tuple[bytes, ...]  # over the member's budget: NOT_SERVED
    refused: str | None  # not answered at all (send nothing); None when answered
