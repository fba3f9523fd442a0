"""Fuzzy Message Detection, FMD2 (Beck, Len, Miers, Green 2021) on ristretto255. Sans-IO.

DESIGN §5. A recipient publishes an ``FmdPublicKey`` (γ = 24 points); a sender attaches
``flag(pk)`` (a 67-byte tag) to what it posts on a mailbox; the recipient delegates
``extract(n)`` (the first n secret scalars) to the mailbox, which runs ``test`` on every
stored tag. A tag made for the key always passes; any other passes with probability 2⁻ⁿ.

    KeyGen   x_1..x_γ random, X_i = x_i·B
    Flag     r, z random; U = r·B; W = z·B; k_i = H1(U ‖ r·X_i ‖ W); c_i = k_i ⊕ 1;
             m = H2(U ‖ c); y = (z − m)·r⁻¹; tag = U ‖ y ‖ c
    Test     m = H2(U ‖ c); W = y·U + m·B; pass iff c_i ⊕ H1(U ‖ x_i·U ‖ W) = 1, i = 1..n

Group operations are libsodium's ristretto255 (the ``rbcl`` wheel, chosen by measurement:
docs/performance.md "FMD"). H1 and H2 are BLAKE2b with distinct personalisations.
Byte layouts are in docs/protocol.md "FMD".

Test stops at the first failing bit, so a non-matching tag costs ~2 scalar multiplications
plus W, which depends only on the tag: ``decode_tag`` returns a ``Tag`` that computes W once
(lazily) and keeps it, so testing one decoded tag against many keys pays for W once.
"""

from __future__ import annotations

import hashlib

import rbcl

from nyth.errors import DecodeError

GAMMA = 24
POINT_SIZE = 32
SCALAR_SIZE = 32
C_SIZE = (GAMMA + 7) // 8
TAG_SIZE = POINT_SIZE + SCALAR_SIZE + C_SIZE  # 67
PUBLIC_KEY_SIZE = GAMMA * POINT_SIZE  # 768
SECRET_KEY_SIZE = GAMMA * SCALAR_SIZE  # 768

# Order of the ristretto255 group.
_L = 2**252 + 27742317777372353535851937790883648493
_IDENTITY = bytes(POINT_SIZE)

_H1_PERSON = b"nyth-fmd2-h1"
_H2_PERSON = b"nyth-fmd2-h2"

_blake2b = hashlib.blake2b
_smult = rbcl.crypto_scalarmult_ristretto255
_smult_z = rbcl.crypto_scalarmult_ristretto255_allow_scalar_zero
_smult_base = rbcl.crypto_scalarmult_ristretto255_base
_smult_base_z = rbcl.crypto_scalarmult_ristretto255_base_allow_scalar_zero
_point_add = rbcl.crypto_core_ristretto255_add
_is_valid_point = rbcl.crypto_core_ristretto255_is_valid_point
_scalar_random = rbcl.crypto_core_ristretto255_scalar_random
_scalar_reduce = rbcl.crypto_core_ristretto255_scalar_reduce
_scalar_sub = rbcl.crypto_core_ristretto255_scalar_sub
_scalar_mul = rbcl.crypto_core_ristretto255_scalar_mul
_scalar_invert = rbcl.crypto_core_ristretto255_scalar_invert


def _h1(u: bytes, p: bytes, w: bytes) -> int:
    """H1: one bit from U ‖ P ‖ W."""
    return _blake2b(u + p + w, digest_size=1, person=_H1_PERSON).digest()[0] & 1


def _h2(u: bytes, c: bytes) -> bytes:
    """H2: a scalar from U ‖ c (64 bytes of BLAKE2b reduced mod ℓ)."""
    return _scalar_reduce(_blake2b(u + c, digest_size=64, person=_H2_PERSON).digest())


def _check_scalar(s: bytes, what: str) -> None:
    value = int.from_bytes(s, "little")
    if value >= _L:
        raise DecodeError(f"{what}: scalar is not canonical (not below the group order)")
    if value == 0:
        raise DecodeError(f"{what}: scalar is zero")


def _check_point(p: bytes, what: str) -> None:
    # libsodium (1.0.18, bundled in rbcl and in Debian) ignores bit 255 when decoding, so
    # P and P with the top bit set would both be accepted: reject the alias here.
    if p[31] & 0x80 or not _is_valid_point(p):
        raise DecodeError(f"{what}: not a canonical ristretto255 encoding")
    if p == _IDENTITY:
        raise DecodeError(f"{what}: identity point")


def _split(data: bytes, size: int) -> tuple[bytes, ...]:
    return tuple(data[i:i + size] for i in range(0, len(data), size))


class FmdPublicKey:
    """X_1..X_γ. Published on the recipient's contact card; senders flag with it."""

    __slots__ = ("_points",)

    def __init__(self, points: tuple[bytes, ...]) -> None:
        if len(points) != GAMMA:
            raise ValueError(f"an FMD public key has {GAMMA} points, not {len(points)}")
        self._points = points

    @property
    def points(self) -> tuple[bytes, ...]:
        return self._points

    def encode(self) -> bytes:
        return b"".join(self._points)

    @classmethod
    def decode(cls, data: bytes) -> FmdPublicKey:
        if not isinstance(data, bytes | bytearray) or len(data) != PUBLIC_KEY_SIZE:
            raise DecodeError(f"FMD public key must be {PUBLIC_KEY_SIZE} bytes")
        points = _split(bytes(data), POINT_SIZE)
        for i, p in enumerate(points):
            _check_point(p, f"FMD public key point {i}")
        return cls(points)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FmdPublicKey) and self._points == other._points

    def __hash__(self) -> int:
        return hash(self._points)

    def __repr__(self) -> str:
        return f"FmdPublicKey({self._points[0][:4].hex()}…)"


class DetectionKey:
    """x_1..x_n (0 ≤ n ≤ γ): delegated to a mailbox; false-positive rate 2⁻ⁿ."""

    __slots__ = ("_scalars",)

    def __init__(self, scalars: tuple[bytes, ...]) -> None:
        if len(scalars) > GAMMA:
            raise ValueError(f"a detection key has at most {GAMMA} scalars")
        self._scalars = scalars

    @property
    def n(self) -> int:
        return len(self._scalars)

    @property
    def false_positive_rate(self) -> float:
        return 2.0 ** -len(self._scalars)

    def encode(self) -> bytes:
        return b"".join(self._scalars)

    @classmethod
    def decode(cls, data: bytes) -> DetectionKey:
        if not isinstance(data, bytes | bytearray):
            raise DecodeError("detection key must be bytes")
        if len(data) % SCALAR_SIZE or len(data) > GAMMA * SCALAR_SIZE:
            raise DecodeError(f"detection key must be a multiple of {SCALAR_SIZE} bytes, "
                              f"at most {GAMMA * SCALAR_SIZE}")
        scalars = _split(bytes(data), SCALAR_SIZE)
        for i, s in enumerate(scalars):
            _check_scalar(s, f"detection key scalar {i}")
        return cls(scalars)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DetectionKey) and self._scalars == other._scalars

    def __hash__(self) -> int:
        return hash(self._scalars)

    def __repr__(self) -> str:  # never print secret scalars
        return f"DetectionKey(n={self.n})"


class FmdSecretKey:
    """x_1..x_γ. Stays with the recipient."""

    __slots__ = ("_public", "_scalars")

    def __init__(self, scalars: tuple[bytes, ...]) -> None:
        if len(scalars) != GAMMA:
            raise ValueError(f"an FMD secret key has {GAMMA} scalars, not {len(scalars)}")
        self._scalars = scalars
        self._public: FmdPublicKey | None = None

    @classmethod
    def generate(cls) -> FmdSecretKey:
        return cls(tuple(_scalar_random() for _ in range(GAMMA)))

    def encode(self) -> bytes:
        return b"".join(self._scalars)

    @classmethod
    def decode(cls, data: bytes) -> FmdSecretKey:
        if not isinstance(data, bytes | bytearray) or len(data) != SECRET_KEY_SIZE:
            raise DecodeError(f"FMD secret key must be {SECRET_KEY_SIZE} bytes")
        scalars = _split(bytes(data), SCALAR_SIZE)
        for i, s in enumerate(scalars):
            _check_scalar(s, f"FMD secret key scalar {i}")
        return cls(scalars)

    def public_key(self) -> FmdPublicKey:
        if self._public is None:
            self._public = FmdPublicKey(tuple(_smult_base(x) for x in self._scalars))
        return self._public

    def extract(self, n: int) -> DetectionKey:
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= GAMMA:
            raise ValueError(f"n must be an integer in 0..{GAMMA}")
        return DetectionKey(self._scalars[:n])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FmdSecretKey) and self._scalars == other._scalars

    def __hash__(self) -> int:
        return hash(self._scalars)

    def __repr__(self) -> str:  # never print secret scalars
        return "FmdSecretKey(…)"


class Tag:
    """A decoded, validated tag. W (y·U + m·B) depends only on the tag: computed once, kept."""

    __slots__ = ("_w", "c", "raw", "u", "y")

    def __init__(self, raw: bytes, u: bytes, y: bytes, c: int) -> None:
        self.raw = raw
        self.u = u
        self.y = y
        self.c = c  # bit i (0-based) is c_{i+1}
        self._w: bytes | None = None

    @property
    def w(self) -> bytes:
        if self._w is None:
            m = _h2(self.u, self.raw[POINT_SIZE + SCALAR_SIZE:])
            # y or m can be zero (with negligible probability, or in a crafted tag): allow it.
            yu = _smult_z(self.y, self.u)
            mb = _smult_base_z(m)
            self._w = _point_add(yu, mb)
        return self._w

    def encode(self) -> bytes:
        return self.raw

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tag) and self.raw == other.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"Tag({self.raw[:4].hex()}…)"


def decode_tag(tag: bytes, w: bytes | None = None, *, validated: bool = False) -> Tag:
    """Validate a 67-byte tag: length, U a canonical non-identity point, y a canonical scalar.

    ``w``: the tag's W as computed earlier by ``Tag.w`` and stored next to it (a mailbox can
    compute it once at ingest); not checked, a wrong W only makes every test of it fail.
    ``validated``: this tag passed this function before (at ingest) and comes back from our
    own storage, so the point check (≈ 9 µs, a third of a detection's overhead) is skipped.
    """
    if not isinstance(tag, bytes | bytearray) or len(tag) != TAG_SIZE:
        raise DecodeError(f"FMD tag must be {TAG_SIZE} bytes")
    raw = bytes(tag)
    u = raw[:POINT_SIZE]
    y = raw[POINT_SIZE:POINT_SIZE + SCALAR_SIZE]
    if not validated:
        _check_point(u, "FMD tag U")
    if int.from_bytes(y, "little") >= _L:
        raise DecodeError("FMD tag y: scalar is not canonical (not below the group order)")
    c = int.from_bytes(raw[POINT_SIZE + SCALAR_SIZE:], "little")
    decoded = Tag(raw, u, y, c)
    if w is not None:
        if len(w) != POINT_SIZE:
            raise DecodeError(f"FMD tag W must be {POINT_SIZE} bytes")
        decoded._w = bytes(w)
    return decoded


def flag(pk: FmdPublicKey) -> bytes:
    """A fresh tag for pk (γ + 2 scalar multiplications)."""
    r = _scalar_random()
    z = _scalar_random()
    u = _smult_base(r)
    w = _smult_base(z)
    c = 0
    for i, x_i in enumerate(pk.points):
        k_i = _h1(u, _smult(r, x_i), w)
        c |= (k_i ^ 1) << i
    c_bytes = c.to_bytes(C_SIZE, "little")
    m = _h2(u, c_bytes)
    y = _scalar_mul(_scalar_sub(z, m), _scalar_invert(r))
    return u + y + c_bytes


def match_length(dk: DetectionKey, tag: bytes | Tag) -> int:
    """How many leading bits of tag pass under dk (0..dk.n), stopping at the first failure.

    ``test(dk, tag)`` is ``match_length(dk, tag) == dk.n``. A tag that passes at n passes at
    every smaller n: this gives, in one pass, the n at which a tag would have matched.
    """
    t = tag if isinstance(tag, Tag) else decode_tag(tag)
    scalars = dk._scalars
    if not scalars:
        return 0
    u = t.u
    w = t.w
    c = t.c
    smult = _smult
    blake2b = _blake2b
    person = _H1_PERSON
    for i, x_i in enumerate(scalars):
        h = blake2b(u + smult(x_i, u) + w, digest_size=1, person=person).digest()[0] & 1
        if h == (c >> i) & 1:  # c_i ⊕ H1 = 0: this bit fails
            return i
    return len(scalars)


def test(dk: DetectionKey, tag: bytes | Tag) -> bool:
    """True iff every one of dk's n bits passes (always for a tag flagged to the key).

    Raises DecodeError for a malformed tag (bytes); pass a decoded ``Tag`` to reuse W
    across keys.
    """
    return match_length(dk, tag) == dk.n


test.__test__ = False  # type: ignore[attr-defined]  # not a pytest test when imported
