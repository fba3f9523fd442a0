"""Group keys and ids, fixed-size sealed group messages, invites."""

from __future__ import annotations

import hashlib
import os
import struct
from typing import Any

import nacl.bindings
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nyth.errors import AuthenticationError, DecodeError
from nyth.proto import group as group_proto
from nyth.proto import tokens
from nyth.proto.bundle import BUNDLE_SIZE_V1, BUNDLE_SIZE_V2, ServerBundle
from nyth.proto.group import (
    BLOB_SIZE,
    GROUP_ID_SIZE,
    HASH_SIZE,
    INNER_SIZE,
    INVITE_MAGIC,
    INVITE_MAGIC_V2,
    KEY_SIZE,
    MAX_BODY_BYTES,
    MAX_BODY_BYTES_V2,
    MAX_EPOCH,
    MAX_INVITE_V2_BYTES,
    MAX_MOVE_BYTES,
    MAX_NAME_BYTES,
    MAX_PARENTS,
    MAX_SERVERS,
    MAX_WIRE_SIZE,
    GroupKind,
    GroupMessage,
    Invite,
    Move,
    decode_wire,
    genesis_group_id,
    group_id,
    new_group_key,
    open_group_message,
    seal_group_message,
    seal_group_move,
    seal_wire,
    trial_open,
)
from nyth.proto.identity import Identity
from nyth.proto.p2p import MAX_BODY, Envelope, MessageKind

AUTHOR = Identity.from_seed(b"a" * 32)
SERVERS = [Identity.from_seed(bytes([i]) * 32) for i in range(MAX_SERVERS + 1)]
BUNDLES = [ServerBundle(s.public_key, bytes(32), BLOB_SIZE, 1000, 86400, 1_800_000_000)
           for s in SERVERS]
SIGNED = [b.sign(s) for b, s in zip(BUNDLES, SERVERS, strict=True)]
TOKEN_KEY = tokens.TokenSecretKey.from_seed(b"T" * 32).public_key
# The same servers requiring tokens with proof of work: v2 bundles, one byte longer.
SIGNED_V2 = [ServerBundle(s.public_key, TOKEN_KEY, BLOB_SIZE, 1000, 86400, 1_800_000_000,
                          token_pow_bits=18).sign(s) for s in SERVERS]
MIXED = [v2 if i % 2 else v1 for i, (v1, v2) in enumerate(zip(SIGNED, SIGNED_V2, strict=True))]
BUNDLE_SIZE = BUNDLE_SIZE_V1


def prefixed(*bundles: bytes) -> bytes:
    """Bundles as v2 invites and moves carry them: each after its length (u8)."""
    return b"".join(bytes([len(b)]) + b for b in bundles)
KEY = bytes(range(32))
GID = group_id(KEY, BUNDLES[:1])
REJECT = (DecodeError, AuthenticationError)

hashes = st.binary(min_size=HASH_SIZE, max_size=HASH_SIZE)
parent_lists = st.lists(hashes, max_size=MAX_PARENTS, unique=True)
bodies = st.text(min_size=1, max_size=400).filter(
    lambda t: len(t.encode()) <= MAX_BODY_BYTES)
timestamps = st.integers(0, (1 << 63) - 1)


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def seal_inner(inner: bytes, key: bytes = KEY) -> bytes:
    nonce = os.urandom(24)
    return nonce + nacl.bindings.crypto_secretbox(inner, nonce, key)


def open_inner(blob: bytes, key: bytes = KEY) -> bytes:
    return nacl.bindings.crypto_secretbox_open(blob[24:], blob[:24], key)


# -- sizes and ids -----------------------------------------------------------------------

def test_sizes() -> None:
    assert INNER_SIZE == BLOB_SIZE - 24 - 16 == 2008
    assert MAX_BODY_BYTES == 2008 - (1 + 32 + 8 + 1) - 8 * 32 - 2 - 64 == 1644
    assert len(new_group_key()) == KEY_SIZE and new_group_key() != new_group_key()


def test_group_id_layout() -> None:
    keys = sorted(b.onion_public_key for b in BUNDLES[:3])
    expected = hashlib.blake2b(KEY + b"".join(keys), digest_size=16,
                               person=b"nyth-group-id").digest()
    assert group_id(KEY, BUNDLES[:3]) == expected
    assert len(expected) == GROUP_ID_SIZE


@settings(max_examples=50)
@given(st.permutations(range(4)))
def test_group_id_ignores_server_order_but_binds_key_and_servers(order: list[int]) -> None:
    chosen = [BUNDLES[i] for i in order]
    assert group_id(KEY, chosen) == group_id(KEY, BUNDLES[:4])
    assert group_id(KEY, chosen) != group_id(KEY, BUNDLES[:3])
    assert group_id(KEY, chosen) != group_id(bytes(32), chosen)


@pytest.mark.parametrize("size", [0, 16, 31, 33])
def test_group_id_refuses_wrong_key_size(size: int) -> None:
    with pytest.raises(DecodeError):
        group_id(bytes(size), BUNDLES[:1])


# -- group messages ------------------------------------------------------------------------

@settings(max_examples=60)
@given(timestamps, parent_lists, bodies)
def test_round_trip(timestamp_ms: int, parents: list[bytes], body: str) -> None:
    blob, sent = seal_group_message(AUTHOR, KEY, GID, timestamp_ms=timestamp_ms,
                                    parents=parents, body=body)
    assert len(blob) == BLOB_SIZE
    received = open_group_message(KEY, GID, blob)
    assert received == sent
    assert (received.author, received.timestamp_ms, received.parents, received.body) \
        == (AUTHOR.public_key, timestamp_ms, tuple(parents), body)


def test_inner_layout_and_message_hash() -> None:
    parents = [b"p" * 32, b"q" * 32]
    blob, message = seal_group_message(AUTHOR, KEY, GID, timestamp_ms=0x0102030405060708,
                                       parents=parents, body="héllo")
    inner = open_inner(blob)
    body = "héllo".encode()
    signed = (b"\x01" + AUTHOR.public_key + bytes.fromhex("0102030405060708") + b"\x02"
              + b"p" * 32 + b"q" * 32 + struct.pack(">H", len(body)) + body)
    signature = AUTHOR.sign(b"nyth-group-msg-v1" + GID + signed)
    assert inner == signed + signature + bytes(INNER_SIZE - len(signed) - 64)
    assert message.hash == hashlib.blake2b(GID + signed + signature, digest_size=32,
                                           person=b"nyth-gmsg-hash").digest()


@settings(max_examples=60)
@given(timestamps, parent_lists, bodies.filter(lambda t: len(t.encode()) >= 8))
def test_blob_hides_body_author_and_group(timestamp_ms: int, parents: list[bytes],
                                          body: str) -> None:
    blob, _ = seal_group_message(AUTHOR, KEY, GID, timestamp_ms=timestamp_ms,
                                 parents=parents, body=body)
    for secret in (body.encode(), AUTHOR.public_key, GID, KEY, *parents):
        assert secret not in blob


@settings(max_examples=30)
@given(st.sampled_from(["x", "é" * 822, "x" * MAX_BODY_BYTES, "😀" * 411]),
       st.integers(0, MAX_PARENTS))
def test_all_blobs_have_the_same_length(body: str, n_parents: int) -> None:
    blob, _ = seal_group_message(AUTHOR, KEY, GID, timestamp_ms=0,
                                 parents=[bytes([i]) * 32 for i in range(n_parents)], body=body)
    assert len(blob) == BLOB_SIZE


def test_same_message_twice_gives_unrelated_blobs() -> None:
    one, m1 = seal_group_message(AUTHOR, KEY, GID, timestamp_ms=1, parents=[], body="same")
    two, m2 = seal_group_message(AUTHOR, KEY, GID, timestamp_ms=1, parents=[], body="same")
    assert one[:24] != two[:24] and one != two
    assert m1.hash == m2.hash  # ed25519 is deterministic: same content, same hash


@settings(max_examples=30)
@given(bodies)
def test_blob_for_group_a_does_not_open_in_group_b(body: str) -> None:
    key_b = new_group_key()
    gid_b = group_id(key_b, BUNDLES[:1])
    blob, _ = seal_group_message(AUTHOR, KEY, GID, timestamp_ms=0, parents=[], body=body)
    with pytest.raises(AuthenticationError):
        open_group_message(key_b, gid_b, blob)
    with pytest.raises(AuthenticationError):
        open_group_message(key_b, GID, blob)


def test_same_key_other_group_id_fails_signature() -> None:
    """Same key on other servers is another group: the signature binds the group id."""
    other_gid = group_id(KEY, BUNDLES[1:2])
    blob, _ = seal_group_message(AUTHOR, KEY, GID, timestamp_ms=0, parents=[], body="hi")
    with pytest.raises(AuthenticationError, match="signature"):
        open_group_message(KEY, other_gid, blob)


@settings(max_examples=80)
@given(st.one_of(st.integers(0, 8 * 200 - 1), st.integers(0, 8 * BLOB_SIZE - 1)))
def test_any_flipped_bit_fails_authentication(bit: int) -> None:
    blob, _ = seal_group_message(AUTHOR, KEY, GID, timestamp_ms=5, parents=[b"p" * 32],
                                 body="body")
    with pytest.raises(AuthenticationError):
        open_group_message(KEY, GID, flip(blob, bit))


@settings(max_examples=50)
@given(st.integers(0, BLOB_SIZE - 1), st.binary(min_size=1, max_size=64))
def test_truncation_and_extension_are_rejected(cut: int, extra: bytes) -> None:
    blob, _ = seal_group_message(AUTHOR, KEY, GID, timestamp_ms=5, parents=[], body="body")
    for bad in (blob[:cut], blob + extra):
        with pytest.raises(DecodeError):
            open_group_message(KEY, GID, bad)


@settings(max_examples=50)
@given(st.binary(min_size=BLOB_SIZE, max_size=BLOB_SIZE))
def test_random_blob_is_not_ours(blob: bytes) -> None:
    with pytest.raises(AuthenticationError):
        open_group_message(KEY, GID, blob)


def _signed_inner(*, version: int = 1, n_parents: int | None = None,
                  parents: tuple[bytes, ...] = (), body: bytes = b"hi",
                  body_len: int | None = None, signer: Identity = AUTHOR,
                  padding: bytes = b"") -> bytes:
    signed = (struct.pack(">B32sQB", version, AUTHOR.public_key, 7,
                          len(parents) if n_parents is None else n_parents)
              + b"".join(parents)
              + struct.pack(">H", len(body) if body_len is None else body_len) + body)
    inner = signed + signer.sign(b"nyth-group-msg-v1" + GID + signed) + padding
    return inner + bytes(INNER_SIZE - len(inner))


@pytest.mark.parametrize(("inner", "error"), [
    (_signed_inner(version=3), DecodeError),
    (_signed_inner(version=2), REJECT),                           # v1 layout read as v2
    (_signed_inner(version=0), DecodeError),
    (_signed_inner(n_parents=MAX_PARENTS + 1, parents=(b"p" * 32,) * 9), DecodeError),
    (_signed_inner(n_parents=255), DecodeError),
    (_signed_inner(body=b"", body_len=0), DecodeError),
    (_signed_inner(body_len=MAX_BODY_BYTES + 1), DecodeError),
    (_signed_inner(body_len=0xFFFF), DecodeError),
    (_signed_inner(body=b"\xff\xfe"), DecodeError),               # signed, but not UTF-8
    (_signed_inner(body=b"\xed\xa0\x80"), DecodeError),           # encoded surrogate
    (_signed_inner(padding=b"\x01"), DecodeError),
    (_signed_inner(signer=Identity.from_seed(b"m" * 32)), AuthenticationError),
    (_signed_inner(body_len=1), REJECT),                          # shifts the signature
    (bytes(INNER_SIZE), DecodeError),
    (b"\x01" + bytes(INNER_SIZE - 1), DecodeError),
])
def test_malformed_message_from_a_key_holder_is_rejected(
        inner: bytes, error: type[Exception] | tuple[type[Exception], ...]) -> None:
    with pytest.raises(error):
        open_group_message(KEY, GID, seal_inner(inner))


def test_well_formed_hand_built_message_opens() -> None:
    message = open_group_message(KEY, GID, seal_inner(_signed_inner(parents=(b"p" * 32,))))
    assert message.body == "hi" and message.parents == (b"p" * 32,)


@settings(max_examples=80)
@given(st.binary(max_size=400), st.integers(0, 255), st.integers(0, 0xFFFF))
def test_arbitrary_inner_from_a_key_holder_never_crashes(head: bytes, n: int,
                                                         body_len: int) -> None:
    inner = (b"\x01" + AUTHOR.public_key + bytes(8) + bytes([n]) + head
             + struct.pack(">H", body_len))[:INNER_SIZE]
    inner += bytes(INNER_SIZE - len(inner))
    with pytest.raises(REJECT):
        open_group_message(KEY, GID, seal_inner(inner))


@pytest.mark.parametrize("kwargs", [
    {"body": ""}, {"body": "x" * (MAX_BODY_BYTES + 1)}, {"body": "é" * 823},
    {"parents": [b"p" * 32] * (MAX_PARENTS + 1)}, {"parents": [b"p" * 31]},
    {"timestamp_ms": -1}, {"timestamp_ms": 1 << 63}, {"body": "\ud800"},
])
def test_seal_refuses_invalid_messages(kwargs: dict[str, Any]) -> None:
    fields: dict[str, Any] = {"timestamp_ms": 0, "parents": [], "body": "x", **kwargs}
    with pytest.raises(DecodeError):
        seal_group_message(AUTHOR, KEY, GID, **fields)


# -- invites -------------------------------------------------------------------------------

invites = st.builds(
    Invite,
    name=st.text(max_size=MAX_NAME_BYTES).filter(lambda n: len(n.encode()) <= MAX_NAME_BYTES),
    key=st.binary(min_size=KEY_SIZE, max_size=KEY_SIZE),
    bundles=st.lists(st.sampled_from(SIGNED), min_size=1, max_size=MAX_SERVERS).map(tuple),
)


def decodes_canonically_or_rejects(data: bytes) -> None:
    try:
        invite = Invite.decode(data)
    except REJECT:
        return
    assert invite.encode() == data


def test_invite_layout() -> None:
    invite = Invite("club", KEY, (SIGNED[0], SIGNED[1]))
    assert invite.encode() == INVITE_MAGIC + KEY + b"\x04club\x02" + SIGNED[0] + SIGNED[1]
    assert invite.servers == BUNDLES[:2]
    assert invite.group_id == group_id(KEY, BUNDLES[:2])


def test_an_invite_never_shows_its_group_key() -> None:
    invite = Invite("club", KEY, (SIGNED[0],))
    for shown in (repr(invite), str(invite)):
        assert KEY.hex() not in shown and repr(KEY) not in shown and "club" in shown


@settings(max_examples=60)
@given(invites)
def test_invite_round_trip(invite: Invite) -> None:
    assert Invite.decode(invite.encode()) == invite


@settings(max_examples=120)
@given(invites, st.data())
def test_invite_flipped_bit_decodes_canonically_or_is_rejected(invite: Invite,
                                                                data: st.DataObject) -> None:
    encoded = invite.encode()
    decodes_canonically_or_rejects(flip(encoded, data.draw(st.integers(0, 8 * len(encoded) - 1))))


def test_invite_flips_outside_key_and_name_are_always_rejected() -> None:
    encoded = Invite("n", KEY, (SIGNED[0],)).encode()
    name_len_at = len(INVITE_MAGIC) + KEY_SIZE
    for bit in [*range(8 * len(INVITE_MAGIC)),                         # magic
                *range(8 * name_len_at, 8 * (name_len_at + 1)),        # name length
                *range(8 * (name_len_at + 2), 8 * len(encoded))]:      # count, bundles
        with pytest.raises(REJECT):
            Invite.decode(flip(encoded, bit))


@settings(max_examples=80)
@given(invites, st.data())
def test_invite_truncation_and_extension_are_rejected(invite: Invite,
                                                      data: st.DataObject) -> None:
    encoded = invite.encode()
    cut = data.draw(st.integers(0, len(encoded) - 1))
    extra = data.draw(st.binary(min_size=1, max_size=BUNDLE_SIZE + 1))
    for bad in (encoded[:cut], encoded + extra):
        with pytest.raises(REJECT):
            Invite.decode(bad)


@settings(max_examples=80)
@given(st.binary(max_size=300).map(lambda b: INVITE_MAGIC + b) | st.binary(max_size=100))
def test_invite_arbitrary_bytes_never_crash(data: bytes) -> None:
    decodes_canonically_or_rejects(data)


def test_invite_specific_rejections() -> None:
    head = INVITE_MAGIC + KEY
    bad = [
        b"", INVITE_MAGIC, head, head + b"\x00",                          # truncated
        head + b"\x00\x00",                                               # no servers
        head + b"\x00\x09" + SIGNED[0] * 9,                               # too many servers
        head + bytes([MAX_NAME_BYTES + 1]) + b"x" * 65 + b"\x01" + SIGNED[0],
        head + b"\x02\xff\xfe\x01" + SIGNED[0],                           # name not UTF-8
        head + b"\x00\x01" + SIGNED[0][:-1] + b"\x00",                    # bad signature
        head + b"\x00\x02" + SIGNED[0],                                   # count > present
    ]
    for data in bad:
        with pytest.raises(REJECT):
            Invite.decode(data)


@pytest.mark.parametrize("invite", [
    Invite("x" * (MAX_NAME_BYTES + 1), KEY, (SIGNED[0],)),
    Invite("é" * 33, KEY, (SIGNED[0],)),
    Invite("x", KEY, ()),
    Invite("x", KEY, (*SIGNED[:MAX_SERVERS], SIGNED[0])),
    Invite("x", KEY[:31], (SIGNED[0],)),
    Invite("x", KEY, (SIGNED[0][:-1],)),
    Invite("\ud800", KEY, (SIGNED[0],)),
])
def test_invite_encoder_refuses_what_it_could_not_decode(invite: Invite) -> None:
    with pytest.raises(DecodeError):
        invite.encode()


# -- wire forms, v2 messages and moves -------------------------------------------------------

OWNER = Identity.from_seed(b"o" * 32)


def _v2_inner(kind: int, body: bytes, *, parents: tuple[bytes, ...] = (), body_len: int | None = None,
              signer: Identity = AUTHOR, gid: bytes = GID) -> bytes:
    signed = (struct.pack(">BB32sQB", 2, kind, signer.public_key, 9, len(parents))
              + b"".join(parents) + struct.pack(">H", len(body) if body_len is None else body_len)
              + body)
    return signed + signer.sign(b"nyth-group-msg-v1" + gid + signed)


def padded(wire: bytes) -> bytes:
    return wire + bytes(INNER_SIZE - len(wire))


def test_v2_sizes_and_what_fits_where() -> None:
    assert MAX_BODY_BYTES_V2 == MAX_BODY_BYTES - 1 == 1643
    assert MAX_WIRE_SIZE == INNER_SIZE == 2008
    assert BUNDLE_SIZE_V2 == BUNDLE_SIZE_V1 + 1 == 165
    assert MAX_MOVE_BYTES == 4 + 1 + 8 * 166 == 1333 <= MAX_BODY_BYTES_V2
    assert MAX_INVITE_V2_BYTES == 8 + 32 + 32 + 4 + 1 + 64 + 1 + 8 * 166 == 1470 <= MAX_BODY
    # 11 bundles would still fit in one P2P body; a group has at most MAX_SERVERS = 8.
    one = 1 + BUNDLE_SIZE_V2
    assert MAX_INVITE_V2_BYTES + 3 * one <= MAX_BODY < MAX_INVITE_V2_BYTES + 4 * one
    largest = Invite("x" * MAX_NAME_BYTES, KEY, tuple(SIGNED_V2[:MAX_SERVERS]),
                     OWNER.public_key, MAX_EPOCH).encode()
    assert len(largest) == MAX_INVITE_V2_BYTES
    assert Envelope(bytes(16), MessageKind.GROUP_INVITE, 0, largest).encode()
    biggest_move = Move(MAX_EPOCH, tuple(SIGNED_V2[:MAX_SERVERS])).encode()
    assert len(biggest_move) == MAX_MOVE_BYTES


@settings(max_examples=40)
@given(timestamps, parent_lists, bodies)
def test_wire_form_round_trips_and_reseals_to_the_same_message(timestamp_ms: int,
                                                               parents: list[bytes],
                                                               body: str) -> None:
    blob, sent = seal_group_message(AUTHOR, KEY, GID, timestamp_ms=timestamp_ms,
                                    parents=parents, body=body)
    assert padded(sent.wire) == open_inner(blob)
    assert decode_wire(GID, sent.wire) == sent
    again = seal_wire(KEY, sent.wire)
    assert again != blob and len(again) == BLOB_SIZE
    assert open_group_message(KEY, GID, again) == sent
    assert open_group_message(KEY, GID, again).wire == sent.wire


def test_message_equality_ignores_the_wire_form() -> None:
    _, sent = seal_group_message(AUTHOR, KEY, GID, timestamp_ms=1, parents=[], body="hi")
    rebuilt = GroupMessage(sent.author, sent.timestamp_ms, sent.parents, sent.body, sent.hash)
    assert rebuilt == sent and rebuilt.wire == b"" and rebuilt.kind == GroupKind.TEXT


def test_wire_form_rejections() -> None:
    _, sent = seal_group_message(AUTHOR, KEY, GID, timestamp_ms=1, parents=[b"p" * 32], body="hi")
    for cut in range(len(sent.wire)):
        with pytest.raises(DecodeError):
            decode_wire(GID, sent.wire[:cut])
    for extra in (b"\x00", b"\x01", bytes(64)):
        with pytest.raises(DecodeError):
            decode_wire(GID, sent.wire + extra)
    with pytest.raises(AuthenticationError):
        decode_wire(group_id(KEY, BUNDLES[1:2]), sent.wire)
    with pytest.raises(DecodeError):
        decode_wire(GID, bytes(MAX_WIRE_SIZE + 1))
    for bad in (b"", bytes(MAX_WIRE_SIZE + 1)):
        with pytest.raises(DecodeError):
            seal_wire(KEY, bad)


@settings(max_examples=60)
@given(st.binary(max_size=MAX_WIRE_SIZE + 2))
def test_arbitrary_wire_never_crashes(data: bytes) -> None:
    with pytest.raises(REJECT):
        decode_wire(GID, data)


def test_largest_messages_fill_the_wire_exactly() -> None:
    parents = [bytes([i]) * 32 for i in range(MAX_PARENTS)]
    _, text = seal_group_message(AUTHOR, KEY, GID, timestamp_ms=0, parents=parents,
                                 body="x" * MAX_BODY_BYTES)
    assert len(text.wire) == MAX_WIRE_SIZE
    wire = _v2_inner(99, bytes(MAX_BODY_BYTES_V2), parents=tuple(parents))
    assert len(wire) == MAX_WIRE_SIZE
    assert decode_wire(GID, wire).kind == 99


def test_v2_text_decodes_and_is_another_message_than_v1() -> None:
    wire = _v2_inner(GroupKind.TEXT, "héllo".encode())
    message = open_group_message(KEY, GID, seal_inner(padded(wire)))
    assert (message.kind, message.body, message.move) == (GroupKind.TEXT, "héllo", None)
    assert message.hash == hashlib.blake2b(GID + wire, digest_size=32,
                                           person=b"nyth-gmsg-hash").digest()
    _, v1 = seal_group_message(AUTHOR, KEY, GID, timestamp_ms=9, parents=[], body="héllo")
    assert v1.hash != message.hash


def test_text_is_sealed_as_v1_so_older_clients_read_it() -> None:
    blob, _ = seal_group_message(AUTHOR, KEY, GID, timestamp_ms=0, parents=[], body="x")
    assert open_inner(blob)[0] == 1


def test_unknown_kinds_are_opaque_dag_nodes() -> None:
    wire = _v2_inner(200, b"\xff" * 10, parents=(b"p" * 32,))
    message = decode_wire(GID, wire)
    assert (message.kind, message.body, message.move, message.parents) == (200, "", None, (b"p" * 32,))
    assert not isinstance(message.kind, GroupKind)
    assert decode_wire(GID, _v2_inner(200, b"")).kind == 200


def move_of(n: int, epoch: int = 1) -> Move:
    return Move(epoch, tuple(SIGNED[:n]))


@settings(max_examples=40)
@given(st.integers(1, MAX_EPOCH), st.lists(st.sampled_from(range(MAX_SERVERS + 1)), min_size=1,
                                           max_size=MAX_SERVERS, unique=True))
def test_move_round_trip(epoch: int, chosen: list[int]) -> None:
    move = Move(epoch, tuple(MIXED[i] for i in chosen))
    data = move.encode()
    assert data == struct.pack(">IB", epoch, len(chosen)) + prefixed(*move.bundles)
    assert Move.decode(data) == move
    assert [b.onion for b in move.servers] == [BUNDLES[i].onion for i in chosen]


def test_move_message_layout_and_round_trip() -> None:
    move = move_of(3, epoch=7)
    blob, sent = seal_group_move(OWNER, KEY, GID, timestamp_ms=0x0102030405060708,
                                 parents=[b"p" * 32], move=move)
    body = move.encode()
    signed = (b"\x02\x02" + OWNER.public_key + bytes.fromhex("0102030405060708") + b"\x01"
              + b"p" * 32 + struct.pack(">H", len(body)) + body)
    signature = OWNER.sign(b"nyth-group-msg-v1" + GID + signed)
    assert open_inner(blob) == padded(signed + signature)
    received = open_group_message(KEY, GID, blob)
    assert received == sent
    assert (received.kind, received.move, received.body) == (GroupKind.MOVE, move, "")
    assert received.hash == hashlib.blake2b(GID + signed + signature, digest_size=32,
                                            person=b"nyth-gmsg-hash").digest()


@pytest.mark.parametrize("body", [
    b"",                                                              # truncated
    struct.pack(">IB", 0, 1) + prefixed(SIGNED[0]),                   # epoch 0
    struct.pack(">IB", 1, 0),                                         # no servers
    struct.pack(">IB", 1, 9) + prefixed(*SIGNED[:9]),                 # too many
    struct.pack(">IB", 1, 2) + prefixed(SIGNED[0], SIGNED[0]),        # a server twice
    struct.pack(">IB", 1, 2) + prefixed(SIGNED[0], SIGNED_V2[0]),     # a server twice
    struct.pack(">IB", 1, 2) + prefixed(SIGNED[0]),                   # count > present
    struct.pack(">IB", 1, 1) + prefixed(SIGNED[0]) + b"\x00",         # trailing byte
    struct.pack(">IB", 1, 1) + prefixed(SIGNED[0][:-1] + b"\x00"),    # bad bundle signature
    struct.pack(">IB", 1, 1) + SIGNED[0],                             # no length prefix
    struct.pack(">IB", 1, 1) + b"\xa4" + SIGNED_V2[0],                # v2 bundle said v1
    struct.pack(">IB", 1, 1) + b"\xa5" + SIGNED[0] + b"\x00",         # v1 bundle said v2
    struct.pack(">IB", 1, 1) + b"\xff" + SIGNED[0] + bytes(91),       # an unknown size
])
def test_malformed_move_from_a_key_holder_is_rejected(body: bytes) -> None:
    with pytest.raises(REJECT):
        open_group_message(KEY, GID, seal_inner(padded(_v2_inner(GroupKind.MOVE, body))))


@pytest.mark.parametrize(("kind", "body", "body_len"), [
    (0, b"hi", None),                                 # kind 0 reserved
    (GroupKind.TEXT, b"", None),                      # empty text
    (GroupKind.TEXT, b"\xff\xfe", None),              # not UTF-8
    (9, b"", MAX_BODY_BYTES_V2 + 1),                  # body length over the v2 limit
])
def test_malformed_v2_messages_are_rejected(kind: int, body: bytes, body_len: int | None) -> None:
    wire = _v2_inner(kind, body, body_len=body_len)[:INNER_SIZE]
    with pytest.raises(REJECT):
        open_group_message(KEY, GID, seal_inner(padded(wire)))


@pytest.mark.parametrize("move", [
    Move(0, (SIGNED[0],)), Move(MAX_EPOCH + 1, (SIGNED[0],)), Move(1, ()),
    Move(1, tuple(SIGNED[:MAX_SERVERS + 1])), Move(1, (SIGNED[0], SIGNED[0])),
    Move(1, (SIGNED[0][:-1],)), Move(1, (SIGNED_V2[0] + b"\x00",)),
    Move(1, (SIGNED[0], SIGNED_V2[0])),
])
def test_move_encoder_refuses_what_it_could_not_decode(move: Move) -> None:
    with pytest.raises(REJECT):
        move.encode()


# -- invites v2 -------------------------------------------------------------------------------

invites_v2 = st.builds(
    Invite,
    name=st.text(max_size=MAX_NAME_BYTES).filter(lambda n: len(n.encode()) <= MAX_NAME_BYTES),
    key=st.binary(min_size=KEY_SIZE, max_size=KEY_SIZE),
    bundles=st.lists(st.sampled_from(MIXED), min_size=1, max_size=MAX_SERVERS,
                     unique=True).map(tuple),
    owner=st.sampled_from([OWNER.public_key, AUTHOR.public_key]),
    epoch=st.integers(0, MAX_EPOCH),
)


def test_invite_v2_layout_and_group_id() -> None:
    invite = Invite("club", KEY, (SIGNED[0], SIGNED_V2[1]), OWNER.public_key, 0x01020304)
    assert invite.encode() == (INVITE_MAGIC_V2 + KEY + OWNER.public_key + b"\x01\x02\x03\x04"
                               + b"\x04club\x02" + b"\xa4" + SIGNED[0] + b"\xa5" + SIGNED_V2[1])
    assert invite.version == 2
    expected = hashlib.blake2b(KEY + OWNER.public_key, digest_size=16,
                               person=b"nyth-group-id2").digest()
    assert invite.group_id == genesis_group_id(KEY, OWNER.public_key) == expected


def test_v2_group_id_survives_other_servers_but_binds_key_and_owner() -> None:
    before = Invite("club", KEY, (SIGNED[0],), OWNER.public_key)
    after = Invite("club", KEY, (SIGNED[2], SIGNED[3]), OWNER.public_key, epoch=5)
    assert before.group_id == after.group_id
    assert Invite("club", KEY, (SIGNED[0],), AUTHOR.public_key).group_id != before.group_id
    assert Invite("club", bytes(32), (SIGNED[0],), OWNER.public_key).group_id != before.group_id
    # ... and is never a v1 id of the same key
    assert before.group_id != Invite("club", KEY, (SIGNED[0],)).group_id


def test_v1_invites_still_decode_with_the_old_id_and_no_owner() -> None:
    data = INVITE_MAGIC + KEY + b"\x04club\x01" + SIGNED[0]
    invite = Invite.decode(data)
    assert (invite.version, invite.owner, invite.epoch) == (1, None, 0)
    assert invite.group_id == group_id(KEY, BUNDLES[:1])
    assert invite.encode() == data


def test_invite_create_makes_a_v2_group_with_a_fresh_key() -> None:
    one = Invite.create("club", OWNER.public_key, SIGNED[:2])
    two = Invite.create("club", OWNER.public_key, SIGNED[:2])
    assert one.version == 2 and one.owner == OWNER.public_key and one.epoch == 0
    assert one.key != two.key and one.group_id != two.group_id
    assert Invite.decode(one.encode()) == one
    with pytest.raises(DecodeError):
        Invite.create("club", OWNER.public_key, [])


@settings(max_examples=60)
@given(invites_v2)
def test_invite_v2_round_trip(invite: Invite) -> None:
    assert Invite.decode(invite.encode()) == invite


@settings(max_examples=100)
@given(invites_v2, st.data())
def test_invite_v2_flipped_bit_decodes_canonically_or_is_rejected(invite: Invite,
                                                                   data: st.DataObject) -> None:
    encoded = invite.encode()
    decodes_canonically_or_rejects(flip(encoded, data.draw(st.integers(0, 8 * len(encoded) - 1))))


@settings(max_examples=60)
@given(invites_v2, st.data())
def test_invite_v2_truncation_and_extension_are_rejected(invite: Invite,
                                                         data: st.DataObject) -> None:
    encoded = invite.encode()
    cut = data.draw(st.integers(0, len(encoded) - 1))
    extra = data.draw(st.binary(min_size=1, max_size=BUNDLE_SIZE_V2 + 2))
    for bad in (encoded[:cut], encoded + extra):
        with pytest.raises(REJECT):
            Invite.decode(bad)


@settings(max_examples=80)
@given(st.binary(max_size=400).map(lambda b: INVITE_MAGIC_V2 + b))
def test_invite_v2_arbitrary_bytes_never_crash(data: bytes) -> None:
    decodes_canonically_or_rejects(data)


def test_invite_v2_specific_rejections() -> None:
    head = INVITE_MAGIC_V2 + KEY + OWNER.public_key + bytes(4)
    not_a_point = bytes([1]) + bytes(30) + bytes([0x80])  # y = 1 with the sign bit: not canonical
    bad = [
        INVITE_MAGIC_V2, head, head + b"\x00",                            # truncated
        head + b"\x00\x00",                                               # no servers
        head + b"\x00\x02" + prefixed(SIGNED[0], SIGNED[0]),              # a server twice
        head + b"\x00\x02" + prefixed(SIGNED_V2[0], SIGNED[0]),           # a server twice
        head + b"\x00\x09" + prefixed(*SIGNED[:9]),                       # too many servers
        INVITE_MAGIC_V2 + KEY + bytes(32) + bytes(4) + b"\x00\x01" + prefixed(SIGNED[0]),
        INVITE_MAGIC_V2 + KEY + not_a_point + bytes(4) + b"\x00\x01" + prefixed(SIGNED[0]),
        head + b"\x02\xff\xfe\x01" + prefixed(SIGNED[0]),                 # name not UTF-8
        head + b"\x00\x01" + SIGNED[0],                                   # no length prefix
        head + b"\x00\x01" + b"\xa5" + SIGNED[0] + b"\x00",                # a v1 bundle said v2
        head + b"\x00\x01" + b"\x00",                                     # length 0
        head + b"\x00\x01" + prefixed(SIGNED[0]) + b"\xa4",                # trailing length
    ]
    for data in bad:
        with pytest.raises(REJECT):
            Invite.decode(data)


@pytest.mark.parametrize("invite", [
    Invite("x", KEY, (SIGNED[0],), bytes(32)),
    Invite("x", KEY, (SIGNED[0],), OWNER.public_key[:31]),
    Invite("x", KEY, (SIGNED[0], SIGNED[0]), OWNER.public_key),
    Invite("x", KEY, (SIGNED[0],), OWNER.public_key, -1),
    Invite("x", KEY, (SIGNED[0],), OWNER.public_key, MAX_EPOCH + 1),
    Invite("x", KEY, (SIGNED[0],), None, 1),               # a v1 invite has no epoch
    Invite("x", KEY, (SIGNED_V2[0],), None),               # a v1 invite has v1 bundles only
    Invite("x", KEY, (SIGNED[1], SIGNED_V2[0]), None),
    Invite("x", KEY, (SIGNED[0], SIGNED_V2[0]), OWNER.public_key),   # a server twice
    Invite("x", KEY, (), OWNER.public_key),
    Invite("x" * (MAX_NAME_BYTES + 1), KEY, (SIGNED[0],), OWNER.public_key),
    Invite("x", KEY, tuple(SIGNED[:MAX_SERVERS + 1]), OWNER.public_key),
])
def test_invite_v2_encoder_refuses_what_it_could_not_decode(invite: Invite) -> None:
    with pytest.raises(REJECT):
        invite.encode()


# -- trial decryption over several groups' keys -------------------------------------------

def test_trial_open_finds_the_one_key_that_opens_a_blob() -> None:
    author = Identity.generate()
    keys = [new_group_key() for _ in range(5)]
    gid = os.urandom(GROUP_ID_SIZE)
    blob, message = seal_group_message(author, keys[3], gid, timestamp_ms=1, parents=[],
                                       body="hello")
    found = trial_open(keys, blob)
    assert found is not None and found[0] == 3
    assert group_proto.open_inner(gid, found[1]) == message
    # the same blob, read by the single-key path, is the same message
    assert open_group_message(keys[3], gid, blob) == message
    assert trial_open(keys, blob, start=4) is None
    assert trial_open(keys[:3] + keys[4:], blob) is None
    assert trial_open([], blob) is None


def test_trial_open_refuses_bad_sizes_and_a_wrong_group_id() -> None:
    key = new_group_key()
    gid = os.urandom(GROUP_ID_SIZE)
    blob, _ = seal_group_message(Identity.generate(), key, gid, timestamp_ms=1, parents=[],
                                 body="x")
    with pytest.raises(DecodeError):
        trial_open([key], blob[:-1])
    with pytest.raises(ValueError):
        trial_open([key[:31]], blob)
    found = trial_open([key], blob)
    assert found is not None
    with pytest.raises(AuthenticationError):  # the signature binds the group id
        group_proto.open_inner(os.urandom(GROUP_ID_SIZE), found[1])
    with pytest.raises(DecodeError):
        group_proto.open_inner(gid, found[1][:-1])
