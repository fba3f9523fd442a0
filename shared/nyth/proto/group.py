"""Groups on untrusted servers: group key, group id, invites and group messages.

A group message is signed by its author, padded to one size and sealed with the group
key, so a server stores BLOB_SIZE-byte blobs it cannot read, attribute or tell apart.

Blob (BLOB_SIZE = 2048 bytes):

    nonce (24) | XSalsa20-Poly1305( inner (2008) ) incl. 16-byte tag

inner = wire | zero padding to 2008 bytes, where *wire* = signed part | signature (64):

    v1 (TEXT only):  0x01 | author ed25519 pk (32) | timestamp ms (u64) | n parents (u8, ≤ 8)
                     | parents (n × 32) | body length (u16, 1..1644) | body (UTF-8)
    v2 (any kind):   0x02 | kind (u8) | author (32) | timestamp ms (u64) | n parents (u8, ≤ 8)
                     | parents (n × 32) | body length (u16, ≤ 1643) | body

v2 kinds (GroupKind): TEXT = 1 (body UTF-8, 1..1643 bytes), MOVE = 2 (body a Move, below),
DIRECTORY = 3 (body a chunk of a discovery index's directory, nyth.proto.discovery; only
the index's public directory group uses it). Kind 0 is refused; other kinds are kept as
opaque DAG nodes (a later version's control messages must not look like gaps to this
one): body "", `kind` the number; `data` always holds the raw body. Text is sealed
as v1, so clients that know only v1 keep reading it; only control messages use v2.

signature = ed25519 by author over  "nyth-group-msg-v1" | group id (16) | signed part. Message
hash (what `parents` name) = BLAKE2b-256(group id | signed part | signature, person
"nyth-gmsg-hash"). The version (and kind) byte is inside the signed part, so a v1 and a
v2 encoding are different messages with different hashes. The wire form is what members
hand each other P2P (nyth.proto.group_sync): `decode_wire` verifies it, `seal_wire`
re-seals it into a blob.

Move (body of a MOVE message; the group's owner names its new servers):

    epoch (u32, ≥ 1) | n servers (u8, 1..8) | n × (length (u8) | signed server bundle)

a bundle being v1 (164 bytes) or v2 (165: a server that prices its tokens), so at most
4 + 1 + 8 × 166 = 1333 bytes ≤ 1643. Server onions must be distinct. Who may move and
which move wins is nyth.proto.group_control's business.

Invite v1 (sent P2P, still accepted; it carries v1 bundles only):

    magic "NYTHINV1" | group key (32) | name length (u8) | name (UTF-8, ≤ 64 bytes)
    | n servers (u8, 1..8) | n × signed v1 server bundle (164 each)

Invite v2:

    magic "NYTHINV2" | group key (32) | owner ed25519 pk (32) | epoch (u32)
    | name length (u8) | name (UTF-8, ≤ 64 bytes) | n servers (u8, 1..8)
    | n × (length (u8) | signed server bundle, v1 or v2; distinct onions)

at most 8 + 32 + 32 + 4 + 1 + 64 + 1 + 8 × 166 = 1470 bytes, inside one P2P message body
(p2p.MAX_BODY = 2000; 11 bundles would still fit, 8 is the group limit). `epoch` and the
servers are the inviter's current ones (0 and the creation servers until a move).

Group id (16 bytes, BLAKE2b with digest_size=16, not a truncation). It names the group
locally and in P2P sync messages, binds signatures and hashes to the group, and is never
sent to a server:

    v1: BLAKE2b-128(key | sorted server onion public keys, person "nyth-group-id")
    v2: BLAKE2b-128(key | owner ed25519 pk,                person "nyth-group-id2")

A v2 id is fixed at creation and survives moves (the DAG continues across them). It binds
the owner: an invite naming another owner is another group, whose id no member's
signature covers, so an inviter cannot hand someone the real group with itself as owner.
A v1 group's id binds its creation servers and its owner is unknown: it can never move.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import nacl.bindings

# PyNaCl's own cffi handle on libsodium (what nacl.bindings wraps), for trial_open.
from nacl._sodium import ffi as _ffi
from nacl._sodium import lib as _lib

from nyth.errors import AuthenticationError, DecodeError
from nyth.proto.bundle import BUNDLE_SIZE_V1, BUNDLE_SIZES, MAX_BUNDLE_SIZE, ServerBundle
from nyth.proto.identity import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, Identity, verify_signature

BLOB_SIZE = 2048
KEY_SIZE = 32
GROUP_ID_SIZE = 16
HASH_SIZE = 32
MAX_PARENTS = 8
_NONCE = nacl.bindings.crypto_secretbox_NONCEBYTES
_TAG = nacl.bindings.crypto_secretbox_MACBYTES
INNER_SIZE = BLOB_SIZE - _NONCE - _TAG
# The longest wire form (signed part + signature): the inner plaintext without padding.
MAX_WIRE_SIZE = INNER_SIZE
_HEAD = struct.Struct(">B32sQB")
_V2_HEAD = struct.Struct(">BB32sQB")
_VERSION = 1
_VERSION_2 = 2
MAX_BODY_BYTES = INNER_SIZE - _HEAD.size - MAX_PARENTS * HASH_SIZE - 2 - SIGNATURE_SIZE
MAX_BODY_BYTES_V2 = MAX_BODY_BYTES - 1  # the kind byte
_SIG_DOMAIN = b"nyth-group-msg-v1"
INVITE_MAGIC = b"NYTHINV1"
INVITE_MAGIC_V2 = b"NYTHINV2"
MAX_NAME_BYTES = 64
MAX_SERVERS = 8
MAX_EPOCH = (1 << 32) - 1
_MOVE_HEAD = struct.Struct(">IB")
MAX_MOVE_BYTES = _MOVE_HEAD.size + MAX_SERVERS * (1 + MAX_BUNDLE_SIZE)
_INVITE_V2_FIXED = len(INVITE_MAGIC_V2) + KEY_SIZE + PUBLIC_KEY_SIZE + 4 + 1 + 1
MAX_INVITE_V2_BYTES = _INVITE_V2_FIXED + MAX_NAME_BYTES + MAX_SERVERS * (1 + MAX_BUNDLE_SIZE)


class GroupKind(enum.IntEnum):
    TEXT = 1
    MOVE = 2
    # A chunk of a discovery index's signed directory (nyth.proto.discovery), posted by
    # the index into its public directory group; ordinary groups keep it as an opaque node.
    DIRECTORY = 3


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates
        raise DecodeError("text is not encodable as UTF-8") from exc


def new_group_key() -> bytes:
    return os.urandom(KEY_SIZE)


def group_id(key: bytes, bundles: Sequence[ServerBundle]) -> bytes:
    """A v1 group's id: bound to its creation servers."""
    if len(key) != KEY_SIZE:
        raise DecodeError("group key must be 32 bytes")
    servers = b"".join(sorted(b.onion_public_key for b in bundles))
    return hashlib.blake2b(key + servers, digest_size=GROUP_ID_SIZE, person=b"nyth-group-id").digest()


def genesis_group_id(key: bytes, owner: bytes) -> bytes:
    """A v2 group's id: fixed at creation, bound to its owner, independent of servers."""
    if len(key) != KEY_SIZE or len(owner) != PUBLIC_KEY_SIZE:
        raise DecodeError("group key and owner key must be 32 bytes")
    return hashlib.blake2b(key + owner, digest_size=GROUP_ID_SIZE,
                           person=b"nyth-group-id2").digest()


def verify_server_set(raw: Sequence[bytes], what: str = "a group") -> list[ServerBundle]:
    """Verify a v2 group's (or a move's) signed bundles: 1..MAX_SERVERS, each valid, no
    onion twice."""
    if not 1 <= len(raw) <= MAX_SERVERS:
        raise DecodeError(f"{what} needs 1..{MAX_SERVERS} servers")
    if any(len(b) not in BUNDLE_SIZES for b in raw):
        raise DecodeError(f"a server bundle in {what} has the wrong size")
    bundles = [ServerBundle.verify(b) for b in raw]
    if len({b.onion_public_key for b in bundles}) != len(bundles):
        raise DecodeError(f"{what} names a server twice")
    return bundles


@dataclass(frozen=True)
class Move:
    """The owner's order to use other servers from this epoch on (see group_control)."""

    epoch: int
    bundles: tuple[bytes, ...]  # signed server bundles, verified on decode

    @property
    def servers(self) -> list[ServerBundle]:
        return [ServerBundle.verify(b) for b in self.bundles]

    def encode(self) -> bytes:
        if not 1 <= self.epoch <= MAX_EPOCH:
            raise DecodeError(f"move epoch must be 1..{MAX_EPOCH}")
        verify_server_set(self.bundles, "a move")
        return _MOVE_HEAD.pack(self.epoch, len(self.bundles)) + _prefixed(self.bundles)

    @classmethod
    def decode(cls, data: bytes) -> Move:
        if len(data) < _MOVE_HEAD.size:
            raise DecodeError("move is truncated")
        epoch, count = _MOVE_HEAD.unpack_from(data)
        if epoch == 0:
            raise DecodeError("move epoch must be at least 1")
        if not 1 <= count <= MAX_SERVERS:
            raise DecodeError("move server list is malformed")
        bundles, end = _unprefixed(data, _MOVE_HEAD.size, count, "move")
        if end != len(data):
            raise DecodeError("bytes after the move's server list")
        verify_server_set(bundles, "a move")
        return cls(epoch, bundles)


@dataclass(frozen=True)
class GroupMessage:
    author: bytes
    timestamp_ms: int
    parents: tuple[bytes, ...]
    body: str  # the text of a TEXT message; "" for other kinds
    hash: bytes
    kind: int = GroupKind.TEXT  # a GroupKind, or the number of a kind this version does not know
    move: Move | None = None  # set for MOVE messages
    # signed part | signature, as served to members P2P; b"" for a message rebuilt from
    # storage that did not keep it. The hash covers it, so it takes no part in equality.
    wire: bytes = field(default=b"", repr=False, compare=False)
    # The raw body of any kind (the UTF-8 of a text, a Move, a directory chunk…).
    data: bytes = field(default=b"", repr=False, compare=False)


def _signed_part(version: int, kind: int, author: bytes, timestamp_ms: int,
                 parents: Sequence[bytes], body: bytes) -> bytes:
    head = (_HEAD.pack(version, author, timestamp_ms, len(parents)) if version == _VERSION
            else _V2_HEAD.pack(version, kind, author, timestamp_ms, len(parents)))
    return head + b"".join(parents) + struct.pack(">H", len(body)) + body


def _message_hash(gid: bytes, signed: bytes, signature: bytes) -> bytes:
    return hashlib.blake2b(gid + signed + signature, digest_size=HASH_SIZE,
                           person=b"nyth-gmsg-hash").digest()


def _encrypt(key: bytes, inner: bytes) -> bytes:
    nonce = os.urandom(_NONCE)
    return nonce + nacl.bindings.crypto_secretbox(inner, nonce, key)


def _seal(identity: Identity, key: bytes, gid: bytes, *, version: int, kind: int,
          timestamp_ms: int, parents: Sequence[bytes], data: bytes) -> tuple[bytes, GroupMessage]:
    if len(parents) > MAX_PARENTS or any(len(p) != HASH_SIZE for p in parents):
        raise DecodeError(f"at most {MAX_PARENTS} parents of {HASH_SIZE} bytes each")
    if not 0 <= timestamp_ms < 1 << 63:
        raise DecodeError("timestamp out of range")
    signed = _signed_part(version, kind, identity.public_key, timestamp_ms, parents, data)
    signature = identity.sign(_SIG_DOMAIN + gid + signed)
    wire = signed + signature
    blob = seal_wire(key, wire)
    return blob, _parse(gid, wire, padded=False)


def seal_group_message(identity: Identity, key: bytes, gid: bytes, *, timestamp_ms: int,
                       parents: Sequence[bytes], body: str) -> tuple[bytes, GroupMessage]:
    """Build, sign and encrypt one text message (v1, readable by every version);
    returns (blob, message)."""
    data = _utf8(body)
    if not data or len(data) > MAX_BODY_BYTES:
        raise DecodeError(f"group message body must be 1..{MAX_BODY_BYTES} bytes of UTF-8")
    return _seal(identity, key, gid, version=_VERSION, kind=GroupKind.TEXT,
                 timestamp_ms=timestamp_ms, parents=parents, data=data)


def seal_group_move(identity: Identity, key: bytes, gid: bytes, *, timestamp_ms: int,
                    parents: Sequence[bytes], move: Move) -> tuple[bytes, GroupMessage]:
    """Build, sign and encrypt a MOVE (v2). Only the owner's is followed (group_control);
    the mover posts it to the old and the new servers."""
    return _seal(identity, key, gid, version=_VERSION_2, kind=GroupKind.MOVE,
                 timestamp_ms=timestamp_ms, parents=parents, data=move.encode())


def seal_group_data(identity: Identity, key: bytes, gid: bytes, *, kind: GroupKind,
                    timestamp_ms: int, parents: Sequence[bytes],
                    data: bytes) -> tuple[bytes, GroupMessage]:
    """Build, sign and encrypt a v2 message of a binary kind (DIRECTORY)."""
    if kind in (GroupKind.TEXT, GroupKind.MOVE):
        raise ValueError("text and moves have their own sealing functions")
    if len(data) > MAX_BODY_BYTES_V2:
        raise DecodeError(f"a group message body is at most {MAX_BODY_BYTES_V2} bytes")
    return _seal(identity, key, gid, version=_VERSION_2, kind=kind,
                 timestamp_ms=timestamp_ms, parents=parents, data=data)


def seal_wire(key: bytes, wire: bytes) -> bytes:
    """Seal a message's wire form (GroupMessage.wire) into a fresh blob: the same message
    (same hash) under a new nonce, for reposting it or keeping it as a server would."""
    if not 0 < len(wire) <= MAX_WIRE_SIZE:
        raise DecodeError(f"a message's wire form is 1..{MAX_WIRE_SIZE} bytes")
    return _encrypt(key, wire + bytes(INNER_SIZE - len(wire)))


def decode_wire(gid: bytes, wire: bytes) -> GroupMessage:
    """Check a message's wire form (from a member, P2P): exact length, fields, signature
    under this group id. DecodeError / AuthenticationError as for open_group_message."""
    if len(wire) > MAX_WIRE_SIZE:
        raise DecodeError(f"a message's wire form is at most {MAX_WIRE_SIZE} bytes")
    return _parse(gid, wire, padded=False)


def open_group_message(key: bytes, gid: bytes, blob: bytes) -> GroupMessage:
    """Trial-decrypt a blob. AuthenticationError: not this group's (the common case)
    or a forged signature; DecodeError: a member sent something malformed."""
    found = trial_open((key,), blob)
    if found is None:
        raise AuthenticationError("blob is not sealed with this group's key")
    return open_inner(gid, found[1])


def trial_open(keys: Sequence[bytes], blob: bytes, start: int = 0) -> tuple[int, bytes] | None:
    """Trial-decrypt one blob with several groups' keys, from keys[start] on: the index of
    the first key that opens it and the plaintext (`open_inner` checks and parses it), or
    None when none does (the common case: every member downloads every blob of a server
    and holds few of its groups).

    The same XSalsa20-Poly1305 open as nacl.bindings.crypto_secretbox_open_easy, but the
    blob is split and the output buffer allocated once per blob, not once per key: that
    binding's copies and checks cost more than a failing MAC check itself
    (docs/busy-servers.md).
    """
    if len(blob) != BLOB_SIZE:
        raise DecodeError(f"group blob must be {BLOB_SIZE} bytes, got {len(blob)}")
    nonce, box = blob[:_NONCE], blob[_NONCE:]
    out = _ffi.new("unsigned char[]", INNER_SIZE)
    for index in range(start, len(keys)):
        key = keys[index]
        # libsodium reads KEY_SIZE bytes from the pointer whatever the object's length.
        if len(key) != KEY_SIZE:
            raise ValueError(f"a group key is {KEY_SIZE} bytes")
        if _lib.crypto_secretbox_open_easy(out, box, len(box), nonce, key) == 0:
            return index, _ffi.buffer(out, INNER_SIZE)[:]
    return None


def open_inner(gid: bytes, inner: bytes) -> GroupMessage:
    """The message in a blob's plaintext (from trial_open): DecodeError if malformed,
    AuthenticationError if its signature does not verify under this group id."""
    if len(inner) != INNER_SIZE:
        raise DecodeError(f"a blob's plaintext is {INNER_SIZE} bytes")
    return _parse(gid, inner, padded=True)


def _parse(gid: bytes, data: bytes, *, padded: bool) -> GroupMessage:
    """Parse signed part | signature | (zero padding if padded, else nothing)."""
    if not data:
        raise DecodeError("empty group message")
    version = data[0]
    if version == _VERSION:
        if len(data) < _HEAD.size:
            raise DecodeError("group message header truncated")
        _v, author, timestamp_ms, n_parents = _HEAD.unpack_from(data)
        kind, offset, max_body = int(GroupKind.TEXT), _HEAD.size, MAX_BODY_BYTES
    elif version == _VERSION_2:
        if len(data) < _V2_HEAD.size:
            raise DecodeError("group message header truncated")
        _v, kind, author, timestamp_ms, n_parents = _V2_HEAD.unpack_from(data)
        if kind == 0:
            raise DecodeError("group message kind 0 is reserved")
        offset, max_body = _V2_HEAD.size, MAX_BODY_BYTES_V2
    else:
        raise DecodeError(f"unknown group message version {version}")
    if n_parents > MAX_PARENTS:
        raise DecodeError("too many parents")
    if len(data) < offset + n_parents * HASH_SIZE + 2:
        raise DecodeError("group message truncated")
    parents = tuple(data[offset + i * HASH_SIZE: offset + (i + 1) * HASH_SIZE]
                    for i in range(n_parents))
    offset += n_parents * HASH_SIZE
    (body_len,) = struct.unpack_from(">H", data, offset)
    offset += 2
    if body_len > max_body or (kind == GroupKind.TEXT and body_len == 0):
        raise DecodeError("group message body length out of range")
    if len(data) < offset + body_len + SIGNATURE_SIZE:
        raise DecodeError("group message truncated")
    body = data[offset: offset + body_len]
    offset += body_len
    signed = data[:offset]
    signature = data[offset: offset + SIGNATURE_SIZE]
    rest = data[offset + SIGNATURE_SIZE:]
    if padded and any(rest):
        raise DecodeError("group message padding is not zero")
    if not padded and rest:
        raise DecodeError("bytes after the group message's signature")
    verify_signature(author, _SIG_DOMAIN + gid + signed, signature)
    text, move = "", None
    if kind == GroupKind.TEXT:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError("group message body is not UTF-8") from exc
    elif kind == GroupKind.MOVE:
        move = Move.decode(body)
    with contextlib.suppress(ValueError):
        kind = GroupKind(kind)
    return GroupMessage(author, timestamp_ms, parents, text, _message_hash(gid, signed, signature),
                        kind, move, signed + signature, bytes(body))


@dataclass(frozen=True)
class Invite:
    name: str
    key: bytes = field(repr=False)  # the group key: never in a log line or a traceback
    bundles: tuple[bytes, ...]  # signed server bundles, verified on decode
    owner: bytes | None = None  # v2: the owner's (creator's) ed25519 key; None: a v1 invite
    epoch: int = 0  # v2: the epoch of these servers (0 until the group first moves)

    @classmethod
    def create(cls, name: str, owner: bytes, bundles: Sequence[bytes]) -> Invite:
        """A new v2 group owned by `owner` (the creator's key), with a fresh key."""
        invite = cls(name, new_group_key(), tuple(bundles), owner, 0)
        invite.encode()  # validates the name, the servers and the owner key
        return invite

    @property
    def version(self) -> int:
        return 1 if self.owner is None else 2

    @property
    def servers(self) -> list[ServerBundle]:
        return [ServerBundle.verify(b) for b in self.bundles]

    @property
    def group_id(self) -> bytes:
        if self.owner is None:
            return group_id(self.key, self.servers)
        return genesis_group_id(self.key, self.owner)

    def encode(self) -> bytes:
        name = _utf8(self.name)
        if len(name) > MAX_NAME_BYTES:
            raise DecodeError(f"group name is longer than {MAX_NAME_BYTES} bytes")
        if len(self.key) != KEY_SIZE:
            raise DecodeError("invite key has the wrong size")
        if not 1 <= len(self.bundles) <= MAX_SERVERS:
            raise DecodeError(f"a group needs 1..{MAX_SERVERS} servers")
        head = bytes([len(name)]) + name + bytes([len(self.bundles)])
        if self.owner is None:
            if self.epoch != 0:
                raise DecodeError("a v1 invite (no owner) has no epoch")
            if any(len(b) != BUNDLE_SIZE_V1 for b in self.bundles):
                raise DecodeError("a v1 invite carries only v1 server bundles "
                                  f"({BUNDLE_SIZE_V1} bytes); use a v2 invite")
            return INVITE_MAGIC + self.key + head + b"".join(self.bundles)
        _check_owner(self.owner)
        if not 0 <= self.epoch <= MAX_EPOCH:
            raise DecodeError(f"invite epoch must be 0..{MAX_EPOCH}")
        verify_server_set(self.bundles, "a group")
        return (INVITE_MAGIC_V2 + self.key + self.owner + struct.pack(">I", self.epoch) + head
                + _prefixed(self.bundles))

    @classmethod
    def decode(cls, data: bytes) -> Invite:
        if data.startswith(INVITE_MAGIC_V2):
            fixed = len(INVITE_MAGIC_V2) + KEY_SIZE + PUBLIC_KEY_SIZE + 4
            if len(data) < fixed + 2:
                raise DecodeError("not a Nyth group invite")
            key = data[len(INVITE_MAGIC_V2): len(INVITE_MAGIC_V2) + KEY_SIZE]
            owner = data[len(INVITE_MAGIC_V2) + KEY_SIZE: fixed - 4]
            (epoch,) = struct.unpack_from(">I", data, fixed - 4)
            _check_owner(owner)
            name, bundles = _decode_invite_tail(data, fixed, prefixed=True)
            verify_server_set(bundles, "a group")
            return cls(name, key, bundles, owner, epoch)
        if not data.startswith(INVITE_MAGIC) or len(data) < len(INVITE_MAGIC) + KEY_SIZE + 2:
            raise DecodeError("not a Nyth group invite")
        key = data[len(INVITE_MAGIC): len(INVITE_MAGIC) + KEY_SIZE]
        name, bundles = _decode_invite_tail(data, len(INVITE_MAGIC) + KEY_SIZE, prefixed=False)
        for bundle in bundles:  # 164 bytes each: only a v1 bundle verifies
            ServerBundle.verify(bundle)
        return cls(name, key, bundles)


def _check_owner(owner: bytes) -> None:
    if len(owner) != PUBLIC_KEY_SIZE or not nacl.bindings.crypto_core_ed25519_is_valid_point(owner):
        raise DecodeError("invite owner is not a valid ed25519 public key")


def _prefixed(bundles: Sequence[bytes]) -> bytes:
    """Each bundle as length (u8) | bytes: v1 and v2 bundles differ in size."""
    return b"".join(bytes([len(b)]) + b for b in bundles)


def _unprefixed(data: bytes, offset: int, count: int,
                what: str) -> tuple[tuple[bytes, ...], int]:
    """count length-prefixed bundles from offset; (bundles, the offset after them). Only
    the sizes of known bundle versions are accepted, so nothing is sliced at random."""
    bundles = []
    for _ in range(count):
        if offset >= len(data) or data[offset] not in BUNDLE_SIZES:
            raise DecodeError(f"{what} server list is malformed")
        size = data[offset]
        bundle = data[offset + 1: offset + 1 + size]
        if len(bundle) != size:
            raise DecodeError(f"{what} server list is truncated")
        bundles.append(bundle)
        offset += 1 + size
    return tuple(bundles), offset


def _decode_invite_tail(data: bytes, offset: int, *,
                        prefixed: bool) -> tuple[str, tuple[bytes, ...]]:
    """name length | name | n servers | bundles, from offset to the very end (bundles
    length-prefixed in v2, 164 bytes each in v1)."""
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
    if not 1 <= count <= MAX_SERVERS:
        raise DecodeError("invite server list is malformed")
    if prefixed:
        bundles, end = _unprefixed(data, offset, count, "invite")
        if end != len(data):
            raise DecodeError("bytes after the invite's server list")
        return name, bundles
    if len(data) != offset + count * BUNDLE_SIZE_V1:
        raise DecodeError("invite server list is malformed")
    return name, tuple(data[offset + i * BUNDLE_SIZE_V1: offset + (i + 1) * BUNDLE_SIZE_V1]
                       for i in range(count))
