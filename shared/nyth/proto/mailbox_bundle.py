"""Mailbox key bundles and the proof of work a post must carry.

Bundle byte layout (135 bytes, big-endian integers):

    magic "NYTHMBX1" (8) | onion public key (32) | tag size (u16) | record size (u32)
    | max records (u64) | max age seconds (u64) | PoW bits (u8) | issued at (u64, unix s)
    | ed25519 signature by the onion key over all of the above (64)

A record is an FMD tag (tag size bytes) and a ciphertext of exactly record size bytes;
the mailbox keeps at most max records and none older than max age seconds.

Proof of work (hashcash-style): a post (tag, ciphertext, nonce) is accepted only if

    BLAKE2b-256(mailbox onion public key ‖ tag ‖ ciphertext ‖ u64(nonce),
                person="nyth-mailbox-pow")

starts with at least PoW bits zero bits (most significant bit of byte 0 first). Binding
the mailbox key means work done for one mailbox cannot be spent on another. Publishing a
contact card costs the same work, over

    BLAKE2b-256(mailbox onion public key ‖ card ‖ u64(nonce), person="nyth-card-pow")

so that filling the mailbox's card slots with throwaway keys is not free either (the
separate person keeps a card's work from ever counting as a post's, or the reverse).
The hashing, the check and the solver are ``nyth.proto.hashcash``'s.

A bundle may demand at most MAX_POW_BITS: the mailbox is untrusted (anyone's contact id
can name one), and the work is paid by the sender's CPU. The solvers take a stop flag
and a deadline, checked every ``hashcash.POW_CHECK_EVERY`` hashes, so a caller can always
get its thread back.
"""

from __future__ import annotations

import hashlib
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from nyth.errors import DecodeError
from nyth.proto import hashcash
from nyth.proto.identity import (
    SIGNATURE_SIZE,
    Identity,
    normalize_onion,
    onion_from_public_key,
    verify_signature,
)

MAGIC = b"NYTHMBX1"
_BODY = struct.Struct(">8s32sHIQQBQ")
MAILBOX_BUNDLE_SIZE = _BODY.size + SIGNATURE_SIZE
MIN_RECORD_SIZE = 64
MAX_RECORD_SIZE = 1 << 16
# 2^24 ≈ 1.7·10^7 hashes expected: ≈ 30 s of one 2.5 GHz Xeon core (0.4–0.67 M hashes
# per CPU-second in CPython, measured), ≈ 2 minutes on a phone core a quarter as fast. 16× the default
# (20) leaves an operator room to price out a flood; anything above would let a
# hostile mailbox make every message to its users cost a phone many minutes to hours.
MAX_POW_BITS = 24
_POW_PERSON = b"nyth-mailbox-pow"
_CARD_POW_PERSON = b"nyth-card-pow"


@dataclass(frozen=True)
class MailboxBundle:
    onion_public_key: bytes
    tag_size: int
    record_size: int
    max_records: int
    max_age_seconds: int
    pow_bits: int
    issued_at: int

    def __post_init__(self) -> None:
        if len(self.onion_public_key) != 32:
            raise DecodeError("mailbox bundle key must be 32 bytes")
        if not 1 <= self.tag_size <= 0xFFFF:
            raise DecodeError("mailbox bundle tag size out of range")
        if not MIN_RECORD_SIZE <= self.record_size <= MAX_RECORD_SIZE:
            raise DecodeError(f"mailbox bundle record size {self.record_size} out of range")
        if self.max_records < 1 or self.max_age_seconds < 1 or self.issued_at < 0:
            raise DecodeError("mailbox bundle retention values must be positive")
        for value in (self.max_records, self.max_age_seconds, self.issued_at):
            if value >= 1 << 63:
                raise DecodeError("mailbox bundle integer out of range")
        if not 0 <= self.pow_bits <= MAX_POW_BITS:
            raise DecodeError(f"mailbox bundle demands {self.pow_bits}-bit proof of work; "
                              f"Nyth pays at most {MAX_POW_BITS} bits")

    @property
    def onion(self) -> str:
        return onion_from_public_key(self.onion_public_key)

    def _body(self) -> bytes:
        return _BODY.pack(MAGIC, self.onion_public_key, self.tag_size, self.record_size,
                          self.max_records, self.max_age_seconds, self.pow_bits,
                          self.issued_at)

    def sign(self, identity: Identity) -> bytes:
        if identity.public_key != self.onion_public_key:
            raise ValueError("bundle must be signed by the mailbox's own onion key")
        body = self._body()
        return body + identity.sign(body)

    @classmethod
    def verify(cls, data: bytes, onion: str | None = None) -> MailboxBundle:
        if len(data) != MAILBOX_BUNDLE_SIZE:
            raise DecodeError(
                f"mailbox bundle must be {MAILBOX_BUNDLE_SIZE} bytes, got {len(data)}"
            )
        body, signature = data[: _BODY.size], data[_BODY.size:]
        magic, onion_pk, tag_size, record_size, max_records, max_age, bits, issued = (
            _BODY.unpack(body)
        )
        if magic != MAGIC:
            raise DecodeError("not a Nyth mailbox bundle")
        bundle = cls(onion_pk, tag_size, record_size, max_records, max_age, bits, issued)
        if onion is not None and normalize_onion(onion) != bundle.onion:
            raise DecodeError("bundle belongs to a different mailbox")
        verify_signature(onion_pk, body, signature)
        return bundle


def _post_prefix(mailbox_public_key: bytes, tag: bytes, ciphertext: bytes) -> hashlib.blake2b:
    return hashcash.prefix(_POW_PERSON, mailbox_public_key, tag, ciphertext)


def _card_prefix(mailbox_public_key: bytes, card: bytes) -> hashlib.blake2b:
    return hashcash.prefix(_CARD_POW_PERSON, mailbox_public_key, card)


def pow_digest(mailbox_public_key: bytes, tag: bytes, ciphertext: bytes, nonce: int) -> bytes:
    return hashcash.digest(_post_prefix(mailbox_public_key, tag, ciphertext), nonce)


def pow_ok(mailbox_public_key: bytes, tag: bytes, ciphertext: bytes, nonce: int,
           bits: int) -> bool:
    return hashcash.ok(_post_prefix(mailbox_public_key, tag, ciphertext), nonce, bits)


def solve_pow(mailbox_public_key: bytes, tag: bytes, ciphertext: bytes, bits: int,
              start: int = 0, *, stop: Callable[[], bool] | None = None,
              deadline: float | None = None,
              clock: Callable[[], float] = time.monotonic) -> int:
    """The first nonce >= start that makes this post's work reach bits (PowStopped: see
    hashcash.solve; deadline is in clock()'s time)."""
    return hashcash.solve(_post_prefix(mailbox_public_key, tag, ciphertext), bits, start,
                          stop, deadline, clock)


def card_pow_ok(mailbox_public_key: bytes, card: bytes, nonce: int, bits: int) -> bool:
    return hashcash.ok(_card_prefix(mailbox_public_key, card), nonce, bits)


def solve_card_pow(mailbox_public_key: bytes, card: bytes, bits: int, start: int = 0, *,
                   stop: Callable[[], bool] | None = None, deadline: float | None = None,
                   clock: Callable[[], float] = time.monotonic) -> int:
    """The first nonce >= start that makes publishing this card reach bits (PowStopped:
    see hashcash.solve)."""
    return hashcash.solve(_card_prefix(mailbox_public_key, card), bits, start, stop, deadline,
                          clock)
