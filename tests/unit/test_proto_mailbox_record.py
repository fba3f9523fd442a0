"""Offline records: only the recipient opens them, the sender is authenticated, size fixed."""

from __future__ import annotations

import nacl.public
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nyth.errors import AuthenticationError, DecodeError
from nyth.proto.identity import Identity
from nyth.proto.mailbox_record import (
    RECOMMENDED_RECORD_SIZE,
    max_envelope_size,
    open_record,
    seal_record,
)
from nyth.proto.p2p import MAX_BODY, Envelope, MessageKind, new_msg_id

ALICE, BOB, CAROL = Identity.generate(), Identity.generate(), Identity.generate()
# The X25519 keys of their contact cards: random, not derived from the identity.
CARD = {who.public_key: nacl.public.PrivateKey.generate() for who in (BOB, CAROL)}


def _secrets(who: Identity) -> list[bytes]:
    return [bytes(CARD[who.public_key])]


def _seal(body: bytes, size: int = RECOMMENDED_RECORD_SIZE, to: Identity = BOB) -> tuple[Envelope, bytes]:
    env = Envelope(new_msg_id(), MessageKind.TEXT, 1234, body)
    return env, seal_record(ALICE, to.public_key, bytes(CARD[to.public_key].public_key), env, size)


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=MAX_BODY))
def test_round_trip_fixed_size_and_opaque(body):
    env, record = _seal(body)
    assert len(record) == RECOMMENDED_RECORD_SIZE
    assert ALICE.public_key not in record and BOB.public_key not in record
    if len(body) >= 8:
        assert body not in record
    sender, opened = open_record(BOB.public_key, _secrets(BOB), record)
    assert sender == ALICE.public_key and opened == env


def test_any_p2p_message_fits_the_recommended_size():
    assert max_envelope_size(RECOMMENDED_RECORD_SIZE) >= 26 + MAX_BODY


def test_others_cannot_open_and_tampering_is_caught():
    _env, record = _seal(b"for bob only")
    with pytest.raises(AuthenticationError):
        open_record(CAROL.public_key, _secrets(CAROL), record)
    for i in (0, 31, 32, 100, len(record) - 1):
        flipped = bytearray(record)
        flipped[i] ^= 1
        with pytest.raises((AuthenticationError, DecodeError)):
            open_record(BOB.public_key, _secrets(BOB), bytes(flipped))
    with pytest.raises((AuthenticationError, DecodeError)):
        open_record(BOB.public_key, _secrets(BOB), record[:-1])


def test_a_record_cannot_be_readdressed():
    """Mallory opens nothing, but a recipient who re-seals alice's signed inner record to
    someone else is caught: the signature names the recipient."""
    _env, record = _seal(b"to bob")
    inner = nacl.public.SealedBox(CARD[BOB.public_key]).decrypt(record)
    resealed = bytes(nacl.public.SealedBox(CARD[CAROL.public_key].public_key).encrypt(inner))
    with pytest.raises(AuthenticationError):
        open_record(CAROL.public_key, _secrets(CAROL), resealed)


def test_too_large_for_the_mailbox_is_refused_at_sealing():
    with pytest.raises(DecodeError):
        _seal(bytes(900), size=1024)


def test_current_and_retained_card_keys_are_tried():
    """A record sealed to an older card's key opens while that key is retained, and not
    once it is deleted; the identity-derived X25519 key opens nothing."""
    old = nacl.public.PrivateKey.generate()
    env = Envelope(new_msg_id(), MessageKind.TEXT, 1, b"sent to last week's card")
    record = seal_record(ALICE, BOB.public_key, bytes(old.public_key), env, RECOMMENDED_RECORD_SIZE)
    assert open_record(BOB.public_key, [*_secrets(BOB), bytes(old)], record)[1] == env
    with pytest.raises(AuthenticationError):
        open_record(BOB.public_key, _secrets(BOB), record)
    with pytest.raises(AuthenticationError):
        open_record(BOB.public_key, [BOB.x25519_private()], record)
