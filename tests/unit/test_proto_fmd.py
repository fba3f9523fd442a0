"""FMD2 on ristretto255 (nyth.proto.fmd): correctness, false-positive rate, strict decoding."""

from __future__ import annotations

import hashlib
import math
import os
import random

import pytest
import rbcl
from hypothesis import given, settings
from hypothesis import strategies as st
from nyth.errors import DecodeError
from nyth.proto import fmd

L = 2**252 + 27742317777372353535851937790883648493
P = 2**255 - 19


@pytest.fixture(scope="module")
def sk() -> fmd.FmdSecretKey:
    return fmd.FmdSecretKey.generate()


@pytest.fixture(scope="module")
def true_tags(sk: fmd.FmdSecretKey) -> list[bytes]:
    pk = sk.public_key()
    return [fmd.flag(pk) for _ in range(32)]


def within_4_sigma(hits: int, trials: int, n: int) -> bool:
    p = 2.0 ** -n
    return abs(hits - trials * p) <= 4 * math.sqrt(trials * p * (1 - p))


def random_wellformed_tag(rng: random.Random) -> bytes:
    """A valid tag from no key of ours: U a uniform point, y a uniform scalar, c uniform bits.

    To a detector, a tag flagged to someone else's key looks exactly like this (U = r·B and
    y are uniform, c is independent of the detector's scalars), and it costs ~30 µs to make
    instead of ~1.7 ms for a real flag (24 scalar multiplications).
    """
    u = rbcl.crypto_core_ristretto255_from_hash(rng.randbytes(64))
    y = rbcl.crypto_core_ristretto255_scalar_reduce(rng.randbytes(64))
    return u + y + rng.randbytes(fmd.C_SIZE)


# -- correctness -------------------------------------------------------------------------

def test_sizes() -> None:
    assert fmd.GAMMA == 24
    assert fmd.TAG_SIZE == 67
    sk = fmd.FmdSecretKey.generate()
    assert len(sk.encode()) == 24 * 32
    assert len(sk.public_key().encode()) == 768
    assert len(fmd.flag(sk.public_key())) == 67
    for n in (0, 1, 8, 24):
        assert sk.extract(n).n == n
        assert len(sk.extract(n).encode()) == 32 * n


def test_true_tag_passes_at_every_n(sk: fmd.FmdSecretKey, true_tags: list[bytes]) -> None:
    keys = [sk.extract(n) for n in range(fmd.GAMMA + 1)]
    for tag in true_tags[:3]:
        for dk in keys:
            assert fmd.test(dk, tag), dk.n
            assert fmd.match_length(dk, tag) == dk.n
    full = keys[-1]
    for tag in true_tags:  # passing all γ bits means passing at every n ≤ γ
        assert fmd.test(full, tag)
        assert fmd.test(full, fmd.decode_tag(tag))


def test_true_tag_passes_through_codecs(sk: fmd.FmdSecretKey, true_tags: list[bytes]) -> None:
    pk = fmd.FmdPublicKey.decode(sk.public_key().encode())
    tag = fmd.flag(pk)
    sk2 = fmd.FmdSecretKey.decode(sk.encode())
    for n in (0, 1, 7, 24):
        assert fmd.test(fmd.DetectionKey.decode(sk2.extract(n).encode()), tag)


def test_tags_are_fresh(sk: fmd.FmdSecretKey, true_tags: list[bytes]) -> None:
    assert len(set(true_tags)) == len(true_tags)
    assert len({t[:32] for t in true_tags}) == len(true_tags)


def test_n_zero_passes_everything(true_tags: list[bytes]) -> None:
    dk = fmd.FmdSecretKey.generate().extract(0)
    rng = random.Random(0)
    for tag in [*true_tags, *(random_wellformed_tag(rng) for _ in range(50))]:
        assert fmd.test(dk, tag)


def test_extract_range(sk: fmd.FmdSecretKey) -> None:
    for bad in (-1, 25, 100):
        with pytest.raises(ValueError):
            sk.extract(bad)


def test_decoded_tag_keeps_w(true_tags: list[bytes]) -> None:
    tag = fmd.decode_tag(true_tags[0])
    assert tag.encode() == true_tags[0]
    w = tag.w
    assert tag.w is w  # computed once per tag, reused across keys


# -- false-positive rate -----------------------------------------------------------------

def test_false_positive_rate_over_10000_unrelated_tags() -> None:
    """For n = 1..8 the observed rate lies within 4 standard deviations of 2⁻ⁿ.

    One pass per tag: match_length(extract(8), tag) is the number of leading bits that
    pass, so the tag passes test(extract(n)) exactly when match_length ≥ n (checked against
    test() itself on a sample below). Early exit: ~2 scalar multiplications per tag.
    """
    sk = fmd.FmdSecretKey.generate()
    rng = random.Random(int.from_bytes(os.urandom(8), "little"))
    tags = [random_wellformed_tag(rng) for _ in range(10_000)]
    dk8 = sk.extract(8)
    lengths = [fmd.match_length(dk8, tag) for tag in tags]
    for n in range(1, 9):
        hits = sum(1 for m in lengths if m >= n)
        assert within_4_sigma(hits, len(tags), n), (n, hits)
    keys = [sk.extract(n) for n in range(1, 9)]
    for raw, m in zip(tags[:150], lengths[:150], strict=True):
        tag = fmd.decode_tag(raw)
        for dk in keys:
            assert fmd.test(dk, tag) == (m >= dk.n)


def test_false_positive_rate_real_flags_for_another_key(true_tags: list[bytes]) -> None:
    """Honest tags flagged to another key (fewer: a real flag costs 24 scalar mults)."""
    other = fmd.FmdSecretKey.generate().public_key()
    tags = [fmd.flag(other) for _ in range(200)]
    dk = fmd.FmdSecretKey.generate().extract(8)
    lengths = [fmd.match_length(dk, tag) for tag in tags]
    for n in range(1, 5):
        assert within_4_sigma(sum(1 for m in lengths if m >= n), len(tags), n), n


# -- flipped bits, invalid points: DecodeError or False, nothing else ----------------------

def outcome(dk: fmd.DetectionKey, tag: bytes) -> str:
    try:
        return "pass" if fmd.test(dk, tag) else "fail"
    except DecodeError:
        return "decode-error"


def test_every_flipped_tag_bit_fails_cleanly(sk: fmd.FmdSecretKey, true_tags: list[bytes]) -> None:
    dk = sk.extract(fmd.GAMMA)
    tag = true_tags[0]
    seen = set()
    for bit in range(fmd.TAG_SIZE * 8):
        flipped = bytearray(tag)
        flipped[bit // 8] ^= 1 << (bit % 8)
        result = outcome(dk, bytes(flipped))
        assert result in ("fail", "decode-error"), bit
        seen.add(result)
    assert seen == {"fail", "decode-error"}


def test_flipped_detection_key_bits_fail_cleanly(sk: fmd.FmdSecretKey, true_tags: list[bytes]) -> None:
    """A flipped bit in scalar j leaves only bit j undecided: it passes with probability ½."""
    tag = fmd.decode_tag(true_tags[1])
    rng = random.Random(1)
    encoded = sk.extract(fmd.GAMMA).encode()
    results = []
    for _ in range(200):
        j = rng.randrange(fmd.GAMMA)
        bit = rng.randrange(256)
        flipped = bytearray(encoded)
        flipped[32 * j + bit // 8] ^= 1 << (bit % 8)
        try:
            dk = fmd.DetectionKey.decode(bytes(flipped)[: 32 * (j + 1)])
        except DecodeError:
            results.append("decode-error")
            continue
        results.append("pass" if fmd.test(dk, tag) else "fail")
    fails = results.count("fail")
    decodable = fails + results.count("pass")
    assert decodable > 100  # high bits flipped → non-canonical; the rest decode
    assert 0.3 < fails / decodable < 0.7


def test_flipped_public_key_bits_fail_cleanly(sk: fmd.FmdSecretKey) -> None:
    encoded = sk.public_key().encode()
    dk = sk.extract(fmd.GAMMA)
    rng = random.Random(2)
    results = []
    for _ in range(60):
        bit = rng.randrange(len(encoded) * 8)
        flipped = bytearray(encoded)
        flipped[bit // 8] ^= 1 << (bit % 8)
        try:
            pk = fmd.FmdPublicKey.decode(bytes(flipped))
        except DecodeError:
            results.append("decode-error")
            continue
        results.append("pass" if fmd.test(dk, fmd.flag(pk)) else "fail")
    assert "decode-error" in results
    assert results.count("fail") + results.count("pass") + results.count("decode-error") == 60


def _high_bit_alias() -> bytes:
    """A valid point with bit 255 set: libsodium 1.0.18 decodes it as the point itself."""
    point = rbcl.crypto_scalarmult_ristretto255_base((12345).to_bytes(32, "little"))
    return point[:31] + bytes([point[31] | 0x80])


NON_CANONICAL_POINTS = [
    (P).to_bytes(32, "little"),  # field element = p
    (P + 1).to_bytes(32, "little"),
    (2**255 - 1).to_bytes(32, "little"),
    bytes([1]) + bytes(31),  # 1 is "negative" (odd): ristretto rejects it
    bytes(31) + b"\x80",  # high bit set: the identity's alias
    _high_bit_alias(),
    b"\xff" * 32,
]


@pytest.mark.parametrize("u", [*NON_CANONICAL_POINTS, bytes(32)])
def test_tag_with_bad_u_is_refused(true_tags: list[bytes], u: bytes) -> None:
    with pytest.raises(DecodeError):
        fmd.decode_tag(u + true_tags[0][32:])
    with pytest.raises(DecodeError):
        fmd.test(fmd.FmdSecretKey.generate().extract(3), u + true_tags[0][32:])


@pytest.mark.parametrize("y", [L, L + 1, 2**256 - 1, 2**255], ids=str)
def test_tag_with_non_canonical_y_is_refused(true_tags: list[bytes], y: int) -> None:
    tag = true_tags[0]
    with pytest.raises(DecodeError):
        fmd.decode_tag(tag[:32] + y.to_bytes(32, "little") + tag[64:])


@pytest.mark.parametrize("length", [0, 1, 66, 68, 134])
def test_tag_with_wrong_length_is_refused(length: int) -> None:
    with pytest.raises(DecodeError):
        fmd.decode_tag(bytes(length))


def test_zero_y_and_zero_m_edge_cases_do_not_crash(true_tags: list[bytes]) -> None:
    dk = fmd.FmdSecretKey.generate().extract(24)
    tag = true_tags[0][:32] + bytes(32) + true_tags[0][64:]
    assert fmd.test(dk, tag) in (False, True)


def test_public_key_with_bad_points_is_refused(sk: fmd.FmdSecretKey) -> None:
    good = sk.public_key().encode()
    for bad in [*NON_CANONICAL_POINTS, bytes(32)]:
        for i in (0, 23):
            data = good[: 32 * i] + bad + good[32 * (i + 1):]
            with pytest.raises(DecodeError):
                fmd.FmdPublicKey.decode(data)
    for length in (0, 736, 767, 769, 800):
        with pytest.raises(DecodeError):
            fmd.FmdPublicKey.decode(good[:length] + bytes(max(0, length - len(good))))


def test_detection_and_secret_keys_with_bad_scalars_are_refused(sk: fmd.FmdSecretKey) -> None:
    good = sk.encode()
    for bad in (L, L + 1, 2**256 - 1, 0):
        data = good[:32] + bad.to_bytes(32, "little") + good[64:]
        with pytest.raises(DecodeError):
            fmd.FmdSecretKey.decode(data)
        with pytest.raises(DecodeError):
            fmd.DetectionKey.decode(data[:64])
    for length in (1, 31, 33, 769, 800):
        with pytest.raises(DecodeError):
            fmd.DetectionKey.decode(bytes(length))
    for length in (0, 736, 800):
        with pytest.raises(DecodeError):
            fmd.FmdSecretKey.decode(good[:length] + bytes(max(0, length - len(good))))
    assert fmd.DetectionKey.decode(b"").n == 0


def test_repr_hides_secrets(sk: fmd.FmdSecretKey) -> None:
    for s in (sk.encode()[:4].hex(), sk.encode()[32:36].hex()):
        assert s not in repr(sk)
        assert s not in repr(sk.extract(24))


# -- codecs (Hypothesis) -----------------------------------------------------------------

scalars = st.binary(min_size=64, max_size=64).map(rbcl.crypto_core_ristretto255_scalar_reduce).filter(
    lambda s: any(s))
secret_keys = st.lists(scalars, min_size=24, max_size=24).map(lambda s: fmd.FmdSecretKey(tuple(s)))


@settings(max_examples=40, deadline=None)
@given(secret_keys, st.integers(min_value=0, max_value=24))
def test_key_codecs_round_trip(key: fmd.FmdSecretKey, n: int) -> None:
    assert fmd.FmdSecretKey.decode(key.encode()) == key
    dk = key.extract(n)
    assert fmd.DetectionKey.decode(dk.encode()) == dk
    assert fmd.DetectionKey.decode(dk.encode()).n == n
    if n == 0:
        pk = key.public_key()
        assert fmd.FmdPublicKey.decode(pk.encode()) == pk


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=900))
def test_decoders_raise_only_decode_error(data: bytes) -> None:
    for decode in (fmd.decode_tag, fmd.FmdPublicKey.decode, fmd.FmdSecretKey.decode,
                   fmd.DetectionKey.decode):
        try:
            decode(data)
        except DecodeError:
            pass


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=64, max_size=64), st.binary(min_size=32, max_size=32),
       st.binary(min_size=3, max_size=3), st.booleans())
def test_arbitrary_tags_decode_error_or_bool(seed: bytes, y: bytes, c: bytes, valid_u: bool) -> None:
    u = rbcl.crypto_core_ristretto255_from_hash(seed) if valid_u else seed[:32]
    dk = fmd.DetectionKey((hashlib.sha512(seed).digest()[:31] + b"\x01",) * 2)
    try:
        result = fmd.test(dk, u + y + c)
    except DecodeError:
        return
    assert result in (True, False)


def test_stored_w_is_reused(sk: fmd.FmdSecretKey, true_tags: list[bytes]) -> None:
    w = fmd.decode_tag(true_tags[2]).w
    again = fmd.decode_tag(true_tags[2], w=w)
    assert again.w == w
    assert fmd.test(sk.extract(24), again)
    with pytest.raises(DecodeError):
        fmd.decode_tag(true_tags[2], w=w[:31])
