"""Server key bundles: what a group server promises, signed by its onion key.

Two byte layouts (big-endian integers); the magic says which:

    v1 (164 bytes):  magic "NYTHBND1" (8) | onion public key (32) | token public key (32)
                     | blob size (u32) | max blobs (u64) | max age seconds (u64)
                     | issued at (u64, unix s) | ed25519 signature by the onion key (64)
    v2 (165 bytes):  magic "NYTHBND2" (8) | onion public key (32) | token public key (32)
                     | token pow bits (u8, 1..tokens.MAX_POW_BITS) | blob size (u32)
                     | max blobs (u64) | max age seconds (u64) | issued at (u64)
                     | ed25519 signature by the onion key (64)

The signature covers every byte before it. v2 adds only the proof-of-work difficulty of
token issuance (docs/protocol.md §9): everything else a client needs to get tokens is the
token key (already in v1) and fixed by the protocol (the endpoint, MAX_BATCH). Each
bundle has exactly one encoding: `sign` writes v1 when token_pow_bits is 0, so a server
without token work keeps presenting bytes that older clients read, and a v2 bundle with
0 bits is refused. A token pow without a token key, or a token key that is not a
ristretto255 element, is refused too: a client could not use either.

Clients pin the exact bytes on first use (`check_pin`) and refuse any change loudly:
a server that silently swaps keys or weakens its retention is treated as hostile until
the user reviews the change and re-pins (`nyth.proto.pinning`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from nyth.errors import DecodeError
from nyth.proto import pinning, tokens
from nyth.proto.identity import (
    SIGNATURE_SIZE,
    Identity,
    normalize_onion,
    onion_from_public_key,
    verify_signature,
)

MAGIC = b"NYTHBND1"
MAGIC_V2 = b"NYTHBND2"
_BODY = struct.Struct(">8s32s32sIQQQ")
_BODY_V2 = struct.Struct(">8s32s32sBIQQQ")
BUNDLE_SIZE_V1 = _BODY.size + SIGNATURE_SIZE
BUNDLE_SIZE_V2 = _BODY_V2.size + SIGNATURE_SIZE
BUNDLE_SIZES = (BUNDLE_SIZE_V1, BUNDLE_SIZE_V2)
MAX_BUNDLE_SIZE = max(BUNDLE_SIZES)
MAX_BLOB_SIZE = 1 << 16


@dataclass(frozen=True)
class ServerBundle:
    onion_public_key: bytes
    # The VOPRF key tokens are issued under (nyth.proto.tokens); all zero: no tokens.
    token_public_key: bytes
    blob_size: int
    max_blobs: int
    max_age_seconds: int
    issued_at: int
    # Leading zero bits of the work that pays for one batch of tokens (0: free).
    token_pow_bits: int = 0

    def __post_init__(self) -> None:
        if len(self.onion_public_key) != 32 or len(self.token_public_key) != 32:
            raise DecodeError("bundle keys must be 32 bytes")
        if not 64 <= self.blob_size <= MAX_BLOB_SIZE:
            raise DecodeError(f"bundle blob size {self.blob_size} out of range")
        if self.max_blobs < 1 or self.max_age_seconds < 1 or self.issued_at < 0:
            raise DecodeError("bundle retention values must be positive")
        for value in (self.max_blobs, self.max_age_seconds, self.issued_at):
            if value >= 1 << 63:
                raise DecodeError("bundle integer out of range")
        if not 0 <= self.token_pow_bits <= tokens.MAX_POW_BITS:
            raise DecodeError(f"bundle token pow bits {self.token_pow_bits} out of range "
                              f"0..{tokens.MAX_POW_BITS}")
        if self.tokens_required:
            tokens.decode_public_key(self.token_public_key)  # DecodeError if unusable
        elif self.token_pow_bits:
            raise DecodeError("bundle asks proof of work for tokens but has no token key")

    @property
    def onion(self) -> str:
        return onion_from_public_key(self.onion_public_key)

    @property
    def tokens_required(self) -> bool:
        """Whether the server wants one token per post (docs/protocol.md §9)."""
        return tokens.tokens_required(self.token_public_key)

    @property
    def version(self) -> int:
        return 1 if self.token_pow_bits == 0 else 2

    def _body(self) -> bytes:
        if self.version == 1:
            return _BODY.pack(MAGIC, self.onion_public_key, self.token_public_key,
                              self.blob_size, self.max_blobs, self.max_age_seconds,
                              self.issued_at)
        return _BODY_V2.pack(MAGIC_V2, self.onion_public_key, self.token_public_key,
                             self.token_pow_bits, self.blob_size, self.max_blobs,
                             self.max_age_seconds, self.issued_at)

    def sign(self, identity: Identity) -> bytes:
        if identity.public_key != self.onion_public_key:
            raise ValueError("bundle must be signed by the server's own onion key")
        body = self._body()
        return body + identity.sign(body)

    @classmethod
    def verify(cls, data: bytes, onion: str | None = None) -> ServerBundle:
        """Decode and check a signed bundle (either version); with onion, also that it
        belongs to that server."""
        if not isinstance(data, bytes | bytearray):
            raise DecodeError("bundle must be bytes")
        data = bytes(data)
        if data.startswith(MAGIC_V2) and len(data) == BUNDLE_SIZE_V2:
            layout = _BODY_V2
            _m, onion_pk, token_pk, bits, blob_size, max_blobs, max_age, issued = \
                layout.unpack_from(data)
            if bits == 0:
                raise DecodeError("a v2 bundle must ask proof of work for tokens (without, it "
                                  "is written as v1)")
        elif data.startswith(MAGIC) and len(data) == BUNDLE_SIZE_V1:
            layout = _BODY
            _m, onion_pk, token_pk, blob_size, max_blobs, max_age, issued = layout.unpack_from(data)
            bits = 0
        elif data.startswith((MAGIC, MAGIC_V2)):
            raise DecodeError(f"bundle must be {BUNDLE_SIZE_V1} bytes (v1) or "
                              f"{BUNDLE_SIZE_V2} (v2), got {len(data)}")
        else:
            raise DecodeError("not a Nyth server bundle")
        bundle = cls(onion_pk, token_pk, blob_size, max_blobs, max_age, issued, bits)
        if onion is not None and normalize_onion(onion) != bundle.onion:
            raise DecodeError("bundle belongs to a different server")
        verify_signature(onion_pk, data[:layout.size], data[layout.size:])
        return bundle


def check_pin(onion: str, presented: bytes, pinned: bytes | None) -> bytes:
    """Trust on first use. Returns the bytes to pin; raises BundleChangedError on any change
    (see nyth.proto.pinning for what it says and how the user re-pins)."""
    pinning.check_pin(onion, presented, pinned, ServerBundle.verify)
    return presented
