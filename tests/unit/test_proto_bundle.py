"""Signed server key bundles and trust-on-first-use pinning."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nyth.errors import AuthenticationError, BundleChangedError, DecodeError
from nyth.proto.bundle import BUNDLE_SIZE, MAGIC, MAX_BLOB_SIZE, ServerBundle, check_pin
from nyth.proto.identity import Identity

SERVER = Identity.from_seed(b"S" * 32)
OTHER = Identity.from_seed(b"O" * 32)
REJECT = (DecodeError, AuthenticationError)
U63 = st.integers(1, (1 << 63) - 1)


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
    st.binary(min_size=32, max_size=32), st.integers(64, MAX_BLOB_SIZE), U63, U63,
    st.integers(0, (1 << 63) - 1),
)


def test_layout() -> None:
    bundle = make(token_public_key=b"t" * 32)
    signed = bundle.sign(SERVER)
    assert BUNDLE_SIZE == len(signed) == 164
    body = struct.pack(">8s32s32sIQQQ", MAGIC, SERVER.public_key, b"t" * 32, 2048, 100_000,
                       7 * 86400, 1_800_000_000)
    assert signed == body + SERVER.sign(body)
    assert bundle.onion == SERVER.onion


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
        with pytest.raises(DecodeError, match="bundle must be"):
            ServerBundle.verify(bad)


@settings(max_examples=60)
@given(st.binary(min_size=BUNDLE_SIZE, max_size=BUNDLE_SIZE)
       | st.binary(max_size=200).map(lambda b: MAGIC + b))
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
    {"token_public_key": b"k" * 32}, {"blob_size": 4096}, {"max_blobs": 10},
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
