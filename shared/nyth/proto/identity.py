"""Long-term identities: ed25519 keys and their Tor v3 onion addresses.

A profile, a group server and a mailbox are each named by one ed25519 key; the onion
address is a pure function of the public key (rend-spec-v3 §6), so anyone holding the
address holds the key that signs for it.
"""

from __future__ import annotations

import base64
import hashlib

import nacl.bindings
import nacl.exceptions
import nacl.signing

from nyth.errors import AuthenticationError, DecodeError

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
ONION_LENGTH = 56  # base32 of 35 bytes, without ".onion"
_ONION_VERSION = b"\x03"
_CHECKSUM_PREFIX = b".onion checksum"


def _checksum(public_key: bytes) -> bytes:
    return hashlib.sha3_256(_CHECKSUM_PREFIX + public_key + _ONION_VERSION).digest()[:2]


def onion_from_public_key(public_key: bytes) -> str:
    """The 56-character v3 service id (no ".onion") for an ed25519 public key."""
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise DecodeError(f"ed25519 public key must be {PUBLIC_KEY_SIZE} bytes, got {len(public_key)}")
    raw = public_key + _checksum(public_key) + _ONION_VERSION
    return base64.b32encode(raw).decode("ascii").lower()


def normalize_onion(onion: str) -> str:
    """Accept "x.onion", "X", "http://x.onion/" styles; return the bare lowercase service id."""
    if not isinstance(onion, str):
        raise DecodeError("onion address must be a string")
    text = onion.strip().lower()
    for prefix in ("http://", "https://"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    text = text.rstrip("/")
    if text.endswith(".onion"):
        text = text[: -len(".onion")]
    if len(text) != ONION_LENGTH:
        raise DecodeError(f"onion address must be {ONION_LENGTH} base32 characters, got {len(text)}")
    return text


def public_key_from_onion(onion: str) -> bytes:
    """Decode and check a v3 onion address; raises DecodeError on typos."""
    text = normalize_onion(onion)
    try:
        raw = base64.b32decode(text.upper())
    except (ValueError, base64.binascii.Error) as exc:  # type: ignore[attr-defined]
        raise DecodeError("onion address is not valid base32") from exc
    public_key, checksum, version = raw[:32], raw[32:34], raw[34:35]
    if version != _ONION_VERSION:
        raise DecodeError("onion address is not a v3 address")
    if checksum != _checksum(public_key):
        raise DecodeError("onion address checksum does not match (typo?)")
    if not nacl.bindings.crypto_core_ed25519_is_valid_point(public_key):
        raise DecodeError("onion address does not hold a valid ed25519 point")
    return public_key


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Raise AuthenticationError unless signature is public_key's over message."""
    if len(signature) != SIGNATURE_SIZE:
        raise DecodeError(f"signature must be {SIGNATURE_SIZE} bytes")
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError) as exc:
        raise AuthenticationError("signature does not verify") from exc


def ed25519_public_to_x25519(public_key: bytes) -> bytes:
    try:
        return nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(public_key)
    except (nacl.exceptions.RuntimeError, nacl.exceptions.ValueError, ValueError) as exc:
        raise DecodeError("public key is not a valid ed25519 point") from exc


class Identity:
    """An ed25519 key pair. Never printed: repr shows only the onion address."""

    __slots__ = ("_signing_key",)

    def __init__(self, signing_key: nacl.signing.SigningKey) -> None:
        self._signing_key = signing_key

    @classmethod
    def generate(cls) -> Identity:
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        if len(seed) != 32:
            raise DecodeError("identity seed must be 32 bytes")
        return cls(nacl.signing.SigningKey(seed))

    @property
    def seed(self) -> bytes:
        return bytes(self._signing_key)

    @property
    def public_key(self) -> bytes:
        return bytes(self._signing_key.verify_key)

    @property
    def onion(self) -> str:
        return onion_from_public_key(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return self._signing_key.sign(message).signature

    def x25519_private(self) -> bytes:
        return nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(
            self.seed + self.public_key
        )

    def x25519_public(self) -> bytes:
        return ed25519_public_to_x25519(self.public_key)

    def tor_key_blob(self) -> str:
        """Key content for tor's `ADD_ONION ED25519-V3:<blob>`: base64 of the 64-byte
        expanded secret key (clamped SHA-512 of the seed), as tor stores it."""
        digest = bytearray(hashlib.sha512(self.seed).digest())
        digest[0] &= 248
        digest[31] &= 127
        digest[31] |= 64
        return base64.b64encode(bytes(digest)).decode("ascii")

    def __repr__(self) -> str:
        return f"Identity({self.onion}.onion)"
