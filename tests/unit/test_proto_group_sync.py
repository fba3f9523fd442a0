"""P2P group sync bodies: HEADS, PULL, PART, NOT_SERVED; splitting and joining wire forms."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nyth.errors import DecodeError
from nyth.proto.group import MAX_EPOCH, MAX_WIRE_SIZE
from nyth.proto.group_sync import (
    MAX_HEADS,
    MAX_PARTS,
    MAX_PULL,
    PART_DATA,
    SYNC_KINDS,
    GroupHeads,
    GroupNotServed,
    GroupPart,
    GroupPull,
    GroupSync,
    Reassembly,
    answer,
    decode_sync,
    split_wire,
)
from nyth.proto.p2p import MAX_BODY, Envelope, MessageKind

GID = bytes(range(16))
hashes = st.binary(min_size=32, max_size=32)
gids = st.binary(min_size=16, max_size=16)


def hx(i: int) -> bytes:
    return bytes([i]) * 32


def canonical_or_rejected(kind: MessageKind, data: bytes) -> None:
    try:
        decoded = decode_sync(kind, data)
    except DecodeError:
        return
    assert decoded.encode() == data
    assert len(data) <= MAX_BODY


def test_constants() -> None:
    assert MAX_HEADS == 8 and MAX_PULL == 32
    assert PART_DATA == MAX_BODY - 50 == 1950 and MAX_PARTS == 2
    assert SYNC_KINDS == {MessageKind.GROUP_HEADS, MessageKind.GROUP_PULL, MessageKind.GROUP_PART,
                          MessageKind.GROUP_NOT_SERVED}


def test_layouts() -> None:
    heads = GroupHeads(GID, 0x01020304, hx(9), (hx(1), hx(2)))
    assert heads.encode() == GID + b"\x01\x02\x03\x04" + hx(9) + b"\x02" + hx(1) + hx(2)
    assert GroupHeads(GID, 0, None, ()).encode() == GID + bytes(4) + bytes(32) + b"\x00"
    assert GroupPull(GID, (hx(3), hx(1))).encode() == GID + b"\x02" + hx(3) + hx(1)
    assert GroupNotServed(GID, (hx(4),)).encode() == GID + b"\x01" + hx(4)
    assert GroupPart(GID, hx(5), 1, 2, b"abc").encode() == GID + hx(5) + b"\x01\x02abc"


def test_largest_bodies_fit_one_p2p_message() -> None:
    largest: list[GroupSync] = [
        GroupHeads(GID, MAX_EPOCH, hx(255), tuple(hx(i) for i in range(MAX_HEADS))),
        GroupPull(GID, tuple(hx(i) for i in range(MAX_PULL))),
        GroupNotServed(GID, tuple(hx(i) for i in range(MAX_PULL))),
        GroupPart(GID, hx(1), 0, 2, bytes(PART_DATA)),
    ]
    assert [len(m.encode()) for m in largest] == [309, 1041, 1041, MAX_BODY]
    for message in largest:
        Envelope(bytes(16), message.KIND, 0, message.encode())


heads_st = st.builds(GroupHeads, gid=gids, epoch=st.integers(0, MAX_EPOCH),
                     move_hash=st.none() | hashes.filter(any),
                     heads=st.lists(hashes, max_size=MAX_HEADS, unique=True).map(tuple))
pulls_st = st.builds(GroupPull, gid=gids,
                     hashes=st.lists(hashes, min_size=1, max_size=MAX_PULL, unique=True).map(tuple))
not_served_st = st.builds(GroupNotServed, gid=gids,
                          hashes=st.lists(hashes, min_size=1, max_size=MAX_PULL,
                                          unique=True).map(tuple))


@st.composite
def parts_st(draw: st.DrawFn) -> GroupPart:
    count = draw(st.integers(1, MAX_PARTS))
    index = draw(st.integers(0, count - 1))
    if index < count - 1:
        size = PART_DATA
    else:
        size = draw(st.integers(1, min(PART_DATA, MAX_WIRE_SIZE - (count - 1) * PART_DATA)))
    return GroupPart(draw(gids), draw(hashes), index, count, random.Random(size).randbytes(size))


@settings(max_examples=60)
@given(st.one_of(heads_st, pulls_st, not_served_st, parts_st()))
def test_round_trip(message: GroupHeads | GroupPull | GroupNotServed | GroupPart) -> None:
    data = message.encode()
    assert len(data) <= MAX_BODY
    assert decode_sync(message.KIND, data) == message
    assert type(message).decode(data) == message


@settings(max_examples=150)
@given(st.sampled_from(sorted(SYNC_KINDS)), st.binary(max_size=120) | st.binary(min_size=1990,
                                                                                   max_size=2010))
def test_arbitrary_bytes_decode_canonically_or_are_rejected(kind: MessageKind, data: bytes) -> None:
    canonical_or_rejected(kind, data)


@settings(max_examples=100)
@given(st.one_of(heads_st, pulls_st, not_served_st, parts_st()), st.data())
def test_truncation_and_extension_are_rejected_or_canonical(message: GroupHeads | GroupPull | GroupNotServed
                                                            | GroupPart, data: st.DataObject) -> None:
    encoded = message.encode()
    cut = data.draw(st.integers(0, len(encoded) - 1))
    extra = data.draw(st.binary(min_size=1, max_size=40))
    for bad in (encoded[:cut], encoded + extra):
        canonical_or_rejected(message.KIND, bad)
    if not isinstance(message, GroupPart):  # a list's end is fixed by its count
        for bad in (encoded[:cut], encoded + extra):
            with pytest.raises(DecodeError):
                decode_sync(message.KIND, bad)


@pytest.mark.parametrize(("kind", "data"), [
    (MessageKind.GROUP_HEADS, GID + bytes(36)),                                    # no count
    (MessageKind.GROUP_HEADS, GID + bytes(36) + b"\x09" + b"".join(hx(i) for i in range(9))),
    (MessageKind.GROUP_HEADS, GID + bytes(36) + b"\x02" + hx(1) + hx(1)),          # twice
    (MessageKind.GROUP_PULL, GID + b"\x00"),                                       # empty
    (MessageKind.GROUP_PULL, GID + b"\x21" + b"".join(hx(i) for i in range(33))),  # 33
    (MessageKind.GROUP_PULL, GID + b"\x02" + hx(1) + hx(1)),                       # twice
    (MessageKind.GROUP_PULL, GID + b"\x02" + hx(1)),                               # count > present
    (MessageKind.GROUP_PULL, GID[:15]),
    (MessageKind.GROUP_NOT_SERVED, GID + b"\x00"),
    (MessageKind.GROUP_NOT_SERVED, GID + b"\x21" + b"".join(hx(i) for i in range(33))),
    (MessageKind.GROUP_PART, GID + hx(1) + b"\x00\x01"),                           # no data
    (MessageKind.GROUP_PART, GID + hx(1) + b"\x00\x00" + b"x"),                    # count 0
    (MessageKind.GROUP_PART, GID + hx(1) + b"\x00\x03" + bytes(PART_DATA)),        # 3 parts
    (MessageKind.GROUP_PART, GID + hx(1) + b"\x01\x01" + b"x"),                    # index ≥ count
    (MessageKind.GROUP_PART, GID + hx(1) + b"\x00\x02" + bytes(PART_DATA - 1)),    # short first part
    (MessageKind.GROUP_PART, GID + hx(1) + b"\x01\x02" + bytes(59)),               # over 2008 in all
    (MessageKind.GROUP_PART, GID + hx(1) + b"\x00\x01" + bytes(PART_DATA + 1)),    # too long
    (MessageKind.GROUP_PART, GID + hx(1)[:31]),
])
def test_specific_rejections(kind: MessageKind, data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_sync(kind, data)


@pytest.mark.parametrize("message", [
    GroupHeads(GID[:15], 0, None, ()),
    GroupHeads(GID, -1, None, ()),
    GroupHeads(GID, MAX_EPOCH + 1, None, ()),
    GroupHeads(GID, 1, bytes(32), ()),            # an all-zero move hash means "none"
    GroupHeads(GID, 1, hx(1)[:31], ()),
    GroupHeads(GID, 0, None, tuple(hx(i) for i in range(MAX_HEADS + 1))),
    GroupHeads(GID, 0, None, (hx(1), hx(1))),
    GroupPull(GID, ()),
    GroupPull(GID, tuple(hx(i) for i in range(MAX_PULL + 1))),
    GroupPull(GID, (hx(1)[:31],)),
    GroupNotServed(GID, ()),
    GroupPart(GID, hx(1)[:31], 0, 1, b"x"),
    GroupPart(GID, hx(1), 0, 1, b""),
    GroupPart(GID, hx(1), 2, 2, b"x"),
    GroupPart(GID, hx(1), 0, 3, bytes(PART_DATA)),
])
def test_encoders_refuse_what_decoders_would(message: GroupHeads | GroupPull | GroupNotServed
                                             | GroupPart) -> None:
    with pytest.raises(DecodeError):
        message.encode()


def test_decode_sync_refuses_other_kinds() -> None:
    with pytest.raises(DecodeError, match="not a group sync"):
        decode_sync(MessageKind.TEXT, GID + b"\x01" + hx(1))


@settings(max_examples=60)
@given(st.integers(1, MAX_WIRE_SIZE), st.randoms(use_true_random=False))
def test_split_and_reassemble_in_any_order(size: int, rnd: random.Random) -> None:
    wire = rnd.randbytes(size)
    parts = split_wire(GID, hx(7), wire)
    assert len(parts) == (1 if size <= PART_DATA else 2)
    for part in parts:
        assert decode_sync(MessageKind.GROUP_PART, part.encode()) == part
    rnd.shuffle(parts)
    joined = Reassembly()
    results = [joined.add(p) for p in parts]
    assert results[:-1] == [None] * (len(parts) - 1) and results[-1] == wire
    assert joined.add(parts[0]) == wire  # a repeat of a part changes nothing


@pytest.mark.parametrize("size", [0, MAX_WIRE_SIZE + 1])
def test_split_refuses_impossible_wire_forms(size: int) -> None:
    with pytest.raises(DecodeError):
        split_wire(GID, hx(1), bytes(size))


def test_reassembly_refuses_contradicting_parts() -> None:
    first, second = split_wire(GID, hx(1), bytes(MAX_WIRE_SIZE))
    joined = Reassembly()
    joined.add(first)
    with pytest.raises(DecodeError, match="twice"):
        joined.add(GroupPart(GID, hx(1), 0, 2, b"\x01" * PART_DATA))
    with pytest.raises(DecodeError, match="parts"):
        joined.add(GroupPart(GID, hx(1), 0, 1, b"x"))
    assert joined.add(second) == bytes(MAX_WIRE_SIZE)


def test_answer_sends_parts_then_what_is_not_served() -> None:
    found = [(hx(1), b"a" * 100), (hx(2), None), (hx(3), b"b" * 2000)]
    found += [(hx(10 + i), None) for i in range(MAX_PULL)]
    out = answer(GID, found)
    assert [type(m).__name__ for m in out] == ["GroupPart"] * 3 + ["GroupNotServed"] * 2
    assert out[0] == GroupPart(GID, hx(1), 0, 1, b"a" * 100)
    assert out[3] == GroupNotServed(GID, (hx(2), *(hx(10 + i) for i in range(MAX_PULL - 1))))
    assert out[4] == GroupNotServed(GID, (hx(10 + MAX_PULL - 1),))
    assert answer(GID, []) == []
    for message in out:
        assert len(message.encode()) <= MAX_BODY


def test_heads_zero_move_hash_is_none() -> None:
    data = GID + struct.pack(">I", 3) + bytes(32) + b"\x00"
    assert GroupHeads.decode(data) == GroupHeads(GID, 3, None, ())
