"""A small client for group servers, for services that post to them (the discovery index
posts canaries and its directory; other services may follow): the bundle, a batch of
tokens for proof of work, posting a blob with a token, reading a page.

Pages are asked for as binary pages (docs/protocol.md §4.1) with JSON as the fallback;
`parse_page`, which the peer's readers use too, reads whichever the server answered
under the same limits: at most the blobs asked for, each of the pinned blob size.

Everything a server answers is size-bounded and validated (`nyth.http_limits`); a token
batch is kept only if its proof verifies against the token key of the bundle the caller
trusts. The peer keeps its own wallet (`nyth_peer.tokens`: sealed, per post, retried
with the same token); this one is for a service that holds tokens in memory only, so a
restart costs it one batch per server.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Protocol, cast

import httpx
from pydantic import Field, PlainValidator

from nyth.errors import DecodeError, NythError
from nyth.http_limits import (
    ITEM_SLACK,
    JSON_SLACK,
    BoundedResponse,
    StrictModel,
    UntrustedResponseError,
    b64_len,
    b64_validator,
    bounded_request,
)
from nyth.proto import blob_page, tokens
from nyth.proto.bundle import MAX_BLOB_SIZE, MAX_BUNDLE_SIZE, ServerBundle
from nyth.runtime.stream_store import CURSOR_PATTERN

TOKEN_HEADER = "Nyth-Token"  # noqa: S105 (a header name)
DEADLINE = 30.0
BUNDLE_ANSWER_BYTES = b64_len(MAX_BUNDLE_SIZE) + JSON_SLACK
ISSUE_RESPONSE_SIZE = 1 + tokens.MAX_BATCH * tokens.voprf.ELEMENT_SIZE + tokens.voprf.PROOF_SIZE
ISSUE_ANSWER_BYTES = b64_len(ISSUE_RESPONSE_SIZE) + JSON_SLACK
POST_ANSWER_BYTES = JSON_SLACK
MAX_PAGE = 100


class GroupServerError(NythError):
    """A group server refused or failed a request; the text says which and why."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class BundleAnswer(StrictModel):
    bundle: Annotated[bytes, PlainValidator(b64_validator(max_size=MAX_BUNDLE_SIZE))]


class _IssueAnswer(StrictModel):
    issue_response: Annotated[bytes, PlainValidator(b64_validator(max_size=ISSUE_RESPONSE_SIZE))]


class _PostAnswer(StrictModel):
    id: str = Field(pattern=CURSOR_PATTERN)


class _BlobItem(StrictModel):
    id: str = Field(pattern=CURSOR_PATTERN)
    blob: Annotated[bytes, PlainValidator(b64_validator(max_size=MAX_BLOB_SIZE))]


class BlobPage(StrictModel):
    blobs: list[_BlobItem] = Field(max_length=MAX_PAGE)
    next: str = Field(pattern=CURSOR_PATTERN)
    more: bool


def page_answer_bytes(limit: int, blob_size: int) -> int:
    return limit * (b64_len(blob_size) + ITEM_SLACK) + JSON_SLACK


# Binary pages first; JSON, which every server speaks, below them. A server from before
# binary pages ignores Accept and answers JSON, which parse_page reads as before.
PAGE_ACCEPT = f"{blob_page.MEDIA_TYPE}, application/json;q=0.5"
PAGE_HEADERS = {"accept": PAGE_ACCEPT}


def page_limits(json_bytes: int, limit: int, blob_size: int) -> Callable[[str], int]:
    """bounded_request's max_bytes for a page: a binary page's exact size at most, or the
    JSON bound (json_bytes) for anything else."""
    binary_bytes = blob_page.page_size(limit, blob_size)

    def by_type(media_type: str) -> int:
        return binary_bytes if media_type == blob_page.MEDIA_TYPE else json_bytes
    return by_type


class _JsonItem(Protocol):
    id: str
    blob: bytes


class _JsonPage(Protocol):
    blobs: Sequence[_JsonItem]
    next: str
    more: bool


@dataclass(frozen=True)
class PageBlob:
    id: str
    blob: bytes


@dataclass(frozen=True)
class ReadPage:
    """A page as either format carries it; ids are cursors as the JSON page prints them."""

    blobs: list[PageBlob]
    next: str
    more: bool


def parse_page(answer: BoundedResponse, json_model: type[StrictModel], *, limit: int,
               blob_size: int) -> ReadPage:
    """A 200 answer to GET /v1/blobs: a binary page when the server said it sent one, else
    JSON parsed into json_model (whose blobs carry `id` and `blob`). Either way at most
    limit blobs, each exactly blob_size bytes; UntrustedResponseError otherwise."""
    if answer.media_type == blob_page.MEDIA_TYPE:
        try:
            binary = blob_page.decode_page(answer.content, blob_size=blob_size, max_count=limit)
        except DecodeError as exc:
            raise UntrustedResponseError(
                f"{answer.server} sent a malformed {answer.what}: {exc}") from None
        return ReadPage([PageBlob(str(i), blob) for i, blob in zip(binary.ids, binary.blobs,
                                                                    strict=True)],
                        str(binary.next), binary.more)
    page = cast(_JsonPage, answer.parse(json_model))
    if len(page.blobs) > limit or any(len(item.blob) != blob_size for item in page.blobs):
        raise UntrustedResponseError(f"{answer.server} sent a malformed {answer.what}: more "
                                     "blobs than asked for or blobs of the wrong size")
    return ReadPage([PageBlob(item.id, item.blob) for item in page.blobs], page.next, page.more)


@dataclass
class GroupServerClient:
    """One group server, reached with `http` (an onion client: nyth.tor.socks)."""

    http: httpx.AsyncClient
    onion: str
    deadline: float = DEADLINE

    def url(self, path: str) -> str:
        return f"http://{self.onion}.onion{path}"

    async def bundle(self) -> ServerBundle:
        """The server's signed bundle, verified as this onion's (DecodeError /
        AuthenticationError otherwise)."""
        answer = await bounded_request(self.http, "GET", self.url("/v1/bundle"),
                                       max_bytes=BUNDLE_ANSWER_BYTES, deadline=self.deadline,
                                       what="bundle")
        if answer.status_code != 200:
            raise GroupServerError(f"{answer.server} {answer.failure()} to GET /v1/bundle",
                                   answer.status_code)
        return ServerBundle.verify(answer.parse(BundleAnswer).bundle, self.onion)

    async def get_tokens(self, bundle: ServerBundle, count: int = tokens.MAX_BATCH,
                         *, stop: Callable[[], bool] | None = None) -> list[tokens.Token]:
        """A batch of tokens for the issuance proof of work the bundle asks (solved on a
        worker thread), checked against the bundle's token key."""
        if not bundle.tokens_required:
            return []
        pending = await asyncio.to_thread(tokens.prepare_issue, count)
        nonce = await asyncio.to_thread(tokens.solve_issue_pow, bundle.token_public_key,
                                        pending.blinded, bundle.token_pow_bits, stop=stop)
        body = {"issue_request": base64.b64encode(pending.request(nonce).encode()).decode()}
        answer = await bounded_request(self.http, "POST", self.url("/v1/tokens"), json=body,
                                       max_bytes=ISSUE_ANSWER_BYTES, deadline=self.deadline,
                                       what="token batch")
        if answer.status_code != 200:
            raise GroupServerError(f"{answer.server} {answer.failure()} to a token request",
                                   answer.status_code)
        response = answer.parse(_IssueAnswer).issue_response
        return await asyncio.to_thread(tokens.finalize_batch, bundle.token_public_key,
                                       pending, response)

    async def post_blob(self, blob: bytes, token: tokens.Token | None) -> str:
        """Post one blob (paying with token when given); its cursor id."""
        headers = {"content-type": "application/octet-stream"}
        if token is not None:
            headers[TOKEN_HEADER] = base64.b64encode(tokens.redeem(token, blob)).decode()
        answer = await bounded_request(self.http, "POST", self.url("/v1/blobs"), content=blob,
                                       headers=headers, max_bytes=POST_ANSWER_BYTES,
                                       deadline=self.deadline, what="post answer")
        if answer.status_code != 201:
            raise GroupServerError(f"{answer.server} {answer.failure()} to a post",
                                   answer.status_code)
        return answer.parse(_PostAnswer).id

    async def read_page(self, after: str, limit: int, blob_size: int) -> ReadPage:
        """Up to limit blobs after the cursor `after`, each blob_size bytes (the bundle's);
        UntrustedResponseError for an answer that is not such a page."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be 1..{MAX_PAGE}")
        answer = await bounded_request(
            self.http, "GET", self.url("/v1/blobs"), params={"after": after, "limit": limit},
            headers=PAGE_HEADERS,
            max_bytes=page_limits(page_answer_bytes(limit, blob_size), limit, blob_size),
            deadline=self.deadline, what="page of blobs")
        if answer.status_code != 200:
            raise GroupServerError(f"{answer.server} {answer.failure()} to a read",
                                   answer.status_code)
        return parse_page(answer, BlobPage, limit=limit, blob_size=blob_size)


@dataclass
class TokenPurse:
    """Tokens per server, in memory, one batch fetched when a server's run out. Tokens
    under a key other than the bundle's current one are dropped (a re-keyed server)."""

    held: dict[str, tuple[bytes, list[tokens.Token]]] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    async def take(self, client: GroupServerClient, bundle: ServerBundle) -> tokens.Token | None:
        """A token for the next post to client's server (None: it wants none)."""
        if not bundle.tokens_required:
            return None
        lock = self._locks.setdefault(client.onion, asyncio.Lock())
        async with lock:
            key, batch = self.held.get(client.onion, (bundle.token_public_key, []))
            if key != bundle.token_public_key:
                batch = []
            if not batch:
                batch = await client.get_tokens(bundle)
            token = batch.pop()
            self.held[client.onion] = (bundle.token_public_key, batch)
            return token

    def count(self, onion: str) -> int:
        return len(self.held.get(onion, (b"", []))[1])
