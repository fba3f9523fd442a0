"""Group history as a DAG of message hashes.

Each message names the heads its author had seen. A parent we never saw is a gap
(`missing`), which recovery strategies work to fill; a message some later message
names as a parent has implicitly been received by that later author.

`placed` is a topological order by each message's *order time*: its timestamp (the
author's claim), at least its parents' order times and at most its receipt time plus
MAX_CLOCK_SKEW_MS. A message claiming to be older, by more than that skew, than a message
we already held when it arrived is *late*: it is shown where it arrived, after everything
received before it. Ties by order time, late messages after the others, then hash.
Members holding the same messages, received in the same order (as from one server),
show the same history; §5.4 of docs/protocol.md.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from nyth.proto.group import MAX_PARENTS, GroupMessage

# How far an author's clock may be from ours (and a post be delayed) before its claimed
# time stops counting: far-future times are pulled back to receipt + this, and a message
# claiming to be older than this before something we already held is shown as received.
MAX_CLOCK_SKEW_MS = 10 * 60 * 1000

# Why a message's order time differs from its timestamp.
BEFORE_PARENTS = "before_parents"  # it claims to predate a message it names (or one moved)
FUTURE = "future"  # it claims a time later than its receipt plus the skew
LATE = "late"  # it claims to predate, beyond the skew, a message held before it arrived


@dataclass(frozen=True)
class Placed:
    message: GroupMessage
    order_time_ms: int
    # None when the message is ordered by its own timestamp; else why not (above).
    time_adjusted: str | None


class GroupDag:
    def __init__(self, messages: Iterable[GroupMessage] = ()) -> None:
        self._messages: dict[bytes, GroupMessage] = {}
        self._children: dict[bytes, set[bytes]] = {}
        # ms; absent for messages stored before receipt times were kept.
        self._received: dict[bytes, int] = {}
        for message in messages:
            self.add(message)

    def __len__(self) -> int:
        return len(self._messages)

    def __contains__(self, message_hash: object) -> bool:
        return message_hash in self._messages

    def get(self, message_hash: bytes) -> GroupMessage | None:
        return self._messages.get(message_hash)

    def messages(self) -> Iterator[GroupMessage]:
        """Every message held, in the order added."""
        return iter(list(self._messages.values()))

    def add(self, message: GroupMessage, received_at_ms: int | None = None) -> bool:
        """Add a message received at received_at_ms (our clock; None: unknown, treated
        as received before every message with a known time); False if already known."""
        if message.hash in self._messages:
            return False
        self._messages[message.hash] = message
        if received_at_ms is not None:
            self._received[message.hash] = received_at_ms
        for parent in message.parents:
            self._children.setdefault(parent, set()).add(message.hash)
        return True

    def heads(self) -> list[bytes]:
        """Newest messages nobody has named as a parent yet: the next message's parents."""
        heads = [m for h, m in self._messages.items() if not self._children.get(h)]
        heads.sort(key=lambda m: (m.timestamp_ms, m.hash), reverse=True)
        return sorted(m.hash for m in heads[:MAX_PARENTS])

    def missing(self) -> set[bytes]:
        """Parents named by someone that we do not hold: detected gaps."""
        return {p for p in self._children if p not in self._messages}

    def acknowledged_by(self, message_hash: bytes) -> set[bytes]:
        """Authors whose later messages name this one as a parent (implicit acks).

        Only direct children count. A member whose message names a *descendant* of this
        one may still lack it (a gap of their own exactly here: they held the child, not
        necessarily its ancestors), so that is no evidence they saw it."""
        return {self._messages[c].author for c in self._children.get(message_hash, ())
                if c in self._messages}

    def named_by(self, message_hash: bytes) -> list[GroupMessage]:
        """The messages held that name this hash as a parent (a gap's witnesses)."""
        return [self._messages[c] for c in sorted(self._children.get(message_hash, ()))
                if c in self._messages]

    def ancestors(self, message_hash: bytes) -> set[bytes]:
        """Hashes of the held messages this one descends from (not itself), following
        parents through held messages only."""
        seen: set[bytes] = set()
        start = self._messages.get(message_hash)
        stack = list(start.parents) if start is not None else []
        while stack:
            h = stack.pop()
            if h in seen or h not in self._messages:
                continue
            seen.add(h)
            stack.extend(self._messages[h].parents)
        return seen

    def ordered(self) -> list[GroupMessage]:
        return [placed.message for placed in self.placed()]

    def _indegrees(self) -> dict[bytes, int]:
        # Count distinct parents: a message may name the same parent twice, and
        # _children holds each edge once, so duplicates would never reach zero.
        return {h: len({p for p in m.parents if p in self._messages})
                for h, m in self._messages.items()}

    def _topological(self, key: dict[bytes, int]) -> list[bytes]:
        """Kahn's sort, smallest (key, hash) first among ready messages."""
        indegree = self._indegrees()
        ready = [(key[h], h) for h in self._messages if indegree[h] == 0]
        heapq.heapify(ready)
        out: list[bytes] = []
        while ready:
            _key, h = heapq.heappop(ready)
            out.append(h)
            for child in self._children.get(h, ()):
                if child in indegree:
                    indegree[child] -= 1
                    if indegree[child] == 0:
                        heapq.heappush(ready, (key[child], child))
        return out

    def _clamped(self) -> tuple[dict[bytes, int], dict[bytes, str]]:
        """Each message's time, at most its receipt + skew, at least its parents'."""
        times: dict[bytes, int] = {}
        why: dict[bytes, str] = {}
        for h in self._topological({h: m.timestamp_ms for h, m in self._messages.items()}):
            message = self._messages[h]
            time = message.timestamp_ms
            received = self._received.get(h)
            if received is not None and time > received + MAX_CLOCK_SKEW_MS:
                time, why[h] = received + MAX_CLOCK_SKEW_MS, FUTURE
            floor = max((times[p] for p in message.parents if p in times), default=time)
            if floor > time:
                time = floor
                why.setdefault(h, BEFORE_PARENTS)
            times[h] = time
        return times, why

    def _late(self, times: dict[bytes, int]) -> dict[bytes, int]:
        """Late messages and the time they are shown at: the latest order time of what
        was received before them. What counts as 'held before' is capped at its receipt
        time, so a far-future message does not make everything after it late."""
        unknown = [times[h] for h in self._messages if h not in self._received]
        held_cap = held_all = max(unknown, default=None)
        late: dict[bytes, int] = {}
        by_receipt = sorted((r, h) for h, r in self._received.items())
        i = 0
        while i < len(by_receipt):
            j = i
            while j < len(by_receipt) and by_receipt[j][0] == by_receipt[i][0]:
                j += 1
            batch = [h for _r, h in by_receipt[i:j]]  # received in the same ms: not before
            for h in batch:
                if held_cap is not None and held_all is not None \
                        and times[h] < held_cap - MAX_CLOCK_SKEW_MS:
                    late[h] = held_all
            for h in batch:
                capped = min(times[h], self._received[h])
                held_cap = capped if held_cap is None else max(held_cap, capped)
                held_all = times[h] if held_all is None else max(held_all, times[h])
            i = j
        return late

    def placed(self) -> list[Placed]:
        """Every message in display order with the time it is ordered by, and why that
        differs from its timestamp (None when it does not)."""
        times, why = self._clamped()
        late = self._late(times)
        indegree = self._indegrees()
        final: dict[bytes, int] = {}

        def entry(h: bytes) -> tuple[int, int, bytes]:
            base = late.get(h, times[h])
            parents = (final[p] for p in self._messages[h].parents if p in final)
            final[h] = max(base, max(parents, default=base))
            return final[h], int(h in late), h

        ready = [entry(h) for h in self._messages if indegree[h] == 0]
        heapq.heapify(ready)
        out: list[Placed] = []
        while ready:
            order_time, _late_last, h = heapq.heappop(ready)
            message = self._messages[h]
            reason = None
            if order_time != message.timestamp_ms:
                reason = LATE if h in late else why.get(h, BEFORE_PARENTS)
            out.append(Placed(message, order_time, reason))
            for child in self._children.get(h, ()):
                if child in indegree:
                    indegree[child] -= 1
                    if indegree[child] == 0:
                        heapq.heappush(ready, entry(child))
        return out
