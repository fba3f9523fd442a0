"""Offline records (version 2): only the recipient opens them, the sender is authenticated
to the recipient but deniably (no signature), the size is fixed, old card keys are tried.

The layout is pinned both ways by hand-written code that follows docs/protocol.md: it
opens what seal_record makes, and open_record accepts what it makes."""

from __future__ import annotations

import hashlib
import struct

import nacl.bindings
import nacl.public
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nyth.errors import AuthenticationError, DecodeError
from nyth.proto.identity import Identity
from nyth.proto.mailbox_record import (
    RECOMMENDED_RECORD_SIZE,
    SEAL_OVERHEAD,
    max_envelope_size,
    open_record,
    seal_record,
)
from nyth.proto.p2p import MAX_BODY, Envelope, MessageKind, new_msg_id

ALICE, BOB, CAROL = Identity.generate(), Identity.generate(), Identity.generate()
MALLORY = Identity.generate()
# The X25519 keys of their contact cards: random, not derived from the identity.
CARD = {who.public_key: nacl.public.PrivateKey.generate() for who in (BOB, CAROL)}
NONCE = bytes(24)
SIZE = RECOMMENDED_RECORD_SIZE


def _secrets(who: Identity) -> list[bytes]:
    return [bytes(CARD[who.public_key])]


def _card(who: Identity) -> bytes:
    return bytes(CARD[who.public_key].public_key)


def _env(body: bytes = b"hello") -> Envelope:
    return Envelope(new_msg_id(), MessageKind.TEXT, 1234, body)


def _seal(body: bytes, size: int = SIZE, to: Identity = BOB) -> tuple[Envelope, bytes]:
    env = _env(body)
    return env, seal_record(ALICE, to.public_key, _card(to), env, size)


# -- the layout, written out from docs/protocol.md --------------------------------------

def kdf(material: bytes, person: bytes) -> bytes:
    return hashlib.blake2b(material, digest_size=32, person=person).digest()


def x(public_key: bytes) -> bytes:
    return nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(public_key)


def th0(recipient: bytes, card_key: bytes, e_pub: bytes) -> bytes:
    return b"NYTHREC2" + b"\x02" + recipient + card_key + e_pub


def build(recipient: bytes, card_key: bytes, claimed_sender: bytes, ss: bytes,
          envelope: Envelope, size: int = SIZE) -> bytes:
    """A record naming claimed_sender, made by whoever can compute ss = DH(x(sender),
    card key): the sender, or the card's owner."""
    e = nacl.public.PrivateKey.generate()
    e_pub = bytes(e.public_key)
    t0 = th0(recipient, card_key, e_pub)
    es = nacl.bindings.crypto_scalarmult(bytes(e), card_key)
    s_box = nacl.bindings.crypto_secretbox(claimed_sender, NONCE, kdf(es + t0, b"nyth-rec2-sender"))
    th = hashlib.blake2b(t0 + claimed_sender + s_box, digest_size=32).digest()
    key = kdf(es + ss + th, b"nyth-rec2-msg")
    data = envelope.encode()
    plain = struct.pack(">H", len(data)) + data
    plain += bytes(size - 99 - len(data))
    return b"\x02" + e_pub + s_box + nacl.bindings.crypto_secretbox(plain, NONCE, key)


def test_layout_opens_by_hand() -> None:
    env, record = _seal(b"by the book")
    assert len(record) == SIZE and SEAL_OVERHEAD == 99 and record[0] == 2
    c = bytes(CARD[BOB.public_key])
    e_pub, s_box, m_box = record[1:33], record[33:81], record[81:]
    t0 = th0(BOB.public_key, _card(BOB), e_pub)
    es = nacl.bindings.crypto_scalarmult(c, e_pub)
    sender = nacl.bindings.crypto_secretbox_open(s_box, NONCE, kdf(es + t0, b"nyth-rec2-sender"))
    assert sender == ALICE.public_key
    ss = nacl.bindings.crypto_scalarmult(c, x(sender))
    th = hashlib.blake2b(t0 + sender + s_box, digest_size=32).digest()
    plain = nacl.bindings.crypto_secretbox_open(m_box, NONCE, kdf(es + ss + th, b"nyth-rec2-msg"))
    (length,) = struct.unpack(">H", plain[:2])
    assert plain[2:2 + length] == env.encode() and not any(plain[2 + length:])
    assert len(plain) == SIZE - 81 - 16


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=MAX_BODY))
def test_round_trip_fixed_size_and_opaque(body: bytes) -> None:
    env, record = _seal(body)
    assert len(record) == SIZE
    assert ALICE.public_key not in record and BOB.public_key not in record
    if len(body) >= 8:
        assert body not in record
    sender, opened = open_record(BOB.public_key, _secrets(BOB), record)
    assert sender == ALICE.public_key and opened == env


def test_any_p2p_message_fits_the_recommended_size() -> None:
    assert max_envelope_size(SIZE) >= 26 + MAX_BODY


def test_others_cannot_open_and_tampering_is_caught() -> None:
    _, record = _seal(b"for bob only")
    with pytest.raises(AuthenticationError):
        open_record(CAROL.public_key, _secrets(CAROL), record)
    with pytest.raises(AuthenticationError):   # the identity key opens nothing
        open_record(BOB.public_key, [BOB.x25519_private()], record)
    with pytest.raises(AuthenticationError):   # sealed for Bob's card, not Carol's name
        open_record(CAROL.public_key, _secrets(BOB), record)
    for i in (1, 32, 33, 80, 81, 100, len(record) - 1):
        flipped = bytearray(record)
        flipped[i] ^= 1
        with pytest.raises((AuthenticationError, DecodeError)):
            open_record(BOB.public_key, _secrets(BOB), bytes(flipped))
    with pytest.raises((AuthenticationError, DecodeError)):
        open_record(BOB.public_key, _secrets(BOB), record[:-1])


@pytest.mark.parametrize("version", [0, 1, 3, 255])
def test_other_versions_are_refused_with_a_reason(version: int) -> None:
    _, record = _seal(b"v?")
    with pytest.raises(DecodeError, match=f"record version {version} is not supported"):
        open_record(BOB.public_key, _secrets(BOB), bytes([version]) + record[1:])
    with pytest.raises(DecodeError, match="too short"):
        open_record(BOB.public_key, _secrets(BOB), record[:SEAL_OVERHEAD - 1])


def test_a_record_cannot_be_opened_as_from_another_sender() -> None:
    """Mallory names Alice as the sender; lacking Alice's key she can only use her own
    static key for ss, and the record fails. The control: the same construction with the
    right ss opens, as Alice's."""
    card = _card(BOB)
    env = _env(b"it's alice, honest")
    own_ss = nacl.bindings.crypto_scalarmult(MALLORY.x25519_private(), card)
    fake = build(BOB.public_key, card, ALICE.public_key, own_ss, env)
    with pytest.raises(AuthenticationError, match="does not authenticate as from the sender"):
        open_record(BOB.public_key, _secrets(BOB), fake)
    honest = build(BOB.public_key, card, MALLORY.public_key, own_ss, env)
    assert open_record(BOB.public_key, _secrets(BOB), honest) == (MALLORY.public_key, env)


def test_the_recipient_can_forge_a_record_from_the_sender_so_it_proves_nothing() -> None:
    """Deniability: Bob, with only his card secret and Alice's public key, makes a record
    that opens exactly as one from Alice. A record therefore cannot show a third party
    that Alice wrote it (a signature could); Bob still knows it is Alice's, since only
    Alice or Bob can compute ss, and he did not make it."""
    c = bytes(CARD[BOB.public_key])
    ss = nacl.bindings.crypto_scalarmult(c, x(ALICE.public_key))
    forged_env = _env(b"words alice never wrote")
    forged = build(BOB.public_key, _card(BOB), ALICE.public_key, ss, forged_env)
    assert open_record(BOB.public_key, _secrets(BOB), forged) == (ALICE.public_key, forged_env)
    genuine_env, genuine = _seal(b"words alice wrote")
    assert open_record(BOB.public_key, _secrets(BOB), genuine) == (ALICE.public_key, genuine_env)
    assert len(forged) == len(genuine) and forged[0] == genuine[0]


def test_a_record_cannot_be_readdressed() -> None:
    """Bob opens Alice's record and re-seals it to Carol in Alice's name: he knows the
    envelope and his own ss with Alice, but not Carol's, and Carol refuses it."""
    env, record = _seal(b"to bob")
    assert open_record(BOB.public_key, _secrets(BOB), record)[1] == env
    bobs_ss = nacl.bindings.crypto_scalarmult(bytes(CARD[BOB.public_key]), x(ALICE.public_key))
    resealed = build(CAROL.public_key, _card(CAROL), ALICE.public_key, bobs_ss, env)
    with pytest.raises(AuthenticationError):
        open_record(CAROL.public_key, _secrets(CAROL), resealed)


def test_current_and_retained_card_keys_are_tried() -> None:
    """A record sealed to an older card's key opens while that key is retained, and not
    once it is deleted."""
    old = nacl.public.PrivateKey.generate()
    env = _env(b"sent to last week's card")
    record = seal_record(ALICE, BOB.public_key, bytes(old.public_key), env, SIZE)
    assert open_record(BOB.public_key, [*_secrets(BOB), bytes(old)], record)[1] == env
    with pytest.raises(AuthenticationError):
        open_record(BOB.public_key, _secrets(BOB), record)


def test_too_large_for_the_mailbox_is_refused_at_sealing() -> None:
    assert max_envelope_size(1024) == 1024 - 99
    _seal(bytes(1024 - 99 - 26), size=1024)
    with pytest.raises(DecodeError):
        _seal(bytes(1024 - 99 - 25), size=1024)
