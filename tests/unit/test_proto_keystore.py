"""Argon2id-sealed key files. Most tests use libsodium's minimum KDF cost to stay fast."""

from __future__ import annotations

import stat
import struct
from pathlib import Path

import nacl.pwhash
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nyth.errors import AuthenticationError, DecodeError
from nyth.keystore import (
    DEFAULT_MEMLIMIT,
    DEFAULT_OPSLIMIT,
    MAGIC,
    MAX_FILE_SIZE,
    load_or_create_identity,
    open_sealed,
    seal,
    write_private_file,
)

A = nacl.pwhash.argon2id
CHEAP = {"opslimit": A.OPSLIMIT_MIN, "memlimit": A.MEMLIMIT_MIN}
HEADER = 8 + 16 + 4 + 8
REJECT = (DecodeError, AuthenticationError)
SEED = bytes(range(32))


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def test_layout() -> None:
    sealed = seal(SEED, "pw", **CHEAP)
    magic, _salt, ops, mem = struct.unpack_from(">8s16sIQ", sealed)
    assert (magic, ops, mem) == (MAGIC, A.OPSLIMIT_MIN, A.MEMLIMIT_MIN)
    assert len(sealed) == HEADER + 24 + 16 + len(SEED)
    assert SEED not in sealed
    assert seal(SEED, "pw", **CHEAP)[8:24] != sealed[8:24]  # fresh salt each time


@settings(max_examples=15, deadline=None)
@given(st.binary(max_size=256), st.text(min_size=1, max_size=40))
def test_round_trip(payload: bytes, passphrase: str) -> None:
    assert open_sealed(seal(payload, passphrase, **CHEAP), passphrase) == payload


def test_wrong_passphrase_fails_authentication() -> None:
    sealed = seal(SEED, "correct horse", **CHEAP)
    for wrong in ("correct hors", "Correct horse", "correct horse "):
        with pytest.raises(AuthenticationError, match="wrong passphrase"):
            open_sealed(sealed, wrong)


def _no_kdf(*_args: object) -> bytes:
    raise AssertionError("the KDF ran on a header that should have been refused")


def _expensive(bit: int) -> bool:
    """Flips of memlimit bits 22..29 leave the KDF cost in range but large (4 MiB to
    512 MiB); skipped for speed, they fail authentication like their cheap neighbours.
    Bits 30+ push memlimit past MEMLIMIT_SENSITIVE and are rejected before any work."""
    byte, low = divmod(bit, 8)
    if not 28 <= byte < 36:
        return False
    value_bit = (35 - byte) * 8 + low  # memlimit is a big-endian u64 at bytes 28..35
    return 22 <= value_bit < 30


def test_every_flipped_bit_is_rejected() -> None:
    sealed = seal(SEED, "pw", **CHEAP)
    for bit in range(8 * len(sealed)):
        if _expensive(bit):
            continue
        with pytest.raises(REJECT):
            open_sealed(flip(sealed, bit), "pw")


@pytest.mark.parametrize("ops", [0, A.OPSLIMIT_SENSITIVE + 1, 2**32 - 1])
def test_out_of_range_opslimit_is_rejected_before_running_the_kdf(
        ops: int, monkeypatch: pytest.MonkeyPatch) -> None:
    sealed = bytearray(seal(SEED, "pw", **CHEAP))
    monkeypatch.setattr("nyth.keystore.derive_key", _no_kdf)
    sealed[24:28] = struct.pack(">I", ops)
    with pytest.raises(DecodeError, match="KDF parameters"):
        open_sealed(bytes(sealed), "pw")


@pytest.mark.parametrize("mem", [0, A.MEMLIMIT_MIN - 1, A.MEMLIMIT_SENSITIVE + 1, 2**64 - 1])
def test_out_of_range_memlimit_is_rejected_before_running_the_kdf(
        mem: int, monkeypatch: pytest.MonkeyPatch) -> None:
    sealed = bytearray(seal(SEED, "pw", **CHEAP))
    monkeypatch.setattr("nyth.keystore.derive_key", _no_kdf)
    sealed[28:36] = struct.pack(">Q", mem)
    with pytest.raises(DecodeError, match="KDF parameters"):
        open_sealed(bytes(sealed), "pw")


def test_every_truncation_and_some_extensions_are_rejected() -> None:
    sealed = seal(SEED, "pw", **CHEAP)
    for cut in range(len(sealed)):
        with pytest.raises(REJECT):
            open_sealed(sealed[:cut], "pw")
    for extra in (b"\x00", b"x" * 17, bytes(1000)):
        with pytest.raises(AuthenticationError):
            open_sealed(sealed + extra, "pw")


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=120) | st.binary(max_size=120).map(lambda b: MAGIC + b))
def test_arbitrary_bytes_are_rejected(data: bytes) -> None:
    try:
        open_sealed(data, "pw")
    except REJECT:
        return
    pytest.fail("arbitrary bytes opened")  # pragma: no cover


def test_oversized_file_is_rejected_without_work() -> None:
    with pytest.raises(DecodeError, match="too large"):
        open_sealed(MAGIC + bytes(MAX_FILE_SIZE), "pw")


def test_empty_passphrase_is_refused() -> None:
    with pytest.raises(ValueError):
        seal(SEED, "", **CHEAP)


def test_write_private_file_is_owner_only_and_atomic(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "key"
    write_private_file(path, b"one")
    write_private_file(path, b"two")
    assert path.read_bytes() == b"two"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["key"]


def test_load_or_create_identity_uses_default_cost(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    created = load_or_create_identity(path, "pw")
    data = path.read_bytes()
    assert created.seed not in data and created.public_key not in data
    assert struct.unpack_from(">IQ", data, 24) == (DEFAULT_OPSLIMIT, DEFAULT_MEMLIMIT)
    assert load_or_create_identity(path, "pw").public_key == created.public_key
    with pytest.raises(AuthenticationError):
        load_or_create_identity(path, "not pw")


@pytest.mark.parametrize("low", [1, 256, 1023])
def test_non_canonical_memlimit_is_rejected(low: int) -> None:
    """Argon2 rounds memlimit down to KiB; a header that differs only below 1 KiB must not
    open (the header is not authenticated, so it has to be canonical)."""
    sealed = bytearray(seal(SEED, "pw", **CHEAP))
    sealed[28:36] = struct.pack(">Q", A.MEMLIMIT_MIN + low)
    with pytest.raises(DecodeError, match="KiB"):
        open_sealed(bytes(sealed), "pw")


@pytest.mark.parametrize("params", [
    {"opslimit": 0, "memlimit": A.MEMLIMIT_MIN},
    {"opslimit": A.OPSLIMIT_SENSITIVE + 1, "memlimit": A.MEMLIMIT_MIN},
    {"opslimit": 1, "memlimit": A.MEMLIMIT_MIN - 1024},
    {"opslimit": 1, "memlimit": A.MEMLIMIT_SENSITIVE + 1024},
    {"opslimit": 1, "memlimit": A.MEMLIMIT_MIN + 1},
])
def test_seal_refuses_parameters_open_would_refuse(params: dict[str, int]) -> None:
    with pytest.raises(DecodeError):
        seal(SEED, "pw", **params)


def _create_identity(args: tuple[str, str]) -> str:
    from nyth.keystore import load_or_create_identity

    path, passphrase = args
    return load_or_create_identity(Path(path), passphrase).onion


def test_replicas_starting_together_share_one_identity(tmp_path: Path) -> None:
    """Several processes (a Swarm service's replicas on one data volume) creating the key at
    once: one creates it, every other one loads that same key."""
    import multiprocessing

    path = str(tmp_path / "data" / "service.key")
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        onions = pool.map(_create_identity, [(path, "pw")] * 8)
    assert len(set(onions)) == 1
