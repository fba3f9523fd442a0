"""Contact identifiers: the short text a user shares so others can reach them offline.

Raw layout (68 bytes):

    profile onion public key (32) | mailbox onion public key (32)
    | checksum = BLAKE2b-32(profile ‖ mailbox, person="nyth-contact-id") (4)

Text form: ``nyth1`` followed by the lowercase RFC 4648 base32 of those 68 bytes, without
padding (109 characters, 114 in all). Decoding accepts upper case and surrounding
whitespace, and refuses a non-canonical encoding, a wrong checksum (a typo is caught with
probability 1 - 2^-32 instead of reaching a stranger) and keys that are not valid
ed25519 points.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

import nacl.bindings

from nyth.errors import DecodeError
from nyth.proto.identity import PUBLIC_KEY_SIZE, onion_from_public_key

PREFIX = "nyth1"
CHECKSUM_SIZE = 4
RAW_SIZE = 2 * PUBLIC_KEY_SIZE + CHECKSUM_SIZE
TEXT_LENGTH = len(PREFIX) + (RAW_SIZE * 8 + 4) // 5  # 114
_PERSON = b"nyth-contact-id"


def _checksum(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=CHECKSUM_SIZE, person=_PERSON).digest()


def _check_point(key: bytes, what: str) -> None:
    if len(key) != PUBLIC_KEY_SIZE:
        raise DecodeError(f"{what} key must be {PUBLIC_KEY_SIZE} bytes, got {len(key)}")
    if not nacl.bindings.crypto_core_ed25519_is_valid_point(key):
        raise DecodeError(f"{what} key is not a valid ed25519 point")


@dataclass(frozen=True)
class ContactId:
    profile_public_key: bytes
    mailbox_public_key: bytes

    def __post_init__(self) -> None:
        _check_point(self.profile_public_key, "profile")
        _check_point(self.mailbox_public_key, "mailbox")

    @property
    def onion(self) -> str:
        """The profile's onion service id (no .onion)."""
        return onion_from_public_key(self.profile_public_key)

    @property
    def mailbox_onion(self) -> str:
        return onion_from_public_key(self.mailbox_public_key)

    def to_bytes(self) -> bytes:
        body = self.profile_public_key + self.mailbox_public_key
        return body + _checksum(body)

    def encode(self) -> str:
        text = base64.b32encode(self.to_bytes()).decode("ascii").rstrip("=").lower()
        return PREFIX + text

    def __str__(self) -> str:
        return self.encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> ContactId:
        if len(raw) != RAW_SIZE:
            raise DecodeError(f"contact identifier must be {RAW_SIZE} bytes, got {len(raw)}")
        body, checksum = raw[:-CHECKSUM_SIZE], raw[-CHECKSUM_SIZE:]
        if checksum != _checksum(body):
            raise DecodeError("contact identifier checksum does not match (typo?)")
        return cls(body[:PUBLIC_KEY_SIZE], body[PUBLIC_KEY_SIZE:])

    @classmethod
    def decode(cls, text: str) -> ContactId:
        """Parse the text form; raises DecodeError on any typo, never returns a wrong id."""
        if not isinstance(text, str):
            raise DecodeError("contact identifier must be a string")
        text = text.strip().lower()
        if not text.startswith(PREFIX):
            raise DecodeError(f"contact identifier must start with {PREFIX!r}")
        if len(text) != TEXT_LENGTH:
            raise DecodeError(
                f"contact identifier must be {TEXT_LENGTH} characters, got {len(text)}"
            )
        data = text[len(PREFIX):]
        padded = data.upper() + "=" * (-len(data) % 8)
        try:
            raw = base64.b32decode(padded)
        except (binascii.Error, ValueError):
            raise DecodeError("contact identifier is not valid base32") from None
        ident = cls.from_bytes(raw)
        # The last character carries unused bits: only the canonical spelling is accepted.
        if ident.encode() != text:
            raise DecodeError("contact identifier is not canonically encoded (typo?)")
        return ident
