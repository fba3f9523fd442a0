"""Mailbox bundles (signed limits) and the post proof of work."""

from __future__ import annotations

import struct
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nyth.errors import AuthenticationError, DecodeError
from nyth.proto.hashcash import POW_CHECK_EVERY, PowStopped, leading_zero_bits
from nyth.proto.identity import Identity
from nyth.proto.mailbox_bundle import (
    MAGIC,
    MAILBOX_BUNDLE_SIZE,
    MAX_POW_BITS,
    MailboxBundle,
    card_pow_ok,
    pow_digest,
    pow_ok,
    solve_card_pow,
    solve_pow,
)

MAILBOX = Identity.from_seed(b"M" * 32)
OTHER = Identity.from_seed(b"O" * 32)


def make(**overrides: Any) -> MailboxBundle:
    fields: dict[str, Any] = {
        "onion_public_key": MAILBOX.public_key, "tag_size": 67, "record_size": 1024,
        "max_records": 100_000, "max_age_seconds": 7 * 86400, "pow_bits": 18,
        "issued_at": 1_800_000_000,
    }
    return MailboxBundle(**{**fields, **overrides})


def test_layout_is_pinned() -> None:
    data = make().sign(MAILBOX)
    assert len(data) == MAILBOX_BUNDLE_SIZE == 135
    assert data[:-64] == (MAGIC + MAILBOX.public_key
                          + struct.pack(">HIQQBQ", 67, 1024, 100_000, 7 * 86400, 18,
                                        1_800_000_000))
    assert MailboxBundle.verify(data, MAILBOX.onion) == make()


@given(st.integers(1, 0xFFFF), st.integers(64, 1 << 16), st.integers(1, (1 << 63) - 1),
       st.integers(1, (1 << 63) - 1), st.integers(0, MAX_POW_BITS))
@settings(max_examples=50)
def test_round_trip(tag: int, size: int, records: int, age: int, bits: int) -> None:
    bundle = make(tag_size=tag, record_size=size, max_records=records, max_age_seconds=age,
                  pow_bits=bits)
    assert MailboxBundle.verify(bundle.sign(MAILBOX)) == bundle


def test_tampering_and_wrong_server_are_refused() -> None:
    data = make().sign(MAILBOX)
    for i in range(len(data)):
        out = bytearray(data)
        out[i] ^= 0x40
        with pytest.raises((DecodeError, AuthenticationError)):
            MailboxBundle.verify(bytes(out), MAILBOX.onion)
    with pytest.raises(DecodeError, match="different mailbox"):
        MailboxBundle.verify(data, OTHER.onion)
    with pytest.raises(DecodeError):
        MailboxBundle.verify(data[:-1])


@pytest.mark.parametrize("overrides", [{"record_size": 63}, {"pow_bits": MAX_POW_BITS + 1},
                                       {"max_records": 0}, {"tag_size": 0},
                                       {"onion_public_key": b"x"}])
def test_bad_values(overrides: dict[str, object]) -> None:
    with pytest.raises(DecodeError):
        make(**overrides)


@given(st.binary(max_size=80), st.binary(max_size=80), st.integers(0, 10))
@settings(max_examples=30)
def test_solved_pow_verifies(tag: bytes, ct: bytes, bits: int) -> None:
    nonce = solve_pow(MAILBOX.public_key, tag, ct, bits)
    assert pow_ok(MAILBOX.public_key, tag, ct, nonce, bits)
    assert leading_zero_bits(pow_digest(MAILBOX.public_key, tag, ct, nonce)) >= bits


def test_pow_is_bound_to_the_mailbox_and_the_content() -> None:
    tag, ct = b"t" * 67, b"c" * 128
    nonce = solve_pow(MAILBOX.public_key, tag, ct, 12)
    # Each of these succeeds by chance with probability 2^-12: pin that it does not here.
    assert not pow_ok(OTHER.public_key, tag, ct, nonce, 12)
    assert not pow_ok(MAILBOX.public_key, tag, ct[:-1] + b"d", nonce, 12)
    assert pow_ok(MAILBOX.public_key, tag, ct, 12345, 0)
    with pytest.raises(DecodeError):
        pow_digest(MAILBOX.public_key, tag, ct, 1 << 64)
    assert leading_zero_bits(b"\x00\x80") == 8 and leading_zero_bits(b"\x00\x00") == 16


@given(st.binary(min_size=1, max_size=200), st.integers(0, 10))
@settings(max_examples=30)
def test_solved_card_pow_verifies(card: bytes, bits: int) -> None:
    nonce = solve_card_pow(MAILBOX.public_key, card, bits)
    assert card_pow_ok(MAILBOX.public_key, card, nonce, bits)


def test_card_pow_is_bound_to_the_mailbox_the_card_and_its_own_domain() -> None:
    card = b"k" * 180
    nonce = solve_card_pow(MAILBOX.public_key, card, 12)
    # Each succeeds by chance with probability 2^-12: pinned not to, for these inputs.
    assert not card_pow_ok(OTHER.public_key, card, nonce, 12)
    assert not card_pow_ok(MAILBOX.public_key, card[:-1] + b"j", nonce, 12)
    # The same bytes posted as a record need their own work: the hash domains differ.
    assert not pow_ok(MAILBOX.public_key, card[:67], card[67:], nonce, 12)
    record_nonce = solve_pow(MAILBOX.public_key, card[:67], card[67:], 12)
    assert not card_pow_ok(MAILBOX.public_key, card, record_nonce, 12)
    assert card_pow_ok(MAILBOX.public_key, card, 7, 0)
    with pytest.raises(DecodeError):
        card_pow_ok(MAILBOX.public_key, card, 1 << 64, 1)


def signed_with_bits(bits: int) -> bytes:
    """A bundle the mailbox really signed, whatever pow_bits it states (the constructor
    would refuse to build one above the maximum)."""
    body = MAGIC + MAILBOX.public_key + struct.pack(">HIQQBQ", 67, 1024, 100, 86400, bits,
                                                    1_800_000_000)
    return body + MAILBOX.sign(body)


def test_the_pow_maximum_is_what_the_protocol_states() -> None:
    # docs/protocol.md states 24 and what it costs; changing it is a protocol change.
    assert MAX_POW_BITS == 24
    assert MailboxBundle.verify(signed_with_bits(MAX_POW_BITS), MAILBOX.onion).pow_bits == 24


@pytest.mark.parametrize("bits", [MAX_POW_BITS + 1, 40, 64, 255])
def test_a_signed_bundle_demanding_more_work_than_the_maximum_is_refused(bits: int) -> None:
    with pytest.raises(DecodeError, match=f"demands {bits}-bit proof of work; Nyth pays at "
                                          f"most {MAX_POW_BITS} bits"):
        MailboxBundle.verify(signed_with_bits(bits), MAILBOX.onion)


def test_a_solve_stops_at_its_deadline() -> None:
    started = time.monotonic()
    with pytest.raises(PowStopped, match="ran out of time") as caught:
        solve_pow(MAILBOX.public_key, b"tag", b"ct", 60, deadline=started + 0.2)
    elapsed = time.monotonic() - started
    assert elapsed < 3, f"took {elapsed:.2f} s to notice a 0.2 s deadline"  # 2^60 without
    assert caught.value.tried > 0 and caught.value.tried % POW_CHECK_EVERY == 0


def test_a_solve_looks_at_its_flag_and_clock_every_few_thousand_hashes() -> None:
    """Pure: a fake clock and flag. Each look at the clock costs one tick; the flag is set
    on the third look, so the solve stops after exactly two rounds of work."""
    looks = []

    def stop() -> bool:
        looks.append(1)
        return len(looks) >= 3

    with pytest.raises(PowStopped, match="cancelled") as caught:
        solve_card_pow(MAILBOX.public_key, b"card", 60, stop=stop)
    assert caught.value.tried == 2 * POW_CHECK_EVERY
    ticks = iter(range(100))
    with pytest.raises(PowStopped, match="ran out of time") as caught:
        solve_pow(MAILBOX.public_key, b"t", b"c", 60, deadline=3, clock=lambda: next(ticks))
    assert caught.value.tried == 3 * POW_CHECK_EVERY


def test_a_stop_flag_or_deadline_does_not_change_the_answer() -> None:
    plain = solve_pow(MAILBOX.public_key, b"t", b"c", 12)
    assert solve_pow(MAILBOX.public_key, b"t", b"c", 12, stop=lambda: False,
                     deadline=time.monotonic() + 60) == plain
    assert solve_card_pow(MAILBOX.public_key, b"card", 0, stop=lambda: True) == 0  # no work
