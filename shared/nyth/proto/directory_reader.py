"""Reading an index's signed directory as a client, sans-IO: from its pages (the index
answering) or from the blobs of its public directory group (the index down).

Whoever holds a pinned index bundle can check a directory without trusting the path it
came by: the directory group's key is public (anyone may post there), so only DIRECTORY
messages authored by the index's key are looked at, their chunks must hash to the digest
they name, and the assembled directory must carry the index's signature and pass
`accept_directory` (not stale, not from the future, not older than the one held).
Whatever fails is kept as a refusal with its reason; the directory held stays.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from nyth.errors import AuthenticationError, DecodeError
from nyth.proto.discovery import (
    Chunk,
    ChunkAssembler,
    Directory,
    DirectoryRefused,
    IndexBundle,
    accept_directory,
    assemble,
)
from nyth.proto.group import GroupKind, open_group_message
from nyth.proto.identity import onion_from_public_key

# Incomplete directories an assembler keeps at once (newest epochs win): bounds memory
# whatever a directory group holds.
MAX_OPEN_SETS = 4
# Refusals kept per read: the last ones say enough, and a flood cannot grow the list.
MAX_REFUSALS = 8


@dataclass
class Accepted:
    directory: Directory
    signed: bytes


def accept_pages(chunks: Sequence[Chunk], index: IndexBundle, *, now: int,
                 held_epoch: int | None) -> Accepted:
    """The directory an index served as pages (all chunks of one epoch, in order),
    assembled and accepted; DecodeError, AuthenticationError or DirectoryRefused say why
    not."""
    signed = assemble(chunks)
    directory = accept_directory(signed, index_key=index.index_key, now=now,
                                 held_epoch=held_epoch)
    return Accepted(directory, signed)


@dataclass
class DirectoryGroupReader:
    """Feed it the blobs read from the directory group's servers, in any order and with
    repeats (several servers hold the same group); `best` is then the newest directory
    accepted, `confirmed` whether the one held (held_digest) was found again, and
    `refusals` what was refused and why."""

    index: IndexBundle
    now: int
    held_epoch: int | None = None
    held_digest: bytes | None = None
    best: Accepted | None = None
    confirmed: bool = False
    refusals: list[str] = field(default_factory=list)
    foreign: int = 0  # DIRECTORY messages by another key, ignored
    _assembler: ChunkAssembler = field(init=False)

    def __post_init__(self) -> None:
        # The held epoch itself is read again (to confirm it); older ones are ignored.
        floor = -1 if self.held_epoch is None else self.held_epoch - 1
        self._assembler = ChunkAssembler(floor=floor, max_sets=MAX_OPEN_SETS)

    def blob(self, blob: bytes) -> None:
        try:
            message = open_group_message(self.index.group_key, self.index.directory_group_id,
                                         blob)
        except (AuthenticationError, DecodeError):
            return  # another group's blob (servers hold many groups), or garbage
        if message.kind != GroupKind.DIRECTORY:
            return
        if message.author != self.index.index_key:
            # The group key is public: anyone can post there, so only the index's count.
            self.foreign += 1
            return
        try:
            signed = self._assembler.add(Chunk.decode(message.data))
        except DecodeError as exc:
            self._refuse(f"a chunk in the directory group: {exc}")
            return
        if signed is not None:
            self._complete(signed)

    def _complete(self, signed: bytes) -> None:
        if self.held_digest is not None and hashlib.sha256(signed).digest() == self.held_digest:
            self.confirmed = True
            return
        floor = max(e for e in (self.held_epoch, self.best_epoch, -1) if e is not None)
        try:
            directory = accept_directory(signed, index_key=self.index.index_key, now=self.now,
                                         held_epoch=None if floor < 0 else floor)
        except (DirectoryRefused, DecodeError, AuthenticationError) as exc:
            self._refuse(f"a directory in the directory group: {exc}")
            return
        self.best = Accepted(directory, signed)
        self._assembler.floor = directory.epoch

    @property
    def best_epoch(self) -> int | None:
        return None if self.best is None else self.best.directory.epoch

    def _refuse(self, reason: str) -> None:
        self.refusals = [*self.refusals, reason][-MAX_REFUSALS:]

    def summary(self) -> str | None:
        """The refusals of this read in one line (None when there were none)."""
        parts = list(dict.fromkeys(self.refusals))
        if self.foreign:
            parts.append(f"{self.foreign} DIRECTORY messages in the directory group are not by "
                         f"the index {onion_from_public_key(self.index.index_key)[:8]}… (its key "
                         "is public: anyone may post there); ignored")
        return "; ".join(parts) or None
