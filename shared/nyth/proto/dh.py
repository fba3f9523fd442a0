"""The two primitives both DH constructions share: X25519 that refuses low-order points,
and a BLAKE2b KDF whose personalisation names the key's purpose (pure)."""

from __future__ import annotations

import hashlib

import nacl.bindings
import nacl.exceptions

from nyth.errors import AuthenticationError


def kdf(material: bytes, label: bytes) -> bytes:
    """A 32-byte key for one purpose: label (≤ 16 bytes) keeps purposes apart."""
    return hashlib.blake2b(material, digest_size=32, person=label).digest()


def dh(private: bytes, public: bytes, what: str) -> bytes:
    """X25519; a low-order public key (all-zero shared secret, which libsodium refuses)
    is an AuthenticationError naming `what` ("handshake key", "record key")."""
    try:
        return nacl.bindings.crypto_scalarmult(private, public)
    except (nacl.exceptions.RuntimeError, nacl.exceptions.ValueError, ValueError) as exc:
        raise AuthenticationError(f"{what} is a low-order point") from exc
