"""Group-server tokens (nyth.proto.tokens): issuance paid in work, one token per blob,
strict wire formats. Layouts are rebuilt here independently and compared."""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable

import pytest
import rbcl
from hypothesis import given, settings
from hypothesis import strategies as st
from nyth.errors import AuthenticationError, DecodeError
from nyth.proto import hashcash, tokens, voprf
from nyth.proto.tokens import (
    MAX_BATCH,
    InsufficientWork,
    IssueRequest,
    IssueResponse,
    Token,
    TokenSecretKey,
)

KEY = TokenSecretKey.from_seed(b"K" * 32)
OTHER = TokenSecretKey.from_seed(b"O" * 32)
BITS = 6
BLOB = b"\x17" * 2048


def request_for(key: TokenSecretKey, n: int = 4, bits: int = BITS) -> tuple[tokens.PendingIssue, bytes]:
    pending = tokens.prepare_issue(n)
    nonce = tokens.solve_issue_pow(key.public_key, pending.blinded, bits)
    return pending, pending.request(nonce).encode()


@pytest.fixture(scope="module")
def minted() -> list[Token]:
    pending, request = request_for(KEY, 4)
    return tokens.finalize_batch(KEY.public_key, pending, tokens.issue(KEY, request, BITS).encode())


# -- the whole flow ----------------------------------------------------------------------

def test_issue_finalize_redeem_check(minted: list[Token]) -> None:
    assert len(minted) == 4 and len({t.input for t in minted}) == 4
    for token in minted:
        assert token.output == voprf.evaluate(KEY.scalar, token.input)
        redemption = tokens.redeem(token, BLOB)
        assert len(redemption) == tokens.REDEMPTION_SIZE
        sid = tokens.check_redemption(KEY, redemption, BLOB)
        assert sid == tokens.spend_id(redemption)
    # A double spend is the same spend id, whichever blob it is bound to.
    again = tokens.redeem(minted[0], b"another blob")
    assert tokens.check_redemption(KEY, again, b"another blob") == \
        tokens.spend_id(tokens.redeem(minted[0], BLOB))


def test_a_full_batch() -> None:
    pending, request = request_for(KEY, MAX_BATCH, bits=0)
    assert len(request) == 9 + 32 * MAX_BATCH == 1033
    response = tokens.issue(KEY, request, 0).encode()
    assert len(response) == 65 + 32 * MAX_BATCH == 1089
    minted = tokens.finalize_batch(KEY.public_key, pending, response)
    assert len(minted) == MAX_BATCH
    tokens.check_redemption(KEY, tokens.redeem(minted[-1], b"x"), b"x")


@given(st.binary(max_size=300))
@settings(max_examples=20, deadline=None)
def test_any_blob_round_trips(blob: bytes) -> None:
    pending, request = request_for(KEY, 1, bits=0)
    (token,) = tokens.finalize_batch(KEY.public_key, pending, tokens.issue(KEY, request, 0))
    stored = Token.from_bytes(token.to_bytes())
    assert stored == token
    tokens.check_redemption(KEY, tokens.redeem(stored, blob), blob)


# -- refusals a server must make ---------------------------------------------------------

def test_a_token_bound_to_another_blob_is_refused(minted: list[Token]) -> None:
    redemption = tokens.redeem(minted[0], BLOB)
    for blob in (BLOB[:-1], BLOB + b"\x00", b"\x18" + BLOB[1:], b""):
        with pytest.raises(AuthenticationError, match="another blob"):
            tokens.check_redemption(KEY, redemption, blob)


def test_a_token_from_another_key_is_refused(minted: list[Token]) -> None:
    with pytest.raises(AuthenticationError, match="not issued under this"):
        tokens.check_redemption(OTHER, tokens.redeem(minted[0], BLOB), BLOB)


def test_a_forged_redemption_is_refused(minted: list[Token]) -> None:
    redemption = bytearray(tokens.redeem(minted[0], BLOB))
    redemption[-1] ^= 1
    with pytest.raises(AuthenticationError):
        tokens.check_redemption(KEY, bytes(redemption), BLOB)
    redemption = bytearray(tokens.redeem(minted[0], BLOB))
    redemption[0] ^= 1  # another input: its output is unknown to the client
    with pytest.raises(AuthenticationError):
        tokens.check_redemption(KEY, bytes(redemption), BLOB)
    made_up = Token(b"\x01" * 32, b"\x02" * 64)
    with pytest.raises(AuthenticationError):
        tokens.check_redemption(KEY, tokens.redeem(made_up, BLOB), BLOB)


@pytest.mark.parametrize("size", [0, 32, 63, 65, 96])
def test_a_malformed_redemption_is_refused(size: int) -> None:
    with pytest.raises(DecodeError, match="64 bytes"):
        tokens.check_redemption(KEY, bytes(size), BLOB)
    with pytest.raises(DecodeError, match="64 bytes"):
        tokens.spend_id(bytes(size))


def test_work_is_checked() -> None:
    pending = tokens.prepare_issue(2)
    nonce = tokens.solve_issue_pow(KEY.public_key, pending.blinded, BITS)
    request = pending.request(nonce)
    assert request.pow_ok(KEY.public_key, BITS)
    tokens.issue(KEY, request, BITS)
    # Not enough work: find a nonce that misses the difficulty.
    bad = next(n for n in range(1000)
               if not tokens.issue_pow_ok(KEY.public_key, pending.blinded, n, BITS))
    with pytest.raises(InsufficientWork, match=f"below {BITS} bits"):
        tokens.issue(KEY, pending.request(bad).encode(), BITS)
    # InsufficientWork is an AuthenticationError: callers that only know errors.py refuse it.
    assert issubclass(InsufficientWork, AuthenticationError)


def test_work_is_bound_to_the_key_and_the_elements() -> None:
    # Fixed elements, so the test is deterministic: with random ones, a nonce that also
    # worked for another key or other elements would turn up once in 2^12 runs.
    r = voprf.deserialize_scalar(b"\x05" * 31 + b"\x00")
    blinded = tuple(voprf.blind_with(bytes([i]) * 32, r) for i in range(3))
    pending = tokens.PendingIssue((b"a" * 32, b"b" * 32, b"c" * 32), (r, r, r), blinded)
    nonce = tokens.solve_issue_pow(OTHER.public_key, blinded, 12)
    assert tokens.issue_pow_ok(OTHER.public_key, blinded, nonce, 12)
    assert not tokens.issue_pow_ok(KEY.public_key, blinded, nonce, 12)
    assert not tokens.issue_pow_ok(OTHER.public_key, blinded[:2], nonce, 12)
    assert not tokens.issue_pow_ok(OTHER.public_key, (blinded[1], blinded[0], blinded[2]), nonce, 12)
    with pytest.raises(InsufficientWork):
        tokens.issue(KEY, pending.request(nonce), 12)


def test_the_client_never_pays_more_than_the_maximum() -> None:
    pending = tokens.prepare_issue(1)
    with pytest.raises(ValueError, match=f"at most {tokens.MAX_POW_BITS} bits"):
        tokens.solve_issue_pow(KEY.public_key, pending.blinded, tokens.MAX_POW_BITS + 1)
    with pytest.raises(hashcash.PowStopped, match="cancelled"):
        tokens.solve_issue_pow(KEY.public_key, pending.blinded, 24, stop=lambda: True)


def test_replay_id_names_the_paid_request() -> None:
    pending = tokens.prepare_issue(2)
    a = pending.request(1)
    assert a.replay_id(KEY.public_key) == tokens.issue_pow_digest(KEY.public_key, pending.blinded, 1)
    assert a.replay_id(KEY.public_key) == IssueRequest.decode(a.encode()).replay_id(KEY.public_key)
    assert a.replay_id(KEY.public_key) != pending.request(2).replay_id(KEY.public_key)
    assert a.replay_id(KEY.public_key) != a.replay_id(OTHER.public_key)


# -- refusals a client must make ---------------------------------------------------------

def test_a_response_proved_with_another_key_is_refused() -> None:
    pending, request = request_for(OTHER, 3)
    response = tokens.issue(OTHER, request, BITS)  # a server answering under a key not pinned
    with pytest.raises(AuthenticationError, match="pinned token key"):
        tokens.finalize_batch(KEY.public_key, pending, response.encode())


def test_a_response_evaluated_under_another_key_with_a_proof_for_the_pinned_one_is_refused() -> None:
    """A server tagging one client: evaluations under a private key, proof by the real one."""
    pending, _ = request_for(KEY, 2)
    blinded = list(pending.blinded)
    evaluated = [voprf.Element(rbcl.crypto_scalarmult_ristretto255(OTHER.scalar, b)) for b in blinded]
    proof = voprf.generate_proof(KEY.scalar, KEY.public_element, blinded, evaluated,
                                 voprf.random_scalar())
    with pytest.raises(AuthenticationError):
        tokens.finalize_batch(KEY.public_key, pending, IssueResponse(tuple(evaluated), proof))


def test_a_response_to_another_request_is_refused() -> None:
    pending, _ = request_for(KEY, 2)
    _, other_request = request_for(KEY, 2)
    with pytest.raises(AuthenticationError):
        tokens.finalize_batch(KEY.public_key, pending, tokens.issue(KEY, other_request, BITS))


def test_a_response_with_the_wrong_count_is_refused() -> None:
    pending, request = request_for(KEY, 3)
    response = tokens.issue(KEY, request, BITS)
    shorter = IssueResponse(response.evaluated[:2], response.proof)
    with pytest.raises(DecodeError, match="2 elements for a request of 3"):
        tokens.finalize_batch(KEY.public_key, pending, shorter.encode())
    # Count byte disagreeing with the length:
    raw = bytearray(response.encode())
    raw[0] = 2
    with pytest.raises(DecodeError, match="must be 129 bytes, got 161"):
        tokens.finalize_batch(KEY.public_key, pending, bytes(raw))


def test_a_tampered_response_element_is_refused() -> None:
    pending, request = request_for(KEY, 2)
    response = tokens.issue(KEY, request, BITS)
    moved = voprf.Element(rbcl.crypto_core_ristretto255_add(response.evaluated[0], KEY.public_element))
    tampered = IssueResponse((moved, response.evaluated[1]), response.proof)
    with pytest.raises(AuthenticationError):
        tokens.finalize_batch(KEY.public_key, pending, tampered.encode())


def test_the_pinned_key_must_be_a_key() -> None:
    pending, request = request_for(KEY, 1)
    response = tokens.issue(KEY, request, BITS)
    assert not tokens.tokens_required(tokens.NO_TOKENS)
    assert tokens.tokens_required(KEY.public_key)
    with pytest.raises(DecodeError, match="token public key: identity"):
        tokens.finalize_batch(tokens.NO_TOKENS, pending, response)


# -- wire formats ------------------------------------------------------------------------

def test_request_layout_is_pinned() -> None:
    pending = tokens.prepare_issue(3)
    raw = pending.request(0x0102030405060708).encode()
    assert raw == b"\x03" + b"".join(pending.blinded) + bytes.fromhex("0102030405060708")
    assert IssueRequest.decode(raw) == pending.request(0x0102030405060708)
    # The work hash, rebuilt from its definition:
    expected = hashlib.blake2b(KEY.public_key + b"".join(pending.blinded) + struct.pack(">Q", 7),
                               digest_size=32, person=b"nyth-token-pow").digest()
    assert tokens.issue_pow_digest(KEY.public_key, pending.blinded, 7) == expected


def test_response_layout_is_pinned() -> None:
    _, request = request_for(KEY, 2)
    response = tokens.issue(KEY, request, BITS)
    raw = response.encode()
    assert raw == b"\x02" + b"".join(response.evaluated) + response.proof.c + response.proof.s
    assert IssueResponse.decode(raw) == response


def test_token_and_redemption_layouts_are_pinned(minted: list[Token]) -> None:
    token = minted[0]
    assert token.to_bytes() == token.input + token.output and len(token.to_bytes()) == 96
    tag = hmac.new(token.output, b"nyth-token-redeem-v1" + hashlib.blake2b(BLOB, digest_size=32).digest(),
                   hashlib.sha512).digest()[:32]
    assert tokens.redeem(token, BLOB) == token.input + tag
    assert tokens.spend_id(token.input + tag) == hashlib.blake2b(
        token.input, digest_size=32, person=b"nyth-token-spend").digest()


@pytest.mark.parametrize(("decoder", "fixed"), [(IssueRequest.decode, 9), (IssueResponse.decode, 65)])
def test_wrong_counts_and_sizes_are_refused(decoder: Callable[[bytes], object], fixed: int) -> None:
    element = bytes(KEY.public_key)
    tail = bytes(fixed - 1)
    with pytest.raises(DecodeError, match="empty"):
        decoder(b"")
    with pytest.raises(DecodeError, match="0 elements"):
        decoder(b"\x00" + tail)
    with pytest.raises(DecodeError, match=f"33 elements; 1..{MAX_BATCH}"):
        decoder(b"\x21" + element * 33 + tail)
    with pytest.raises(DecodeError, match="must be"):
        decoder(b"\x02" + element + tail)                   # one element short
    with pytest.raises(DecodeError, match="must be"):
        decoder(b"\x01" + element + tail + b"\x00")         # a byte too many
    with pytest.raises(DecodeError, match="must be"):
        decoder(b"\x01" + element + tail[:-1])              # a byte too few
    with pytest.raises(DecodeError, match="must be bytes"):
        decoder("\x01")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [bytes(32), b"\xff" * 32, b"\x01" + bytes(31)])
def test_identity_and_non_canonical_elements_are_refused_on_the_wire(bad: bytes) -> None:
    with pytest.raises(DecodeError, match="element 1"):
        IssueRequest.decode(b"\x02" + KEY.public_key + bad + bytes(8))
    with pytest.raises(DecodeError, match="element 0"):
        IssueResponse.decode(b"\x01" + bad + bytes(64))


def test_a_non_canonical_proof_scalar_is_refused() -> None:
    big = voprf.L.to_bytes(32, "little")
    with pytest.raises(DecodeError, match="proof c"):
        IssueResponse.decode(b"\x01" + KEY.public_key + big + bytes(32))


def test_messages_refuse_bad_counts_when_built() -> None:
    with pytest.raises(ValueError):
        IssueRequest((), 0)
    with pytest.raises(ValueError):
        IssueRequest((KEY.public_element,) * (MAX_BATCH + 1), 0)
    with pytest.raises(ValueError, match="64 bits"):
        IssueRequest((KEY.public_element,), 1 << 64)
    with pytest.raises(ValueError):
        tokens.prepare_issue(0)
    with pytest.raises(ValueError):
        tokens.prepare_issue(MAX_BATCH + 1)


def test_stored_tokens_are_strict_and_never_printed(minted: list[Token]) -> None:
    for size in (0, 95, 97):
        with pytest.raises(DecodeError, match="96 bytes"):
            Token.from_bytes(bytes(size))
    assert minted[0].output.hex()[:8] not in repr(minted[0])
    with pytest.raises(ValueError):
        Token(b"short", bytes(64))


# -- server keys -------------------------------------------------------------------------

def test_server_keys() -> None:
    again = TokenSecretKey.from_seed(b"K" * 32)
    assert again == KEY and again.public_key == KEY.public_key
    assert KEY.scalar == voprf.derive_key_pair(b"K" * 32, b"nyth-token-key-v1")[0]
    assert KEY.public_key == rbcl.crypto_scalarmult_ristretto255_base(KEY.encode())
    assert TokenSecretKey.decode(KEY.encode()) == KEY
    assert KEY != OTHER and KEY.public_key != OTHER.public_key
    fresh = TokenSecretKey.generate()
    assert fresh != TokenSecretKey.generate()
    assert tokens.decode_public_key(fresh.public_key) == fresh.public_key
    assert KEY.encode().hex()[:8] not in repr(KEY)
    with pytest.raises(DecodeError, match="zero"):
        TokenSecretKey.decode(bytes(32))
    with pytest.raises(DecodeError, match="canonical"):
        TokenSecretKey.decode(voprf.L.to_bytes(32, "little"))
    with pytest.raises(DecodeError):
        TokenSecretKey.decode(bytes(31))
    with pytest.raises(ValueError, match="seed"):
        TokenSecretKey.from_seed(b"short")
