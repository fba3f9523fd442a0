"""Discovery: adverts, the index's bundle, the signed directory and its chunks.

A server (group server or mailbox) asks a discovery index to list it with an *advert*,
signed by the server's own onion key, so nobody can advertise a server that is not
theirs, and bound to one index, so an advert given to one index cannot be replayed to
another. The index measures every listed server itself (nyth_discovery) and publishes a
*directory*: its measured figures per server, signed by the index's onion key. Nothing a
server declares about itself is in the directory except its signed bundle (its limits,
which a client checks anyway) and its operator label, shown as the server's claim.

All integers big-endian; times are unix seconds unless named _ms.

Advert (ADVERT_SIZE = 225 bytes):

    magic "NYTHADV1" (8) | kind (u8: 1 group server, 2 mailbox) | server onion key (32)
    | index onion key (32) | SHA-256 of the server's signed bundle (32)
    | operator label (32, UTF-8 zero-padded, no NUL inside, printable)
    | issued at (u64) | expires at (u64) | proof-of-work nonce (u64)
    | ed25519 signature by the server onion key over every byte before it (64)

    proof of work: hashcash (nyth.proto.hashcash), person "nyth-advert-pow", parts: index
    onion key, the advert's bytes before the nonce; bits from the index bundle.
    expires - issued is 1 s .. MAX_ADVERT_LIFETIME.

Index bundle (what a peer pins on first use; 146 + 32 n bytes):

    magic "NYTHIDX1" (8) | index onion key (32) | advert pow bits (u8, ≤ MAX_POW_BITS)
    | directory group key (32) | issued at (u64) | n (u8, 1..8)
    | n × onion key of a group server holding the directory group (32, distinct)
    | signature by the index onion key (64)

    The *directory group* is an ordinary v2 group (nyth.proto.group) whose key is public
    (it is in this bundle) and whose owner is the index: id = genesis_group_id(key, index
    onion key). The index posts its directory there as DIRECTORY messages, so peers can
    read it, and check it, while the index itself is down.

Directory (at most MAX_DIRECTORY_SIZE bytes):

    magic "NYTHDIR1" (8) | index onion key (32) | epoch (u64, rises with every issue)
    | issued at (u64) | expires at (u64) | n entries (u16, ≤ MAX_ENTRIES)
    | n × entry (sorted by server onion key, each onion once)
    | signature by the index onion key (64)

    entry: kind (u8) | bundle length (u16) | the server's signed bundle (a ServerBundle
    for kind 1, a MailboxBundle for kind 2; its onion key names the server)
    | operator label (32) | first seen (u64) | advert expires (u64)
    | probes (u16) | probes answered (u16) | consecutive failures (u16)
    | last probe at (u64, 0: never) | last answer at (u64, 0: never)
    | latency p50 ms (u32) | latency p95 ms (u32)  (NO_LATENCY: no answer yet)
    | audit state (u8: 0 not audited, 1 kept, 2 lost) | audits passed (u16)
    | audit at (u64: the last audit's time; for "lost", when the loss was found)
    | last error length (u8, ≤ MAX_ERROR) | last error (printable ASCII)

    `probes`/`probes answered` count the index's recent window of probes; p50/p95 are
    over the answered ones in it.

Chunk (body of a DIRECTORY group message, and one page of GET /v1/directory):

    epoch (u64) | SHA-256 of the whole signed directory (32) | index (u16) | count (u16)
    | data (1..CHUNK_DATA bytes; every chunk but the last exactly CHUNK_DATA)

    A complete set is the directory: its data joined must hash to the digest and carry
    the chunks' epoch in its header (so an old directory cannot be relabelled newer).

Decoders raise DecodeError with what was wrong; signatures AuthenticationError. Whether a
directory is acceptable *now* (stale, rolled back, another index) is `accept_directory`'s
decision, whose DirectoryRefused says why.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import struct
import time
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from nyth.errors import AuthenticationError, DecodeError, NythError
from nyth.proto import hashcash
from nyth.proto.bundle import BUNDLE_SIZES, ServerBundle
from nyth.proto.group import KEY_SIZE, MAX_BODY_BYTES_V2, MAX_SERVERS, genesis_group_id
from nyth.proto.identity import (
    PUBLIC_KEY_SIZE,
    SIGNATURE_SIZE,
    Identity,
    onion_from_public_key,
    verify_signature,
)
from nyth.proto.mailbox_bundle import MAILBOX_BUNDLE_SIZE, MailboxBundle

ADVERT_MAGIC = b"NYTHADV1"
INDEX_BUNDLE_MAGIC = b"NYTHIDX1"
DIRECTORY_MAGIC = b"NYTHDIR1"
LABEL_SIZE = 32
MAX_ADVERT_LIFETIME = 7 * 24 * 3600
# Clocks differ; an advert or directory issued this far in the future is still taken.
CLOCK_SKEW = 300
MAX_POW_BITS = 28
MAX_ENTRIES = 1000
MAX_ERROR = 80
NO_LATENCY = 0xFFFFFFFF
_POW_PERSON = b"nyth-advert-pow"

_ADVERT_BODY = struct.Struct(">8sB32s32s32s32sQQQ")
ADVERT_SIZE = _ADVERT_BODY.size + SIGNATURE_SIZE
_NONCE_OFFSET = _ADVERT_BODY.size - 8

_INDEX_HEAD = struct.Struct(">8s32sB32sQB")
MIN_INDEX_BUNDLE_SIZE = _INDEX_HEAD.size + PUBLIC_KEY_SIZE + SIGNATURE_SIZE
MAX_INDEX_BUNDLE_SIZE = _INDEX_HEAD.size + MAX_SERVERS * PUBLIC_KEY_SIZE + SIGNATURE_SIZE

_DIR_HEAD = struct.Struct(">8s32sQQQH")
_ENTRY_HEAD = struct.Struct(">BH")
_ENTRY_FIGURES = struct.Struct(">32sQQHHHQQIIBHQB")
MAX_BUNDLE_IN_ENTRY = max(*BUNDLE_SIZES, MAILBOX_BUNDLE_SIZE)
MAX_ENTRY_SIZE = _ENTRY_HEAD.size + MAX_BUNDLE_IN_ENTRY + _ENTRY_FIGURES.size + MAX_ERROR
MAX_DIRECTORY_SIZE = _DIR_HEAD.size + MAX_ENTRIES * MAX_ENTRY_SIZE + SIGNATURE_SIZE

_CHUNK_HEAD = struct.Struct(">Q32sHH")
CHUNK_DATA = 1536
MAX_CHUNK_SIZE = _CHUNK_HEAD.size + CHUNK_DATA
MAX_CHUNKS = -(-MAX_DIRECTORY_SIZE // CHUNK_DATA)
# An index serves its directory in pages of this many chunks (GET /v1/directory): a
# request over Tor costs a round trip of a second or more, so a 1,000-entry directory
# comes in 7 requests instead of 221.
CHUNKS_PER_PAGE = 32
MAX_PAGES = -(-MAX_CHUNKS // CHUNKS_PER_PAGE)
assert MAX_CHUNK_SIZE <= MAX_BODY_BYTES_V2  # a chunk fits one group message


class ServerKind(enum.IntEnum):
    GROUP_SERVER = 1
    MAILBOX = 2

    @property
    def label(self) -> str:
        return "group-server" if self is ServerKind.GROUP_SERVER else "mailbox"

    @classmethod
    def parse(cls, value: str) -> ServerKind:
        for kind in cls:
            if kind.label == value:
                return kind
        raise DecodeError(f"unknown server kind {value!r} (group-server or mailbox)")


class AuditState(enum.IntEnum):
    NOT_AUDITED = 0
    KEPT = 1
    LOST = 2


class DirectoryRefused(NythError):
    """A directory that decodes but must not be used now; the message says why."""


def _kind(value: int) -> ServerKind:
    try:
        return ServerKind(value)
    except ValueError:
        raise DecodeError(f"unknown server kind {value}") from None


def verify_server_bundle(kind: ServerKind, data: bytes) -> ServerBundle | MailboxBundle:
    """A server's signed bundle of the given kind, verified (DecodeError or
    AuthenticationError otherwise)."""
    if kind is ServerKind.GROUP_SERVER:
        return ServerBundle.verify(bytes(data))
    return MailboxBundle.verify(bytes(data))


def bundle_hash(bundle: bytes) -> bytes:
    """What an advert names a bundle by: SHA-256 of its signed bytes (the same hash users
    review pins by, nyth.proto.pinning.bundle_sha256)."""
    return hashlib.sha256(bundle).digest()


def encode_label(label: str) -> bytes:
    """An operator label: printable UTF-8, at most LABEL_SIZE bytes, zero-padded."""
    data = label.encode("utf-8", errors="strict") if label.isprintable() else None
    if data is None or len(data) > LABEL_SIZE:
        raise DecodeError(f"operator label must be printable text of at most {LABEL_SIZE} "
                          "bytes of UTF-8")
    return data + bytes(LABEL_SIZE - len(data))


def decode_label(data: bytes) -> str:
    text = data.rstrip(b"\0")
    if b"\0" in text:
        raise DecodeError("operator label has a NUL inside")
    try:
        label = text.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("operator label is not UTF-8") from None
    if not label.isprintable() or any(unicodedata.category(c) == "Cf" for c in label):
        raise DecodeError("operator label is not printable text")
    return label


def _check_error(text: str) -> bytes:
    # Not encode(errors="replace"): "é" would be written as "?", and decode as another entry.
    data = text.encode("ascii") if text.isascii() else b"\0"
    if len(data) > MAX_ERROR or not all(0x20 <= b < 0x7F for b in data):
        raise DecodeError(f"an entry's last error must be printable ASCII of at most "
                          f"{MAX_ERROR} bytes")
    return data


def short_error(text: str) -> str:
    """Any error text made fit for an entry: printable ASCII, at most MAX_ERROR bytes."""
    clean = "".join(c if 0x20 <= ord(c) < 0x7F else "?" for c in text)
    return clean[:MAX_ERROR]


# -- adverts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Advert:
    kind: ServerKind
    server_key: bytes
    index_key: bytes
    bundle_sha256: bytes
    label: str
    issued_at: int
    expires_at: int
    nonce: int = 0

    def __post_init__(self) -> None:
        if (len(self.server_key), len(self.index_key), len(self.bundle_sha256)) != (32, 32, 32):
            raise DecodeError("advert keys and bundle hash must be 32 bytes")
        if not 0 <= self.issued_at < self.expires_at < 1 << 63:
            raise DecodeError("advert must expire after it is issued")
        if self.expires_at - self.issued_at > MAX_ADVERT_LIFETIME:
            raise DecodeError(f"advert lifetime exceeds {MAX_ADVERT_LIFETIME} s")
        if not 0 <= self.nonce <= hashcash.U64_MAX:
            raise DecodeError("advert nonce must fit in 64 bits")
        encode_label(self.label)

    @property
    def onion(self) -> str:
        return onion_from_public_key(self.server_key)

    def _body(self) -> bytes:
        return _ADVERT_BODY.pack(ADVERT_MAGIC, self.kind, self.server_key, self.index_key,
                                 self.bundle_sha256, encode_label(self.label),
                                 self.issued_at, self.expires_at, self.nonce)

    def pow_ok(self, bits: int) -> bool:
        return hashcash.ok(_pow_prefix(self._body()), self.nonce, bits)

    def sign(self, identity: Identity) -> bytes:
        if identity.public_key != self.server_key:
            raise ValueError("an advert must be signed by the server's own onion key")
        body = self._body()
        return body + identity.sign(body)

    @classmethod
    def decode(cls, data: bytes) -> Advert:
        """Decode and check the signature (by the advertised server's own key)."""
        if len(data) != ADVERT_SIZE:
            raise DecodeError(f"an advert is {ADVERT_SIZE} bytes, got {len(data)}")
        body = bytes(data[:_ADVERT_BODY.size])
        magic, kind, server, index, digest, label, issued, expires, nonce = \
            _ADVERT_BODY.unpack(body)
        if magic != ADVERT_MAGIC:
            raise DecodeError("not a Nyth advert")
        advert = cls(_kind(kind), server, index, digest, decode_label(label), issued, expires,
                     nonce)
        try:
            verify_signature(server, body, bytes(data[_ADVERT_BODY.size:]))
        except AuthenticationError:
            raise AuthenticationError(
                f"the advert is not signed by the key of {advert.onion}.onion (a server can "
                "only advertise itself)") from None
        return advert


def _pow_prefix(body: bytes) -> hashlib.blake2b:
    # The index key is inside the body too; naming it first keeps the hashcash convention
    # (the key of the service paid comes first) of nyth.proto.hashcash.
    return hashcash.prefix(_POW_PERSON, body[9 + 32: 9 + 64], body[:_NONCE_OFFSET])


def solve_advert_pow(advert: Advert, bits: int, *, stop: Callable[[], bool] | None = None,
                     deadline: float | None = None) -> Advert:
    """The advert with a nonce meeting `bits` (about 2^bits hashes; PowStopped on stop or
    deadline, both on time.monotonic)."""
    nonce = hashcash.solve(_pow_prefix(advert._body()), bits, 0, stop, deadline,
                           time.monotonic)
    return dataclasses.replace(advert, nonce=nonce)


def check_advert(advert: Advert, *, index_key: bytes, pow_bits: int, now: int) -> None:
    """Everything about a decoded advert an index checks without the network; raises
    DirectoryRefused with the reason. (The bundle it names is checked against what the
    server serves over Tor: nyth_discovery.)"""
    if advert.index_key != index_key:
        raise DirectoryRefused("the advert is for another index")
    if advert.expires_at <= now:
        raise DirectoryRefused(f"the advert expired at {advert.expires_at} (now {now})")
    if advert.issued_at > now + CLOCK_SKEW:
        raise DirectoryRefused(f"the advert is issued in the future ({advert.issued_at}, "
                               f"now {now})")
    if not advert.pow_ok(pow_bits):
        raise DirectoryRefused(f"the advert's proof of work is missing or too weak: this "
                               f"index wants {pow_bits} leading zero bits")


# -- the index's bundle ----------------------------------------------------------------------


@dataclass(frozen=True)
class IndexBundle:
    index_key: bytes
    advert_pow_bits: int
    group_key: bytes = field(repr=False)
    issued_at: int
    directory_servers: tuple[bytes, ...]  # onion keys of the directory group's servers

    def __post_init__(self) -> None:
        if len(self.index_key) != PUBLIC_KEY_SIZE or len(self.group_key) != KEY_SIZE:
            raise DecodeError("index bundle keys must be 32 bytes")
        if not 0 <= self.advert_pow_bits <= MAX_POW_BITS:
            raise DecodeError(f"index bundle pow bits must be 0..{MAX_POW_BITS}")
        if not 0 <= self.issued_at < 1 << 63:
            raise DecodeError("index bundle issue time out of range")
        if not 1 <= len(self.directory_servers) <= MAX_SERVERS:
            raise DecodeError(f"an index names 1..{MAX_SERVERS} directory servers")
        if any(len(k) != PUBLIC_KEY_SIZE for k in self.directory_servers):
            raise DecodeError("directory server keys must be 32 bytes")
        if len(set(self.directory_servers)) != len(self.directory_servers):
            raise DecodeError("the index bundle names a directory server twice")

    @property
    def onion(self) -> str:
        return onion_from_public_key(self.index_key)

    @property
    def directory_onions(self) -> list[str]:
        return [onion_from_public_key(k) for k in self.directory_servers]

    @property
    def directory_group_id(self) -> bytes:
        return genesis_group_id(self.group_key, self.index_key)

    def _body(self) -> bytes:
        return (_INDEX_HEAD.pack(INDEX_BUNDLE_MAGIC, self.index_key, self.advert_pow_bits,
                                 self.group_key, self.issued_at, len(self.directory_servers))
                + b"".join(self.directory_servers))

    def sign(self, identity: Identity) -> bytes:
        if identity.public_key != self.index_key:
            raise ValueError("an index bundle must be signed by the index's onion key")
        body = self._body()
        return body + identity.sign(body)

    @classmethod
    def verify(cls, data: bytes, onion: str | None = None) -> IndexBundle:
        if not isinstance(data, bytes | bytearray):
            raise DecodeError("index bundle must be bytes")
        data = bytes(data)
        if len(data) < MIN_INDEX_BUNDLE_SIZE or len(data) > MAX_INDEX_BUNDLE_SIZE:
            raise DecodeError(f"an index bundle is {MIN_INDEX_BUNDLE_SIZE}.."
                              f"{MAX_INDEX_BUNDLE_SIZE} bytes, got {len(data)}")
        magic, key, bits, group_key, issued, n = _INDEX_HEAD.unpack_from(data)
        if magic != INDEX_BUNDLE_MAGIC:
            raise DecodeError("not a Nyth index bundle")
        end = _INDEX_HEAD.size + n * PUBLIC_KEY_SIZE
        if len(data) != end + SIGNATURE_SIZE:
            raise DecodeError(f"an index bundle naming {n} servers is "
                              f"{end + SIGNATURE_SIZE} bytes, got {len(data)}")
        servers = tuple(data[_INDEX_HEAD.size + i * 32: _INDEX_HEAD.size + (i + 1) * 32]
                        for i in range(n))
        bundle = cls(key, bits, group_key, issued, servers)
        if onion is not None and onion_from_public_key(key) != onion:
            raise DecodeError("index bundle belongs to a different index")
        verify_signature(key, data[:end], data[end:])
        return bundle


# -- the directory ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One server as an index measured it."""

    kind: ServerKind
    bundle: bytes  # the server's signed bundle
    label: str
    first_seen: int
    advert_expires: int
    probes: int = 0
    probes_ok: int = 0
    consecutive_failures: int = 0
    last_probe_at: int = 0
    last_ok_at: int = 0
    latency_p50_ms: int = NO_LATENCY
    latency_p95_ms: int = NO_LATENCY
    audit: AuditState = AuditState.NOT_AUDITED
    audits_passed: int = 0
    audit_at: int = 0
    last_error: str = ""

    def __post_init__(self) -> None:
        self.verified_bundle  # noqa: B018 (raises if the bundle is unusable)
        encode_label(self.label)
        _check_error(self.last_error)
        for name in ("probes", "probes_ok", "consecutive_failures", "audits_passed"):
            if not 0 <= getattr(self, name) <= 0xFFFF:
                raise DecodeError(f"entry {name} out of range")
        if self.probes_ok > self.probes:
            raise DecodeError("entry counts more answers than probes")
        for name in ("first_seen", "advert_expires", "last_probe_at", "last_ok_at", "audit_at"):
            if not 0 <= getattr(self, name) < 1 << 63:
                raise DecodeError(f"entry {name} out of range")
        for name in ("latency_p50_ms", "latency_p95_ms"):
            if not 0 <= getattr(self, name) <= NO_LATENCY:
                raise DecodeError(f"entry {name} out of range")

    @functools.cached_property
    def verified_bundle(self) -> ServerBundle | MailboxBundle:
        # Verified once (at construction), not at every look at the entry's onion.
        return verify_server_bundle(self.kind, self.bundle)

    @property
    def server_key(self) -> bytes:
        return self.verified_bundle.onion_public_key

    @property
    def onion(self) -> str:
        return onion_from_public_key(self.server_key)

    def encode(self) -> bytes:
        error = _check_error(self.last_error)
        return (_ENTRY_HEAD.pack(self.kind, len(self.bundle)) + self.bundle
                + _ENTRY_FIGURES.pack(encode_label(self.label), self.first_seen,
                                      self.advert_expires, self.probes, self.probes_ok,
                                      self.consecutive_failures, self.last_probe_at,
                                      self.last_ok_at, self.latency_p50_ms,
                                      self.latency_p95_ms, self.audit, self.audits_passed,
                                      self.audit_at, len(error))
                + error)

    @classmethod
    def decode_from(cls, data: bytes, offset: int) -> tuple[Entry, int]:
        if len(data) < offset + _ENTRY_HEAD.size:
            raise DecodeError("directory entry truncated")
        kind, n = _ENTRY_HEAD.unpack_from(data, offset)
        offset += _ENTRY_HEAD.size
        if n > MAX_BUNDLE_IN_ENTRY or len(data) < offset + n + _ENTRY_FIGURES.size:
            raise DecodeError("directory entry truncated or its bundle too long")
        bundle = bytes(data[offset: offset + n])
        offset += n
        (label, first_seen, advert_expires, probes, ok, failures, last_probe, last_ok, p50,
         p95, audit, passed, audit_at, n_error) = _ENTRY_FIGURES.unpack_from(data, offset)
        offset += _ENTRY_FIGURES.size
        if n_error > MAX_ERROR or len(data) < offset + n_error:
            raise DecodeError("directory entry's last error truncated or too long")
        try:
            error = bytes(data[offset: offset + n_error]).decode("ascii")
        except UnicodeDecodeError:
            raise DecodeError("directory entry's last error is not ASCII") from None
        offset += n_error
        try:
            state = AuditState(audit)
        except ValueError:
            raise DecodeError(f"unknown audit state {audit}") from None
        entry = cls(_kind(kind), bundle, decode_label(label), first_seen, advert_expires,
                    probes, ok, failures, last_probe, last_ok, p50, p95, state, passed,
                    audit_at, error)
        return entry, offset


@dataclass(frozen=True)
class Directory:
    index_key: bytes
    epoch: int
    issued_at: int
    expires_at: int
    entries: tuple[Entry, ...]

    def __post_init__(self) -> None:
        if len(self.index_key) != PUBLIC_KEY_SIZE:
            raise DecodeError("directory index key must be 32 bytes")
        if not 0 <= self.epoch < 1 << 63 or not 0 <= self.issued_at < self.expires_at < 1 << 63:
            raise DecodeError("directory epoch or times out of range")
        if len(self.entries) > MAX_ENTRIES:
            raise DecodeError(f"a directory holds at most {MAX_ENTRIES} entries")
        keys = [e.server_key for e in self.entries]
        if keys != sorted(set(keys)):
            raise DecodeError("directory entries must be sorted by server, each once")

    @property
    def index_onion(self) -> str:
        return onion_from_public_key(self.index_key)

    def _body(self) -> bytes:
        return (_DIR_HEAD.pack(DIRECTORY_MAGIC, self.index_key, self.epoch, self.issued_at,
                               self.expires_at, len(self.entries))
                + b"".join(e.encode() for e in self.entries))

    def sign(self, identity: Identity) -> bytes:
        if identity.public_key != self.index_key:
            raise ValueError("a directory must be signed by its index's onion key")
        body = self._body()
        return body + identity.sign(body)

    @classmethod
    def verify(cls, data: bytes) -> Directory:
        """Decode and check the index's signature (not freshness: accept_directory)."""
        if not SIGNATURE_SIZE + _DIR_HEAD.size <= len(data) <= MAX_DIRECTORY_SIZE:
            raise DecodeError(f"a directory is {_DIR_HEAD.size + SIGNATURE_SIZE}.."
                              f"{MAX_DIRECTORY_SIZE} bytes, got {len(data)}")
        data = bytes(data)
        magic, key, epoch, issued, expires, n = _DIR_HEAD.unpack_from(data)
        if magic != DIRECTORY_MAGIC:
            raise DecodeError("not a Nyth directory")
        # The signature is always the last 64 bytes: check it before the entries, so a
        # forged directory costs one verification, not one per entry's bundle.
        try:
            verify_signature(key, data[:-SIGNATURE_SIZE], data[-SIGNATURE_SIZE:])
        except AuthenticationError:
            raise AuthenticationError("the directory's signature does not verify with its "
                                      "index's key (tampered or forged)") from None
        if n > MAX_ENTRIES:
            raise DecodeError(f"a directory holds at most {MAX_ENTRIES} entries")
        offset, entries = _DIR_HEAD.size, []
        for _ in range(n):
            entry, offset = Entry.decode_from(data, offset)
            entries.append(entry)
        if len(data) != offset + SIGNATURE_SIZE:
            raise DecodeError("bytes between the directory's entries and its signature")
        return cls(key, epoch, issued, expires, tuple(entries))


def accept_directory(data: bytes, *, index_key: bytes, now: int,
                     held_epoch: int | None = None) -> Directory:
    """A directory fit to use now: from this index, signed, not expired, not issued in the
    future, newer than the one held. DirectoryRefused (or DecodeError / Authentication-
    Error for bytes that are not a signed directory) says why not."""
    directory = Directory.verify(data)
    if directory.index_key != index_key:
        raise DirectoryRefused(f"the directory is signed by another index "
                               f"({directory.index_onion}.onion)")
    if directory.expires_at <= now:
        raise DirectoryRefused(f"the directory is stale: epoch {directory.epoch} expired at "
                               f"{directory.expires_at} (now {now})")
    if directory.issued_at > now + CLOCK_SKEW:
        raise DirectoryRefused(f"the directory is issued in the future ({directory.issued_at}, "
                               f"now {now})")
    if held_epoch is not None and directory.epoch < held_epoch:
        raise DirectoryRefused(f"the directory's epoch {directory.epoch} is older than the "
                               f"epoch {held_epoch} already held (a rollback)")
    return directory


# -- chunks ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    epoch: int
    digest: bytes  # SHA-256 of the whole signed directory
    index: int
    count: int
    data: bytes

    def __post_init__(self) -> None:
        if len(self.digest) != 32 or not 0 <= self.epoch < 1 << 63:
            raise DecodeError("chunk digest must be 32 bytes, epoch 63 bits")
        if not 1 <= self.count <= MAX_CHUNKS or not 0 <= self.index < self.count:
            raise DecodeError(f"chunk {self.index} of {self.count} is out of range "
                              f"(at most {MAX_CHUNKS} chunks)")
        last = self.index == self.count - 1
        if not 1 <= len(self.data) <= CHUNK_DATA or (not last and len(self.data) != CHUNK_DATA):
            raise DecodeError(f"chunk {self.index} of {self.count} has {len(self.data)} bytes "
                              f"of data (every chunk but the last has {CHUNK_DATA})")

    def encode(self) -> bytes:
        return _CHUNK_HEAD.pack(self.epoch, self.digest, self.index, self.count) + self.data

    @classmethod
    def decode(cls, data: bytes) -> Chunk:
        if not _CHUNK_HEAD.size < len(data) <= MAX_CHUNK_SIZE:
            raise DecodeError(f"a directory chunk is {_CHUNK_HEAD.size + 1}..{MAX_CHUNK_SIZE} "
                              f"bytes, got {len(data)}")
        epoch, digest, index, count = _CHUNK_HEAD.unpack_from(data)
        return cls(epoch, digest, index, count, bytes(data[_CHUNK_HEAD.size:]))


def _directory_epoch(signed: bytes) -> int:
    """The epoch in a directory's header (unchecked: the digest vouches for the bytes)."""
    if len(signed) < _DIR_HEAD.size or not signed.startswith(DIRECTORY_MAGIC):
        raise DecodeError("the chunks do not make up a Nyth directory")
    return int(_DIR_HEAD.unpack_from(signed)[2])


def page_of(chunks: Sequence[Chunk], page: int) -> list[Chunk]:
    """The chunks on page `page` (0-based) of a directory's pages."""
    return list(chunks[page * CHUNKS_PER_PAGE: (page + 1) * CHUNKS_PER_PAGE])


def page_count(chunks: int) -> int:
    return -(-chunks // CHUNKS_PER_PAGE)


def chunk_directory(signed: bytes, epoch: int) -> list[Chunk]:
    if not 0 < len(signed) <= MAX_DIRECTORY_SIZE:
        raise DecodeError("not a directory's size")
    if _directory_epoch(signed) != epoch:
        raise DecodeError(f"the directory is epoch {_directory_epoch(signed)}, not {epoch}")
    digest = hashlib.sha256(signed).digest()
    parts = [signed[i: i + CHUNK_DATA] for i in range(0, len(signed), CHUNK_DATA)]
    return [Chunk(epoch, digest, i, len(parts), p) for i, p in enumerate(parts)]


class ChunkAssembler:
    """Collects chunks (from pages or a group's messages, in any order, with repeats) and
    gives back the signed directory bytes of a complete set whose hash matches.

    Memory is bounded: at most `max_sets` incomplete sets, newest epochs kept; epochs at
    or below `floor` (what the caller already holds) are ignored.
    """

    def __init__(self, floor: int = -1, max_sets: int = 4) -> None:
        if max_sets < 1:
            raise ValueError("an assembler keeps at least one set")
        self.floor = floor
        self.max_sets = max_sets
        self._sets: dict[tuple[int, bytes], dict[int, Chunk]] = {}

    def add(self, chunk: Chunk) -> bytes | None:
        if chunk.epoch <= self.floor:
            return None
        key = (chunk.epoch, chunk.digest)
        parts = self._sets.get(key)
        if parts is None:
            if len(self._sets) >= self.max_sets:
                oldest = min(self._sets)
                if oldest >= key:
                    return None
                del self._sets[oldest]
            parts = self._sets[key] = {}
        first = next(iter(parts.values()), None)
        if first is not None and first.count != chunk.count:
            raise DecodeError("chunks of one directory disagree about their count")
        parts[chunk.index] = chunk
        if len(parts) < chunk.count:
            return None
        del self._sets[key]
        signed = b"".join(parts[i].data for i in range(chunk.count))
        if hashlib.sha256(signed).digest() != chunk.digest:
            raise DecodeError(f"the chunks of epoch {chunk.epoch} do not hash to the digest "
                              "they name (tampered)")
        if _directory_epoch(signed) != chunk.epoch:
            raise DecodeError(f"chunks labelled epoch {chunk.epoch} carry the directory of "
                              f"epoch {_directory_epoch(signed)}")
        return signed


def assemble(chunks: Iterable[Chunk]) -> bytes:
    """All the chunks of one directory (e.g. every page from an index), joined and checked
    against their digest; DecodeError when incomplete, mixed or tampered."""
    assembler = ChunkAssembler(max_sets=1)
    result, first = None, None
    for chunk in chunks:
        if result is not None:
            raise DecodeError("more chunks than the directory has")
        first = first or chunk
        if (chunk.epoch, chunk.digest) != (first.epoch, first.digest):
            raise DecodeError(f"chunks of more than one directory (epoch {first.epoch} and "
                              f"epoch {chunk.epoch}, or another digest)")
        result = assembler.add(chunk)
    if result is None:
        raise DecodeError("the directory's chunks are incomplete")
    return result


def sorted_entries(entries: Sequence[Entry]) -> tuple[Entry, ...]:
    """Entries in directory order (by server key), keeping the last of duplicates."""
    by_key = {e.server_key: e for e in entries}
    return tuple(by_key[k] for k in sorted(by_key))
