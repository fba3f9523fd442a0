"""RFC 9497 VOPRF, ciphersuite ristretto255-SHA512, mode VOPRF (0x01). Sans-IO.

The verifiable oblivious PRF under the group server's token key (``nyth.proto.tokens``):
the client learns F(sk, input) for inputs the server never sees, and checks, with one
batched DLEQ proof, that the server used the key whose public half it pinned (so a
server cannot tag a client by evaluating it under a key of its own). Checked against
RFC 9497 Appendix A.1.2 (tests/unit/test_proto_voprf.py).

    contextString = "OPRFV1-" ‖ 0x01 ‖ "-ristretto255-SHA512"
    HashToGroup(x)  = hash_to_ristretto255 (RFC 9380 Appendix B): the RFC 9496 §4.3.4
                      element derivation (libsodium ``from_hash``) of
                      expand_message_xmd_SHA-512(x, "HashToGroup-" ‖ contextString, 64)
    HashToScalar(x) = expand_message_xmd_SHA-512(x, "HashToScalar-" ‖ contextString, 64)
                      as a little-endian integer mod ℓ
    DeriveKeyPair(seed, info): sk = HashToScalar(seed ‖ u16(len info) ‖ info ‖ u8(ctr),
                      DST = "DeriveKeyPair" ‖ contextString), first non-zero over ctr = 0..255
    Blind:          r random non-zero, blinded = r·HashToGroup(input)
    BlindEvaluate:  evaluated_i = sk·blinded_i (i < m), one proof that
                    log_G(pk) = log_blinded_i(evaluated_i) for every i
    Finalize:       SHA-512(u16(len input) ‖ input ‖ u16(32) ‖ r⁻¹·evaluated ‖ "Finalize")
    Evaluate:       the same hash over sk·HashToGroup(input), without a client

Byte layouts (u16 and u8 big-endian, as I2OSP):

    element   32 bytes: canonical ristretto255 encoding, never the identity (all zeros)
    scalar    32 bytes: little-endian integer below ℓ = 2²⁵² + 27742317777372353535851937790883648493
    proof     64 bytes: c (scalar) ‖ s (scalar)
    output    64 bytes: SHA-512 digest

Proof (RFC 9497 §2.2) over A = G (the generator), B = pk, C = blinded, D = evaluated:

    seed  = SHA-512(u16(32) ‖ pk ‖ u16(len seedDST) ‖ seedDST), seedDST = "Seed-" ‖ contextString
    d_i   = HashToScalar(u16(64) ‖ seed ‖ u16(i) ‖ u16(32) ‖ C_i ‖ u16(32) ‖ D_i ‖ "Composite")
    M = Σ d_i·C_i   Z = Σ d_i·D_i (= sk·M on the server)
    c = HashToScalar(u16(32) ‖ pk ‖ u16(32) ‖ M ‖ u16(32) ‖ Z ‖ u16(32) ‖ t2 ‖ u16(32) ‖ t3
                     ‖ "Challenge"),   t2 = r·G, t3 = r·M, s = r − c·sk, r random
    verify: t2 = s·G + c·pk, t3 = s·M + c·Z, accept iff the recomputed c equals c

Elements and scalars are plain bytes typed ``Element`` / ``Scalar``: only
``deserialize_element`` / ``deserialize_scalar`` (or this module's own arithmetic) make
them, so mypy keeps unvalidated wire bytes out of the group operations. Randomness is drawn
by ``blind`` and ``blind_evaluate_batch``; ``blind_with`` / ``blind_evaluate_batch_with``
take it as an argument, for the RFC's test vectors only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NewType

import rbcl

from nyth.errors import AuthenticationError, DecodeError

Element = NewType("Element", bytes)
Scalar = NewType("Scalar", bytes)

MODE_VOPRF = 0x01
SUITE_ID = b"ristretto255-SHA512"
CONTEXT_STRING = b"OPRFV1-" + bytes([MODE_VOPRF]) + b"-" + SUITE_ID
ELEMENT_SIZE = 32
SCALAR_SIZE = 32
PROOF_SIZE = 2 * SCALAR_SIZE
OUTPUT_SIZE = 64  # Nh, SHA-512
SEED_SIZE = SCALAR_SIZE  # Ns: DeriveKeyPair's seed
# RFC 9497 §5.1: inputs and infos MUST be shorter than 2^16 − 1 bytes.
MAX_INPUT_SIZE = (1 << 16) - 2

# Order of the ristretto255 group.
L = 2**252 + 27742317777372353535851937790883648493
_IDENTITY = bytes(ELEMENT_SIZE)

_HASH_TO_GROUP_DST = b"HashToGroup-" + CONTEXT_STRING
_HASH_TO_SCALAR_DST = b"HashToScalar-" + CONTEXT_STRING
_DERIVE_KEY_PAIR_DST = b"DeriveKeyPair" + CONTEXT_STRING
_SEED_DST = b"Seed-" + CONTEXT_STRING

_smult = rbcl.crypto_scalarmult_ristretto255
_smult_base_z = rbcl.crypto_scalarmult_ristretto255_base_allow_scalar_zero
_point_add = rbcl.crypto_core_ristretto255_add
_is_valid_point = rbcl.crypto_core_ristretto255_is_valid_point
_from_hash = rbcl.crypto_core_ristretto255_from_hash
_scalar_random = rbcl.crypto_core_ristretto255_scalar_random
_scalar_reduce = rbcl.crypto_core_ristretto255_scalar_reduce
_scalar_mul = rbcl.crypto_core_ristretto255_scalar_mul
_scalar_sub = rbcl.crypto_core_ristretto255_scalar_sub
_scalar_invert = rbcl.crypto_core_ristretto255_scalar_invert


def _i2osp(value: int, length: int) -> bytes:
    return value.to_bytes(length, "big")


def _lp(data: bytes) -> bytes:
    """u16 length prefix ‖ data, the RFC's framing of every transcript field."""
    return _i2osp(len(data), 2) + data


# -- hashing -----------------------------------------------------------------------------

def expand_message_xmd(msg: bytes, dst: bytes, length: int) -> bytes:
    """RFC 9380 §5.3.1 with SHA-512 (b_in_bytes 64, s_in_bytes 128)."""
    if len(dst) > 255:
        # The RFC would hash an oversize DST (§5.3.3); every DST here is short, so refuse.
        raise ValueError("expand_message_xmd: DST longer than 255 bytes")
    ell = -(-length // 64)
    if ell > 255 or length > 0xFFFF or length < 1:
        raise ValueError("expand_message_xmd: output length out of range")
    dst_prime = dst + _i2osp(len(dst), 1)
    b0 = hashlib.sha512(bytes(128) + msg + _i2osp(length, 2) + b"\x00" + dst_prime).digest()
    b = hashlib.sha512(b0 + b"\x01" + dst_prime).digest()
    out = [b]
    for i in range(2, ell + 1):
        mixed = bytes(x ^ y for x, y in zip(b0, b, strict=True))
        b = hashlib.sha512(mixed + _i2osp(i, 1) + dst_prime).digest()
        out.append(b)
    return b"".join(out)[:length]


def hash_to_group(msg: bytes) -> Element:
    """hash_to_ristretto255 with this suite's DST."""
    return Element(_from_hash(expand_message_xmd(msg, _HASH_TO_GROUP_DST, 64)))


def hash_to_scalar(msg: bytes, dst: bytes = _HASH_TO_SCALAR_DST) -> Scalar:
    return Scalar(_scalar_reduce(expand_message_xmd(msg, dst, 64)))


# -- group helpers -----------------------------------------------------------------------

def deserialize_element(buf: bytes, what: str = "element") -> Element:
    """RFC 9497 DeserializeElement: canonical, not the identity; DecodeError otherwise."""
    if not isinstance(buf, bytes | bytearray) or len(buf) != ELEMENT_SIZE:
        raise DecodeError(f"{what}: a ristretto255 element is {ELEMENT_SIZE} bytes")
    buf = bytes(buf)
    # libsodium (1.0.18, bundled in rbcl) ignores bit 255 when decoding, so P and P with
    # the top bit set would both be accepted: refuse the alias (a second encoding of a
    # blinded element would otherwise be a second, equally valid, request for it).
    if buf[31] & 0x80 or not _is_valid_point(buf):
        raise DecodeError(f"{what}: not a canonical ristretto255 encoding")
    if buf == _IDENTITY:
        raise DecodeError(f"{what}: identity element")
    return Element(buf)


def deserialize_scalar(buf: bytes, what: str = "scalar") -> Scalar:
    """RFC 9497 DeserializeScalar: 32 bytes little-endian below ℓ (zero is a scalar)."""
    if not isinstance(buf, bytes | bytearray) or len(buf) != SCALAR_SIZE:
        raise DecodeError(f"{what}: a scalar is {SCALAR_SIZE} bytes")
    if int.from_bytes(buf, "little") >= L:
        raise DecodeError(f"{what}: scalar is not canonical (not below the group order)")
    return Scalar(bytes(buf))


def _nonzero_scalar(buf: bytes, what: str) -> Scalar:
    s = deserialize_scalar(buf, what)
    if not any(s):
        raise DecodeError(f"{what}: scalar is zero")
    return s


def _mul(s: bytes, p: bytes) -> bytes:
    """s·p for a valid encoding p, including the cases libsodium refuses: s ≡ 0 or p = I.

    Those can only arise in a proof (an attacker's c or s, a composite weight d_i = 0,
    a composite M that cancels to I); the strict call is the fast path for all the rest.
    """
    try:
        return _smult(s, p)
    except RuntimeError:  # libsodium returns -1 exactly when the product is the identity
        return _IDENTITY


def random_scalar() -> Scalar:
    """Uniform in 1..ℓ−1 (libsodium rejects zero and values ≥ ℓ)."""
    return Scalar(_scalar_random())


# -- keys --------------------------------------------------------------------------------

def public_key(sk: Scalar) -> Element:
    return Element(_smult_base_z(sk))


def generate_key_pair() -> tuple[Scalar, Element]:
    sk = random_scalar()
    return sk, public_key(sk)


def derive_key_pair(seed: bytes, info: bytes) -> tuple[Scalar, Element]:
    """RFC 9497 §3.2.1 DeriveKeyPair: the key pair named by a 32-byte secret seed and a
    public info string."""
    if len(seed) != SEED_SIZE:
        raise ValueError(f"DeriveKeyPair: the seed is {SEED_SIZE} bytes")
    if len(info) > MAX_INPUT_SIZE:
        raise ValueError("DeriveKeyPair: info too long")
    derive_input = seed + _lp(info)
    for counter in range(256):
        sk = hash_to_scalar(derive_input + _i2osp(counter, 1), _DERIVE_KEY_PAIR_DST)
        if any(sk):
            return sk, public_key(sk)
    raise ValueError("DeriveKeyPair: no non-zero scalar in 256 tries")  # pragma: no cover


# -- proof -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Proof:
    """A batched DLEQ proof: c ‖ s, 64 bytes."""

    c: Scalar
    s: Scalar

    def encode(self) -> bytes:
        return self.c + self.s

    @classmethod
    def decode(cls, data: bytes) -> Proof:
        if not isinstance(data, bytes | bytearray) or len(data) != PROOF_SIZE:
            raise DecodeError(f"a proof is {PROOF_SIZE} bytes")
        return cls(deserialize_scalar(data[:SCALAR_SIZE], "proof c"),
                   deserialize_scalar(data[SCALAR_SIZE:], "proof s"))


def _composite_weights(pk: Element, c: Sequence[Element], d: Sequence[Element]) -> list[bytes]:
    if not c or len(c) != len(d):
        raise ValueError("a proof covers one or more (C_i, D_i) pairs")
    if len(c) > 0xFFFF:
        raise ValueError("a proof covers at most 65535 pairs (u16 index)")
    seed = hashlib.sha512(_lp(pk) + _lp(_SEED_DST)).digest()
    prefix = _lp(seed)
    return [hash_to_scalar(prefix + _i2osp(i, 2) + _lp(ci) + _lp(di) + b"Composite")
            for i, (ci, di) in enumerate(zip(c, d, strict=True))]


def _challenge(pk: bytes, m: bytes, z: bytes, t2: bytes, t3: bytes) -> Scalar:
    return hash_to_scalar(_lp(pk) + _lp(m) + _lp(z) + _lp(t2) + _lp(t3) + b"Challenge")


def _sum(points: list[bytes]) -> bytes:
    total = points[0]
    for p in points[1:]:
        total = _point_add(total, p)
    return total


def generate_proof(sk: Scalar, pk: Element, c: Sequence[Element], d: Sequence[Element],
                   r: Scalar) -> Proof:
    """GenerateProof(sk, G, pk, C, D) with the proof randomness r given (A is always the
    generator in VOPRF mode, so t2 = r·G is a base-point multiplication)."""
    weights = _composite_weights(pk, c, d)
    # ComputeCompositesFast: the server knows sk, so Z = sk·M costs one multiplication
    # instead of m.
    m = _sum([_mul(w, ci) for w, ci in zip(weights, c, strict=True)])
    z = _mul(sk, m)
    t2 = _smult_base_z(r)
    t3 = _mul(r, m)
    ch = _challenge(pk, m, z, t2, t3)
    return Proof(ch, Scalar(_scalar_sub(r, _scalar_mul(ch, sk))))


def verify_proof(pk: Element, c: Sequence[Element], d: Sequence[Element], proof: Proof) -> bool:
    """VerifyProof(G, pk, C, D, proof): True iff the same sk maps G to pk and every C_i to D_i
    (up to the proof's soundness error)."""
    weights = _composite_weights(pk, c, d)
    m = _sum([_mul(w, ci) for w, ci in zip(weights, c, strict=True)])
    z = _sum([_mul(w, di) for w, di in zip(weights, d, strict=True)])
    t2 = _point_add(_smult_base_z(proof.s), _mul(proof.c, pk))
    t3 = _point_add(_mul(proof.s, m), _mul(proof.c, z))
    # c is public (it travels in the proof), so a plain comparison leaks nothing.
    return _challenge(pk, m, z, t2, t3) == proof.c


# -- protocol ----------------------------------------------------------------------------

def _input_element(input_: bytes) -> Element:
    if len(input_) > MAX_INPUT_SIZE:
        raise ValueError(f"OPRF inputs are at most {MAX_INPUT_SIZE} bytes")
    element = hash_to_group(input_)
    if element == _IDENTITY:  # RFC InvalidInputError; probability ~2^-252
        raise ValueError("input hashes to the identity element")
    return element


def blind_with(input_: bytes, r: Scalar) -> Element:
    """Blind(input) with the blind r given: the blinded element r·HashToGroup(input)."""
    if not any(r):
        raise ValueError("the blind must not be zero")
    return Element(_smult(r, _input_element(input_)))


def blind(input_: bytes) -> tuple[Scalar, Element]:
    """Blind(input): a fresh random blind and the blinded element to send."""
    r = random_scalar()
    return r, blind_with(input_, r)


def blind_evaluate_batch_with(sk: Scalar, pk: Element, blinded: Sequence[Element],
                              r: Scalar) -> tuple[list[Element], Proof]:
    """BlindEvaluate over m blinded elements with one proof, the proof randomness given."""
    evaluated = [Element(_smult(sk, b)) for b in blinded]
    return evaluated, generate_proof(sk, pk, blinded, evaluated, r)


def blind_evaluate_batch(sk: Scalar, pk: Element,
                         blinded: Sequence[Element]) -> tuple[list[Element], Proof]:
    """The server's step: sk·blinded_i for each i, and one DLEQ proof for all of them
    (2m + 3 scalar multiplications; one proof per element would be 4m)."""
    return blind_evaluate_batch_with(sk, pk, blinded, random_scalar())


def _finalize_hash(input_: bytes, unblinded: bytes) -> bytes:
    return hashlib.sha512(_lp(input_) + _lp(unblinded) + b"Finalize").digest()


def finalize_batch(inputs: Sequence[bytes], blinds: Sequence[Scalar],
                   evaluated: Sequence[Element], blinded: Sequence[Element], pk: Element,
                   proof: Proof) -> list[bytes]:
    """Finalize for a batch: check the one proof, then unblind and hash each output.

    AuthenticationError when the proof does not verify for pk (another key, a tampered
    element, a reordered or partial batch): nothing is unblinded then.
    """
    if not len(inputs) == len(blinds) == len(evaluated) == len(blinded):
        raise ValueError("inputs, blinds, evaluated and blinded elements differ in number")
    if not verify_proof(pk, blinded, evaluated, proof):
        raise AuthenticationError("VOPRF proof does not verify for this public key")
    return [_finalize_hash(x, _smult(_scalar_invert(r), e))
            for x, r, e in zip(inputs, blinds, evaluated, strict=True)]


def finalize(input_: bytes, r: Scalar, evaluated: Element, blinded: Element, pk: Element,
             proof: Proof) -> bytes:
    """Finalize for one element (r: its blind)."""
    return finalize_batch([input_], [r], [evaluated], [blinded], pk, proof)[0]


def evaluate(sk: Scalar, input_: bytes) -> bytes:
    """Evaluate(sk, input): the PRF output without blinding (one scalar multiplication);
    the server's check of a redeemed token."""
    return _finalize_hash(input_, _smult(sk, _input_element(input_)))


def secret_key_from_bytes(buf: bytes) -> Scalar:
    """A stored secret key: a canonical, non-zero scalar."""
    return _nonzero_scalar(buf, "VOPRF secret key")
