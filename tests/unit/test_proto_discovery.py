"""Discovery codecs: adverts and their proof of work, the index bundle, the signed
directory and its entries, chunks and their assembly, acceptance of a directory.

Layouts are rebuilt here with struct from docs/protocol.md ("Discovery") and compared
byte for byte; every decoder refuses damaged bytes with DecodeError or
AuthenticationError and nothing else."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import random
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nyth.errors import AuthenticationError, DecodeError
from nyth.proto import hashcash, tokens
from nyth.proto.bundle import BUNDLE_SIZE_V2, ServerBundle
from nyth.proto.discovery import (
    ADVERT_SIZE,
    CHUNK_DATA,
    CLOCK_SKEW,
    LABEL_SIZE,
    MAX_ADVERT_LIFETIME,
    MAX_CHUNK_SIZE,
    MAX_CHUNKS,
    MAX_DIRECTORY_SIZE,
    MAX_ENTRIES,
    MAX_ENTRY_SIZE,
    MAX_ERROR,
    MAX_INDEX_BUNDLE_SIZE,
    MAX_POW_BITS,
    MIN_INDEX_BUNDLE_SIZE,
    NO_LATENCY,
    Advert,
    AuditState,
    Chunk,
    ChunkAssembler,
    Directory,
    DirectoryRefused,
    Entry,
    IndexBundle,
    ServerKind,
    accept_directory,
    assemble,
    check_advert,
    chunk_directory,
    decode_label,
    encode_label,
    short_error,
    solve_advert_pow,
    sorted_entries,
)
from nyth.proto.group import (
    MAX_BODY_BYTES_V2,
    MAX_PARENTS,
    MAX_SERVERS,
    GroupKind,
    genesis_group_id,
    open_group_message,
    seal_group_data,
    seal_group_message,
)
from nyth.proto.hashcash import PowStopped
from nyth.proto.identity import Identity
from nyth.proto.mailbox_bundle import MAILBOX_BUNDLE_SIZE, MailboxBundle

INDEX = Identity.from_seed(b"I" * 32)
OTHER_INDEX = Identity.from_seed(b"J" * 32)
SERVER = Identity.from_seed(b"S" * 32)
OTHER = Identity.from_seed(b"O" * 32)
REJECT = (DecodeError, AuthenticationError)
NOW = 1_800_000_000
TOKEN_KEY = tokens.TokenSecretKey.from_seed(b"T" * 32).public_key
GROUP_KEY = bytes(range(32))
# A pool of servers, each with a signed v1 and v2 group-server bundle and a mailbox bundle.
POOL = [Identity.from_seed(bytes([0x40 + i]) * 32) for i in range(12)]


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def group_bundle(identity: Identity, *, v2: bool = False, max_blobs: int = 100_000,
                 max_age: int = 7 * 86400) -> bytes:
    return ServerBundle(identity.public_key, TOKEN_KEY if v2 else bytes(32), 2048, max_blobs,
                        max_age, NOW - 86400, token_pow_bits=20 if v2 else 0).sign(identity)


def mailbox_bundle(identity: Identity) -> bytes:
    return MailboxBundle(identity.public_key, 67, 2304, 10_000, 86400, 20,
                         NOW - 86400).sign(identity)


@functools.cache
def bundle_for(i: int, kind: ServerKind, v2: bool) -> bytes:
    if kind is ServerKind.MAILBOX:
        return mailbox_bundle(POOL[i])
    return group_bundle(POOL[i], v2=v2)


# -- strategies ------------------------------------------------------------------------------

label_chars = st.characters(exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs")) \
    | st.just(" ")
labels = st.text(label_chars, max_size=LABEL_SIZE).filter(
    lambda t: len(t.encode()) <= LABEL_SIZE)
errors = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=MAX_ERROR)
keys = st.binary(min_size=32, max_size=32)
u16 = st.integers(0, 0xFFFF)
u63 = st.integers(0, (1 << 63) - 1)
latencies = st.integers(0, NO_LATENCY)


@st.composite
def adverts(draw: st.DrawFn) -> Advert:
    issued = draw(st.integers(0, (1 << 63) - 1 - MAX_ADVERT_LIFETIME))
    return Advert(draw(st.sampled_from(ServerKind)), SERVER.public_key, draw(keys), draw(keys),
                  draw(labels), issued, issued + draw(st.integers(1, MAX_ADVERT_LIFETIME)),
                  draw(st.integers(0, hashcash.U64_MAX)))


@st.composite
def entries_for(draw: st.DrawFn, i: int) -> Entry:
    kind = draw(st.sampled_from(ServerKind))
    probes = draw(u16)
    audit = draw(st.sampled_from(AuditState))
    return Entry(kind, bundle_for(i, kind, draw(st.booleans())), draw(labels), draw(u63),
                 draw(u63), probes, draw(st.integers(0, probes)), draw(u16), draw(u63),
                 draw(u63), draw(latencies), draw(latencies), audit, draw(u16), draw(u63),
                 draw(errors))


@st.composite
def directories(draw: st.DrawFn, max_entries: int = len(POOL)) -> Directory:
    servers = draw(st.lists(st.integers(0, len(POOL) - 1), unique=True, max_size=max_entries))
    issued = draw(st.integers(0, (1 << 62)))
    return Directory(INDEX.public_key, draw(u63), issued,
                     issued + draw(st.integers(1, 1 << 61)),
                     sorted_entries([draw(entries_for(i)) for i in servers]))


def advert(**overrides: Any) -> Advert:
    fields: dict[str, Any] = {
        "kind": ServerKind.GROUP_SERVER, "server_key": SERVER.public_key,
        "index_key": INDEX.public_key,
        "bundle_sha256": hashlib.sha256(group_bundle(SERVER)).digest(), "label": "Example Ops",
        "issued_at": NOW, "expires_at": NOW + 86400, "nonce": 0,
    }
    return Advert(**{**fields, **overrides})


def entry(i: int = 0, kind: ServerKind = ServerKind.GROUP_SERVER, **overrides: Any) -> Entry:
    fields: dict[str, Any] = {
        "kind": kind, "bundle": bundle_for(i, kind, False), "label": f"op {i}",
        "first_seen": NOW - 3600, "advert_expires": NOW + 86400, "probes": 10, "probes_ok": 9,
        "consecutive_failures": 0, "last_probe_at": NOW - 60, "last_ok_at": NOW - 60,
        "latency_p50_ms": 800, "latency_p95_ms": 2500, "audit": AuditState.KEPT,
        "audits_passed": 3, "audit_at": NOW - 600, "last_error": "timeout",
    }
    return Entry(**{**fields, **overrides})


def directory(entries: tuple[Entry, ...] = (), index: Identity = INDEX, *, epoch: int = 7,
              issued_at: int = NOW - 60, expires_at: int = NOW + 3600) -> Directory:
    return Directory(index.public_key, epoch, issued_at, expires_at, sorted_entries(entries))


SMALL = directory((entry(0), entry(1, ServerKind.MAILBOX, label="", last_error="")))


# -- labels ----------------------------------------------------------------------------------


@settings(max_examples=100)
@given(labels)
def test_label_round_trip(label: str) -> None:
    data = encode_label(label)
    assert len(data) == LABEL_SIZE and decode_label(data) == label


@pytest.mark.parametrize("label", [
    "a\nb", "tab\there", "nul\0inside", "\x7f", "right\u202eleft", "zero\u200bwidth",
    "soft\u00adhyphen", "x" * (LABEL_SIZE + 1), "€" * 11, "line\u2028sep", "\ud800",
])
def test_unprintable_or_long_labels_are_refused(label: str) -> None:
    with pytest.raises(DecodeError, match="operator label"):
        encode_label(label)
    with pytest.raises(DecodeError, match="operator label"):
        advert(label=label)
    with pytest.raises(DecodeError, match="operator label"):
        entry(label=label)


def test_label_of_exactly_32_bytes_and_multibyte_text_is_taken() -> None:
    for label in ("x" * 32, "ü" * 16, "運営者" * 3, " spaced ", ""):
        assert decode_label(encode_label(label)) == label


@pytest.mark.parametrize(("raw", "match"), [
    (b"ab\0cd", "NUL inside"), (b"\0ab", "NUL inside"), (b"\xff\xfe", "not UTF-8"),
    ("ü".encode()[:1], "not UTF-8"), (b"bell\x07", "not printable"),
    ("rtl\u202e".encode(), "not printable"), ("zw\u200b".encode(), "not printable"),
    (b"\n", "not printable"),
])
def test_decoded_labels_must_be_printable_text(raw: bytes, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        decode_label(raw + bytes(LABEL_SIZE - len(raw)))


# -- adverts ---------------------------------------------------------------------------------


def test_advert_layout() -> None:
    a = advert(nonce=12345)
    signed = a.sign(SERVER)
    assert ADVERT_SIZE == len(signed) == 225
    label = b"Example Ops" + bytes(21)
    body = (b"NYTHADV1" + bytes([1]) + SERVER.public_key + INDEX.public_key + a.bundle_sha256
            + label + struct.pack(">QQQ", NOW, NOW + 86400, 12345))
    assert signed == body + SERVER.sign(body)
    assert Advert.decode(signed) == a and a.onion == SERVER.onion


@settings(max_examples=60)
@given(adverts())
def test_advert_round_trip(a: Advert) -> None:
    assert Advert.decode(a.sign(SERVER)) == a


def test_every_flipped_bit_of_an_advert_is_refused() -> None:
    signed = advert(label="Ops ü").sign(SERVER)
    for bit in range(8 * ADVERT_SIZE):
        with pytest.raises(REJECT):
            Advert.decode(flip(signed, bit))


@settings(max_examples=50)
@given(st.integers(0, ADVERT_SIZE - 1), st.binary(min_size=1, max_size=64))
def test_advert_truncation_and_extension_are_refused(cut: int, extra: bytes) -> None:
    signed = advert().sign(SERVER)
    for bad in (signed[:cut], signed + extra, extra + signed, signed[:cut] + extra):
        if len(bad) == ADVERT_SIZE:
            with pytest.raises(REJECT):
                Advert.decode(bad)
            continue
        with pytest.raises(DecodeError, match="an advert is 225 bytes"):
            Advert.decode(bad)


@settings(max_examples=100)
@given(st.binary(min_size=ADVERT_SIZE, max_size=ADVERT_SIZE)
       | st.binary(min_size=ADVERT_SIZE - 8, max_size=ADVERT_SIZE - 8).map(
           lambda b: b"NYTHADV1" + b))
def test_arbitrary_advert_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(REJECT):
        Advert.decode(data)


def test_an_advert_signed_by_another_key_is_refused() -> None:
    with pytest.raises(ValueError, match="server's own onion key"):
        advert().sign(OTHER)
    body = advert().sign(SERVER)[:-64]
    with pytest.raises(AuthenticationError, match="can only advertise itself"):
        Advert.decode(body + OTHER.sign(body))


def _resigned_advert(offset: int, value: bytes) -> bytes:
    body = bytearray(advert().sign(SERVER)[:-64])
    body[offset: offset + len(value)] = value
    return bytes(body) + SERVER.sign(bytes(body))


@pytest.mark.parametrize(("offset", "value", "match"), [
    (0, b"NYTHADV2", "not a Nyth advert"), (8, b"\x03", "unknown server kind 3"),
    (8, b"\x00", "unknown server kind 0"), (105, b"a\0b", "NUL inside"),
    (105, b"\xc3", "not UTF-8"), (105, b"\x1b[31m", "not printable"),
    (137, struct.pack(">QQ", NOW, NOW), "expire after it is issued"),
    (137, struct.pack(">QQ", NOW, NOW - 1), "expire after it is issued"),
    (137, struct.pack(">QQ", NOW, NOW + MAX_ADVERT_LIFETIME + 1), "lifetime exceeds"),
    (137, struct.pack(">QQ", 0, 1 << 63), "expire after it is issued"),
])
def test_signed_advert_with_bad_field_is_refused(offset: int, value: bytes, match: str) -> None:
    """Signed by the server and still refused: the codec takes only what it can honour."""
    with pytest.raises(DecodeError, match=match):
        Advert.decode(_resigned_advert(offset, value))


@pytest.mark.parametrize("overrides", [
    {"server_key": bytes(31)}, {"index_key": bytes(33)}, {"bundle_sha256": b""},
    {"expires_at": NOW}, {"issued_at": -1}, {"expires_at": NOW + MAX_ADVERT_LIFETIME + 1},
    {"nonce": -1}, {"nonce": 1 << 64}, {"label": "x" * 33},
])
def test_advert_out_of_range_fields_are_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(DecodeError):
        advert(**overrides)


def test_advert_lifetime_bounds_are_inclusive() -> None:
    assert advert(expires_at=NOW + 1).expires_at == NOW + 1
    assert advert(expires_at=NOW + MAX_ADVERT_LIFETIME).expires_at == NOW + MAX_ADVERT_LIFETIME


def _leading_zeros(a: Advert) -> int:
    for bits in range(257):
        if not a.pow_ok(bits + 1):
            return bits
    raise AssertionError("unreachable")


def test_advert_pow_is_solved_and_checked() -> None:
    solved = solve_advert_pow(advert(), 10)
    assert solved.pow_ok(10)
    check_advert(solved, index_key=INDEX.public_key, pow_bits=10, now=NOW)
    decoded = Advert.decode(solved.sign(SERVER))
    assert decoded == solved and decoded.pow_ok(10)
    # the work covers every field before the nonce, and the index it is paid to
    for changed in (dataclasses.replace(solved, label="Other Ops"),
                    dataclasses.replace(solved, index_key=OTHER_INDEX.public_key),
                    dataclasses.replace(solved, expires_at=solved.expires_at - 1)):
        assert changed.nonce == solved.nonce and not changed.pow_ok(10)
    # the same hash as the layout says: BLAKE2b-256(index key ‖ bytes 0..152 ‖ u64(nonce))
    body = solved.sign(SERVER)
    digest = hashlib.blake2b(INDEX.public_key + body[:153] + body[153:161], digest_size=32,
                             person=b"nyth-advert-pow").digest()
    assert hashcash.leading_zero_bits(digest) == _leading_zeros(solved) >= 10


def test_zero_pow_bits_take_any_nonce() -> None:
    assert solve_advert_pow(advert(nonce=99), 0).nonce == 0
    check_advert(advert(nonce=99), index_key=INDEX.public_key, pow_bits=0, now=NOW)


def test_advert_pow_solver_stops() -> None:
    with pytest.raises(PowStopped, match="cancelled"):
        solve_advert_pow(advert(), MAX_POW_BITS, stop=lambda: True)
    with pytest.raises(PowStopped, match="ran out of time"):
        solve_advert_pow(advert(), MAX_POW_BITS, deadline=0.0)


def test_check_advert_refusals_say_why() -> None:
    solved = solve_advert_pow(advert(), 8)
    zeros = _leading_zeros(solved)
    check = functools.partial(check_advert, index_key=INDEX.public_key, pow_bits=8)
    check(solved, now=NOW)
    check(solved, now=solved.expires_at - 1)
    check(solved, now=NOW - CLOCK_SKEW)
    with pytest.raises(DirectoryRefused, match="for another index"):
        check_advert(solved, index_key=OTHER_INDEX.public_key, pow_bits=8, now=NOW)
    with pytest.raises(DirectoryRefused, match="expired at"):
        check(solved, now=solved.expires_at)
    with pytest.raises(DirectoryRefused, match="issued in the future"):
        check(solved, now=NOW - CLOCK_SKEW - 1)
    with pytest.raises(DirectoryRefused, match=f"too weak: this index wants {zeros + 1} "):
        check_advert(solved, index_key=INDEX.public_key, pow_bits=zeros + 1, now=NOW)
    unsolved = next(dataclasses.replace(solved, nonce=n) for n in range(1000)
                    if not dataclasses.replace(solved, nonce=n).pow_ok(8))
    with pytest.raises(DirectoryRefused, match="missing or too weak"):
        check(unsolved, now=NOW)


# -- the index bundle ------------------------------------------------------------------------


def index_bundle(n: int = 2, **overrides: Any) -> IndexBundle:
    fields: dict[str, Any] = {
        "index_key": INDEX.public_key, "advert_pow_bits": 16, "group_key": GROUP_KEY,
        "issued_at": NOW, "directory_servers": tuple(p.public_key for p in POOL[:n]),
    }
    return IndexBundle(**{**fields, **overrides})


def test_index_bundle_layout() -> None:
    b = index_bundle(3)
    signed = b.sign(INDEX)
    assert len(signed) == 146 + 32 * 3
    assert (MIN_INDEX_BUNDLE_SIZE, MAX_INDEX_BUNDLE_SIZE) == (146 + 32, 146 + 32 * MAX_SERVERS)
    body = (b"NYTHIDX1" + INDEX.public_key + bytes([16]) + GROUP_KEY + struct.pack(">Q", NOW)
            + bytes([3]) + b"".join(p.public_key for p in POOL[:3]))
    assert signed == body + INDEX.sign(body)
    assert IndexBundle.verify(signed, INDEX.onion) == b
    assert b.onion == INDEX.onion and b.directory_onions == [p.onion for p in POOL[:3]]
    assert b.directory_group_id == genesis_group_id(GROUP_KEY, INDEX.public_key)
    assert "group_key" not in repr(b)


@settings(max_examples=40)
@given(st.integers(0, MAX_POW_BITS), keys, u63,
       st.lists(st.sampled_from(POOL), min_size=1, max_size=MAX_SERVERS, unique=True))
def test_index_bundle_round_trip(bits: int, group_key: bytes, issued: int,
                                 servers: list[Identity]) -> None:
    b = IndexBundle(INDEX.public_key, bits, group_key, issued,
                    tuple(s.public_key for s in servers))
    assert IndexBundle.verify(b.sign(INDEX)) == b
    assert IndexBundle.verify(bytearray(b.sign(INDEX)), INDEX.onion) == b  # type: ignore[arg-type]


def test_every_flipped_bit_of_an_index_bundle_is_refused() -> None:
    signed = index_bundle(2).sign(INDEX)
    for bit in range(8 * len(signed)):
        with pytest.raises(REJECT):
            IndexBundle.verify(flip(signed, bit))


@settings(max_examples=50)
@given(st.integers(1, MAX_SERVERS), st.data())
def test_index_bundle_truncation_and_extension_are_refused(n: int, data: st.DataObject) -> None:
    signed = index_bundle(n).sign(INDEX)
    cut = data.draw(st.integers(0, len(signed) - 1))
    extra = data.draw(st.binary(min_size=1, max_size=64))
    for bad in (signed[:cut], signed + extra, signed[:cut] + extra, extra + signed):
        with pytest.raises(REJECT):
            IndexBundle.verify(bad)


def _resigned_index_bundle(mutate: Any, n: int = 2) -> bytes:
    body = bytearray(index_bundle(n).sign(INDEX)[:-64])
    mutate(body)
    return bytes(body) + INDEX.sign(bytes(body))


@pytest.mark.parametrize(("mutate", "match"), [
    (lambda b: b.__setitem__(40, MAX_POW_BITS + 1), "pow bits"),
    (lambda b: b.__setitem__(40, 255), "pow bits"),
    (lambda b: b.__setitem__(slice(114, 146), b[82:114]), "names a directory server twice"),
    (lambda b: b.__setitem__(81, 1), "naming 1 servers is 178 bytes"),
    (lambda b: b.__setitem__(81, 0), "naming 0 servers"),
    (lambda b: b.__setitem__(slice(0, 8), b"NYTHIDX2"), "not a Nyth index bundle"),
    (lambda b: b.__setitem__(slice(73, 81), struct.pack(">Q", 1 << 63)), "issue time"),
])
def test_signed_index_bundle_with_bad_field_is_refused(mutate: Any, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        IndexBundle.verify(_resigned_index_bundle(mutate))


def test_index_bundle_refusals() -> None:
    signed = index_bundle().sign(INDEX)
    with pytest.raises(DecodeError, match="different index"):
        IndexBundle.verify(signed, OTHER_INDEX.onion)
    with pytest.raises(ValueError, match="index's onion key"):
        index_bundle().sign(OTHER_INDEX)
    with pytest.raises(AuthenticationError):
        IndexBundle.verify(signed[:-64] + OTHER_INDEX.sign(signed[:-64]))
    with pytest.raises(DecodeError, match="must be bytes"):
        IndexBundle.verify(signed.hex())  # type: ignore[arg-type]
    for overrides in ({"directory_servers": ()}, {"directory_servers": (bytes(31),)},
                      {"directory_servers": tuple(p.public_key for p in POOL[:9])},
                      {"advert_pow_bits": -1}, {"group_key": bytes(16)}, {"issued_at": -1}):
        with pytest.raises(DecodeError):
            index_bundle(**overrides)


# -- entries and the directory ---------------------------------------------------------------


def test_entry_layout() -> None:
    e = entry(3, ServerKind.MAILBOX, label="Ops", last_error="refused")
    bundle = bundle_for(3, ServerKind.MAILBOX, False)
    expected = (struct.pack(">BH", 2, MAILBOX_BUNDLE_SIZE) + bundle + b"Ops" + bytes(29)
                + struct.pack(">QQHHHQQIIBHQB", NOW - 3600, NOW + 86400, 10, 9, 0, NOW - 60,
                              NOW - 60, 800, 2500, 1, 3, NOW - 600, 7)
                + b"refused")
    assert e.encode() == expected
    assert Entry.decode_from(b"xx" + expected, 2) == (e, 2 + len(expected))
    assert e.onion == POOL[3].onion and e.server_key == POOL[3].public_key
    assert isinstance(e.verified_bundle, MailboxBundle)


def test_directory_layout() -> None:
    d = directory((entry(1), entry(0, ServerKind.MAILBOX)), epoch=9)
    signed = d.sign(INDEX)
    ordered = sorted((entry(1), entry(0, ServerKind.MAILBOX)), key=lambda e: e.server_key)
    body = (b"NYTHDIR1" + INDEX.public_key + struct.pack(">QQQH", 9, NOW - 60, NOW + 3600, 2)
            + b"".join(e.encode() for e in ordered))
    assert signed == body + INDEX.sign(body)
    assert Directory.verify(signed) == d and d.index_onion == INDEX.onion


def test_size_limits_follow_from_the_layout() -> None:
    assert MAX_ENTRY_SIZE == 3 + max(BUNDLE_SIZE_V2, MAILBOX_BUNDLE_SIZE) + 90 + MAX_ERROR == 338
    assert MAX_DIRECTORY_SIZE == 66 + MAX_ENTRIES * MAX_ENTRY_SIZE + 64 == 338_130
    assert MAX_CHUNKS == 221 and (MAX_CHUNKS - 1) * CHUNK_DATA < MAX_DIRECTORY_SIZE \
        <= MAX_CHUNKS * CHUNK_DATA
    assert MAX_CHUNK_SIZE == 44 + CHUNK_DATA == 1580 <= MAX_BODY_BYTES_V2
    assert MAX_CHUNKS <= 0xFFFF


@settings(max_examples=40, deadline=None)
@given(directories())
def test_directory_round_trip(d: Directory) -> None:
    signed = d.sign(INDEX)
    assert Directory.verify(signed) == d
    assert Directory.verify(bytearray(signed)) == d  # type: ignore[arg-type]
    assert all(isinstance(e.verified_bundle,
                          ServerBundle if e.kind is ServerKind.GROUP_SERVER else MailboxBundle)
               for e in d.entries)


def test_every_flipped_bit_of_a_directory_is_refused() -> None:
    signed = SMALL.sign(INDEX)
    for bit in range(8 * len(signed)):
        with pytest.raises(REJECT):
            Directory.verify(flip(signed, bit))


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_directory_truncation_and_extension_are_refused(data: st.DataObject) -> None:
    signed = SMALL.sign(INDEX)
    cut = data.draw(st.integers(0, len(signed) - 1))
    extra = data.draw(st.binary(min_size=1, max_size=64))
    for bad in (signed[:cut], signed + extra, signed[:cut] + extra, extra + signed):
        with pytest.raises(REJECT):
            Directory.verify(bad)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=600) | st.binary(max_size=600).map(lambda b: b"NYTHDIR1" + b))
def test_arbitrary_directory_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(REJECT):
        Directory.verify(data)


def _signed_body(body: bytes, index: Identity = INDEX) -> bytes:
    return body + index.sign(body)


def _head(n: int) -> bytes:
    return b"NYTHDIR1" + INDEX.public_key + struct.pack(">QQQH", 7, NOW - 60, NOW + 3600, n)


def _raw_entry(e: Entry, at: list[tuple[int, bytes]]) -> bytes:
    raw = bytearray(e.encode())
    for offset, value in at:
        raw[offset: offset + len(value)] = value
    return bytes(raw)


# where the figures (label, first seen, …) start in an encoded v1 group-server entry
_FIG = 3 + 164


def test_a_directory_built_by_hand_from_the_layout_verifies() -> None:
    a, b = sorted((entry(0), entry(1, ServerKind.MAILBOX)), key=lambda e: e.server_key)
    d = Directory.verify(_signed_body(_head(2) + a.encode() + b.encode()))
    assert d.entries == (a, b) and d.epoch == 7


@pytest.mark.parametrize(("body", "match"), [
    (_head(2) + entry(0).encode() + entry(0).encode(), "sorted by server, each once"),
    (_head(1) + entry(0).encode() + b"\0", "bytes between"),
    (_head(2) + entry(0).encode(), "truncated"),
    (_head(MAX_ENTRIES + 1), f"at most {MAX_ENTRIES} entries"),
    (_head(1) + _raw_entry(entry(0), at=[(0, b"\x03")]), "unknown server kind 3"),
    (_head(1) + _raw_entry(entry(0), at=[(0, b"\x02")]), "mailbox bundle must be"),
    (_head(1) + _raw_entry(entry(0), at=[(1, b"\x00\xa6")]), "bundle too long"),
    (_head(1) + _raw_entry(entry(0), at=[(_FIG + 78, b"\x03")]), "unknown audit state 3"),
    (_head(1) + _raw_entry(entry(0), at=[(_FIG + 50, b"\x00\x0b")]), "more answers than probes"),
    (_head(1) + _raw_entry(entry(0), at=[(_FIG + 32, struct.pack(">Q", 1 << 63))]),
     "first_seen out of range"),
    (_head(1) + entry(0, last_error="x" * 3).encode()[:-4] + b"\x51" + b"x" * 81,
     "truncated or too long"),
    (_head(1) + entry(0, last_error="abc").encode()[:-3] + b"\x07bc", "printable ASCII"),
    (_head(1) + entry(0, last_error="abc").encode()[:-3] + b"\xc3\xa9c", "not ASCII"),
    (_head(1) + _raw_entry(entry(0), at=[(_FIG, b"a\0b")]), "NUL inside"),
])
def test_signed_directory_with_bad_content_is_refused(body: bytes, match: str) -> None:
    """Signed by the index and still refused: unsorted or repeated servers, counts and
    lengths that do not add up, unknown kinds and states, bad text."""
    with pytest.raises(DecodeError, match=match):
        Directory.verify(_signed_body(body))


def test_an_entry_with_a_forged_bundle_is_refused_even_in_a_signed_directory() -> None:
    raw = bytearray(entry(0).encode())
    raw[3 + 100] ^= 1  # inside the bundle's signature
    with pytest.raises(AuthenticationError):
        Directory.verify(_signed_body(_head(1) + bytes(raw)))


def test_a_directory_signed_by_another_key_is_refused() -> None:
    signed = SMALL.sign(INDEX)
    with pytest.raises(AuthenticationError, match="tampered or forged"):
        Directory.verify(signed[:-64] + OTHER_INDEX.sign(signed[:-64]))
    with pytest.raises(ValueError, match="its index's onion key"):
        SMALL.sign(OTHER_INDEX)


@pytest.mark.parametrize("overrides", [
    {"probes": 3, "probes_ok": 4}, {"probes": 0x10000}, {"consecutive_failures": -1},
    {"audits_passed": 0x10000}, {"first_seen": 1 << 63}, {"last_ok_at": -1},
    {"latency_p50_ms": NO_LATENCY + 1}, {"latency_p95_ms": -1}, {"last_error": "x" * 81},
    {"last_error": "new\nline"}, {"last_error": "caf\u00e9"}, {"last_error": "\0"},
    {"bundle": b"not a bundle"}, {"kind": ServerKind.MAILBOX, "bundle": group_bundle(POOL[0])},
    {"bundle": mailbox_bundle(POOL[0])},
])
def test_entry_out_of_range_fields_are_refused(overrides: dict[str, Any]) -> None:
    """Including a non-ASCII error: it used to be written as "?" and read back as another
    entry."""
    with pytest.raises(REJECT):
        entry(**overrides)


def test_short_error_makes_any_text_fit() -> None:
    text = short_error("caf\u00e9\n" + "x" * 200)
    assert text.startswith("caf??") and len(text) == MAX_ERROR
    assert entry(last_error=text).last_error == text


@pytest.mark.parametrize("overrides", [
    {"index_key": bytes(31)}, {"epoch": -1}, {"epoch": 1 << 63}, {"issued_at": -1},
    {"expires_at": NOW - 60}, {"expires_at": 1 << 63},
])
def test_directory_out_of_range_fields_are_refused(overrides: dict[str, Any]) -> None:
    fields: dict[str, Any] = {"index_key": INDEX.public_key, "epoch": 1, "issued_at": NOW - 60,
                              "expires_at": NOW, "entries": ()}
    with pytest.raises(DecodeError):
        Directory(**{**fields, **overrides})


def test_directory_entries_must_be_sorted_and_distinct() -> None:
    a, b = sorted((entry(0), entry(1)), key=lambda e: e.server_key)
    with pytest.raises(DecodeError, match="sorted by server, each once"):
        Directory(INDEX.public_key, 1, 0, 1, (b, a))
    with pytest.raises(DecodeError, match="sorted by server, each once"):
        Directory(INDEX.public_key, 1, 0, 1, (a, a))
    # the same server listed once as a group server, once as a mailbox: still one server
    with pytest.raises(DecodeError, match="sorted by server, each once"):
        Directory(INDEX.public_key, 1, 0, 1, (entry(0), entry(0, ServerKind.MAILBOX)))
    newer = entry(0, probes=20)
    assert sorted_entries([b, entry(0), a, newer]) == tuple(
        sorted((newer, entry(1)), key=lambda e: e.server_key))


# -- the largest directory -------------------------------------------------------------------


@functools.cache
def largest() -> tuple[Directory, bytes]:
    """MAX_ENTRIES group servers with v2 bundles, 32-byte labels and 80-byte errors."""
    servers = [Identity.from_seed(i.to_bytes(32, "big")) for i in range(1, MAX_ENTRIES + 1)]
    entries = [Entry(ServerKind.GROUP_SERVER, group_bundle(s, v2=True), "運営者" * 3 + "xyzab",
                     NOW, NOW, 0xFFFF, 0xFFFF, 0xFFFF, NOW, NOW, NO_LATENCY - 1, NO_LATENCY,
                     AuditState.LOST, 0xFFFF, NOW, "e" * MAX_ERROR) for s in servers]
    d = Directory(INDEX.public_key, (1 << 63) - 1, NOW, NOW + 1, sorted_entries(entries))
    return d, d.sign(INDEX)


def test_the_largest_directory_is_max_directory_size_and_max_chunks() -> None:
    d, signed = largest()
    assert len(d.entries[0].label.encode()) == LABEL_SIZE
    assert len(signed) == MAX_DIRECTORY_SIZE
    chunks = chunk_directory(signed, d.epoch)
    assert len(chunks) == MAX_CHUNKS
    assert all(len(c.encode()) == MAX_CHUNK_SIZE for c in chunks[:-1])
    assert Directory.verify(assemble(reversed(chunks))) == d
    with pytest.raises(DecodeError, match="not a directory's size"):
        chunk_directory(signed + b"\0", d.epoch)
    with pytest.raises(DecodeError, match=f"at most {MAX_ENTRIES} entries"):
        Directory(INDEX.public_key, 1, NOW, NOW + 1, (*d.entries, entry(0)))


def test_a_full_chunk_fits_one_directory_group_message() -> None:
    """Sealed with the most parents a message can name, opened as a DIRECTORY message
    whose data is the chunk."""
    d, signed = largest()
    chunk = chunk_directory(signed, d.epoch)[0]
    gid = genesis_group_id(GROUP_KEY, INDEX.public_key)
    parents = [bytes([i]) * 32 for i in range(MAX_PARENTS)]
    blob, sent = seal_group_data(INDEX, GROUP_KEY, gid, kind=GroupKind.DIRECTORY,
                                 timestamp_ms=NOW * 1000, parents=parents, data=chunk.encode())
    got = open_group_message(GROUP_KEY, gid, blob)
    assert got == sent and got.kind is GroupKind.DIRECTORY and got.body == ""
    assert got.author == INDEX.public_key and Chunk.decode(got.data) == chunk


def test_seal_group_data_refusals() -> None:
    gid = genesis_group_id(GROUP_KEY, INDEX.public_key)
    seal = functools.partial(seal_group_data, INDEX, GROUP_KEY, gid, timestamp_ms=0, parents=())
    for kind in (GroupKind.TEXT, GroupKind.MOVE):
        with pytest.raises(ValueError, match="own sealing functions"):
            seal(kind=kind, data=b"x")
    with pytest.raises(DecodeError, match=f"at most {MAX_BODY_BYTES_V2} bytes"):
        seal(kind=GroupKind.DIRECTORY, data=bytes(MAX_BODY_BYTES_V2 + 1))
    _blob, text = seal_group_message(INDEX, GROUP_KEY, gid, timestamp_ms=0, parents=(),
                                     body="hello")
    assert text.data == b"hello"


@settings(max_examples=30, deadline=None)
@given(directories(), st.randoms(use_true_random=False))
def test_chunks_round_trip_in_any_order_with_repeats(d: Directory, rnd: random.Random) -> None:
    signed = d.sign(INDEX)
    chunks = chunk_directory(signed, d.epoch)
    assert len(chunks) == -(-len(signed) // CHUNK_DATA)
    assert all(Chunk.decode(c.encode()) == c for c in chunks)
    shuffled = [Chunk.decode(c.encode()) for c in chunks]
    rnd.shuffle(shuffled)
    assert assemble(shuffled) == signed
    extra = rnd.choices(shuffled[:-1], k=3) if len(shuffled) > 1 else []
    repeated = shuffled[:-1] + extra + shuffled[-1:]  # repeats before the set completes
    assert assemble(repeated) == signed
    assembler = ChunkAssembler(floor=d.epoch - 1)
    results = [assembler.add(c) for c in repeated]
    assert results[-1] == signed and not any(results[:-1])
    assert accept_directory(results[-1], index_key=INDEX.public_key,
                            now=d.issued_at, held_epoch=d.epoch) == d


# -- chunks ----------------------------------------------------------------------------------


def test_chunk_layout() -> None:
    digest = hashlib.sha256(b"d").digest()
    c = Chunk(5, digest, 2, 3, b"tail")
    assert c.encode() == struct.pack(">Q32sHH", 5, digest, 2, 3) + b"tail"
    assert Chunk.decode(c.encode()) == c


@settings(max_examples=60)
@given(u63, keys, st.integers(1, MAX_CHUNKS), st.data())
def test_chunk_round_trip(epoch: int, digest: bytes, count: int, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, count - 1))
    size = (data.draw(st.integers(1, CHUNK_DATA)) if index == count - 1 else CHUNK_DATA)
    c = Chunk(epoch, digest, index, count, data.draw(st.binary(min_size=size, max_size=size)))
    assert Chunk.decode(c.encode()) == c


@settings(max_examples=200)
@given(st.binary(max_size=MAX_CHUNK_SIZE + 10))
def test_arbitrary_chunk_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    try:
        c = Chunk.decode(data)
    except DecodeError:
        return
    assert c.encode() == data


@pytest.mark.parametrize(("data", "match"), [
    (struct.pack(">Q32sHH", 1, bytes(32), 0, 1), "got 44"),
    (struct.pack(">Q32sHH", 1, bytes(32), 0, 1) + bytes(CHUNK_DATA + 1), "got 1581"),
    (struct.pack(">Q32sHH", 1, bytes(32), 0, 0) + b"x", "chunk 0 of 0 is out of range"),
    (struct.pack(">Q32sHH", 1, bytes(32), 1, 1) + b"x", "chunk 1 of 1 is out of range"),
    (struct.pack(">Q32sHH", 1, bytes(32), 0, MAX_CHUNKS + 1) + bytes(CHUNK_DATA),
     f"at most {MAX_CHUNKS} chunks"),
    (struct.pack(">Q32sHH", 1, bytes(32), 0, 2) + b"short", "every chunk but the last"),
    (struct.pack(">Q32sHH", 1 << 63, bytes(32), 0, 1) + b"x", "epoch 63 bits"),
])
def test_malformed_chunks_are_refused(data: bytes, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        Chunk.decode(data)


def _three_chunks(epoch: int = 7, n: int = 10) -> tuple[bytes, list[Chunk]]:
    d = directory(tuple(entry(i, label="L" * 32, last_error="E" * MAX_ERROR) for i in range(n)),
                  epoch=epoch)
    signed = d.sign(INDEX)
    chunks = chunk_directory(signed, epoch)
    assert len(chunks) >= 2
    return signed, chunks


def test_every_flipped_bit_of_every_chunk_is_refused() -> None:
    """A chunk is not signed: its damage shows when it is decoded or when the set is
    joined (the digest, the count, the epoch in the directory)."""
    _signed, chunks = _three_chunks(n=5)
    raw = [c.encode() for c in chunks]
    for i, data in enumerate(raw):
        for bit in range(8 * len(data)):
            def damaged(i: int = i, bit: int = bit, data: bytes = data) -> list[Chunk]:
                return [Chunk.decode(flip(data, bit) if j == i else r) for j, r in enumerate(raw)]
            with pytest.raises(DecodeError):
                assemble(damaged())


def test_out_of_order_and_duplicated_chunks_assemble() -> None:
    signed, chunks = _three_chunks()
    assert assemble(chunks[::-1]) == signed
    assert assemble([chunks[1], chunks[0], chunks[1], *chunks[2:]]) == signed


def test_incomplete_extra_mixed_tampered_and_disagreeing_chunks_are_refused() -> None:
    _signed, chunks = _three_chunks()
    _newer, newer = _three_chunks(epoch=8)
    with pytest.raises(DecodeError, match="incomplete"):
        assemble(chunks[:-1])
    with pytest.raises(DecodeError, match="incomplete"):
        assemble([])
    with pytest.raises(DecodeError, match="more chunks than the directory has"):
        assemble([*chunks, chunks[0]])
    with pytest.raises(DecodeError, match="more than one directory"):
        assemble([newer[0], *chunks])
    with pytest.raises(DecodeError, match="more than one directory"):
        assemble([*chunks[:-1], *newer])  # a complete newer set after an old partial one
    bad = Chunk(7, chunks[1].digest, 1, chunks[1].count, bytes(len(chunks[1].data)))
    with pytest.raises(DecodeError, match="do not hash to the digest they name"):
        assemble([chunks[0], bad, *chunks[2:]])
    with pytest.raises(DecodeError, match="disagree about their count"):
        assemble([chunks[0], Chunk(7, chunks[0].digest, 1, len(chunks) + 1, chunks[1].data)])


def test_chunks_must_carry_the_epoch_of_the_directory_inside() -> None:
    """The chunk header is not signed: an old directory relabelled as a newer epoch is
    refused when joined, not only when its signature is read."""
    signed, chunks = _three_chunks(epoch=7)
    relabelled = [Chunk(8, c.digest, c.index, c.count, c.data) for c in chunks]
    with pytest.raises(DecodeError, match="labelled epoch 8 carry the directory of epoch 7"):
        assemble(relabelled)
    with pytest.raises(DecodeError, match="epoch 7, not 8"):
        chunk_directory(signed, 8)
    junk = b"not a directory" * 10
    with pytest.raises(DecodeError, match="do not make up a Nyth directory"):
        chunk_directory(junk, 7)
    digest = hashlib.sha256(junk).digest()
    with pytest.raises(DecodeError, match="do not make up a Nyth directory"):
        assemble([Chunk(7, digest, 0, 1, junk)])


def test_assembler_ignores_epochs_at_or_below_its_floor() -> None:
    _signed, chunks = _three_chunks(epoch=7)
    assembler = ChunkAssembler(floor=7)
    assert all(assembler.add(c) is None for c in chunks)
    assert not assembler._sets
    assert ChunkAssembler(floor=6).add(chunks[0]) is None


def test_assembler_keeps_at_most_max_sets_newest_first() -> None:
    sets = _epoch_sets()
    assembler = ChunkAssembler(max_sets=3)
    for epoch in range(1, 7):
        assert assembler.add(sets[epoch][1][0]) is None
        assert len(assembler._sets) <= 3
    assert sorted(k[0] for k in assembler._sets) == [4, 5, 6]
    # an older set is not started again once newer ones fill the room
    assert assembler.add(sets[1][1][1]) is None and len(assembler._sets) == 3
    assert all(assembler.add(c) is None for c in sets[1][1])
    # a newer one evicts the oldest; the newest completes
    results = [assembler.add(c) for c in sets[6][1][1:]]
    assert results[-1] == sets[6][0] and len(assembler._sets) == 2
    with pytest.raises(ValueError, match="at least one set"):
        ChunkAssembler(max_sets=0)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.lists(st.tuples(st.integers(1, 6), st.integers(0, 2)), max_size=40))
def test_assembler_memory_stays_bounded(max_sets: int, feed: list[tuple[int, int]]) -> None:
    sets = _epoch_sets()
    assembler = ChunkAssembler(max_sets=max_sets)
    for epoch, i in feed:
        chunks = sets[epoch][1]
        result = assembler.add(chunks[i % len(chunks)])
        assert result is None or result == sets[epoch][0]
        assert len(assembler._sets) <= max_sets
        assert sum(len(p) for p in assembler._sets.values()) <= max_sets * MAX_CHUNKS


@functools.cache
def _epoch_sets() -> dict[int, tuple[bytes, list[Chunk]]]:
    return {epoch: _three_chunks(epoch=epoch) for epoch in range(1, 7)}


# -- acceptance ------------------------------------------------------------------------------


def test_accept_directory_takes_a_fresh_signed_directory() -> None:
    signed = SMALL.sign(INDEX)
    accept = functools.partial(accept_directory, signed, index_key=INDEX.public_key)
    assert accept(now=NOW) == SMALL
    assert accept(now=NOW, held_epoch=SMALL.epoch) == SMALL  # the one already held, again
    assert accept(now=SMALL.expires_at - 1, held_epoch=SMALL.epoch - 1) == SMALL
    assert accept(now=SMALL.issued_at - CLOCK_SKEW) == SMALL


def test_accept_directory_refusals_say_why() -> None:
    signed = SMALL.sign(INDEX)
    accept = functools.partial(accept_directory, signed, index_key=INDEX.public_key)
    with pytest.raises(DirectoryRefused, match=r"signed by another index \(.*\.onion\)"):
        accept_directory(signed, index_key=OTHER_INDEX.public_key, now=NOW)
    with pytest.raises(DirectoryRefused, match=r"stale: epoch 7 expired at"):
        accept(now=SMALL.expires_at)
    with pytest.raises(DirectoryRefused, match="issued in the future"):
        accept(now=SMALL.issued_at - CLOCK_SKEW - 1)
    with pytest.raises(DirectoryRefused, match=r"epoch 7 is older than the epoch 8 already "
                                               r"held \(a rollback\)"):
        accept(now=NOW, held_epoch=8)
    with pytest.raises(AuthenticationError, match="tampered or forged"):
        accept_directory(flip(signed, 8 * len(signed) - 1), index_key=INDEX.public_key,
                         now=NOW)
    with pytest.raises(REJECT):
        accept_directory(signed[:-1], index_key=INDEX.public_key, now=NOW)


def test_another_index_directory_is_refused_even_when_signed_by_it() -> None:
    theirs = directory((entry(0),), OTHER_INDEX).sign(OTHER_INDEX)
    with pytest.raises(DirectoryRefused, match="another index"):
        accept_directory(theirs, index_key=INDEX.public_key, now=NOW)
