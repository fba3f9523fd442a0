"""Server key bundles: what a group server promises, signed by its onion key.

Byte layout (164 bytes, big-endian integers):

    magic "NYTHBND1" (8) | onion public key (32) | token public key (32)
    | blob size (u32) | max blobs (u64) | max age seconds (u64) | issued at (u64, unix s)
    | ed25519 signature by the onion key over all of the above (64)

Clients pin the exact bytes on first use (`check_pin`) and refuse any change loudly:
a server that silently swaps keys or weakens its retention is treated as hostile until
the user reviews the change and re-pins (`nyth.proto.pinning`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from nyth.errors import DecodeError
from nyth.proto import pinning
from nyth.proto.identity import (
    SIGNATURE_SIZE,
    Identity,
    normalize_onion,
    onion_from_public_key,
    verify_signature,
)

MAGIC = b"NYTHBND1"
_BODY = struct.Struct(">8s32s32sIQQQ")
BUNDLE_SIZE = _BODY.size + SIGNATURE_SIZE
MAX_BLOB_SIZE = 1 << 16


@dataclass(frozen=True)
class ServerBundle:
    onion_public_key: bytes
    # Reserved for Privacy-Pass style token signing; all zeros means "no tokens required".
    token_public_key: bytes
    blob_size: int
    max_blobs: int
    max_age_seconds: int
    issued_at: int

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

    @property
    def onion(self) -> str:
        return onion_from_public_key(self.onion_public_key)

    def _body(self) -> bytes:
        return _BODY.pack(MAGIC, self.onion_public_key, self.token_public_key, self.blob_size,
                          self.max_blobs, self.max_age_seconds, self.issued_at)

    def sign(self, identity: Identity) -> bytes:
        if identity.public_key != self.onion_public_key:
            raise ValueError("bundle must be signed by the server's own onion key")
        body = self._body()
        return body + identity.sign(body)

    @classmethod
    def verify(cls, data: bytes, onion: str | None = None) -> ServerBundle:
        """Decode and check a signed bundle; with onion, also that it belongs to that server."""
        if len(data) != BUNDLE_SIZE:
            raise DecodeError(f"bundle must be {BUNDLE_SIZE} bytes, got {len(data)}")
        body, signature = data[: _BODY.size], data[_BODY.size:]
        magic, onion_pk, token_pk, blob_size, max_blobs, max_age, issued = _BODY.unpack(body)
        if magic != MAGIC:
            raise DecodeError("not a Nyth server bundle")
        bundle = cls(onion_pk, token_pk, blob_size, max_blobs, max_age, issued)
        if onion is not None and normalize_onion(onion) != bundle.onion:
            raise DecodeError("bundle belongs to a different server")
        verify_signature(onion_pk, body, signature)
        return bundle


def check_pin(onion: str, presented: bytes, pinned: bytes | None) -> bytes:
    """Trust on first use. Returns the bytes to pin; raises BundleChangedError on any change
    (see nyth.proto.pinning for what it says and how the user re-pins)."""
    pinning.check_pin(onion, presented, pinned, ServerBundle.verify)
    return presented
