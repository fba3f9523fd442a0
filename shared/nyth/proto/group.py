"""Groups on untrusted servers: group key, group id, invites and group messages.

A group message is signed by its author, padded to one size and sealed with the group
key, so a server stores BLOB_SIZE-byte blobs it cannot read, attribute or tell apart.

Blob (BLOB_SIZE = 2048 bytes):

    nonce (24) | XSalsa20-Poly1305( inner (2008) ) incl. 16-byte tag

inner:

    version 0x01 (1) | author ed25519 pk (32) | timestamp ms (u64) | n parents (u8, ≤ 8)
    | parents (n × 32) | body length (u16) | body (UTF-8) | signature (64) | zero padding

signature = ed25519 by author over  "nyth-group-msg-v1" | group id (16) | everything
before the signature. Message hash (what `parents` name) =
BLAKE2b-256(group id | signed part | signature, person "nyth-gmsg-hash").

Invite (sent P2P):

    magic "NYTHINV1" | group key (32) | name length (u8) | name (UTF-8, ≤ 64 bytes)
    | n servers (u8, 1..8) | n × signed server bundle (164 each)

group id = BLAKE2b with a 16-byte digest (digest_size=16, not a truncation) of
(key | sorted server onion public keys), person "nyth-group-id"; it names the group
locally and binds signatures to it, and is never sent to a server.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import nacl.bindings
import nacl.exceptions

from nyth.errors import AuthenticationError, DecodeError
from nyth.proto.bundle import BUNDLE_SIZE, ServerBundle
from nyth.proto.identity import SIGNATURE_SIZE, Identity, verify_signature

BLOB_SIZE = 2048
KEY_SIZE = 32
GROUP_ID_SIZE = 16
HASH_SIZE = 32
MAX_PARENTS = 8
_NONCE = nacl.bindings.crypto_secretbox_NONCEBYTES
_TAG = nacl.bindings.crypto_secretbox_MACBYTES
INNER_SIZE = BLOB_SIZE - _NONCE - _TAG
_HEAD = struct.Struct(">B32sQB")
_VERSION = 1
MAX_BODY_BYTES = INNER_SIZE - _HEAD.size - MAX_PARENTS * HASH_SIZE - 2 - SIGNATURE_SIZE
_SIG_DOMAIN = b"nyth-group-msg-v1"
INVITE_MAGIC = b"NYTHINV1"
MAX_NAME_BYTES = 64
MAX_SERVERS = 8


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates
        raise DecodeError("text is not encodable as UTF-8") from exc


def new_group_key() -> bytes:
    return os.urandom(KEY_SIZE)


def group_id(key: bytes, bundles: Sequence[ServerBundle]) -> bytes:
    if len(key) != KEY_SIZE:
        raise DecodeError("group key must be 32 bytes")
    servers = b"".join(sorted(b.onion_public_key for b in bundles))
    return hashlib.blake2b(key + servers, digest_size=GROUP_ID_SIZE, person=b"nyth-group-id").digest()


@dataclass(frozen=True)
class GroupMessage:
    author: bytes
    timestamp_ms: int
    parents: tuple[bytes, ...]
    body: str
    hash: bytes


def _signed_part(author: bytes, timestamp_ms: int, parents: Sequence[bytes], body: bytes) -> bytes:
    return (_HEAD.pack(_VERSION, author, timestamp_ms, len(parents)) + b"".join(parents)
            + struct.pack(">H", len(body)) + body)


def _message_hash(gid: bytes, signed: bytes, signature: bytes) -> bytes:
    return hashlib.blake2b(gid + signed + signature, digest_size=HASH_SIZE,
                           person=b"nyth-gmsg-hash").digest()


def seal_group_message(identity: Identity, key: bytes, gid: bytes, *, timestamp_ms: int,
                       parents: Sequence[bytes], body: str) -> tuple[bytes, GroupMessage]:
    """Build, sign and encrypt one group message; returns (blob, message)."""
    data = _utf8(body)
    if not data or len(data) > MAX_BODY_BYTES:
        raise DecodeError(f"group message body must be 1..{MAX_BODY_BYTES} bytes of UTF-8")
    if len(parents) > MAX_PARENTS or any(len(p) != HASH_SIZE for p in parents):
        raise DecodeError(f"at most {MAX_PARENTS} parents of {HASH_SIZE} bytes each")
    if not 0 <= timestamp_ms < 1 << 63:
        raise DecodeError("timestamp out of range")
    signed = _signed_part(identity.public_key, timestamp_ms, parents, data)
    signature = identity.sign(_SIG_DOMAIN + gid + signed)
    inner = signed + signature
    inner += bytes(INNER_SIZE - len(inner))
    nonce = os.urandom(_NONCE)
    blob = nonce + nacl.bindings.crypto_secretbox(inner, nonce, key)
    message = GroupMessage(identity.public_key, timestamp_ms, tuple(parents), body,
                           _message_hash(gid, signed, signature))
    return blob, message


def open_group_message(key: bytes, gid: bytes, blob: bytes) -> GroupMessage:
    """Trial-decrypt a blob. AuthenticationError: not this group's (the common case)
    or a forged signature; DecodeError: a member sent something malformed."""
    if len(blob) != BLOB_SIZE:
        raise DecodeError(f"group blob must be {BLOB_SIZE} bytes, got {len(blob)}")
    try:
        inner = nacl.bindings.crypto_secretbox_open(blob[_NONCE:], blob[:_NONCE], key)
    except nacl.exceptions.CryptoError as exc:
        raise AuthenticationError("blob is not sealed with this group's key") from exc
    version, author, timestamp_ms, n_parents = _HEAD.unpack_from(inner)
    if version != _VERSION:
        raise DecodeError(f"unknown group message version {version}")
    if n_parents > MAX_PARENTS:
        raise DecodeError("too many parents")
    offset = _HEAD.size
    parents = tuple(inner[offset + i * HASH_SIZE: offset + (i + 1) * HASH_SIZE]
                    for i in range(n_parents))
    offset += n_parents * HASH_SIZE
    (body_len,) = struct.unpack_from(">H", inner, offset)
    offset += 2
    if body_len == 0 or body_len > MAX_BODY_BYTES:
        raise DecodeError("group message body length out of range")
    data = inner[offset: offset + body_len]
    offset += body_len
    signed = inner[:offset]
    signature = inner[offset: offset + SIGNATURE_SIZE]
    if any(inner[offset + SIGNATURE_SIZE:]):
        raise DecodeError("group message padding is not zero")
    verify_signature(author, _SIG_DOMAIN + gid + signed, signature)
    try:
        body = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError("group message body is not UTF-8") from exc
    return GroupMessage(author, timestamp_ms, parents, body, _message_hash(gid, signed, signature))


@dataclass(frozen=True)
class Invite:
    name: str
    key: bytes = field(repr=False)  # the group key: never in a log line or a traceback
    bundles: tuple[bytes, ...]  # signed server bundles, verified on decode

    @property
    def servers(self) -> list[ServerBundle]:
        return [ServerBundle.verify(b) for b in self.bundles]

    @property
    def group_id(self) -> bytes:
        return group_id(self.key, self.servers)

    def encode(self) -> bytes:
        name = _utf8(self.name)
        if len(name) > MAX_NAME_BYTES:
            raise DecodeError(f"group name is longer than {MAX_NAME_BYTES} bytes")
        if len(self.key) != KEY_SIZE or any(len(b) != BUNDLE_SIZE for b in self.bundles):
            raise DecodeError("invite key or a server bundle has the wrong size")
        if not 1 <= len(self.bundles) <= MAX_SERVERS:
            raise DecodeError(f"a group needs 1..{MAX_SERVERS} servers")
        return (INVITE_MAGIC + self.key + bytes([len(name)]) + name + bytes([len(self.bundles)])
                + b"".join(self.bundles))

    @classmethod
    def decode(cls, data: bytes) -> Invite:
        if not data.startswith(INVITE_MAGIC) or len(data) < len(INVITE_MAGIC) + KEY_SIZE + 2:
            raise DecodeError("not a Nyth group invite")
        offset = len(INVITE_MAGIC)
        key = data[offset: offset + KEY_SIZE]
        offset += KEY_SIZE
        name_len = data[offset]
        offset += 1
        if name_len > MAX_NAME_BYTES or len(data) < offset + name_len + 1:
            raise DecodeError("invite name length out of range")
        try:
            name = data[offset: offset + name_len].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError("invite name is not UTF-8") from exc
        offset += name_len
        count = data[offset]
        offset += 1
        if not 1 <= count <= MAX_SERVERS or len(data) != offset + count * BUNDLE_SIZE:
            raise DecodeError("invite server list is malformed")
        bundles = tuple(data[offset + i * BUNDLE_SIZE: offset + (i + 1) * BUNDLE_SIZE]
                        for i in range(count))
        for bundle in bundles:
            ServerBundle.verify(bundle)
        return cls(name, key, bundles)
