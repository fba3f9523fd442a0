"""Offline messages: a P2P envelope sealed for a recipient, to sit in a mailbox (sans-IO).

Record version 2. The sender takes the recipient's X25519 key C from its verified
contact card (random, new with each card) and, with a fresh ephemeral X25519 key e:

    record = 0x02 (1) | E = e·B (32) | s_box (48) | m_box (record size − 81)

    th0   = "NYTHREC2" | 0x02 | recipient ed25519 pk (32) | C (32) | E (32)
    es    = DH(e, C)                       recipient: DH(c, E)
    k_s   = BLAKE2b-256(es | th0, person="nyth-rec2-sender")
    s_box = secretbox(k_s, nonce 0, sender ed25519 pk)
    ss    = DH(x(sender sk), C)            recipient: DH(c, x(sender pk))
    th    = BLAKE2b-256(th0 | sender ed25519 pk | s_box)
    k_m   = BLAKE2b-256(es | ss | th, person="nyth-rec2-msg")
    m_box = secretbox(k_m, nonce 0, u16 envelope length | envelope | zero padding)

Both keys are used once (a fresh e per record), hence the constant nonce. The sender's
static X25519 key is its identity key converted, as in the P2P 3DH (session.py).

Only the holder of c (the recipient) or of e opens a record. The recipient learns who
sent it: only the sender or the recipient could have computed ss, and the sender's key
is bound in th. But nothing in the record is a signature: the recipient, knowing c, can
make a record that opens exactly as one from any sender (pick an e, compute ss with c),
so a record proves nothing about its sender to a third party — offline messages are as
deniable as the P2P 3DH path. Version 1 (a SealedBox around an ed25519 signature by the
sender) is refused: it was not deniable, and its cards' keys were derived from the
identity.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

import nacl.bindings
import nacl.exceptions
import nacl.public

from nyth.errors import AuthenticationError, DecodeError
from nyth.proto.dh import dh, kdf
from nyth.proto.identity import PUBLIC_KEY_SIZE, Identity, ed25519_public_to_x25519
from nyth.proto.p2p import Envelope, decode_payload

VERSION = 2
MAGIC = b"NYTHREC2"
_KEY = 32
_TAG = nacl.bindings.crypto_secretbox_MACBYTES
_NONCE = bytes(nacl.bindings.crypto_secretbox_NONCEBYTES)
_S_BOX = _TAG + PUBLIC_KEY_SIZE
_M_OFFSET = 1 + _KEY + _S_BOX                      # 81
_LENGTH = struct.Struct(">H")
SEAL_OVERHEAD = _M_OFFSET + _TAG + _LENGTH.size    # 99
# Enough for any P2P message (26-byte header + 2000-byte body): 99 + 2026 ≤ 2304.
RECOMMENDED_RECORD_SIZE = 2304


def max_envelope_size(record_size: int) -> int:
    return record_size - SEAL_OVERHEAD


def _kdf(material: bytes, label: bytes) -> bytes:
    return kdf(material, label)


def _dh(private: bytes, public: bytes) -> bytes:
    return dh(private, public, "record key")


def _th0(recipient_public_key: bytes, card_key: bytes, ephemeral: bytes) -> bytes:
    return MAGIC + bytes([VERSION]) + recipient_public_key + card_key + ephemeral


def _message_key(es: bytes, ss: bytes, th0: bytes, sender_public_key: bytes,
                 s_box: bytes) -> bytes:
    th = hashlib.blake2b(th0 + sender_public_key + s_box, digest_size=32).digest()
    return _kdf(es + ss + th, b"nyth-rec2-msg")


def seal_record(sender: Identity, recipient_public_key: bytes, recipient_x25519: bytes,
                envelope: Envelope, record_size: int) -> bytes:
    data = envelope.encode()
    if len(data) > max_envelope_size(record_size):
        raise DecodeError(f"message too large for this mailbox ({len(data)} bytes, at most "
                          f"{max_envelope_size(record_size)})")
    ephemeral = nacl.public.PrivateKey.generate()
    e_pub = bytes(ephemeral.public_key)
    th0 = _th0(recipient_public_key, recipient_x25519, e_pub)
    es = _dh(bytes(ephemeral), recipient_x25519)
    s_box = nacl.bindings.crypto_secretbox(sender.public_key, _NONCE,
                                           _kdf(es + th0, b"nyth-rec2-sender"))
    ss = _dh(sender.x25519_private(), recipient_x25519)
    key = _message_key(es, ss, th0, sender.public_key, s_box)
    plain = _LENGTH.pack(len(data)) + data
    plain += bytes(record_size - SEAL_OVERHEAD - len(data))
    return bytes([VERSION]) + e_pub + s_box + nacl.bindings.crypto_secretbox(plain, _NONCE, key)


def open_record(recipient_public_key: bytes, card_secrets: Sequence[bytes],
                ciphertext: bytes) -> tuple[bytes, Envelope]:
    """(sender public key, envelope), trying each of our card keys (current and retained).
    AuthenticationError: not for us (under any of them), or not from the sender it names."""
    if isinstance(card_secrets, bytes):
        raise TypeError("card_secrets is a sequence of keys, not one key")
    if len(ciphertext) < SEAL_OVERHEAD:
        raise DecodeError(f"record too short ({len(ciphertext)} bytes)")
    if ciphertext[0] != VERSION:
        raise DecodeError(f"record version {ciphertext[0]} is not supported (only {VERSION}; "
                          "version 1 records, signed by the sender, are refused)")
    e_pub, s_box = ciphertext[1:1 + _KEY], ciphertext[1 + _KEY:_M_OFFSET]
    for secret in card_secrets:
        card_key = nacl.bindings.crypto_scalarmult_base(secret)
        th0 = _th0(recipient_public_key, card_key, e_pub)
        try:
            es = _dh(secret, e_pub)
            sender_pk = nacl.bindings.crypto_secretbox_open(
                s_box, _NONCE, _kdf(es + th0, b"nyth-rec2-sender"))
        except (AuthenticationError, nacl.exceptions.CryptoError):
            continue
        break
    else:
        raise AuthenticationError("record is not sealed for this profile")
    ss = _dh(secret, ed25519_public_to_x25519(sender_pk))
    key = _message_key(es, ss, th0, sender_pk, s_box)
    try:
        plain = nacl.bindings.crypto_secretbox_open(ciphertext[_M_OFFSET:], _NONCE, key)
    except nacl.exceptions.CryptoError as exc:
        raise AuthenticationError("record does not authenticate as from the sender it names") \
            from exc
    (length,) = _LENGTH.unpack_from(plain)
    end = _LENGTH.size + length
    if end > len(plain) or any(plain[end:]):
        raise DecodeError("record length or padding is invalid")
    payload = decode_payload(plain[_LENGTH.size:end])
    if not isinstance(payload, Envelope):
        raise DecodeError("a mailbox record must hold a message, not an ack")
    return sender_pk, payload
