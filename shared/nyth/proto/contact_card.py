"""Contact cards: what a profile publishes on its mailbox so strangers can reach it offline.

Byte layout, version 2 (952 bytes, big-endian integers):

    magic "NYTHCRD2" (8) | onion public key (32) | mailbox onion public key (32)
    | FMD public key (768) | X25519 public key (32) | issued at (u64, unix s)
    | expires at (u64, unix s) | ed25519 signature by the onion key over all of the above (64)

A sender who holds the contact identifier (and therefore the onion key) fetches the card
from the mailbox, which cannot forge it: `ContactCard.verify` checks the signature, that
the card is the expected onion's, that it names the mailbox it was fetched from (the
contact id's mailbox key has only a checksum: whoever hands out an id naming their own
mailbox, serving a copy of the real card, is caught here), and that it has not expired.

Version 1 cards ("NYTHCRD1", 920 bytes, no mailbox field) are refused with a reason: a
v1 card cannot tell a sender whether the mailbox serving it is the owner's.
"""

from __future__ import annotations

import importlib
import struct
from dataclasses import dataclass

import nacl.bindings
import nacl.exceptions

from nyth.errors import DecodeError
from nyth.proto.identity import (
    PUBLIC_KEY_SIZE,
    SIGNATURE_SIZE,
    Identity,
    normalize_onion,
    onion_from_public_key,
    verify_signature,
)

MAGIC = b"NYTHCRD2"
MAGIC_V1 = b"NYTHCRD1"
FMD_PUBLIC_KEY_SIZE = 768  # 24 ristretto255 points
X25519_KEY_SIZE = 32
_BODY = struct.Struct(
    f">8s{PUBLIC_KEY_SIZE}s{PUBLIC_KEY_SIZE}s{FMD_PUBLIC_KEY_SIZE}s{X25519_KEY_SIZE}sQQ")
CARD_SIZE = _BODY.size + SIGNATURE_SIZE
# A card dated this far ahead of the verifier's clock is refused (clock skew allowance).
MAX_FUTURE_SKEW_SECONDS = 24 * 3600
_U63 = 1 << 63
_PROBE = bytes([9]) * 32  # any scalar: clamping clears the cofactor


def _check_fmd_key(data: bytes) -> None:
    try:
        fmd = importlib.import_module("nyth.proto.fmd")
    except ImportError:  # FMD lands separately; until then only the length is checked
        return
    fmd.FmdPublicKey.decode(data)


@dataclass(frozen=True)
class ContactCard:
    onion_public_key: bytes
    mailbox_public_key: bytes
    fmd_public_key: bytes
    x25519_public_key: bytes
    issued_at: int
    expires_at: int

    def __post_init__(self) -> None:
        if len(self.onion_public_key) != PUBLIC_KEY_SIZE:
            raise DecodeError("card onion key must be 32 bytes")
        if len(self.mailbox_public_key) != PUBLIC_KEY_SIZE:
            raise DecodeError("card mailbox key must be 32 bytes")
        if len(self.fmd_public_key) != FMD_PUBLIC_KEY_SIZE:
            raise DecodeError(f"card FMD key must be {FMD_PUBLIC_KEY_SIZE} bytes")
        if len(self.x25519_public_key) != X25519_KEY_SIZE:
            raise DecodeError("card X25519 key must be 32 bytes")
        if self.x25519_public_key == bytes(X25519_KEY_SIZE):
            raise DecodeError("card X25519 key is all zeros")
        try:
            # libsodium refuses a low-order point (all-zero result): a record could not be
            # sealed to it, so the card is refused here, with that reason.
            nacl.bindings.crypto_scalarmult(_PROBE, self.x25519_public_key)
        except (nacl.exceptions.RuntimeError, nacl.exceptions.ValueError, ValueError):
            raise DecodeError("card X25519 key is a low-order point") from None
        if not 0 <= self.issued_at < _U63 or not 0 <= self.expires_at < _U63:
            raise DecodeError("card time out of range")
        if self.expires_at <= self.issued_at:
            raise DecodeError("card expires before it is issued")

    @property
    def onion(self) -> str:
        return onion_from_public_key(self.onion_public_key)

    @property
    def mailbox_onion(self) -> str:
        return onion_from_public_key(self.mailbox_public_key)

    def _body(self) -> bytes:
        return _BODY.pack(MAGIC, self.onion_public_key, self.mailbox_public_key,
                          self.fmd_public_key,
                          self.x25519_public_key, self.issued_at, self.expires_at)

    def sign(self, identity: Identity) -> bytes:
        if identity.public_key != self.onion_public_key:
            raise ValueError("a card must be signed by its own onion key")
        body = self._body()
        return body + identity.sign(body)

    @classmethod
    def decode_unverified(cls, data: bytes) -> tuple[ContactCard, bytes, bytes]:
        """(card, signed body, signature): structure only, no signature or time checks."""
        if data[: len(MAGIC_V1)] == MAGIC_V1:
            raise DecodeError("contact card is version 1, which does not name its mailbox; "
                              "the contact must run a newer Nyth to be reachable offline")
        if len(data) != CARD_SIZE:
            raise DecodeError(f"contact card must be {CARD_SIZE} bytes, got {len(data)}")
        body, signature = data[: _BODY.size], data[_BODY.size:]
        magic, onion_pk, mailbox_pk, fmd_pk, x_pk, issued, expires = _BODY.unpack(body)
        if magic != MAGIC:
            raise DecodeError("not a Nyth contact card")
        return cls(onion_pk, mailbox_pk, fmd_pk, x_pk, issued, expires), body, signature

    @classmethod
    def verify(cls, data: bytes, onion: str, now: int, *, mailbox: str) -> ContactCard:
        """Decode and check a card: signed by onion's key, naming mailbox (the onion of
        the mailbox it was fetched from or posted to), issued, and not expired at now.

        Raises DecodeError (malformed, wrong onion, another mailbox, expired, dated in the
        future) or AuthenticationError (bad signature).
        """
        card, body, signature = cls.decode_unverified(data)
        if normalize_onion(onion) != card.onion:
            raise DecodeError("contact card belongs to a different onion")
        verify_signature(card.onion_public_key, body, signature)
        # After the signature: only the owner's word on its mailbox counts.
        if normalize_onion(mailbox) != card.mailbox_onion:
            raise DecodeError(f"contact card names another mailbox ({card.mailbox_onion}.onion), "
                              f"not {normalize_onion(mailbox)}.onion")
        if now >= card.expires_at:
            raise DecodeError("contact card has expired")
        if card.issued_at > now + MAX_FUTURE_SKEW_SECONDS:
            raise DecodeError("contact card is dated in the future")
        _check_fmd_key(card.fmd_public_key)
        return card
