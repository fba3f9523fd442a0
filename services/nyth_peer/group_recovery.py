"""The asyncio adapter that drives gap recovery: one nyth.proto.recovery.GroupRecovery per
group, fed with what the peer sees and carrying out what it asks.

Fed: every message a server or a member hands us (on_message), P2P sessions coming up and
going down (on_session), the group sync messages members send us (on_p2p: GROUP_HEADS,
GROUP_PULL, GROUP_PART, GROUP_NOT_SERVED), and time (a timer on next_wakeup()).

Carried out: Refetch — a bounded re-read of that server from the cursor given, apart from
its main read (server_sync); Pull, SendHeads and PULL answers — P2P messages to the
member's onion on its session, fire-and-forget (not in the messenger's outbox, never
acked, at most MAX_QUEUED waiting per member); Ingest — stored like a server's message,
marked as pulled from that member; FollowMove / StopReading — group_moves.

Members need not be contacts: to pull a gap from the members who named it, we dial them
(at most MAX_DIALS at once, each again only after a growing pause); they meet us as a
stranger, within their strangers' session budget. A member that comes online, or every
heads_every seconds while it stays online, gets our HEADS, so a post of ours that a
server dropped and nobody named yet is still found. PULLs are answered only to members of
that group and within their budget (GroupRecovery.answer_pull); anyone else, and anything
malformed, gets no answer at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal, get_args

from nyth.errors import AuthenticationError, DecodeError
from nyth.proto.group import GroupKind, GroupMessage, decode_wire
from nyth.proto.group_control import GroupServers
from nyth.proto.group_sync import (
    SYNC_KINDS,
    GroupHeads,
    GroupNotServed,
    GroupPart,
    GroupPull,
    answer,
    decode_sync,
)
from nyth.proto.identity import onion_from_public_key
from nyth.proto.p2p import Envelope, MessageKind, new_msg_id
from nyth.proto.recovery import (
    Action,
    FollowMove,
    FromMember,
    FromServer,
    GroupRecovery,
    Ingest,
    Local,
    Method,
    Pull,
    RecoveredBy,
    RecoveryPolicy,
    RecoveryStatus,
    Refetch,
    SendHeads,
    Source,
    StopReading,
    Strategy,
)
from nyth.tor.socks import OnionConnectError

from nyth_peer.group_views import recovered_view

if TYPE_CHECKING:
    from nyth_peer.groups import GroupService
    from nyth_peer.p2p import P2PNode

log = logging.getLogger(__name__)

# A group's recovery strategies (the API's names): the three of nyth.proto.recovery, and
# "move": follow the owner's moves. A list's order is the order strategies are tried in.
StrategyName = Literal["refetch", "server", "member", "move"]
STRATEGIES: tuple[str, ...] = get_args(StrategyName)
MOVE = "move"
assert STRATEGIES == (*(str(s) for s in Strategy), MOVE)
# All on by default, in the order the recovery experiment (docs/recovery.md) supports:
# another server and members fill dropped posts; a re-read of the same server never did
# and costs a download of everything after the cursor, so it comes last (it still helps
# when a stream, not the server, lost a message).
DEFAULT_STRATEGIES: tuple[StrategyName, ...] = ("server", "member", "refetch", "move")
# P2P messages waiting per member: a PULL's whole answer (≤ 64 parts) twice over.
MAX_QUEUED = 160
SEND_TIMEOUT = 60.0
# Dialing members to ask them for a gap.
MAX_DIALS = 2
DIAL_PAUSE = 30.0
DIAL_PAUSE_CAP = 900.0
MAX_DIAL_MEMORY = 256
MAX_DIAL_GAPS = 16  # open gaps whose members we look at per wake-up
# Gaps announced per group (events); a DAG with more missing parents announces no more.
MAX_ANNOUNCED_GAPS = 4096


def _now_ms() -> int:
    return int(time.time() * 1000)


def policy_for(base: RecoveryPolicy, strategies: Iterable[str]) -> RecoveryPolicy:
    names = list(strategies)
    return dataclasses.replace(base, strategies=tuple(Strategy(s) for s in names if s != MOVE),
                               follow_moves=MOVE in names)


@dataclasses.dataclass
class Cost:
    """A group's traffic since the peer started (in memory, like the gap counts)."""

    blobs_read: int = 0
    reread_blobs: int = 0
    p2p_messages: int = 0
    p2p_bytes: int = 0


class RecoveryDriver:
    def __init__(self, groups: GroupService, policy: RecoveryPolicy,
                 heads_every: float | None = None) -> None:
        self.groups = groups
        self.policy = policy  # timings and limits; strategies are per group
        self.heads_every = heads_every or policy.heads_every_ms / 1000
        self.node: P2PNode | None = None  # set by the engine; without it nothing goes out
        self.machines: dict[str, GroupRecovery] = {}
        self._announced: dict[str, set[bytes]] = {}
        self._online: set[str] = set()
        self._queues: dict[str, deque[tuple[MessageKind, bytes, Callable[[str], None] | None]]] = {}
        self._senders: dict[str, asyncio.Task[None]] = {}
        self._dial_after: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._dialing: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._timer: asyncio.Task[None] | None = None
        self._next_announce = 0.0
        self.dropped = 0  # sync messages that were malformed or not for a group of ours
        self._costs: dict[str, Cost] = {}

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._timer = asyncio.ensure_future(self._timer_loop())

    async def stop(self) -> None:
        tasks = [*self._senders.values(), *self._dialing.values(),
                 *([self._timer] if self._timer else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def add_group(self, row: dict[str, Any], servers: GroupServers) -> None:
        gid = row["id"]
        dag = self.groups.dag(gid)
        self.machines[gid] = GroupRecovery(
            bytes.fromhex(gid), dag, servers,
            me=self.groups.profile.identity.public_key, now_ms=_now_ms(),
            introduced=row.get("introduced") or (), policy=policy_for(self.policy, self.strategies(row)))
        # Gaps already in the history are not news: events only for those found from now on.
        self._announced[gid] = set(sorted(dag.missing())[:MAX_ANNOUNCED_GAPS])
        for member in sorted(self._online):
            self._run(gid, self.machines[gid].on_member_online(member, _now_ms()))
        self._wake.set()

    def add_introduced(self, gid: str, onion: str) -> None:
        machine = self.machines.get(gid)
        if machine is not None:
            machine.add_introduced(onion)
            if onion in self._online:
                self._run(gid, machine.on_member_online(onion, _now_ms()))

    # -- strategies and status -------------------------------------------------------------
    @staticmethod
    def strategies(row: dict[str, Any]) -> list[str]:
        chosen = row.get("recovery")
        return list(DEFAULT_STRATEGIES) if chosen is None else list(chosen)

    def set_strategies(self, gid: str, strategies: list[str]) -> None:
        machine = self.machines.get(gid)
        if machine is None:
            return
        following = machine.policy.follow_moves
        # Replaced in place, so gaps under way keep their history; a gap in a strategy that
        # is gone moves on to the next at its next step.
        machine.policy = policy_for(self.policy, strategies)
        if machine.policy.follow_moves and not following:
            self._offer_held_moves(gid, machine)
        self._wake.set()

    def _offer_held_moves(self, gid: str, machine: GroupRecovery) -> None:
        """Moves ignored while following was off: offered again, oldest first."""
        held = []
        for message in machine.dag.messages():
            wire = self.groups.receiver.wire(gid, message.hash) if message.kind == GroupKind.MOVE else None
            if wire:
                with contextlib.suppress(DecodeError, AuthenticationError):
                    held.append(decode_wire(machine.gid, wire))
        for message in sorted(held, key=lambda m: (m.timestamp_ms, m.hash)):
            self.on_message(gid, message, Local())

    def cost(self, gid: str) -> Cost:
        return self._costs.get(gid) or Cost()

    def count_blob(self, gid: str) -> None:
        """A blob of this group came from a server's main read (first copy or a repeat)."""
        self._costs.setdefault(gid, Cost()).blobs_read += 1

    def _count_reread(self, gid: str) -> None:
        # Every blob a re-read downloads, whichever group it belongs to, is what this
        # group's recovery cost.
        self._costs.setdefault(gid, Cost()).reread_blobs += 1

    def _count_p2p(self, body: bytes) -> None:
        # Every sync message starts with the group id (nyth.proto.group_sync).
        gid = body[:16].hex()
        if gid in self.machines:
            cost = self._costs.setdefault(gid, Cost())
            cost.p2p_messages += 1
            cost.p2p_bytes += len(body)

    def totals(self, gid: str) -> dict[str, Any]:
        """Gaps found and recovered (by method) since we joined: counted here, on disk, as
        the machine's own counts start again at every restart (and count the gaps still
        open then a second time)."""
        row = self.groups.store.get("recovery_totals", gid) or {}
        return {"found": row.get("found", 0), "recovered": dict(row.get("recovered", {}))}

    def _count(self, gid: str, *, found: int = 0, method: str | None = None) -> None:
        totals = self.totals(gid)
        totals["found"] += found
        if method is not None:
            totals["recovered"][method] = totals["recovered"].get(method, 0) + 1
        self.groups.store.put("recovery_totals", gid, totals)

    def status(self, gid: str) -> RecoveryStatus | None:
        machine = self.machines.get(gid)
        return machine.status() if machine is not None else None

    def servers(self, gid: str) -> GroupServers | None:
        machine = self.machines.get(gid)
        return machine.servers if machine is not None else None

    def seen_by(self, gid: str, message_hash: bytes) -> frozenset[str]:
        machine = self.machines.get(gid)
        return machine.seen_by(message_hash) if machine is not None else frozenset()

    # -- events in -------------------------------------------------------------------------
    def on_message(self, gid: str, message: GroupMessage, source: Source) -> None:
        """A message of the group, already stored and in the DAG (or a repeat)."""
        machine = self.machines.get(gid)
        if machine is None:
            return
        announced = self._announced[gid]
        found = [p for p in dict.fromkeys(message.parents)  # a parent may be named twice
                 if p not in machine.dag and p not in announced]
        actions = machine.on_message(message, source, _now_ms())
        if message.hash in announced:
            announced.discard(message.hash)
            self._recovered(gid, machine, message, source)
        found = found[:max(0, MAX_ANNOUNCED_GAPS - len(announced))]
        if found:
            self._count(gid, found=len(found))
        for parent in found:
            announced.add(parent)
            self.groups.events.publish("group_gap_found", group=gid, hash=parent.hex(),
                                       via=_via(source))
            log.info("group %s…: gap %s… found via %s", gid[:8], parent.hex()[:8],
                     _via(source)[:15])
        if message.kind == GroupKind.MOVE:
            self.groups.moves.save_servers(gid, machine.servers)
        self._run(gid, actions)
        if found:
            self._wake.set()  # members to dial

    def _recovered(self, gid: str, machine: GroupRecovery, message: GroupMessage,
                   source: Source) -> None:
        how = machine.recovered_by(message.hash) or _how(source)
        view = recovered_view(self.groups, how)
        self._count(gid, method=view["method"])
        self.groups.receiver.mark_recovered(gid, message.hash, view)
        self.groups.events.publish("group_gap_recovered", group=gid, hash=message.hash.hex(),
                                   recovered_by=view)
        log.info("group %s…: gap %s… recovered by %s %s", gid[:8], message.hash.hex()[:8],
                 how.method, how.source[:8])

    def on_session(self, onion: str, state: str) -> None:
        """A P2P session with onion came up or went down (anyone's; members are sorted
        out by each group's machine)."""
        # Called from the P2P node's own paths: a bug here must not end sessions.
        try:
            self._on_session(onion, state)
        except Exception:
            log.exception("recovery failed to handle a session change")

    def _on_session(self, onion: str, state: str) -> None:
        now = _now_ms()
        if state == "connected":
            self._online.add(onion)
            for gid, machine in list(self.machines.items()):
                self._run(gid, machine.on_member_online(onion, now))
        elif state in ("disconnected", "unreachable") and onion in self._online:
            self._online.discard(onion)
            for gid, machine in list(self.machines.items()):
                self._run(gid, machine.on_member_offline(onion, now))

    def on_p2p(self, onion: str, envelope: Envelope) -> None:
        """A group sync message (one of SYNC_KINDS) from onion, member or not."""
        try:
            self._on_p2p(onion, envelope)
        except Exception:  # as in on_session: the session carries on
            log.exception("recovery failed to handle a %s", envelope.kind.name)

    def _on_p2p(self, onion: str, envelope: Envelope) -> None:
        if envelope.kind not in SYNC_KINDS:
            return
        try:
            sync = decode_sync(envelope.kind, envelope.body)
        except DecodeError as exc:
            self.dropped += 1  # e.g. a PULL of more than MAX_PULL hashes: no effect at all
            log.debug("malformed %s from %s…: %s", envelope.kind.name, onion[:8], exc)
            return
        gid = sync.gid.hex()
        machine = self.machines.get(gid)
        if machine is None:
            self.dropped += 1  # not a group of ours: silence tells a prober nothing
            return
        self._count_p2p(envelope.body)
        now = _now_ms()
        if isinstance(sync, GroupPull):
            self._answer(gid, machine, onion, sync, now)
            return
        if isinstance(sync, GroupHeads):
            actions = machine.on_heads(onion, sync, now)
        elif isinstance(sync, GroupPart):
            actions = machine.on_part(onion, sync, now)
        else:
            assert isinstance(sync, GroupNotServed)
            actions = machine.on_not_served(onion, sync, now)
        self._run(gid, actions)

    def _answer(self, gid: str, machine: GroupRecovery, onion: str, request: GroupPull,
                now: int) -> None:
        reply = machine.answer_pull(onion, request, now)
        if reply.refused is not None:
            log.debug("PULL from %s… not answered: %s", onion[:8], reply.refused)
            return
        found = [(h, self.groups.receiver.wire(gid, h)) for h in reply.serve]
        found += [(h, None) for h in reply.not_served]
        for item in answer(machine.gid, found):
            self._send(onion, item.KIND, item.encode())

    def announce(self, gid: str) -> None:
        """Our heads changed (we posted): online members hear of it, within the machine's
        HEADS limit per member."""
        machine = self.machines.get(gid)
        if machine is not None:
            for member in sorted(self._online):
                self._run(gid, machine.on_member_online(member, _now_ms()))

    # -- actions out -----------------------------------------------------------------------
    def _run(self, gid: str, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Refetch):
                done = functools.partial(self._reread_done, gid, action.server, action.token)
                self.groups.sync.reread(action.server, action.after_cursor, done,
                                        on_blob=functools.partial(self._count_reread, gid))
            elif isinstance(action, Pull):
                log.info("group %s…: asking member %s… for %d messages", gid[:8],
                         action.member[:8], len(action.request.hashes))
                failed = functools.partial(self._pull_failed, gid, action.member)
                self._send(action.member, MessageKind.GROUP_PULL, action.request.encode(), failed)
            elif isinstance(action, SendHeads):
                self._send(action.member, MessageKind.GROUP_HEADS, action.heads.encode())
            elif isinstance(action, Ingest):
                self.groups.receiver.store(gid, action.message, {"member": action.member},
                                          FromMember(action.member))
            elif isinstance(action, FollowMove):
                self.groups.moves.follow(gid, action)
            elif isinstance(action, StopReading):
                self.groups.moves.stop_draining(gid, action.server)
        self._wake.set()  # next_wakeup may be sooner now

    def _reread_done(self, gid: str, server: str, token: int, error: str | None) -> None:
        machine = self.machines.get(gid)
        if machine is not None:
            self._run(gid, machine.on_refetch_done(server, token, _now_ms(), error))

    def _pull_failed(self, gid: str, member: str, reason: str) -> None:
        machine = self.machines.get(gid)
        if machine is not None:
            self._run(gid, machine.on_pull_failed(member, _now_ms(), reason))

    def _send(self, onion: str, kind: MessageKind, body: bytes,
              failed: Callable[[str], None] | None = None) -> None:
        queue = self._queues.setdefault(onion, deque())
        if len(queue) >= MAX_QUEUED:
            if failed is not None:
                failed(f"more than {MAX_QUEUED} group sync messages wait for that member")
            return
        queue.append((kind, body, failed))
        task = self._senders.get(onion)
        if (task is None or task.done()) and self.node is not None:
            self._senders[onion] = asyncio.ensure_future(self._sender(onion))

    async def _sender(self, onion: str) -> None:
        assert self.node is not None
        queue = self._queues[onion]
        while queue:
            kind, body, _failed = queue[0]
            try:
                session = await self.node.session_for(onion, timeout=SEND_TIMEOUT)
                await session.send(Envelope(new_msg_id(), kind, _now_ms(), body))
                self._count_p2p(body)
            except (OnionConnectError, ConnectionError, OSError) as exc:
                reason = exc.reason if isinstance(exc, OnionConnectError) else f"connection lost: {exc}"
                # Fire-and-forget: what waited is dropped; PULLs are failed so their gaps
                # move on, HEADS and answers go with the next session.
                for _kind, _body, fail in list(queue):
                    if fail is not None:
                        fail(reason)
                queue.clear()
                break
            queue.popleft()
        self._queues.pop(onion, None)

    # -- time and dialing ------------------------------------------------------------------
    async def _timer_loop(self) -> None:
        while True:
            try:
                await self._timer_step()
            except Exception:
                # Recovery must outlive a bug in one step: logged, and tried again soon.
                log.exception("recovery timer step failed")
                await asyncio.sleep(1)

    async def _timer_step(self) -> None:
        self._wake.clear()
        now = _now_ms()
        for gid, machine in list(self.machines.items()):
            due = machine.next_wakeup()
            if due is not None and due <= now:
                self._run(gid, machine.tick(now))
        if time.monotonic() >= self._next_announce:
            self._next_announce = time.monotonic() + self.heads_every
            for gid in list(self.machines):
                self.announce(gid)
        self._dial_for_gaps()
        self._wake.clear()
        wakeups = [w for m in self.machines.values() if (w := m.next_wakeup()) is not None]
        delay = self._next_announce - time.monotonic()
        if wakeups:
            delay = min(delay, (min(wakeups) - _now_ms()) / 1000)
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
        # that arrives as the event is set, and stop() would wait forever.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.05, delay)):
                await self._wake.wait()

    def _dial_for_gaps(self) -> None:
        """Dial members who can fill open gaps and are not online: first the authors who
        named a gap (they held it), then the members who introduced us or the owner."""
        if self.node is None:
            return
        for gid, machine in self.machines.items():
            if Strategy.MEMBER not in machine.policy.strategies:
                continue
            for h in sorted(self._announced[gid])[:MAX_DIAL_GAPS]:
                named = [onion_from_public_key(m.author) for m in machine.dag.named_by(h)]
                for member in dict.fromkeys(named):
                    if len(self._dialing) >= MAX_DIALS:
                        return
                    if machine.is_member(member):
                        self._dial(member)

    def _dial(self, onion: str) -> None:
        if onion in self._online or onion in self._dialing:
            return
        not_before, failures = self._dial_after.get(onion, (0.0, 0))
        if time.monotonic() < not_before:
            return
        self._dialing[onion] = asyncio.ensure_future(self._dial_once(onion, failures))

    async def _dial_once(self, onion: str, failures: int) -> None:
        assert self.node is not None
        try:
            await self.node.session_for(onion, timeout=SEND_TIMEOUT)
            failures = 0
        except (OnionConnectError, ConnectionError, OSError) as exc:
            failures += 1
            log.info("member %s… not reachable for recovery: %s", onion[:8], exc)
        finally:
            self._dialing.pop(onion, None)
        # Not again at once, also after a success: the session may close (strangers' idle
        # timeout) while the gap waits for its next round.
        pause = min(DIAL_PAUSE_CAP, DIAL_PAUSE * 2 ** min(failures, 10))
        self._dial_after[onion] = (time.monotonic() + pause, failures)
        self._dial_after.move_to_end(onion)
        while len(self._dial_after) > MAX_DIAL_MEMORY:
            self._dial_after.popitem(last=False)


def _via(source: Source) -> str:
    if isinstance(source, FromServer):
        return f"server {source.server}"
    if isinstance(source, FromMember):
        return f"member {source.member}"
    return "local"


def _how(source: Source) -> RecoveredBy:
    if isinstance(source, FromServer):
        return RecoveredBy(Method.SERVER, source.server)
    if isinstance(source, FromMember):
        return RecoveredBy(Method.MEMBER, source.member)
    return RecoveredBy(Method.LOCAL, "")

