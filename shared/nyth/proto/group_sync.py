"""P2P group sync between members: HEADS, PULL and its answers (codecs only).

Each is the body of a P2P MESSAGE (nyth.proto.p2p) of the kind named, at most
p2p.MAX_BODY = 2000 bytes. Who may be sent what, and when, is nyth.proto.recovery's
business: these go only to members of the group, and a PULL is answered only to them.

    GROUP_HEADS       gid (16) | epoch (u32) | move hash (32, all zero: none known)
                      | n (u8, 0..8) | n × message hash (32)                  ≤ 309 bytes
    GROUP_PULL        gid (16) | n (u8, 1..32) | n × message hash (32)        ≤ 1041 bytes
    GROUP_PART        gid (16) | message hash (32) | index (u8) | count (u8, 1..2)
                      | data (1..1950)                                        ≤ 2000 bytes
    GROUP_NOT_SERVED  gid (16) | n (u8, 1..32) | n × message hash (32)        ≤ 1041 bytes

Hash lists hold distinct hashes, in the sender's order (a PULL asks for the most wanted
first). HEADS are the sender's DAG heads (GroupDag.heads) and the epoch of its servers
with the MOVE that set it, so a member learns of messages, and of a move, it lacks.

A PULL's answer is, for each hash, the message's *wire form* (signed part | signature,
GroupMessage.wire: no padding, 109..2008 bytes) in GROUP_PARTs, or the hash in one
GROUP_NOT_SERVED (not held, or over the answerer's budget). A wire form longer than one
part (PART_DATA = 2000 − 50 header bytes = 1950) is cut into PART_DATA-byte pieces: every
part but the last holds exactly PART_DATA bytes, the last 1..PART_DATA, and all together at
most MAX_WIRE_SIZE = 2008; so count is 1 or 2, and any message takes at most two packets.
The receiver joins the parts of a hash it asked for (`Reassembly`), then checks the whole
with group.decode_wire (fields, signature under the group id) and that its hash is the
one asked for; it re-seals it (group.seal_wire) if it wants a blob.

MAX_PULL = 32: a request fits one packet (17 + 32 × 32 = 1041 bytes; 61 would), and its
answer is at most 64 packets (≈ 128 KiB, a few seconds over Tor) and 32 lookups for the
answerer, per request; 32 hashes cover four generations of a gap's parents at the usual
one or two parents per message.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from nyth.errors import DecodeError
from nyth.proto.group import GROUP_ID_SIZE, HASH_SIZE, MAX_EPOCH, MAX_PARENTS, MAX_WIRE_SIZE
from nyth.proto.p2p import MAX_BODY, MessageKind

MAX_HEADS = MAX_PARENTS
MAX_PULL = 32
_PART_HEAD = struct.Struct(">16s32sBB")
PART_DATA = MAX_BODY - _PART_HEAD.size
MAX_PARTS = -(-MAX_WIRE_SIZE // PART_DATA)
_ZERO_HASH = bytes(HASH_SIZE)


def _check_gid(gid: bytes) -> None:
    if len(gid) != GROUP_ID_SIZE:
        raise DecodeError(f"group id must be {GROUP_ID_SIZE} bytes")


def _hash_list(hashes: Sequence[bytes], low: int, high: int, what: str) -> bytes:
    if not low <= len(hashes) <= high:
        raise DecodeError(f"{what} holds {low}..{high} hashes, not {len(hashes)}")
    if any(len(h) != HASH_SIZE for h in hashes) or len(set(hashes)) != len(hashes):
        raise DecodeError(f"{what} hashes must be distinct and {HASH_SIZE} bytes each")
    return bytes([len(hashes)]) + b"".join(hashes)


def _read_hashes(data: bytes, offset: int, low: int, high: int, what: str) -> tuple[bytes, ...]:
    """n (u8) | n hashes, ending exactly at the end of data."""
    if len(data) < offset + 1:
        raise DecodeError(f"{what} is truncated")
    count = data[offset]
    offset += 1
    if not low <= count <= high or len(data) != offset + count * HASH_SIZE:
        raise DecodeError(f"{what} hash list is malformed")
    hashes = tuple(data[offset + i * HASH_SIZE: offset + (i + 1) * HASH_SIZE] for i in range(count))
    if len(set(hashes)) != count:
        raise DecodeError(f"{what} names a hash twice")
    return hashes


@dataclass(frozen=True)
class GroupHeads:
    KIND: ClassVar[MessageKind] = MessageKind.GROUP_HEADS
    gid: bytes
    epoch: int
    move_hash: bytes | None  # the MOVE that set the epoch, if the sender knows it
    heads: tuple[bytes, ...]

    def encode(self) -> bytes:
        _check_gid(self.gid)
        if not 0 <= self.epoch <= MAX_EPOCH:
            raise DecodeError(f"epoch must be 0..{MAX_EPOCH}")
        move = _ZERO_HASH if self.move_hash is None else self.move_hash
        if len(move) != HASH_SIZE or (move == _ZERO_HASH and self.move_hash is not None):
            raise DecodeError("move hash must be 32 bytes, not all zero")
        return (self.gid + struct.pack(">I", self.epoch) + move
                + _hash_list(self.heads, 0, MAX_HEADS, "heads"))

    @classmethod
    def decode(cls, data: bytes) -> GroupHeads:
        fixed = GROUP_ID_SIZE + 4 + HASH_SIZE
        if len(data) < fixed:
            raise DecodeError("heads are truncated")
        (epoch,) = struct.unpack_from(">I", data, GROUP_ID_SIZE)
        move = data[GROUP_ID_SIZE + 4: fixed]
        heads = _read_hashes(data, fixed, 0, MAX_HEADS, "heads")
        return cls(data[:GROUP_ID_SIZE], epoch, None if move == _ZERO_HASH else move, heads)


@dataclass(frozen=True)
class GroupPull:
    KIND: ClassVar[MessageKind] = MessageKind.GROUP_PULL
    gid: bytes
    hashes: tuple[bytes, ...]

    def encode(self) -> bytes:
        _check_gid(self.gid)
        return self.gid + _hash_list(self.hashes, 1, MAX_PULL, "a pull")

    @classmethod
    def decode(cls, data: bytes) -> GroupPull:
        return cls(data[:GROUP_ID_SIZE], _read_hashes(data, GROUP_ID_SIZE, 1, MAX_PULL, "a pull"))


@dataclass(frozen=True)
class GroupNotServed:
    KIND: ClassVar[MessageKind] = MessageKind.GROUP_NOT_SERVED
    gid: bytes
    hashes: tuple[bytes, ...]

    def encode(self) -> bytes:
        _check_gid(self.gid)
        return self.gid + _hash_list(self.hashes, 1, MAX_PULL, "not served")

    @classmethod
    def decode(cls, data: bytes) -> GroupNotServed:
        return cls(data[:GROUP_ID_SIZE],
                   _read_hashes(data, GROUP_ID_SIZE, 1, MAX_PULL, "not served"))


def _part_bounds(index: int, count: int) -> tuple[int, int]:
    """The lengths a part's data may have."""
    if not 1 <= count <= MAX_PARTS or not 0 <= index < count:
        raise DecodeError(f"part {index} of {count} is out of range (at most {MAX_PARTS} parts)")
    if index < count - 1:
        return PART_DATA, PART_DATA
    return 1, min(PART_DATA, MAX_WIRE_SIZE - (count - 1) * PART_DATA)


@dataclass(frozen=True)
class GroupPart:
    KIND: ClassVar[MessageKind] = MessageKind.GROUP_PART
    gid: bytes
    message_hash: bytes
    index: int
    count: int
    data: bytes

    def encode(self) -> bytes:
        _check_gid(self.gid)
        if len(self.message_hash) != HASH_SIZE:
            raise DecodeError(f"message hash must be {HASH_SIZE} bytes")
        low, high = _part_bounds(self.index, self.count)
        if not low <= len(self.data) <= high:
            raise DecodeError(f"part {self.index} of {self.count} must hold {low}..{high} bytes")
        return _PART_HEAD.pack(self.gid, self.message_hash, self.index, self.count) + self.data

    @classmethod
    def decode(cls, data: bytes) -> GroupPart:
        if len(data) < _PART_HEAD.size:
            raise DecodeError("part is truncated")
        gid, message_hash, index, count = _PART_HEAD.unpack_from(data)
        part = cls(gid, message_hash, index, count, data[_PART_HEAD.size:])
        low, high = _part_bounds(index, count)
        if not low <= len(part.data) <= high:
            raise DecodeError(f"part {index} of {count} must hold {low}..{high} bytes")
        return part


GroupSync = GroupHeads | GroupPull | GroupPart | GroupNotServed
_CODECS: dict[MessageKind, type[GroupHeads] | type[GroupPull] | type[GroupPart]
              | type[GroupNotServed]] = {
    c.KIND: c for c in (GroupHeads, GroupPull, GroupPart, GroupNotServed)}
SYNC_KINDS = frozenset(_CODECS)


def decode_sync(kind: MessageKind, body: bytes) -> GroupSync:
    """The body of a P2P message of one of SYNC_KINDS; DecodeError if malformed."""
    codec = _CODECS.get(kind)
    if codec is None:
        raise DecodeError(f"{kind.name} is not a group sync message")
    return codec.decode(body)


def split_wire(gid: bytes, message_hash: bytes, wire: bytes) -> list[GroupPart]:
    """A message's wire form as the GROUP_PARTs that carry it (one or two)."""
    if not 1 <= len(wire) <= MAX_WIRE_SIZE:
        raise DecodeError(f"a message's wire form is 1..{MAX_WIRE_SIZE} bytes")
    pieces = [wire[i: i + PART_DATA] for i in range(0, len(wire), PART_DATA)]
    return [GroupPart(gid, message_hash, i, len(pieces), piece) for i, piece in enumerate(pieces)]


def answer(gid: bytes, found: Iterable[tuple[bytes, bytes | None]]) -> list[GroupPart | GroupNotServed]:
    """A PULL's answer: for each (hash, wire form or None) the parts, or the hash in one
    GROUP_NOT_SERVED at the end. Send each as a P2P message of its KIND."""
    parts: list[GroupPart | GroupNotServed] = []
    missing: list[bytes] = []
    for message_hash, wire in found:
        if wire is None:
            missing.append(message_hash)
        else:
            parts.extend(split_wire(gid, message_hash, wire))
    for i in range(0, len(missing), MAX_PULL):
        parts.append(GroupNotServed(gid, tuple(missing[i: i + MAX_PULL])))
    return parts


class Reassembly:
    """The parts of one requested message received so far (from one member)."""

    def __init__(self) -> None:
        self.count: int | None = None
        self._parts: dict[int, bytes] = {}

    def add(self, part: GroupPart) -> bytes | None:
        """The whole wire form once every part is in; None while some are missing.
        DecodeError if this part contradicts the earlier ones (the sender is broken)."""
        if self.count is None:
            self.count = part.count
        elif part.count != self.count:
            raise DecodeError(f"part says {part.count} parts, an earlier one {self.count}")
        if self._parts.setdefault(part.index, part.data) != part.data:
            raise DecodeError(f"part {part.index} sent twice with different data")
        if len(self._parts) < self.count:
            return None
        return b"".join(self._parts[i] for i in range(self.count))
