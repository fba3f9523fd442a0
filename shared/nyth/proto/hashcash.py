"""Hashcash-style proof of work, shared by every place Nyth makes a stranger pay to write.

A proof is a nonce such that

    BLAKE2b-256(part_1 ‖ … ‖ part_k ‖ u64(nonce), person=P)

starts with at least ``bits`` zero bits (most significant bit of byte 0 first). Each use
has its own person string P and binds the key of the server it is paid to as the first
part, so work done for one purpose or one server never counts for another. Users: the
mailbox's posts and contact cards (``nyth.proto.mailbox_bundle``) and the group server's
token issuance (``nyth.proto.tokens``).

The solver takes a stop flag and a deadline, checked every POW_CHECK_EVERY hashes, so a
caller can always get its thread back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from nyth.errors import DecodeError, NythError

# Hashes between two looks at the stop flag and the clock: ≈ 10 ms of work here.
POW_CHECK_EVERY = 4096
U64_MAX = (1 << 64) - 1


class PowStopped(NythError):
    """A solver gave up: its stop flag was set or its deadline passed (reason says which)."""

    def __init__(self, reason: str, tried: int) -> None:
        super().__init__(f"proof of work {reason} after {tried:,} hashes")
        self.reason = reason
        self.tried = tried


def prefix(person: bytes, *parts: bytes) -> hashlib.blake2b:
    """The hash state after every part but the nonce (copied, not recomputed, per try)."""
    h = hashlib.blake2b(digest_size=32, person=person)
    for part in parts:
        h.update(part)
    return h


def digest(prefix: hashlib.blake2b, nonce: int) -> bytes:
    if not 0 <= nonce <= U64_MAX:
        raise DecodeError("PoW nonce must fit in 64 bits")
    h = prefix.copy()
    h.update(nonce.to_bytes(8, "big"))
    return h.digest()


def leading_zero_bits(digest: bytes) -> int:
    value = int.from_bytes(digest, "big")
    return len(digest) * 8 - value.bit_length()


def ok(prefix: hashlib.blake2b, nonce: int, bits: int) -> bool:
    """Whether nonce completes prefix to at least bits leading zero bits (always, at 0)."""
    if bits <= 0:
        return True
    return leading_zero_bits(digest(prefix, nonce)) >= bits


def solve(prefix: hashlib.blake2b, bits: int, start: int, stop: Callable[[], bool] | None,
          deadline: float | None, clock: Callable[[], float]) -> int:
    """The first nonce >= start meeting the difficulty (about 2^bits hashes); PowStopped
    once stop() is true or clock() passes deadline (both looked at every few thousand
    hashes, and before the first)."""
    if bits <= 0:
        return start
    limit = 1 << (256 - bits)
    nonce = start
    while nonce <= U64_MAX:
        if (nonce - start) % POW_CHECK_EVERY == 0:
            if stop is not None and stop():
                raise PowStopped("cancelled", nonce - start)
            if deadline is not None and clock() >= deadline:
                raise PowStopped("ran out of time", nonce - start)
        h = prefix.copy()
        h.update(nonce.to_bytes(8, "big"))
        # Same test as leading_zero_bits(...) >= bits, without the bit_length per try.
        if int.from_bytes(h.digest(), "big") < limit:
            return nonce
        nonce += 1
    raise ValueError("no nonce found")  # pragma: no cover (2^64 tries)
