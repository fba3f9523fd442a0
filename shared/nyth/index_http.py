"""Talking to a discovery index over Tor, as a client: its signed bundle, its directory
pages, and posting an advert. Used by servers advertising themselves (nyth.advertiser)
and by peers reading the directory (nyth_peer.discovery).

An index is as untrusted as any server: every answer is read with a byte limit from the
protocol's fixed sizes and parsed into a strict model, and what it carries is verified
(the bundle against the index's onion key, chunks by the directory's digest and
signature once assembled) before anything is used.
"""

from __future__ import annotations

import base64
from typing import Annotated

import httpx
from pydantic import Field, PlainValidator

from nyth.errors import DecodeError
from nyth.http_limits import (
    ERROR_BODY_BYTES,
    ITEM_SLACK,
    JSON_SLACK,
    StrictModel,
    UntrustedResponseError,
    b64_len,
    b64_validator,
    bounded_request,
    printable,
)
from nyth.proto.discovery import (
    ADVERT_SIZE,
    CHUNKS_PER_PAGE,
    MAX_CHUNK_SIZE,
    MAX_INDEX_BUNDLE_SIZE,
    MAX_PAGES,
    Chunk,
    IndexBundle,
    page_count,
)
from nyth.proto.group import MAX_SERVERS
from nyth.tor.socks import describe_socks_reply, socks_reply_code

# Through Tor to an index that died mid-rendezvous a request can hang without a socket
# error: every request gets a hard deadline.
INDEX_DEADLINE = 30.0
# GET /v1/bundle: the bundle, the onions and group key it names again (in clear), the
# pow bits and the index's onion; all but the bundle are ignored (the bundle says it all).
BUNDLE_ANSWER_BYTES = (b64_len(MAX_INDEX_BUNDLE_SIZE) + MAX_SERVERS * 70 + b64_len(32)
                       + JSON_SLACK)
# GET /v1/directory?page=N: up to CHUNKS_PER_PAGE chunks plus epoch, digest, page numbers.
PAGE_ANSWER_BYTES = CHUNKS_PER_PAGE * (b64_len(MAX_CHUNK_SIZE) + ITEM_SLACK) + JSON_SLACK
# POST /v1/adverts: a small acknowledgement; its content is not used.
ADVERT_ANSWER_BYTES = ERROR_BODY_BYTES


class IndexAnswerError(Exception):
    """An index answered with an error status; the message names it and quotes it."""


class _BundleAnswer(StrictModel):
    bundle: Annotated[bytes, PlainValidator(b64_validator(max_size=MAX_INDEX_BUNDLE_SIZE))]


class _PageAnswer(StrictModel):
    page: int = Field(ge=0, lt=MAX_PAGES)
    pages: int = Field(ge=1, le=MAX_PAGES)
    chunks: list[Annotated[bytes, PlainValidator(b64_validator(max_size=MAX_CHUNK_SIZE))]] = \
        Field(min_length=1, max_length=CHUNKS_PER_PAGE)


def failure_reason(exc: BaseException) -> str:
    """Why a request to an onion failed, in words: tor's SOCKS reply explained (python-socks
    says only "Invalid reply code: 0XF2"), no answer in time, or the error itself
    (cleaned: its text may quote the server's bytes)."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {INDEX_DEADLINE:.0f} s"
    code = socks_reply_code(exc)
    if code is not None:
        return f"tor: {describe_socks_reply(code)}"
    return printable(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, 300)


def index_url(onion: str, path: str) -> str:
    return f"http://{onion}.onion{path}"


async def fetch_index_bundle(http: httpx.AsyncClient, onion: str) -> bytes:
    """The signed bundle the index presents now, checked to be its own (IndexBundle.verify
    for that onion raises otherwise); the raw bytes, to pin."""
    answer = await bounded_request(http, "GET", index_url(onion, "/v1/bundle"),
                                   max_bytes=BUNDLE_ANSWER_BYTES, deadline=INDEX_DEADLINE,
                                   what="index bundle")
    if answer.status_code != 200:
        raise IndexAnswerError(f"{answer.server} {answer.failure()} to a bundle request")
    data = answer.parse(_BundleAnswer).bundle
    IndexBundle.verify(data, onion)
    return data


async def fetch_directory_page(http: httpx.AsyncClient, onion: str,
                               page: int) -> tuple[list[Chunk], int]:
    """Page `page` of the index's current directory: (its chunks, the number of pages).
    The chunks' own indexes must be the page's (CHUNKS_PER_PAGE of them from
    page · CHUNKS_PER_PAGE, fewer on the last page only), all of one directory: an index
    that numbers them otherwise is refused here, before a chunk reaches an assembler."""
    answer = await bounded_request(http, "GET", index_url(onion, "/v1/directory"),
                                   params={"page": page}, max_bytes=PAGE_ANSWER_BYTES,
                                   deadline=INDEX_DEADLINE, what="directory page")
    if answer.status_code != 200:
        raise IndexAnswerError(f"{answer.server} {answer.failure()} to a directory request")
    parsed = answer.parse(_PageAnswer)
    try:
        chunks = [Chunk.decode(data) for data in parsed.chunks]
    except DecodeError as exc:
        raise UntrustedResponseError(f"{answer.server} sent a malformed chunk: {exc}") from None
    first = page * CHUNKS_PER_PAGE
    count = chunks[0].count
    expected = list(range(first, min(first + CHUNKS_PER_PAGE, count)))
    if ([c.index for c in chunks] != expected or parsed.page != page
            or page_count(count) != parsed.pages
            or any((c.epoch, c.digest, c.count) != (chunks[0].epoch, chunks[0].digest, count)
                   for c in chunks)):
        raise UntrustedResponseError(
            f"{answer.server} answered page {page} of {parsed.pages} with chunks "
            f"{[c.index for c in chunks][:4]}… of {count}, not chunks {first}.. of one directory")
    return chunks, parsed.pages


async def post_advert(http: httpx.AsyncClient, onion: str, advert: bytes) -> None:
    """Post a signed advert; IndexAnswerError with the index's reason unless it says 201."""
    if len(advert) != ADVERT_SIZE:
        raise ValueError("not a signed advert")
    answer = await bounded_request(
        http, "POST", index_url(onion, "/v1/adverts"),
        json={"advert": base64.b64encode(advert).decode()}, max_bytes=ADVERT_ANSWER_BYTES,
        deadline=INDEX_DEADLINE, what="advert acknowledgement")
    if answer.status_code != 201:
        raise IndexAnswerError(f"{answer.server} {answer.failure()} to our advert")
