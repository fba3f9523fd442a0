"""Binary pages of blobs: what GET /v1/blobs answers to `Accept: application/vnd.nyth.blob-page`.

A JSON page carries every blob as base64 (4/3 of its size) inside a JSON string, which
both ends must build and parse blob by blob; catching up on a busy server is mostly
that. A binary page carries the same information (each blob's stream id, the blobs,
the cursor to continue from and whether more wait) as fixed-size fields, so the server
can write the blobs back to back as Redis returned them and the reader can slice them.

Layout (big-endian, docs/protocol.md §4.1):

    magic "NYTHPAG1" (8) | flags (u8; bit 0: more) | blob size (u32) | count (u32)
    | next cursor: ms (u64), seq (u64)
    | count × stream id: ms (u64), seq (u64)
    | count × blob (blob size bytes each)

A stream id is a Redis stream id "<ms>-<seq>", the public cursor (nyth.runtime.stream_store);
the ids sit in a table before the blobs so the blobs stay one contiguous run. Ids need not
be in order: a page answers what the server sends, and a reader trusts neither order nor
content (the group layer does). The decoder checks the form only, against the reader's
own limits: the blob size it pinned and the most blobs it asked for.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from nyth.errors import DecodeError
from nyth.proto.bundle import MAX_BLOB_SIZE

MEDIA_TYPE = "application/vnd.nyth.blob-page"
MAGIC = b"NYTHPAG1"
FLAG_MORE = 0x01
_HEADER = struct.Struct(">8sBIIQQ")
HEADER_SIZE = _HEADER.size  # 33
_ID = struct.Struct(">QQ")
ID_SIZE = _ID.size  # 16
_U64_MAX = (1 << 64) - 1
# A page never holds more than this many blobs whatever a caller asks: the server's
# max_page is at most 100 000 (nyth.config), and a count field cannot ask for more.
MAX_COUNT = 100_000


class StreamId(NamedTuple):
    """A stream id <ms>-<seq>, printed the way the JSON page prints it."""

    ms: int
    seq: int

    def __str__(self) -> str:
        return f"{self.ms}-{self.seq}"


@dataclass(frozen=True)
class BlobPage:
    ids: list[StreamId]
    blobs: list[bytes]
    next: StreamId
    more: bool


def page_size(count: int, blob_size: int) -> int:
    """The exact length of a page of count blobs of blob_size bytes."""
    return HEADER_SIZE + count * (ID_SIZE + blob_size)


def _check_limits(blob_size: int, count: int) -> None:
    if not 1 <= blob_size <= MAX_BLOB_SIZE:
        raise DecodeError(f"blob size {blob_size} out of range 1..{MAX_BLOB_SIZE}")
    if not 0 <= count <= MAX_COUNT:
        raise DecodeError(f"page count {count} out of range 0..{MAX_COUNT}")


def _check_id(ms: int, seq: int) -> None:
    if not (0 <= ms <= _U64_MAX and 0 <= seq <= _U64_MAX):
        raise DecodeError("stream id parts must each fit in 64 bits")


def encode_page(ids: Sequence[tuple[int, int]], blobs: Sequence[bytes], next_id: tuple[int, int],
                more: bool, blob_size: int) -> bytes:
    """A page of blobs with their stream ids; DecodeError if a blob is not blob_size bytes
    or the ids and blobs do not pair up."""
    if any(len(blob) != blob_size for blob in blobs):
        raise DecodeError(f"every blob of a page must be {blob_size} bytes")
    if len(ids) != len(blobs):
        raise DecodeError(f"{len(ids)} stream ids for {len(blobs)} blobs")
    return encode_page_run([part for pair in ids for part in pair], b"".join(blobs), next_id,
                           more, blob_size)


def encode_page_run(id_parts: Sequence[int], run: bytes, next_id: tuple[int, int],
                    more: bool, blob_size: int) -> bytes:
    """encode_page for blobs already back to back in run and their ids as one flat
    sequence (ms, seq, ms, seq...), as a server's store can hand them over without an
    object per blob; DecodeError unless run holds one blob_size blob per id."""
    if len(id_parts) % 2:
        raise DecodeError("stream ids come as (ms, seq) pairs: an odd number of parts")
    count = len(id_parts) // 2
    _check_limits(blob_size, count)
    if len(run) != count * blob_size:
        raise DecodeError(f"{len(run)} bytes of blobs for {count} blobs of {blob_size} bytes")
    _check_id(*next_id)
    if id_parts and (min(id_parts) < 0 or max(id_parts) > _U64_MAX):
        raise DecodeError("stream id parts must each fit in 64 bits")
    return b"".join((
        _HEADER.pack(MAGIC, FLAG_MORE if more else 0, blob_size, count, *next_id),
        struct.pack(f">{len(id_parts)}Q", *id_parts),
        run,
    ))


def decode_page(data: bytes, *, blob_size: int, max_count: int) -> BlobPage:
    """Parse a page whose blobs must be blob_size bytes (the size the reader pinned) and
    which may hold at most max_count of them (what the reader asked for); DecodeError
    for anything else, before any blob is sliced out."""
    _check_limits(blob_size, max_count)
    if len(data) < HEADER_SIZE:
        raise DecodeError(f"blob page truncated: {len(data)} bytes, shorter than its "
                          f"{HEADER_SIZE}-byte header")
    magic, flags, size, count, next_ms, next_seq = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise DecodeError("not a blob page (bad magic)")
    if flags & ~FLAG_MORE:
        raise DecodeError(f"blob page has unknown flags 0x{flags:02x}")
    if size != blob_size:
        raise DecodeError(f"blob page carries {size}-byte blobs; this server's are "
                          f"{blob_size} bytes")
    if count > max_count:
        raise DecodeError(f"blob page holds {count} blobs, more than the {max_count} asked for")
    expected = page_size(count, blob_size)
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "extended"
        raise DecodeError(f"blob page {state}: {len(data)} bytes where {count} blobs of "
                          f"{blob_size} take {expected}")
    start = HEADER_SIZE + count * ID_SIZE
    # A page holds up to a thousand blobs: no Python-level work per id beyond the tuple.
    ids = list(map(StreamId._make, _ID.iter_unpack(memoryview(data)[HEADER_SIZE:start])))
    blobs = [data[at:at + blob_size] for at in range(start, len(data), blob_size)]
    return BlobPage(ids, blobs, StreamId(next_ms, next_seq), bool(flags & FLAG_MORE))
