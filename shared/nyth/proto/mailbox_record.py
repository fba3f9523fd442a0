"""Offline messages: a P2P envelope sealed for a recipient, to sit in a mailbox (sans-IO).

The sender takes the recipient's X25519 key from its verified contact card and seals:

    SealedBox(recipient X25519 key, inner)            48 bytes of overhead (ephemeral key, tag)

    inner = magic "NYTHREC1" (8) | sender ed25519 pk (32) | u16 envelope length
            | envelope (the P2P MESSAGE payload, session.p2p layout)
            | ed25519 signature by the sender (64) | zero padding to record size − 48

    signature over  "nyth-mailbox-record-v1" | recipient ed25519 pk | sender pk | envelope

The mailbox sees one fixed-size ciphertext and an FMD tag. Only the recipient can open
it, learns who sent it (the signature binds the sender and the recipient, so a record
cannot be re-addressed to someone else), and deduplicates by message id as for P2P.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import nacl.exceptions
import nacl.public

from nyth.errors import AuthenticationError, DecodeError
from nyth.proto.identity import SIGNATURE_SIZE, Identity, verify_signature
from nyth.proto.p2p import Envelope, decode_payload

MAGIC = b"NYTHREC1"
SEAL_OVERHEAD = 48  # SealedBox: ephemeral X25519 public key (32) + Poly1305 tag (16)
_HEAD = struct.Struct(">8s32sH")
_DOMAIN = b"nyth-mailbox-record-v1"
# Enough for any P2P message (26-byte header + 2000-byte body): 48 + 42 + 2026 + 64 ≤ 2304.
RECOMMENDED_RECORD_SIZE = 2304


def max_envelope_size(record_size: int) -> int:
    return record_size - SEAL_OVERHEAD - _HEAD.size - SIGNATURE_SIZE


def seal_record(sender: Identity, recipient_public_key: bytes, recipient_x25519: bytes,
                envelope: Envelope, record_size: int) -> bytes:
    data = envelope.encode()
    if len(data) > max_envelope_size(record_size):
        raise DecodeError(f"message too large for this mailbox ({len(data)} bytes, at most "
                          f"{max_envelope_size(record_size)})")
    signature = sender.sign(_DOMAIN + recipient_public_key + sender.public_key + data)
    inner = _HEAD.pack(MAGIC, sender.public_key, len(data)) + data + signature
    inner += bytes(record_size - SEAL_OVERHEAD - len(inner))
    box = nacl.public.SealedBox(nacl.public.PublicKey(recipient_x25519))
    return bytes(box.encrypt(inner))


def open_record(recipient_public_key: bytes, card_secrets: Sequence[bytes],
                ciphertext: bytes) -> tuple[bytes, Envelope]:
    """(sender public key, envelope), trying each of our card keys (current and retained).
    AuthenticationError: not for us (under any of them), or forged."""
    if isinstance(card_secrets, bytes):
        raise TypeError("card_secrets is a sequence of keys, not one key")
    inner = None
    for secret in card_secrets:
        try:
            inner = nacl.public.SealedBox(nacl.public.PrivateKey(secret)).decrypt(ciphertext)
            break
        except nacl.exceptions.CryptoError:
            continue
    if inner is None:
        raise AuthenticationError("record is not sealed for this profile")
    if len(inner) < _HEAD.size + SIGNATURE_SIZE:
        raise DecodeError("record too short")
    magic, sender_pk, length = _HEAD.unpack_from(inner)
    if magic != MAGIC:
        raise DecodeError("not a Nyth mailbox record")
    end = _HEAD.size + length
    if end + SIGNATURE_SIZE > len(inner) or any(inner[end + SIGNATURE_SIZE:]):
        raise DecodeError("record length or padding is invalid")
    data = inner[_HEAD.size:end]
    verify_signature(sender_pk, _DOMAIN + recipient_public_key + sender_pk + data,
                     inner[end:end + SIGNATURE_SIZE])
    payload = decode_payload(data)
    if not isinstance(payload, Envelope):
        raise DecodeError("a mailbox record must hold a message, not an ack")
    return sender_pk, payload
