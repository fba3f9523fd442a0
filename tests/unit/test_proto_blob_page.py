"""Binary pages of blobs (docs/protocol.md §4.1): layout, round trip, and every truncated,
extended or spoilt page refused with DecodeError."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nyth.errors import DecodeError
from nyth.proto.blob_page import (
    FLAG_MORE,
    HEADER_SIZE,
    MAGIC,
    MAX_COUNT,
    BlobPage,
    StreamId,
    decode_page,
    encode_page,
    encode_page_run,
    page_size,
)
from nyth.proto.bundle import MAX_BLOB_SIZE

U64 = st.integers(0, (1 << 64) - 1)
ids = st.builds(StreamId, U64, U64)


@st.composite
def pages(draw: st.DrawFn) -> tuple[BlobPage, int]:
    blob_size = draw(st.sampled_from([1, 64, 100, 2048]))
    count = draw(st.integers(0, 6))
    blobs = [draw(st.binary(min_size=blob_size, max_size=blob_size)) for _ in range(count)]
    page = BlobPage([draw(ids) for _ in range(count)], blobs, draw(ids), draw(st.booleans()))
    return page, blob_size


def encode(page: BlobPage, blob_size: int) -> bytes:
    return encode_page(page.ids, page.blobs, page.next, page.more, blob_size)


def test_layout() -> None:
    blobs = [b"\x01" * 64, b"\x02" * 64]
    data = encode_page([(5, 0), (5, 1)], blobs, (5, 1), True, 64)
    assert HEADER_SIZE == 33 and len(data) == page_size(2, 64) == 33 + 2 * (16 + 64)
    assert data == (MAGIC + bytes([FLAG_MORE]) + struct.pack(">IIQQ", 64, 2, 5, 1)
                    + struct.pack(">QQQQ", 5, 0, 5, 1) + blobs[0] + blobs[1])
    page = decode_page(data, blob_size=64, max_count=2)
    assert page == BlobPage([StreamId(5, 0), StreamId(5, 1)], blobs, StreamId(5, 1), True)
    # Cursors print as the JSON page prints them, so either page continues the other.
    assert [str(i) for i in page.ids] == ["5-0", "5-1"] and str(page.next) == "5-1"


def test_an_empty_page() -> None:
    data = encode_page([], [], (0, 0), False, 2048)
    assert len(data) == HEADER_SIZE
    assert decode_page(data, blob_size=2048, max_count=0) == BlobPage([], [], StreamId(0, 0), False)


@settings(max_examples=200)
@given(pages())
def test_round_trip(case: tuple[BlobPage, int]) -> None:
    page, blob_size = case
    assert decode_page(encode(page, blob_size), blob_size=blob_size,
                       max_count=len(page.blobs)) == page


@settings(max_examples=200)
@given(pages(), st.data())
def test_any_truncation_is_refused(case: tuple[BlobPage, int], data: st.DataObject) -> None:
    page, blob_size = case
    encoded = encode(page, blob_size)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(DecodeError):
        decode_page(encoded[:cut], blob_size=blob_size, max_count=MAX_COUNT)


@settings(max_examples=200)
@given(pages(), st.binary(min_size=1, max_size=3000))
def test_any_extension_is_refused(case: tuple[BlobPage, int], extra: bytes) -> None:
    page, blob_size = case
    with pytest.raises(DecodeError, match="extended"):
        decode_page(encode(page, blob_size) + extra, blob_size=blob_size, max_count=MAX_COUNT)


# Bits of the header whose change makes the page invalid: the magic, the flags but
# "more", the blob size and the count (which no longer matches the length).
_MORE_BIT = 8 * 8 + 7  # bits count from the most significant of each byte
_CHECKED_BITS = [b for b in range(8 * 17) if b != _MORE_BIT]


@settings(max_examples=300)
@given(pages(), st.sampled_from(_CHECKED_BITS))
def test_a_flipped_checked_header_bit_is_refused(case: tuple[BlobPage, int], bit: int) -> None:
    page, blob_size = case
    spoilt = bytearray(encode(page, blob_size))
    spoilt[bit // 8] ^= 0x80 >> (bit % 8)
    with pytest.raises(DecodeError):
        decode_page(bytes(spoilt), blob_size=blob_size, max_count=MAX_COUNT)


@settings(max_examples=300)
@given(pages(), st.data())
def test_other_flipped_bits_decode_to_another_page(case: tuple[BlobPage, int],
                                                    data: st.DataObject) -> None:
    """The more flag, the cursors and the blobs are the server's word: a change there is
    a different page, read as such (never an exception other than DecodeError)."""
    page, blob_size = case
    encoded = bytearray(encode(page, blob_size))
    bit = data.draw(st.sampled_from([_MORE_BIT, *range(8 * 17, 8 * len(encoded))]))
    encoded[bit // 8] ^= 0x80 >> (bit % 8)
    assert decode_page(bytes(encoded), blob_size=blob_size, max_count=MAX_COUNT) != page


@given(st.binary(max_size=400), st.integers(1, 64), st.integers(0, 8))
def test_arbitrary_bytes_only_ever_raise_decode_error(data: bytes, blob_size: int,
                                                      max_count: int) -> None:
    try:
        page = decode_page(data, blob_size=blob_size, max_count=max_count)
    except DecodeError:
        return
    assert len(page.blobs) <= max_count and all(len(b) == blob_size for b in page.blobs)


@pytest.mark.parametrize(("size", "pinned", "message"), [
    (2048, 1024, "carries 2048-byte blobs; this server's are 1024 bytes"),
    (64, 2048, "carries 64-byte blobs"),
])
def test_a_blob_size_other_than_the_pinned_one_is_refused(size: int, pinned: int,
                                                          message: str) -> None:
    data = encode_page([(1, 0)], [bytes(size)], (1, 0), False, size)
    with pytest.raises(DecodeError, match=message):
        decode_page(data, blob_size=pinned, max_count=10)


def test_more_blobs_than_asked_for_are_refused() -> None:
    data = encode_page([(1, i) for i in range(3)], [bytes(64)] * 3, (1, 2), False, 64)
    assert len(decode_page(data, blob_size=64, max_count=3).blobs) == 3
    with pytest.raises(DecodeError, match="holds 3 blobs, more than the 2 asked for"):
        decode_page(data, blob_size=64, max_count=2)


def test_a_huge_count_is_refused_before_any_slicing() -> None:
    header = MAGIC + bytes([0]) + struct.pack(">IIQQ", 2048, 0xFFFFFFFF, 0, 0)
    with pytest.raises(DecodeError, match="more than the 500 asked for"):
        decode_page(header, blob_size=2048, max_count=500)


@pytest.mark.parametrize(("flags", "message"), [(0x02, "unknown flags 0x02"),
                                                (0xFF, "unknown flags 0xff")])
def test_unknown_flags_are_refused(flags: int, message: str) -> None:
    data = bytearray(encode_page([], [], (0, 0), False, 64))
    data[8] = flags
    with pytest.raises(DecodeError, match=message):
        decode_page(bytes(data), blob_size=64, max_count=1)


def test_the_encoder_refuses_what_it_cannot_write() -> None:
    with pytest.raises(DecodeError, match="must be 64 bytes"):
        encode_page([(1, 0)], [bytes(63)], (1, 0), False, 64)
    with pytest.raises(DecodeError, match="1 stream ids for 2 blobs"):
        encode_page([(1, 0)], [bytes(64)] * 2, (1, 0), False, 64)
    with pytest.raises(DecodeError, match="127 bytes of blobs for 2 blobs of 64 bytes"):
        encode_page_run([1, 0, 1, 1], bytes(127), (1, 1), False, 64)
    with pytest.raises(DecodeError, match="odd number"):
        encode_page_run([1, 0, 1], bytes(128), (1, 1), False, 64)
    with pytest.raises(DecodeError, match="64 bits"):
        encode_page_run([1, -1], bytes(64), (1, 1), False, 64)
    assert encode_page_run([1, 0, 1, 1], b"a" * 64 + b"b" * 64, (1, 1), True, 64) == \
        encode_page([(1, 0), (1, 1)], [b"a" * 64, b"b" * 64], (1, 1), True, 64)
    with pytest.raises(DecodeError, match="64 bits"):
        encode_page([(1 << 64, 0)], [bytes(64)], (1, 0), False, 64)
    with pytest.raises(DecodeError, match="64 bits"):
        encode_page([], [], (-1, 0), False, 64)
    with pytest.raises(DecodeError, match="out of range"):
        encode_page([], [], (0, 0), False, MAX_BLOB_SIZE + 1)
    with pytest.raises(DecodeError, match="out of range"):
        decode_page(b"", blob_size=64, max_count=MAX_COUNT + 1)
