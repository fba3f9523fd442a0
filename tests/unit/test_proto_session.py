"""P2P sessions: 3DH handshake and fixed-size encrypted packets (sans-IO state machine)."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator

import nacl.bindings
import nacl.public
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nyth.errors import AuthenticationError, DecodeError, ProtocolError
from nyth.proto import session as S
from nyth.proto.identity import Identity
from nyth.proto.p2p import MAX_BODY, MSG_ID_SIZE, Ack, Envelope, MessageKind
from nyth.proto.session import (
    MAGIC,
    MAX_DATA,
    PACKET_SIZE,
    AckReceived,
    HandshakeComplete,
    MessageReceived,
    P2PConnection,
    PacketCipher,
    State,
)

ALICE = Identity.from_seed(b"A" * 32)
BOB = Identity.from_seed(b"B" * 32)
MALLORY = Identity.from_seed(b"M" * 32)
REJECT = (DecodeError, AuthenticationError)

_P = 2**255 - 19
LOW_ORDER_X25519 = [
    (u | high).to_bytes(32, "little")
    for u in (0, 1, _P - 1, _P, _P + 1,
              325606250916557431795983626356110631294008115727848805560023387167927233504,
              39382357235489614581723060781553021112529911719440698176882885853963445705823)
    for high in (0, 1 << 255)
]
SMALL_ORDER_ED25519 = [bytes.fromhex(h) for h in (
    "0100000000000000000000000000000000000000000000000000000000000000",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
)]



def big(lo: int, hi: int) -> st.SearchStrategy[bytes]:
    """Large byte strings, cheaply: Hypothesis draws only a seed and a length."""
    return st.builds(lambda seed, n: random.Random(seed).randbytes(n),
                     st.integers(0, 2**32), st.integers(lo, hi))


envelopes = st.builds(
    Envelope,
    msg_id=st.binary(min_size=MSG_ID_SIZE, max_size=MSG_ID_SIZE),
    kind=st.sampled_from(MessageKind),
    timestamp_ms=st.integers(0, (1 << 63) - 1),
    body=st.binary(max_size=64) | big(MAX_BODY - 10, MAX_BODY),
)
acks = st.builds(Ack, st.binary(min_size=MSG_ID_SIZE, max_size=MSG_ID_SIZE))
payloads = envelopes | acks


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def expected_event(payload: Envelope | Ack) -> MessageReceived | AckReceived:
    return AckReceived(payload.msg_id) if isinstance(payload, Ack) else MessageReceived(payload)


def whole(data: bytes) -> Iterator[bytes]:
    if data:
        yield data


class Pipe:
    """Two connections wired back to back; `chunks` decides how bytes are split."""

    def __init__(self, initiator: P2PConnection, responder: P2PConnection,
                 chunks: Callable[[bytes], Iterator[bytes]] = whole) -> None:
        self.i, self.r, self.chunks = initiator, responder, chunks
        self.events: dict[str, list[object]] = {"i": [], "r": []}

    def pump(self) -> None:
        moved = True
        while moved:
            moved = False
            for src, dst, name in ((self.i, self.r, "r"), (self.r, self.i, "i")):
                data = src.data_to_send()
                for piece in self.chunks(data):
                    moved = True
                    self.events[name] += dst.receive_data(piece)


def connected(chunks: Callable[[bytes], Iterator[bytes]] = whole) -> Pipe:
    pipe = Pipe(P2PConnection(ALICE, BOB.public_key), P2PConnection(BOB), chunks)
    pipe.pump()
    assert pipe.i.state is pipe.r.state is State.ESTABLISHED
    return pipe


# -- the happy path ---------------------------------------------------------------------------

def test_handshake_authenticates_both_sides_and_frames_are_fixed_size() -> None:
    initiator, responder = P2PConnection(ALICE, BOB.public_key), P2PConnection(BOB)
    assert initiator.initiator and not responder.initiator
    hello = initiator.data_to_send()
    assert len(hello) == PACKET_SIZE and hello.startswith(MAGIC + b"\x01" + ALICE.public_key)
    assert responder.receive_data(hello) == []
    assert responder.remote_public_key == ALICE.public_key
    assert responder.state is State.HANDSHAKING
    reply = responder.data_to_send()
    assert len(reply) == PACKET_SIZE and reply.startswith(MAGIC + b"\x02")
    assert initiator.receive_data(reply) == [HandshakeComplete(BOB.public_key)]
    confirm = initiator.data_to_send()
    assert len(confirm) == PACKET_SIZE and confirm.startswith(MAGIC + b"\x03")
    assert responder.receive_data(confirm) == [HandshakeComplete(ALICE.public_key)]
    assert initiator.state is responder.state is State.ESTABLISHED
    assert initiator.data_to_send() == responder.data_to_send() == b""


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.booleans(), payloads), max_size=6))
def test_messages_flow_both_ways_in_order(traffic: list[tuple[bool, Envelope | Ack]]) -> None:
    pipe = connected()
    for from_initiator, payload in traffic:
        sender = pipe.i if from_initiator else pipe.r
        sender.send(payload)
        out = sender.data_to_send()
        assert len(out) == PACKET_SIZE
        receiver = pipe.r if from_initiator else pipe.i
        assert receiver.receive_data(out) == [expected_event(payload)]


@settings(max_examples=25, deadline=None)
@given(st.lists(payloads, max_size=4), st.lists(payloads, max_size=4))
def test_messages_queued_before_the_handshake_are_sent_after_it(
        from_i: list[Envelope | Ack], from_r: list[Envelope | Ack]) -> None:
    initiator, responder = P2PConnection(ALICE, BOB.public_key), P2PConnection(BOB)
    for payload in from_i:
        initiator.send(payload)
    for payload in from_r:
        responder.send(payload)
    hello = initiator.data_to_send()
    assert len(hello) == PACKET_SIZE  # HELLO only: nothing is sealed before the keys exist
    assert responder.data_to_send() == b""
    assert responder.receive_data(hello) == []
    reply = responder.data_to_send()
    assert len(reply) == PACKET_SIZE  # REPLY only: the caller is not yet authenticated
    events_i = initiator.receive_data(reply)
    confirm_and_data = initiator.data_to_send()
    assert len(confirm_and_data) == PACKET_SIZE * (1 + len(from_i))
    events_r = responder.receive_data(confirm_and_data)
    events_i += initiator.receive_data(responder.data_to_send())
    assert events_r == [HandshakeComplete(ALICE.public_key), *map(expected_event, from_i)]
    assert events_i == [HandshakeComplete(BOB.public_key), *map(expected_event, from_r)]


def _chunker(sizes: list[int]) -> Callable[[bytes], Iterator[bytes]]:
    def chunks(data: bytes) -> Iterator[bytes]:
        offset, k = 0, 0
        while offset < len(data):
            size = sizes[k % len(sizes)]
            k += 1
            yield data[offset: offset + size]
            offset += size
    return chunks


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 3 * PACKET_SIZE), min_size=1, max_size=12),
       st.lists(payloads, max_size=4), st.lists(payloads, max_size=4))
def test_arbitrary_chunking_gives_the_same_events(
        sizes: list[int], from_i: list[Envelope | Ack], from_r: list[Envelope | Ack]) -> None:
    runs = []
    for chunks in (whole, _chunker(sizes), _chunker([1, PACKET_SIZE - 1, 7])):
        pipe = Pipe(P2PConnection(ALICE, BOB.public_key), P2PConnection(BOB), chunks)
        for payload in from_i:
            pipe.i.send(payload)
        for payload in from_r:
            pipe.r.send(payload)
        pipe.pump()
        runs.append(pipe.events)
    assert runs[0] == runs[1] == runs[2]
    assert runs[0]["r"] == [HandshakeComplete(ALICE.public_key), *map(expected_event, from_i)]


def test_partial_frame_yields_nothing_until_complete() -> None:
    initiator, responder = P2PConnection(ALICE, BOB.public_key), P2PConnection(BOB)
    hello = initiator.data_to_send()
    assert responder.receive_data(hello[:-1]) == []
    assert responder.data_to_send() == b""
    assert responder.receive_data(b"") == []
    assert responder.receive_data(hello[-1:]) == []
    assert len(responder.data_to_send()) == PACKET_SIZE


def test_each_session_uses_fresh_keys() -> None:
    frames = []
    for _ in range(2):
        pipe = connected()
        pipe.i.send(Ack(bytes(16)))
        frames.append(pipe.i.data_to_send())
    assert frames[0] != frames[1]


# -- data packets --------------------------------------------------------------------------

@settings(max_examples=50)
@given(st.binary(max_size=100) | big(0, MAX_DATA) | big(MAX_DATA, MAX_DATA))
def test_packet_cipher_round_trip(data: bytes) -> None:
    key = os.urandom(32)
    frame = PacketCipher(key).seal(data)
    assert len(frame) == PACKET_SIZE
    assert PacketCipher(key).open(frame) == data


def test_packet_cipher_refuses_oversized_data() -> None:
    with pytest.raises(ValueError):
        PacketCipher(bytes(32)).seal(bytes(MAX_DATA + 1))


@settings(max_examples=80)
@given(st.binary(max_size=100), st.one_of(st.integers(0, 8 * 64 - 1),
                                         st.integers(0, 8 * PACKET_SIZE - 1)))
def test_any_flipped_bit_in_a_packet_fails_authentication(data: bytes, bit: int) -> None:
    key = os.urandom(32)
    frame = PacketCipher(key).seal(data)
    with pytest.raises(AuthenticationError):
        PacketCipher(key).open(flip(frame, bit))


@settings(max_examples=50)
@given(st.integers(0, PACKET_SIZE - 1), st.binary(min_size=1, max_size=64))
def test_truncated_or_extended_packet_is_rejected(cut: int, extra: bytes) -> None:
    key = os.urandom(32)
    frame = PacketCipher(key).seal(b"hello")
    for bad in (frame[:cut], frame + extra):
        with pytest.raises(DecodeError):
            PacketCipher(key).open(bad)


def test_packet_counters_make_replay_and_reorder_fail() -> None:
    key = os.urandom(32)
    sender, receiver = PacketCipher(key), PacketCipher(key)
    first, second = sender.seal(b"1"), sender.seal(b"2")
    with pytest.raises(AuthenticationError):
        PacketCipher(key).open(second)
    assert receiver.open(first) == b"1"
    with pytest.raises(AuthenticationError):
        receiver.open(first)


def test_authentic_packet_with_bad_length_or_padding_is_rejected() -> None:
    key = bytes(32)
    plain_size = PACKET_SIZE - 16
    nonce = bytes(24)
    for plain in ((MAX_DATA + 1).to_bytes(2, "big") + bytes(plain_size - 2),
                  (0xFFFF).to_bytes(2, "big") + bytes(plain_size - 2),
                  (1).to_bytes(2, "big") + b"x" + b"\x01" + bytes(plain_size - 4)):
        frame = nacl.bindings.crypto_secretbox(plain, nonce, key)
        with pytest.raises(DecodeError):
            PacketCipher(key).open(frame)


# -- the session rejects and closes ------------------------------------------------------------

def _assert_rejects(conn: P2PConnection, data: bytes,
                    errors: tuple[type[Exception], ...] = REJECT) -> None:
    with pytest.raises(errors):
        conn.receive_data(data)
    assert conn.state is State.CLOSED
    with pytest.raises(ProtocolError):
        conn.receive_data(b"")
    with pytest.raises(ProtocolError):
        conn.send(Ack(bytes(16)))


def _two_packets(pipe: Pipe) -> tuple[bytes, bytes]:
    pipe.i.send(Envelope(b"1" * 16, MessageKind.TEXT, 1, b"one"))
    pipe.i.send(Envelope(b"2" * 16, MessageKind.TEXT, 2, b"two"))
    out = pipe.i.data_to_send()
    return out[:PACKET_SIZE], out[PACKET_SIZE:]


def test_replayed_packet_is_rejected_and_closes() -> None:
    pipe = connected()
    first, _second = _two_packets(pipe)
    assert len(pipe.r.receive_data(first)) == 1
    _assert_rejects(pipe.r, first)


def test_reordered_packets_are_rejected_and_close() -> None:
    pipe = connected()
    _first, second = _two_packets(pipe)
    _assert_rejects(pipe.r, second)


def test_dropped_packet_is_detected() -> None:
    pipe = connected()
    first, _second = _two_packets(pipe)
    pipe.i.send(Ack(bytes(16)))
    third = pipe.i.data_to_send()
    assert pipe.r.receive_data(first)
    _assert_rejects(pipe.r, third)


def test_packet_from_another_session_is_rejected() -> None:
    one, two = connected(), connected()
    first, _ = _two_packets(one)
    _assert_rejects(two.r, first)


def test_initiators_own_packet_reflected_back_is_rejected() -> None:
    pipe = connected()
    first, _ = _two_packets(pipe)
    _assert_rejects(pipe.i, first)


@settings(max_examples=20, deadline=None)
@given(big(PACKET_SIZE, PACKET_SIZE))
def test_garbage_frame_after_handshake_is_rejected(garbage: bytes) -> None:
    _assert_rejects(connected().r, garbage)


@settings(max_examples=20, deadline=None)
@given(st.sampled_from([MAGIC + b"\x01", MAGIC + b"\x02", MAGIC + b"\x03", b""]),
       big(PACKET_SIZE, PACKET_SIZE))
def test_handshake_frame_after_handshake_is_rejected(head: bytes, rest: bytes) -> None:
    _assert_rejects(connected().i, (head + rest)[:PACKET_SIZE])


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 1), st.one_of(st.integers(0, 8 * 64 - 1),
                                    st.integers(0, 8 * PACKET_SIZE - 1)))
def test_any_flipped_bit_in_session_traffic_is_rejected(which: int, bit: int) -> None:
    pipe = connected()
    packets = _two_packets(pipe)
    if which:
        assert pipe.r.receive_data(packets[0])
    _assert_rejects(pipe.r, flip(packets[which], bit))


@settings(max_examples=50, deadline=None)
@given(st.integers(1, PACKET_SIZE - 1), st.booleans())
def test_misaligned_stream_is_rejected(shift: int, truncate: bool) -> None:
    pipe = connected()
    first, second = _two_packets(pipe)
    stream = first[:-shift] + second if truncate else first + bytes(shift) + second
    _assert_rejects(pipe.r, stream)


@settings(max_examples=30, deadline=None)
@given(big(PACKET_SIZE, PACKET_SIZE))
def test_garbage_during_handshake_is_rejected(garbage: bytes) -> None:
    _assert_rejects(P2PConnection(BOB), garbage, (*REJECT, ProtocolError))
    _assert_rejects(P2PConnection(ALICE, BOB.public_key), garbage, (*REJECT, ProtocolError))


def test_close_ends_the_session() -> None:
    pipe = connected()
    pipe.i.close()
    assert pipe.i.state is State.CLOSED
    with pytest.raises(ProtocolError):
        pipe.i.send(Ack(bytes(16)))
    with pytest.raises(ProtocolError):
        pipe.i.receive_data(b"")


# -- handshake tampering ---------------------------------------------------------------------

HEADER_BITS = {0: 8 * (len(MAGIC) + 1 + 64), 1: 8 * (len(MAGIC) + 1 + 64),
               2: 8 * (len(MAGIC) + 1 + 32)}


def _handshake_with_flip(frame_no: int, bit: int) -> None:
    """Run a handshake flipping one bit of frame frame_no (0 HELLO, 1 REPLY, 2 CONFIRM)."""
    initiator, responder = P2PConnection(ALICE, BOB.public_key), P2PConnection(BOB)
    conns = [(initiator, responder), (responder, initiator), (initiator, responder)]
    responder_done = False
    errors: tuple[type[Exception], ...] = REJECT
    if bit // 8 == len(MAGIC):  # the frame-type byte: a wrong type at the wrong time
        errors = (*REJECT, ProtocolError)
    for number, (src, dst) in enumerate(conns):
        frame = src.data_to_send()
        assert len(frame) == PACKET_SIZE
        if number == frame_no:
            frame = flip(frame, bit)
        try:
            events = dst.receive_data(frame)
        except errors:
            assert dst.state is State.CLOSED
            break
        responder_done |= dst is responder and bool(events)
    else:
        pytest.fail("handshake with a flipped bit was not rejected")
    assert not responder_done
    assert responder.state is not State.ESTABLISHED


@pytest.mark.parametrize("frame_no", [0, 1, 2], ids=["hello", "reply", "confirm"])
def test_every_flipped_header_bit_in_each_handshake_frame_is_rejected(frame_no: int) -> None:
    for bit in range(HEADER_BITS[frame_no]):
        _handshake_with_flip(frame_no, bit)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2), st.integers(0, 8 * PACKET_SIZE - 1))
def test_any_flipped_bit_in_a_handshake_frame_is_rejected(frame_no: int, bit: int) -> None:
    _handshake_with_flip(frame_no, bit)


@pytest.mark.parametrize("size", [0, 1, PACKET_SIZE - 1, PACKET_SIZE + 1])
def test_handshake_frame_of_wrong_size_is_rejected(size: int) -> None:
    frame = S._handshake_frame(S._HELLO, ALICE.public_key, bytes(32))
    with pytest.raises(DecodeError):
        S._parse_handshake_frame((frame * 2)[:size], S._HELLO, (32, 32))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, PACKET_SIZE - 1))
def test_extended_hello_desynchronises_and_is_rejected(extra: int) -> None:
    initiator, responder = P2PConnection(ALICE, BOB.public_key), P2PConnection(BOB)
    responder.receive_data(initiator.data_to_send() + bytes(extra))
    initiator.receive_data(responder.data_to_send())
    _assert_rejects(responder, initiator.data_to_send())


def test_truncated_hello_gets_no_answer() -> None:
    initiator, responder = P2PConnection(ALICE, BOB.public_key), P2PConnection(BOB)
    assert responder.receive_data(initiator.data_to_send()[:-10]) == []
    assert responder.data_to_send() == b""
    assert responder.state is State.HANDSHAKING


def test_out_of_order_handshake_frames_are_protocol_errors() -> None:
    initiator, responder = P2PConnection(ALICE, BOB.public_key), P2PConnection(BOB)
    hello = initiator.data_to_send()
    _assert_rejects(P2PConnection(ALICE, BOB.public_key), hello, (ProtocolError,))
    responder.receive_data(hello)
    _assert_rejects(responder, hello, (ProtocolError,))  # a second HELLO


# -- impostors ------------------------------------------------------------------------------

def _impostor_keys(dh1: bytes, dh2: bytes, dh3: bytes, i_lt: bytes, i_eph: bytes,
                   r_lt: bytes, r_eph: bytes) -> S._Keys:
    return S._Keys(dh1, dh2, dh3, MAGIC + i_lt + i_eph + r_lt + r_eph)


@pytest.mark.parametrize("holds_key", [True, False])
def test_caller_must_hold_the_claimed_long_term_key(holds_key: bool) -> None:
    """Mallory claims to be Alice. She knows everything public and her own ephemeral;
    her best guess at dh1 = DH(Alice lt, Bob eph) uses her own key. Control: with Alice's
    real key the very same code completes the handshake."""
    caller = ALICE if holds_key else MALLORY
    eph = nacl.public.PrivateKey.generate()
    responder = P2PConnection(BOB)
    hello = S._handshake_frame(S._HELLO, ALICE.public_key, bytes(eph.public_key))
    assert responder.receive_data(hello) == []
    (r_eph, r_proof) = S._parse_handshake_frame(responder.data_to_send(), S._REPLY, (32, 32))
    keys = _impostor_keys(S._dh(caller.x25519_private(), r_eph),
                          S._dh(bytes(eph), BOB.x25519_public()),
                          S._dh(bytes(eph), r_eph),
                          ALICE.public_key, bytes(eph.public_key), BOB.public_key, r_eph)
    assert (r_proof == keys.proof(initiator=False)) is holds_key
    confirm = S._handshake_frame(S._CONFIRM, keys.proof(initiator=True))
    if holds_key:
        assert responder.receive_data(confirm) == [HandshakeComplete(ALICE.public_key)]
    else:
        _assert_rejects(responder, confirm, (AuthenticationError,))


@settings(max_examples=30, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_caller_cannot_guess_a_confirm_proof(proof: bytes) -> None:
    initiator, responder = P2PConnection(MALLORY, BOB.public_key), P2PConnection(BOB)
    hello = initiator.data_to_send()
    hello = hello[:9] + ALICE.public_key + hello[41:]  # claim to be Alice
    responder.receive_data(hello)
    _assert_rejects(responder, S._handshake_frame(S._CONFIRM, proof), (AuthenticationError,))


@pytest.mark.parametrize("holds_key", [True, False])
def test_callee_must_hold_the_long_term_key_of_the_onion_called(holds_key: bool) -> None:
    """Alice calls Bob's onion; Mallory answers. Without Bob's key she cannot compute
    dh2 = DH(Alice eph, Bob lt), so her proof fails. Control: Bob's key succeeds."""
    callee = BOB if holds_key else MALLORY
    initiator = P2PConnection(ALICE, BOB.public_key)
    i_lt, i_eph = S._parse_handshake_frame(initiator.data_to_send(), S._HELLO, (32, 32))
    eph = nacl.public.PrivateKey.generate()
    keys = _impostor_keys(S._dh(bytes(eph), ALICE.x25519_public()),
                          S._dh(callee.x25519_private(), i_eph),
                          S._dh(bytes(eph), i_eph),
                          i_lt, i_eph, BOB.public_key, bytes(eph.public_key))
    reply = S._handshake_frame(S._REPLY, bytes(eph.public_key), keys.proof(initiator=False))
    if holds_key:
        assert initiator.receive_data(reply) == [HandshakeComplete(BOB.public_key)]
    else:
        _assert_rejects(initiator, reply, (AuthenticationError,))


def test_callee_answering_with_its_own_identity_is_rejected() -> None:
    initiator, mallory = P2PConnection(ALICE, BOB.public_key), P2PConnection(MALLORY)
    mallory.receive_data(initiator.data_to_send())
    _assert_rejects(initiator, mallory.data_to_send(), (AuthenticationError,))


@settings(max_examples=30, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_callee_cannot_guess_a_reply(eph: bytes, proof: bytes) -> None:
    initiator = P2PConnection(ALICE, BOB.public_key)
    initiator.data_to_send()
    _assert_rejects(initiator, S._handshake_frame(S._REPLY, eph, proof), (AuthenticationError,))


# -- invalid keys --------------------------------------------------------------------------

@pytest.mark.parametrize("point", LOW_ORDER_X25519, ids=lambda p: p.hex()[:8] + p.hex()[-2:])
def test_low_order_ephemeral_keys_are_rejected(point: bytes) -> None:
    hello = S._handshake_frame(S._HELLO, ALICE.public_key, point)
    _assert_rejects(P2PConnection(BOB), hello, (AuthenticationError,))
    initiator = P2PConnection(ALICE, BOB.public_key)
    initiator.data_to_send()
    _assert_rejects(initiator, S._handshake_frame(S._REPLY, point, bytes(32)),
                    (AuthenticationError,))


@pytest.mark.parametrize("point", SMALL_ORDER_ED25519, ids=lambda p: p.hex()[:8])
def test_invalid_long_term_keys_are_rejected(point: bytes) -> None:
    eph = bytes(nacl.public.PrivateKey.generate().public_key)
    _assert_rejects(P2PConnection(BOB), S._handshake_frame(S._HELLO, point, eph),
                    (DecodeError,))
    with pytest.raises(DecodeError):
        P2PConnection(ALICE, point)


def test_mixed_order_long_term_key_is_rejected() -> None:
    mixed = nacl.bindings.crypto_core_ed25519_add(ALICE.public_key, SMALL_ORDER_ED25519[3])
    eph = bytes(nacl.public.PrivateKey.generate().public_key)
    _assert_rejects(P2PConnection(BOB), S._handshake_frame(S._HELLO, mixed, eph),
                    (DecodeError,))


def test_authentic_packet_with_malformed_payload_is_rejected() -> None:
    pipe = connected()
    assert pipe.i._send_cipher is not None
    bad = pipe.i._send_cipher.seal(b"\x42" + bytes(16))
    _assert_rejects(pipe.r, bad, (DecodeError,))
