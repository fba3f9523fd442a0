"""Group history as a DAG of message hashes.

Each message names the heads its author had seen. A parent we never saw is a gap
(`missing`), which recovery strategies work to fill; a message some later message
names as a parent has implicitly been received by that later author.

`ordered` is a deterministic topological order (ties by timestamp, then hash), so all
members holding the same set of messages show the same history.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from nyth.proto.group import MAX_PARENTS, GroupMessage


class GroupDag:
    def __init__(self, messages: Iterable[GroupMessage] = ()) -> None:
        self._messages: dict[bytes, GroupMessage] = {}
        self._children: dict[bytes, set[bytes]] = {}
        for message in messages:
            self.add(message)

    def __len__(self) -> int:
        return len(self._messages)

    def __contains__(self, message_hash: object) -> bool:
        return message_hash in self._messages

    def add(self, message: GroupMessage) -> bool:
        """Add a message; False if it was already known."""
        if message.hash in self._messages:
            return False
        self._messages[message.hash] = message
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
        """Authors whose later messages name this one as a parent (implicit acks)."""
        return {self._messages[c].author for c in self._children.get(message_hash, ())
                if c in self._messages}

    def ordered(self) -> list[GroupMessage]:
        # Count distinct parents: a message may name the same parent twice, and
        # _children holds each edge once, so duplicates would never reach zero.
        indegree = {h: len({p for p in m.parents if p in self._messages})
                    for h, m in self._messages.items()}
        ready = [(m.timestamp_ms, h) for h, m in self._messages.items() if indegree[h] == 0]
        heapq.heapify(ready)
        out: list[GroupMessage] = []
        while ready:
            _ts, h = heapq.heappop(ready)
            out.append(self._messages[h])
            for child in self._children.get(h, ()):
                if child in indegree:
                    indegree[child] -= 1
                    if indegree[child] == 0:
                        heapq.heappush(ready, (self._messages[child].timestamp_ms, child))
        return out
