"""Contact identifiers: round trips, and every typo caught rather than misrouted."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nyth.errors import DecodeError
from nyth.proto.contact_id import PREFIX, RAW_SIZE, TEXT_LENGTH, ContactId
from nyth.proto.identity import Identity

ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
seeds = st.binary(min_size=32, max_size=32)


def make(a: bytes = b"A" * 32, b: bytes = b"B" * 32) -> ContactId:
    return ContactId(Identity.from_seed(a).public_key, Identity.from_seed(b).public_key)


@given(seeds, seeds)
@settings(max_examples=50)
def test_round_trip(a: bytes, b: bytes) -> None:
    ident = make(a, b)
    text = ident.encode()
    assert text.startswith(PREFIX) and len(text) == TEXT_LENGTH
    assert text == text.lower() and "=" not in text
    assert ContactId.decode(text) == ident
    assert ContactId.decode("  " + text.upper() + "\n") == ident
    assert ident.onion == Identity.from_seed(a).onion
    assert ident.mailbox_onion == Identity.from_seed(b).onion
    assert ContactId.from_bytes(ident.to_bytes()) == ident
    assert len(ident.to_bytes()) == RAW_SIZE


def test_every_single_character_substitution_is_caught() -> None:
    text = make().encode()
    for i in range(len(PREFIX), len(text)):
        for ch in ALPHABET:
            if ch == text[i]:
                continue
            typo = text[:i] + ch + text[i + 1:]
            with pytest.raises(DecodeError):
                ContactId.decode(typo)


@given(st.data())
@settings(max_examples=200)
def test_transpositions_deletions_insertions_are_caught(data: st.DataObject) -> None:
    text = make().encode()
    i = data.draw(st.integers(len(PREFIX), len(text) - 2))
    swapped = text[:i] + text[i + 1] + text[i] + text[i + 2:]
    deleted = text[:i] + text[i + 1:]
    inserted = text[:i] + data.draw(st.sampled_from(ALPHABET)) + text[i:]
    for typo in {swapped, deleted, inserted} - {text}:
        with pytest.raises(DecodeError):
            ContactId.decode(typo)


@pytest.mark.parametrize("bad", ["", "nyth1", "nyth2" + "a" * 109, "x" * 114,
                                 "nyth1" + "1" * 109, "nyth1" + "a" * 108 + "!", 12])
def test_garbage_is_refused(bad: object) -> None:
    with pytest.raises(DecodeError):
        ContactId.decode(bad)  # type: ignore[arg-type]


def test_invalid_points_are_refused() -> None:
    good = make()
    with pytest.raises(DecodeError):
        ContactId(bytes(32), good.mailbox_public_key)
    with pytest.raises(DecodeError):
        ContactId(good.profile_public_key, b"\x01" * 31)
