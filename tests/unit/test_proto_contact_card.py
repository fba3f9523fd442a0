"""Signed contact cards: layout, round trip, forged / expired / wrong-onion / wrong-mailbox
/ version-1 cards refused."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nyth.errors import AuthenticationError, DecodeError
from nyth.proto import fmd
from nyth.proto.contact_card import CARD_SIZE, MAGIC, ContactCard
from nyth.proto.identity import Identity

ALICE = Identity.from_seed(b"a" * 32)
MALLORY = Identity.from_seed(b"m" * 32)
MAILBOX = Identity.from_seed(b"x" * 32)
EVIL_MAILBOX = Identity.from_seed(b"e" * 32)
X_KEY = b"\x09" * 32
NOW = 1_800_000_000
REJECT = (DecodeError, AuthenticationError)


def fmd_key() -> bytes:
    return bytes(fmd.FmdSecretKey.generate().public_key().encode())


FMD_KEY = fmd_key()


def make(identity: Identity = ALICE, **overrides: Any) -> ContactCard:
    fields: dict[str, Any] = {
        "onion_public_key": identity.public_key, "mailbox_public_key": MAILBOX.public_key,
        "fmd_public_key": FMD_KEY, "x25519_public_key": X_KEY, "issued_at": NOW - 10,
        "expires_at": NOW + 86400,
    }
    return ContactCard(**{**fields, **overrides})


def test_layout_is_pinned() -> None:
    card = make()
    data = card.sign(ALICE)
    assert len(data) == CARD_SIZE == 952
    assert MAGIC == b"NYTHCRD2"
    expected_body = (MAGIC + ALICE.public_key + MAILBOX.public_key + FMD_KEY + X_KEY
                     + struct.pack(">QQ", NOW - 10, NOW + 86400))
    assert data[:-64] == expected_body
    assert ContactCard.verify(data, ALICE.onion, NOW, mailbox=MAILBOX.onion) == card
    assert ContactCard.verify(data, ALICE.onion + ".onion", NOW,
                              mailbox=MAILBOX.onion + ".onion") == card
    assert card.mailbox_onion == MAILBOX.onion


def test_a_card_naming_another_mailbox_is_refused() -> None:
    """The real card, served by a mailbox that is not the one it names (a contact id
    circulated with someone else's mailbox): refused, even though the signature is good."""
    data = make().sign(ALICE)
    with pytest.raises(DecodeError, match=f"names another mailbox \\({MAILBOX.onion}.onion\\), "
                                          f"not {EVIL_MAILBOX.onion}.onion"):
        ContactCard.verify(data, ALICE.onion, NOW, mailbox=EVIL_MAILBOX.onion)
    # The mailbox field is signed: swapping it breaks the signature.
    swapped = data[:40] + EVIL_MAILBOX.public_key + data[72:]
    with pytest.raises(AuthenticationError):
        ContactCard.verify(swapped, ALICE.onion, NOW, mailbox=EVIL_MAILBOX.onion)


def test_a_version_1_card_is_refused_with_a_reason() -> None:
    body = (b"NYTHCRD1" + ALICE.public_key + FMD_KEY + X_KEY
            + struct.pack(">QQ", NOW - 10, NOW + 86400))
    v1 = body + ALICE.sign(body)
    assert len(v1) == 920
    with pytest.raises(DecodeError, match="version 1, which does not name its mailbox"):
        ContactCard.verify(v1, ALICE.onion, NOW, mailbox=MAILBOX.onion)


@given(st.integers(0, (1 << 62)), st.integers(1, 1 << 40), st.binary(min_size=32, max_size=32))
@settings(max_examples=50)
def test_round_trip(issued: int, lifetime: int, x_key: bytes) -> None:
    if x_key == bytes(32):
        x_key = b"\x01" * 32
    card = make(issued_at=issued, expires_at=issued + lifetime, x25519_public_key=x_key)
    assert ContactCard.verify(card.sign(ALICE), ALICE.onion, issued, mailbox=MAILBOX.onion) == card


def test_forged_card_is_refused() -> None:
    data = make().sign(ALICE)
    for bit in range(0, len(data) * 8, 7):
        out = bytearray(data)
        out[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(REJECT):
            ContactCard.verify(bytes(out), ALICE.onion, NOW, mailbox=MAILBOX.onion)
    # A card for Alice's onion signed by Mallory's key.
    body = make().sign(ALICE)[:-64]
    with pytest.raises(AuthenticationError):
        ContactCard.verify(body + MALLORY.sign(body), ALICE.onion, NOW, mailbox=MAILBOX.onion)
    with pytest.raises(ValueError):
        make().sign(MALLORY)


def test_wrong_onion_is_refused() -> None:
    data = make(MALLORY).sign(MALLORY)
    with pytest.raises(DecodeError, match="different onion"):
        ContactCard.verify(data, ALICE.onion, NOW, mailbox=MAILBOX.onion)


def test_expired_and_future_cards_are_refused() -> None:
    data = make(expires_at=NOW).sign(ALICE)
    with pytest.raises(DecodeError, match="expired"):
        ContactCard.verify(data, ALICE.onion, NOW, mailbox=MAILBOX.onion)
    assert ContactCard.verify(data, ALICE.onion, NOW - 1, mailbox=MAILBOX.onion).expires_at == NOW
    future = make(issued_at=NOW + 3 * 86400, expires_at=NOW + 4 * 86400).sign(ALICE)
    with pytest.raises(DecodeError, match="future"):
        ContactCard.verify(future, ALICE.onion, NOW, mailbox=MAILBOX.onion)


@pytest.mark.parametrize("overrides", [
    {"fmd_public_key": b"x" * 767}, {"x25519_public_key": bytes(32)},
    {"x25519_public_key": b"x" * 31}, {"issued_at": NOW, "expires_at": NOW},
    {"issued_at": -1}, {"expires_at": 1 << 63}, {"onion_public_key": b"x" * 33},
    {"mailbox_public_key": b"x" * 31},
])
def test_bad_fields_are_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(DecodeError):
        make(**overrides)


# Curve25519 points of order 1, 2, 4 and 8 (and a non-canonical alias of one).
LOW_ORDER = ["0100000000000000000000000000000000000000000000000000000000000000",
             "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
             "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
             "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"]


@pytest.mark.parametrize("point", LOW_ORDER)
def test_a_low_order_x25519_key_is_refused(point: str) -> None:
    with pytest.raises(DecodeError, match="low-order"):
        make(x25519_public_key=bytes.fromhex(point))


@pytest.mark.parametrize("size", [0, 1, CARD_SIZE - 1, CARD_SIZE + 1])
def test_wrong_sizes_are_refused(size: int) -> None:
    with pytest.raises(DecodeError):
        ContactCard.verify(b"\x00" * size, ALICE.onion, NOW, mailbox=MAILBOX.onion)


def test_wrong_magic_is_refused() -> None:
    data = make().sign(ALICE)
    with pytest.raises(DecodeError, match="not a Nyth contact card"):
        ContactCard.verify(b"NYTHBND1" + data[8:], ALICE.onion, NOW, mailbox=MAILBOX.onion)
