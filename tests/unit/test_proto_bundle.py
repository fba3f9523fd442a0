"""Signed server key bundles and trust-on-first-use pinning."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nyth.errors import AuthenticationError, BundleChangedError, DecodeError
from nyth.proto import tokens
from nyth.proto.bundle import (
    BUNDLE_SIZE_V1,
    BUNDLE_SIZE_V2,
    MAGIC,
    MAGIC_V2,
    MAX_BLOB_SIZE,
    ServerBundle,
    check_pin,
)
from nyth.proto.identity import Identity

SERVER = Identity.from_seed(b"S" * 32)
OTHER = Identity.from_seed(b"O" * 32)
REJECT = (DecodeError, AuthenticationError)
U63 = st.integers(1, (1 << 63) - 1)
TOKEN_KEY = tokens.TokenSecretKey.from_seed(b"T" * 32).public_key
OTHER_TOKEN_KEY = tokens.TokenSecretKey.from_seed(b"U" * 32).public_key
BUNDLE_SIZE = BUNDLE_SIZE_V1


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def make(identity: Identity = SERVER, **overrides: Any) -> ServerBundle:
    fields: dict[str, Any] = {
        "onion_public_key": identity.public_key, "token_public_key": bytes(32),
        "blob_size": 2048, "max_blobs": 100_000, "max_age_seconds": 7 * 86400,
        "issued_at": 1_800_000_000,
    }
    return ServerBundle(**{**fields, **overrides})


bundles = st.builds(
    lambda token, size, blobs, age, issued: make(
        token_public_key=token, blob_size=size, max_blobs=blobs, max_age_seconds=age,
        issued_at=issued),
    st.sampled_from([bytes(32), TOKEN_KEY]), st.integers(64, MAX_BLOB_SIZE), U63, U63,
    st.integers(0, (1 << 63) - 1),
)
v2_bundles = st.builds(
    lambda bundle, bits: make(**{**bundle.__dict__, "token_public_key": TOKEN_KEY,
                                 "token_pow_bits": bits}),
    bundles, st.integers(1, tokens.MAX_POW_BITS))


def test_layout() -> None:
    bundle = make(token_public_key=TOKEN_KEY)
    signed = bundle.sign(SERVER)
    assert BUNDLE_SIZE_V1 == len(signed) == 164 and bundle.version == 1
    body = struct.pack(">8s32s32sIQQQ", MAGIC, SERVER.public_key, TOKEN_KEY, 2048, 100_000,
                       7 * 86400, 1_800_000_000)
    assert signed == body + SERVER.sign(body)
    assert bundle.onion == SERVER.onion
    assert bundle.tokens_required and not make().tokens_required


def test_layout_v2() -> None:
    """A bundle that prices its tokens is v2: the bits follow the token key."""
    bundle = make(token_public_key=TOKEN_KEY, token_pow_bits=20)
    signed = bundle.sign(SERVER)
    assert BUNDLE_SIZE_V2 == len(signed) == 165 and bundle.version == 2
    body = struct.pack(">8s32s32sBIQQQ", MAGIC_V2, SERVER.public_key, TOKEN_KEY, 20, 2048,
                       100_000, 7 * 86400, 1_800_000_000)
    assert signed == body + SERVER.sign(body)
    assert ServerBundle.verify(signed, SERVER.onion) == bundle


def _resigned_v2(mutate: Any) -> bytes:
    body = bytearray(make(token_public_key=TOKEN_KEY, token_pow_bits=20).sign(SERVER)[:101])
    mutate(body)
    return bytes(body) + SERVER.sign(bytes(body))


@pytest.mark.parametrize(("mutate", "match"), [
    (lambda b: b.__setitem__(72, 0), "v2 bundle must ask proof of work"),
    (lambda b: b.__setitem__(72, tokens.MAX_POW_BITS + 1), "pow bits"),
    (lambda b: b.__setitem__(72, 255), "pow bits"),
    (lambda b: b.__setitem__(slice(40, 72), bytes(32)), "no token key"),
    (lambda b: b.__setitem__(slice(40, 72), b"\xff" * 32), "token public key"),
])
def test_signed_v2_bundle_with_bad_token_fields_is_rejected(mutate: Any, match: str) -> None:
    """Signed by the server and still refused: one encoding per bundle, and nothing a
    client could not use (more work than it pays, work without a key, a key that is not
    a group element)."""
    with pytest.raises(DecodeError, match=match):
        ServerBundle.verify(_resigned_v2(mutate))


def test_v1_bundle_with_a_key_that_is_not_an_element_is_rejected() -> None:
    body = bytearray(make().sign(SERVER)[:100])
    body[40:72] = b"\xff" * 32
    with pytest.raises(DecodeError, match="token public key"):
        ServerBundle.verify(bytes(body) + SERVER.sign(bytes(body)))


@pytest.mark.parametrize("overrides", [
    {"token_pow_bits": 1}, {"token_pow_bits": -1},
    {"token_public_key": TOKEN_KEY, "token_pow_bits": tokens.MAX_POW_BITS + 1},
    {"token_public_key": b"t" * 32},
])
def test_unusable_token_fields_are_rejected(overrides: dict[str, Any]) -> None:
    with pytest.raises(DecodeError):
        make(**overrides)


@settings(max_examples=60)
@given(v2_bundles)
def test_round_trip_v2(bundle: ServerBundle) -> None:
    signed = bundle.sign(SERVER)
    assert len(signed) == BUNDLE_SIZE_V2
    assert ServerBundle.verify(signed, SERVER.onion) == bundle


def test_every_flipped_bit_of_a_v2_bundle_is_rejected() -> None:
    signed = make(token_public_key=TOKEN_KEY, token_pow_bits=20).sign(SERVER)
    for bit in range(8 * BUNDLE_SIZE_V2):
        with pytest.raises(REJECT):
            ServerBundle.verify(flip(signed, bit))


def test_one_version_cut_or_padded_to_the_others_size_is_rejected() -> None:
    v1 = make(token_public_key=TOKEN_KEY).sign(SERVER)
    v2 = make(token_public_key=TOKEN_KEY, token_pow_bits=20).sign(SERVER)
    for bad in (v1 + b"\x00", v2[:-1], MAGIC + v2[8:], MAGIC_V2 + v1[8:] + b"\x00",
                MAGIC_V2 + v1[8:]):
        with pytest.raises(REJECT):
            ServerBundle.verify(bad)


def test_turning_tokens_on_is_a_pin_change() -> None:
    """An operator who requires tokens changes the bundle: every client shows the change
    for review, naming the key and the work."""
    pinned = check_pin(SERVER.onion, make().sign(SERVER), None)
    priced = make(token_public_key=TOKEN_KEY, token_pow_bits=18).sign(SERVER)
    with pytest.raises(BundleChangedError) as caught:
        check_pin(SERVER.onion, priced, pinned)
    assert any(c.startswith("token_pow_bits 0 -> 18") for c in caught.value.changes)
    assert any(c.startswith("token_public_key 0000") for c in caught.value.changes)


@settings(max_examples=60)
@given(bundles)
def test_round_trip(bundle: ServerBundle) -> None:
    signed = bundle.sign(SERVER)
    assert ServerBundle.verify(signed) == bundle
    assert ServerBundle.verify(signed, SERVER.onion) == bundle
    assert ServerBundle.verify(signed, f"http://{SERVER.onion.upper()}.onion/") == bundle


def test_every_flipped_bit_is_rejected() -> None:
    signed = make().sign(SERVER)
    for bit in range(8 * BUNDLE_SIZE):
        with pytest.raises(REJECT):
            ServerBundle.verify(flip(signed, bit))
        with pytest.raises(REJECT):
            check_pin(SERVER.onion, flip(signed, bit), None)


@settings(max_examples=50)
@given(bundles, st.data())
def test_truncation_and_extension_are_rejected(bundle: ServerBundle,
                                               data: st.DataObject) -> None:
    signed = bundle.sign(SERVER)
    cut = data.draw(st.integers(0, BUNDLE_SIZE - 1))
    extra = data.draw(st.binary(min_size=1, max_size=64))
    for bad in (signed[:cut], signed + extra, extra + signed, signed[:cut] + extra):
        if len(bad) == BUNDLE_SIZE:
            continue
        with pytest.raises(DecodeError, match=r"bundle must be|not a Nyth server bundle"):
            ServerBundle.verify(bad)


@settings(max_examples=60)
@given(st.binary(min_size=BUNDLE_SIZE, max_size=BUNDLE_SIZE_V2)
       | st.binary(max_size=200).map(lambda b: MAGIC + b)
       | st.binary(max_size=200).map(lambda b: MAGIC_V2 + b))
def test_arbitrary_bytes_are_rejected(data: bytes) -> None:
    with pytest.raises(REJECT):
        ServerBundle.verify(data)


@pytest.mark.parametrize("overrides", [
    {"blob_size": 63}, {"blob_size": MAX_BLOB_SIZE + 1}, {"max_blobs": 0},
    {"max_age_seconds": 0}, {"issued_at": -1}, {"max_blobs": 1 << 63},
    {"max_age_seconds": 1 << 63}, {"issued_at": 1 << 63},
    {"onion_public_key": bytes(31)}, {"token_public_key": bytes(33)},
])
def test_out_of_range_fields_are_rejected(overrides: dict[str, Any]) -> None:
    with pytest.raises(DecodeError):
        make(**overrides)


@pytest.mark.parametrize(("offset", "value"), [
    (72, struct.pack(">I", 63)), (72, struct.pack(">I", MAX_BLOB_SIZE + 1)),
    (76, struct.pack(">Q", 0)), (84, struct.pack(">Q", 1 << 63)),
    (92, struct.pack(">Q", (1 << 64) - 1)),
])
def test_signed_bundle_with_out_of_range_field_is_rejected(offset: int, value: bytes) -> None:
    """Even correctly signed by the server: the codec refuses values it cannot honour."""
    body = bytearray(make().sign(SERVER)[:100])
    body[offset: offset + len(value)] = value
    with pytest.raises(DecodeError):
        ServerBundle.verify(bytes(body) + SERVER.sign(bytes(body)))


def test_bundle_must_be_signed_by_its_own_onion_key() -> None:
    with pytest.raises(ValueError):
        make().sign(OTHER)
    body = make().sign(SERVER)[:100]
    with pytest.raises(AuthenticationError):
        ServerBundle.verify(body + OTHER.sign(body))


def test_bundle_for_another_onion_is_rejected() -> None:
    signed = make().sign(SERVER)
    with pytest.raises(DecodeError, match="different server"):
        ServerBundle.verify(signed, OTHER.onion)
    with pytest.raises(DecodeError, match="different server"):
        check_pin(OTHER.onion, signed, None)
    with pytest.raises(DecodeError, match="different server"):
        check_pin(OTHER.onion, signed, signed)
    with pytest.raises(DecodeError):
        check_pin("not-an-onion", signed, None)


# -- pinning ------------------------------------------------------------------------------

def test_first_use_pins_and_same_bundle_is_ok() -> None:
    signed = make().sign(SERVER)
    pinned = check_pin(SERVER.onion, signed, None)
    assert pinned == signed
    assert check_pin(SERVER.onion + ".onion", signed, pinned) == signed


@pytest.mark.parametrize("overrides", [
    {"token_public_key": OTHER_TOKEN_KEY}, {"blob_size": 4096}, {"max_blobs": 10},
    {"max_age_seconds": 60}, {"issued_at": 1_800_000_001},
])
def test_any_change_raises_bundle_changed(overrides: dict[str, Any]) -> None:
    pinned = check_pin(SERVER.onion, make().sign(SERVER), None)
    changed = make(**overrides).sign(SERVER)
    with pytest.raises(BundleChangedError, match="re-pin"):
        check_pin(SERVER.onion, changed, pinned)


def test_invalid_presented_bundle_is_rejected_before_pin_comparison() -> None:
    signed = make().sign(SERVER)
    with pytest.raises(AuthenticationError):
        check_pin(SERVER.onion, flip(signed, 8 * BUNDLE_SIZE - 1), signed)
    with pytest.raises(DecodeError):
        check_pin(SERVER.onion, signed[:-1], signed)
