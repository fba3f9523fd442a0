"""Privacy Pass tokens for group servers: one per post, paid for in work, unlinkable. Sans-IO.

A group server that wants posts to cost something puts a token key in its signed bundle
(``ServerBundle.token_public_key``; all zero: no tokens required). A client pays proof of
work once for a batch of up to MAX_BATCH tokens, the server evaluates them obliviously
(the VOPRF of RFC 9497, ``nyth.proto.voprf``) with one DLEQ proof that the client checks
against the pinned key, and the client spends one token per post, bound to that blob.
The server cannot link a redeemed token to its issuance (it only ever saw blinded
elements), and the proof stops it from giving one client tokens under a key of its own to
recognise them later.

Byte layouts (u8 and u64 big-endian; elements 32-byte canonical ristretto255, never the
identity; scalars 32-byte little-endian below ℓ; see ``nyth.proto.voprf``):

    token public key    32   the VOPRF public key pk = sk·G (in the server bundle)
    token secret key    32   sk, a non-zero scalar; ``TokenSecretKey.from_seed`` derives it
                             with RFC 9497 DeriveKeyPair(seed, info="nyth-token-key-v1")
    IssueRequest   9 + 32n   u8 n (1..MAX_BATCH) ‖ n × blinded element ‖ u64 nonce
    IssueResponse 65 + 32n   u8 n ‖ n × evaluated element ‖ proof c ‖ proof s
    Token               96   input (32 random bytes) ‖ output (64, the VOPRF output)
    Redemption          64   input (32) ‖ tag (32)

    work     BLAKE2b-256(pk ‖ blinded_1 ‖ … ‖ blinded_n ‖ u64(nonce), person="nyth-token-pow")
             must start with ``bits`` zero bits (``nyth.proto.hashcash``)
    tag      HMAC-SHA512(key=output, "nyth-token-redeem-v1" ‖ BLAKE2b-256(blob))[:32]
    spend id BLAKE2b-256(input, person="nyth-token-spend")

The work covers the whole request: ``bits`` prices a batch, not a token, so clients
always ask for MAX_BATCH. The server checks a redemption by recomputing output =
Evaluate(sk, input) (one scalar multiplication) and the tag; it keeps the spend ids it
has accepted and refuses a repeat (a double spend). It should also keep the ids of the
requests it has answered (``IssueRequest.replay_id``): a replayed request costs its
sender nothing and the server 2n + 3 scalar multiplications. Both sets live as long as
the token key and can be emptied when it is rotated, since neither a request's work nor
a token's output verifies under another key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from nyth.errors import AuthenticationError, DecodeError
from nyth.proto import hashcash, voprf

TOKEN_PUBLIC_KEY_SIZE = voprf.ELEMENT_SIZE
TOKEN_SECRET_KEY_SIZE = voprf.SCALAR_SIZE
NO_TOKENS = bytes(TOKEN_PUBLIC_KEY_SIZE)
# 32 tokens per request: the request (1,033 bytes) and answer (1,089) stay near one blob
# in size; the server's work per request is bounded at 2·32 + 3 = 67 scalar
# multiplications (a few ms of one core) while the proof's fixed 3 of them cost < 0.1 per
# token (at 8 it would be 0.4); the client's check (≈ 3·32 + 4) takes a few ms even on a
# slow phone; and one payment of work buys 32 posts. Much larger batches gain little per
# token and let one request hold the server longer.
MAX_BATCH = 32
INPUT_SIZE = 32
TOKEN_SIZE = INPUT_SIZE + voprf.OUTPUT_SIZE
TAG_SIZE = 32
REDEMPTION_SIZE = INPUT_SIZE + TAG_SIZE
# The mailbox's bound (mailbox_bundle.MAX_POW_BITS), for the same reason: the work is
# paid on the client's CPU at a difficulty an untrusted server chooses.
MAX_POW_BITS = 24
KEY_INFO = b"nyth-token-key-v1"

_POW_PERSON = b"nyth-token-pow"
_SPEND_PERSON = b"nyth-token-spend"
_REDEEM_LABEL = b"nyth-token-redeem-v1"
_NONCE = struct.Struct(">Q")


class InsufficientWork(AuthenticationError):
    """An issue request's proof of work does not reach the difficulty the server asks."""


def tokens_required(token_public_key: bytes) -> bool:
    """Whether a bundle's token key asks for tokens (all zero: it does not)."""
    return bytes(token_public_key) != NO_TOKENS


def decode_public_key(data: bytes) -> voprf.Element:
    """A token public key from a bundle; DecodeError if it is not a usable element
    (check ``tokens_required`` first: the all-zero "no tokens" value is the identity)."""
    return voprf.deserialize_element(data, "token public key")


# -- server key --------------------------------------------------------------------------

class TokenSecretKey:
    """The group server's VOPRF key. Its public half goes in the server bundle."""

    __slots__ = ("_public", "_scalar")

    def __init__(self, scalar: voprf.Scalar) -> None:
        if len(scalar) != TOKEN_SECRET_KEY_SIZE or not any(scalar):
            raise ValueError("a token secret key is a non-zero 32-byte scalar")
        self._scalar = scalar
        self._public = voprf.public_key(scalar)

    @classmethod
    def generate(cls) -> TokenSecretKey:
        return cls(voprf.random_scalar())

    @classmethod
    def from_seed(cls, seed: bytes) -> TokenSecretKey:
        """The key named by a 32-byte secret seed (RFC 9497 DeriveKeyPair, info KEY_INFO)."""
        return cls(voprf.derive_key_pair(seed, KEY_INFO)[0])

    @classmethod
    def decode(cls, data: bytes) -> TokenSecretKey:
        return cls(voprf.secret_key_from_bytes(data))

    def encode(self) -> bytes:
        return bytes(self._scalar)

    @property
    def scalar(self) -> voprf.Scalar:
        return self._scalar

    @property
    def public_key(self) -> bytes:
        """The 32 bytes for ``ServerBundle.token_public_key``."""
        return bytes(self._public)

    @property
    def public_element(self) -> voprf.Element:
        return self._public

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TokenSecretKey) and hmac.compare_digest(self._scalar,
                                                                         other._scalar)

    def __hash__(self) -> int:
        return hash(self._public)

    def __repr__(self) -> str:  # never print the secret scalar
        return f"TokenSecretKey(public={self._public[:4].hex()}…)"


# -- proof of work -----------------------------------------------------------------------

def _pow_prefix(token_public_key: bytes, blinded: Sequence[bytes]) -> hashlib.blake2b:
    return hashcash.prefix(_POW_PERSON, bytes(token_public_key), *blinded)


def issue_pow_digest(token_public_key: bytes, blinded: Sequence[bytes], nonce: int) -> bytes:
    return hashcash.digest(_pow_prefix(token_public_key, blinded), nonce)


def issue_pow_ok(token_public_key: bytes, blinded: Sequence[bytes], nonce: int,
                 bits: int) -> bool:
    return hashcash.ok(_pow_prefix(token_public_key, blinded), nonce, bits)


def solve_issue_pow(token_public_key: bytes, blinded: Sequence[bytes], bits: int,
                    start: int = 0, *, stop: Callable[[], bool] | None = None,
                    deadline: float | None = None,
                    clock: Callable[[], float] = time.monotonic) -> int:
    """The first nonce >= start that makes this request's work reach bits (PowStopped:
    see hashcash.solve). ValueError above MAX_POW_BITS: we never pay that."""
    if bits > MAX_POW_BITS:
        raise ValueError(f"the server asks {bits}-bit proof of work for tokens; Nyth pays "
                         f"at most {MAX_POW_BITS} bits")
    return hashcash.solve(_pow_prefix(token_public_key, blinded), bits, start, stop,
                          deadline, clock)


# -- wire messages -----------------------------------------------------------------------

def _count(data: bytes, what: str, fixed: int) -> int:
    if not isinstance(data, bytes | bytearray):
        raise DecodeError(f"{what} must be bytes")
    if not data:
        raise DecodeError(f"{what}: empty")
    n = data[0]
    if not 1 <= n <= MAX_BATCH:
        raise DecodeError(f"{what}: {n} elements; 1..{MAX_BATCH} allowed")
    if len(data) != fixed + voprf.ELEMENT_SIZE * n:
        raise DecodeError(f"{what} of {n} elements must be {fixed + voprf.ELEMENT_SIZE * n} "
                          f"bytes, got {len(data)}")
    return n


def _elements(data: bytes, n: int, what: str) -> tuple[voprf.Element, ...]:
    size = voprf.ELEMENT_SIZE
    return tuple(voprf.deserialize_element(data[1 + i * size:1 + (i + 1) * size],
                                           f"{what} {i}") for i in range(n))


def _check_batch(elements: Sequence[bytes], what: str) -> None:
    if not 1 <= len(elements) <= MAX_BATCH:
        raise ValueError(f"{what}: {len(elements)} elements; 1..{MAX_BATCH} allowed")


@dataclass(frozen=True)
class IssueRequest:
    """u8 n ‖ n × blinded element ‖ u64 nonce."""

    blinded: tuple[voprf.Element, ...]
    nonce: int

    def __post_init__(self) -> None:
        _check_batch(self.blinded, "issue request")
        if not 0 <= self.nonce <= hashcash.U64_MAX:
            raise ValueError("nonce must fit in 64 bits")

    def encode(self) -> bytes:
        return bytes([len(self.blinded)]) + b"".join(self.blinded) + _NONCE.pack(self.nonce)

    @classmethod
    def decode(cls, data: bytes) -> IssueRequest:
        n = _count(data, "issue request", 1 + _NONCE.size)
        blinded = _elements(data, n, "issue request blinded element")
        (nonce,) = _NONCE.unpack(data[-_NONCE.size:])
        return cls(blinded, nonce)

    def pow_ok(self, token_public_key: bytes, bits: int) -> bool:
        return issue_pow_ok(token_public_key, self.blinded, self.nonce, bits)

    def replay_id(self, token_public_key: bytes) -> bytes:
        """32 bytes naming this paid-for request under this key (its work digest), for the
        server's set of requests already answered."""
        return issue_pow_digest(token_public_key, self.blinded, self.nonce)


@dataclass(frozen=True)
class IssueResponse:
    """u8 n ‖ n × evaluated element ‖ proof (c ‖ s)."""

    evaluated: tuple[voprf.Element, ...]
    proof: voprf.Proof

    def __post_init__(self) -> None:
        _check_batch(self.evaluated, "issue response")

    def encode(self) -> bytes:
        return bytes([len(self.evaluated)]) + b"".join(self.evaluated) + self.proof.encode()

    @classmethod
    def decode(cls, data: bytes) -> IssueResponse:
        n = _count(data, "issue response", 1 + voprf.PROOF_SIZE)
        evaluated = _elements(data, n, "issue response evaluated element")
        return cls(evaluated, voprf.Proof.decode(bytes(data[-voprf.PROOF_SIZE:])))


@dataclass(frozen=True)
class Token:
    """One unspent token: input (32) ‖ output (64). Secret until spent: whoever holds it
    can post with it."""

    input: bytes
    output: bytes

    def __post_init__(self) -> None:
        if len(self.input) != INPUT_SIZE or len(self.output) != voprf.OUTPUT_SIZE:
            raise ValueError(f"a token is {INPUT_SIZE} + {voprf.OUTPUT_SIZE} bytes")

    def to_bytes(self) -> bytes:
        return self.input + self.output

    @classmethod
    def from_bytes(cls, data: bytes) -> Token:
        if not isinstance(data, bytes | bytearray) or len(data) != TOKEN_SIZE:
            raise DecodeError(f"a stored token is {TOKEN_SIZE} bytes")
        return cls(bytes(data[:INPUT_SIZE]), bytes(data[INPUT_SIZE:]))

    def __repr__(self) -> str:  # the output is what makes it spendable: never print it
        return f"Token(input={self.input[:4].hex()}…)"


# -- client ------------------------------------------------------------------------------

class PendingIssue:
    """A client's side of one issuance between request and response: the random inputs,
    their blinds, and the blinded elements sent. Keep it secret; use it once."""

    __slots__ = ("blinded", "blinds", "inputs")

    def __init__(self, inputs: tuple[bytes, ...], blinds: tuple[voprf.Scalar, ...],
                 blinded: tuple[voprf.Element, ...]) -> None:
        if not len(inputs) == len(blinds) == len(blinded):
            raise ValueError("inputs, blinds and blinded elements differ in number")
        _check_batch(blinded, "pending issue")
        self.inputs = inputs
        self.blinds = blinds
        self.blinded = blinded

    def request(self, nonce: int) -> IssueRequest:
        return IssueRequest(self.blinded, nonce)

    def __repr__(self) -> str:
        return f"PendingIssue(n={len(self.inputs)})"


def prepare_issue(count: int = MAX_BATCH) -> PendingIssue:
    """count fresh random inputs, blinded. Then: nonce = solve_issue_pow(pk, p.blinded,
    bits) (on a worker thread), send p.request(nonce).encode()."""
    if not isinstance(count, int) or not 1 <= count <= MAX_BATCH:
        raise ValueError(f"count must be in 1..{MAX_BATCH}")
    inputs = tuple(os.urandom(INPUT_SIZE) for _ in range(count))
    pairs = [voprf.blind(x) for x in inputs]
    return PendingIssue(inputs, tuple(r for r, _ in pairs), tuple(b for _, b in pairs))


def finalize_batch(token_public_key: bytes, pending: PendingIssue,
                   response: bytes | IssueResponse) -> list[Token]:
    """The client's tokens from the server's answer, if and only if its proof verifies
    against token_public_key (the pinned bundle's): AuthenticationError otherwise
    (another key, a tampered or reordered element); DecodeError if malformed or if the
    answer's count is not the request's."""
    pk = decode_public_key(token_public_key)
    answer = response if isinstance(response, IssueResponse) else IssueResponse.decode(response)
    if len(answer.evaluated) != len(pending.blinded):
        raise DecodeError(f"issue response has {len(answer.evaluated)} elements for a "
                          f"request of {len(pending.blinded)}")
    try:
        outputs = voprf.finalize_batch(pending.inputs, pending.blinds, answer.evaluated,
                                       pending.blinded, pk, answer.proof)
    except AuthenticationError as exc:
        raise AuthenticationError("token issue response: the proof does not verify for "
                                  "the server's pinned token key") from exc
    return [Token(x, out) for x, out in zip(pending.inputs, outputs, strict=True)]


def redeem(token: Token, blob: bytes) -> bytes:
    """The 64-byte redemption that spends token on this blob and no other."""
    return token.input + _tag(token.output, blob)


# -- server ------------------------------------------------------------------------------

def issue(key: TokenSecretKey, request: bytes | IssueRequest, bits: int) -> IssueResponse:
    """Evaluate a paid-for request. DecodeError if malformed; InsufficientWork if its work
    does not reach bits. Replays are the caller's to refuse (``replay_id``), before this."""
    req = request if isinstance(request, IssueRequest) else IssueRequest.decode(request)
    if not req.pow_ok(key.public_key, bits):
        raise InsufficientWork(f"issue request: proof of work below {bits} bits for this "
                               "token key")
    evaluated, proof = voprf.blind_evaluate_batch(key.scalar, key.public_element, req.blinded)
    return IssueResponse(tuple(evaluated), proof)


def spend_id(redemption: bytes) -> bytes:
    """The 32 bytes the server keeps per spent token; computable before the (costlier)
    check, so a repeat can be refused without a scalar multiplication."""
    _check_redemption_size(redemption)
    return _spend_id(bytes(redemption[:INPUT_SIZE]))


def check_redemption(key: TokenSecretKey, redemption: bytes, blob: bytes) -> bytes:
    """The redemption's spend id if it spends a token issued under key on this blob.

    DecodeError if malformed; AuthenticationError if the token was not issued under key
    or was bound to another blob (the two are indistinguishable by design). Whether the
    spend id was already spent is the caller's to check, atomically with recording it.
    """
    _check_redemption_size(redemption)
    input_ = bytes(redemption[:INPUT_SIZE])
    output = voprf.evaluate(key.scalar, input_)
    if not hmac.compare_digest(_tag(output, blob), bytes(redemption[INPUT_SIZE:])):
        raise AuthenticationError("token redemption does not verify: not issued under this "
                                  "server's token key, or bound to another blob")
    return _spend_id(input_)


def _check_redemption_size(redemption: bytes) -> None:
    if not isinstance(redemption, bytes | bytearray) or len(redemption) != REDEMPTION_SIZE:
        got = len(redemption) if isinstance(redemption, bytes | bytearray) else "not bytes"
        raise DecodeError(f"a token redemption is {REDEMPTION_SIZE} bytes, got {got}")


def _tag(output: bytes, blob: bytes) -> bytes:
    blob_hash = hashlib.blake2b(blob, digest_size=32).digest()
    return hmac.new(output, _REDEEM_LABEL + blob_hash, hashlib.sha512).digest()[:TAG_SIZE]


def _spend_id(input_: bytes) -> bytes:
    return hashlib.blake2b(input_, digest_size=32, person=_SPEND_PERSON).digest()
