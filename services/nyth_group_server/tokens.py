"""Tokens on the group server (NYTH_TOKENS_REQUIRED): the sealed token key, issuance
(`POST /v1/tokens`) and the check of the token that pays for a post.

The protocol is `nyth.proto.tokens` (sans-IO; docs/protocol.md §9); this is its adapter:
Redis, metrics, HTTP answers. A post carries its redemption (64 bytes, base64) in the
``Nyth-Token`` header, so the body stays the bare blob and servers without tokens are
unchanged.

Redis, for prefix P and key id K (the first 8 bytes of the token public key, in hex, so
a new key starts with empty sets and the old ones can simply be deleted):

    P:tokens:K:spent          set: the spend id of every token a stored post paid with
                              (written by the append script, atomically with the entry)
    P:tokens:K:issued:<id>    one key per answered issue request (its replay id), expiring
                              after NYTH_TOKEN_REPLAY_SECONDS

Bounds. The replay keys: at most the issue requests answered in the last
NYTH_TOKEN_REPLAY_SECONDS, each paid for with 2^bits hashes on average (about 90 bytes
of Redis each). After the expiry a replayed request is answered again, and gets the
very tokens it got the first time (evaluation is deterministic): already spent, or
spendable once, so it buys nothing and costs the server one batch (≈ 10 ms of one core)
per request per period. The spent set holds one 32-byte id per post ever paid for under
K (≈ 70 bytes of Redis each): it is bounded by the posts the issued tokens paid for,
and emptied only by rotating the key (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from nyth import keystore
from nyth.errors import AuthenticationError, DecodeError
from nyth.http_limits import b64_len, strict_b64
from nyth.proto import tokens
from nyth.web import ErrorResponse, error_json
from prometheus_client import Counter
from pydantic import BaseModel, Field

log = logging.getLogger("nyth_group_server.tokens")

TOKEN_HEADER = "Nyth-Token"  # noqa: S105 (a header name)
REDEMPTION_B64_CHARS = b64_len(tokens.REDEMPTION_SIZE)
REDEMPTION_PATTERN = rf"^[A-Za-z0-9+/]{{{REDEMPTION_B64_CHARS - 2}}}==$"
MAX_ISSUE_REQUEST = 1 + tokens.MAX_BATCH * tokens.voprf.ELEMENT_SIZE + 8
ISSUE_REQUEST_B64_CHARS = b64_len(MAX_ISSUE_REQUEST)
# The JSON body of POST /v1/tokens: {"issue_request": "<base64>"} and some whitespace.
MAX_ISSUE_BODY = ISSUE_REQUEST_B64_CHARS + 64
B64_PATTERN = r"^[A-Za-z0-9+/]*={0,2}$"

ISSUED = Counter("nyth_group_tokens_issued_total",
                 "Tokens issued (blinded elements evaluated, in answered issue requests).")
REDEEMED = Counter("nyth_group_tokens_redeemed_total", "Tokens spent on a stored post.")
POSTS_REFUSED = Counter(
    "nyth_group_token_posts_refused_total",
    "Posts refused for their token: missing, malformed, invalid (another key or another "
    "blob), spent.", ["reason"])
ISSUES_REFUSED = Counter(
    "nyth_group_token_issues_refused_total",
    "Issue requests refused: malformed, work (below the bundle's bits), replayed.", ["reason"])


# -- the key, sealed at rest -----------------------------------------------------------------

def load_or_create_token_key(path: Path, passphrase: str) -> tokens.TokenSecretKey:
    """The server's token key: a 32-byte seed sealed under the passphrase at path (like
    the onion key), made on first use. Stable across restarts, so tokens stay valid."""
    with keystore.creation_lock(path.parent):
        if path.exists():
            seed = keystore.open_sealed(path.read_bytes(), passphrase)
        else:
            seed = os.urandom(32)
            keystore.write_private_file(path, keystore.seal(seed, passphrase))
    return tokens.TokenSecretKey.from_seed(seed)


def wrong_key(key: tokens.TokenSecretKey) -> tokens.TokenSecretKey:
    """NYTH_FAULT_TOKEN_WRONG_KEY: a key of the server's own, fixed by the real one."""
    seed = hashlib.blake2b(key.encode(), digest_size=32, person=b"nyth-fault-tkey").digest()
    return tokens.TokenSecretKey.from_seed(seed)


def key_id(public_key: bytes) -> str:
    return public_key[:8].hex()


# -- refusals ----------------------------------------------------------------------------------

class TokenRefused(Exception):
    """A post or an issue request refused for its token or its work: HTTP status, a
    reason label for the metrics, and a message for the client."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason

    def response(self) -> Response:
        return error_json(self.status, str(self))


# What POST /v1/blobs answers for its token, in OpenAPI.
POST_REFUSALS = {
    400: "Malformed Nyth-Token header (not the base64 of a 64-byte redemption)",
    402: "No Nyth-Token header: this server wants one token per post (POST /v1/tokens)",
    403: "The token was not issued under this server's token key, or is bound to "
         "another blob",
    409: "The token was already spent",
}


@dataclass
class TokenGate:
    """What a tokens-required server checks: a post's token, an issue request's work."""

    key: tokens.TokenSecretKey
    pow_bits: int
    redis: aioredis.Redis
    prefix: str
    replay_seconds: int
    # The key issue requests are evaluated under: `key`, except under the wrong-key fault.
    issuing_key: tokens.TokenSecretKey

    @property
    def spent_key(self) -> str:
        return f"{self.prefix}:tokens:{key_id(self.key.public_key)}:spent"

    def _replay_key(self, replay_id: bytes) -> str:
        return f"{self.prefix}:tokens:{key_id(self.key.public_key)}:issued:{replay_id.hex()}"

    def check_post(self, header: str | None, blob: bytes) -> bytes:
        """The spend id of the token paying for this blob; TokenRefused otherwise. Whether
        it was spent before is decided with the append (BlobStore.append)."""
        if header is None:
            raise self._refuse_post(402, "missing", "this server wants a token with every "
                                    f"post, in the {TOKEN_HEADER} header (get a batch at "
                                    "POST /v1/tokens)")
        try:
            redemption = strict_b64(header, size=tokens.REDEMPTION_SIZE)
        except ValueError as exc:
            raise self._refuse_post(400, "malformed", f"{TOKEN_HEADER} header {exc}") from None
        try:
            return tokens.check_redemption(self.key, redemption, blob)
        except (AuthenticationError, DecodeError) as exc:
            raise self._refuse_post(403, "invalid", f"{TOKEN_HEADER}: {exc}") from None

    def spent(self) -> TokenRefused:
        return self._refuse_post(409, "spent", "this token was already spent; nothing was "
                                 "stored")

    @staticmethod
    def _refuse_post(status: int, reason: str, message: str) -> TokenRefused:
        POSTS_REFUSED.labels(reason).inc()
        return TokenRefused(status, reason, message)

    async def issue(self, data: bytes) -> bytes:
        """The encoded IssueResponse to an encoded IssueRequest; TokenRefused if it is
        malformed (400), its work is short (403) or it was answered before (409)."""
        try:
            request = tokens.IssueRequest.decode(data)
        except DecodeError as exc:
            raise self.refuse_issue(400, "malformed", str(exc)) from None
        # The work is checked against the bundle's key, whatever key evaluates.
        if not request.pow_ok(self.key.public_key, self.pow_bits):
            raise self.refuse_issue(403, "work", f"the proof of work does not reach the "
                                     f"{self.pow_bits} bits this server's bundle asks")
        replay = self._replay_key(request.replay_id(self.key.public_key))
        if not await self.redis.set(replay, b"", nx=True, ex=self.replay_seconds):
            raise self.refuse_issue(409, "replayed", "this issue request was answered "
                                     "before; make a new one")
        # bits=0: the work was checked above (under the bundle's key).
        response = await asyncio.to_thread(tokens.issue, self.issuing_key, request, 0)
        ISSUED.inc(len(request.blinded))
        return response.encode()

    @staticmethod
    def refuse_issue(status: int, reason: str, message: str) -> TokenRefused:
        ISSUES_REFUSED.labels(reason).inc()
        return TokenRefused(status, reason, message)


# -- HTTP ----------------------------------------------------------------------------------------

class IssueBody(BaseModel):
    issue_request: str = Field(
        description="Base64 of an IssueRequest: u8 n (1..32) ‖ n blinded elements ‖ u64 "
                    "nonce, whose proof of work reaches the bundle's token_pow_bits "
                    "(docs/protocol.md §9).",
        max_length=ISSUE_REQUEST_B64_CHARS, pattern=B64_PATTERN)


class IssueAnswer(BaseModel):
    issue_response: str = Field(
        description="Base64 of the IssueResponse: u8 n ‖ n evaluated elements ‖ DLEQ proof "
                    "(c ‖ s). Check the proof against the pinned bundle's token key.")


def _issue_responses() -> dict[int | str, dict[str, object]]:
    described = {
        400: "Malformed issue request (base64, count or elements)",
        403: "The proof of work does not reach the bundle's token_pow_bits",
        409: "This issue request was answered before",
        503: "Storage is unavailable; retry later",
    }
    return {code: {"model": ErrorResponse, "description": text}
            for code, text in described.items()}


def token_routes() -> APIRouter:
    router = APIRouter(tags=["tokens"])

    @router.post(
        "/v1/tokens", response_model=IssueAnswer,
        summary="Issue a batch of tokens for proof of work (one per post, unlinkable)",
        responses=_issue_responses(),
    )
    async def issue_tokens(request: Request, body: IssueBody) -> Response:
        gate: TokenGate = request.app.state.nyth.tokens
        try:
            data = strict_b64(body.issue_request, max_size=MAX_ISSUE_REQUEST)
            answer = await gate.issue(data)
        except ValueError as exc:  # base64; DecodeError is caught in issue()
            return gate.refuse_issue(400, "malformed", f"issue_request {exc}").response()
        except TokenRefused as exc:
            return exc.response()
        return JSONResponse({"issue_response": base64.b64encode(answer).decode("ascii")})

    return router
