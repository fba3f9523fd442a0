"""Secrets at rest: a passphrase-derived key (Argon2id) sealing small files.

Every long-term key a service or profile keeps on disk goes through here, so no key
material is ever written in the clear. File layout (all fixed, versioned):

    magic "NYTHKEY1" (8) | salt (16) | opslimit (u32 BE) | memlimit (u64 BE) | secretbox(...)

secretbox = nonce (24) | XSalsa20-Poly1305 ciphertext of the payload.

Rows sealed under a key that is already secret (the profile database's) use
`seal_bound`: the ciphertext is bound to a caller-given slot name, so it opens only
where it was written (docs/protocol.md §6.1).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import nacl.bindings
import nacl.exceptions
import nacl.pwhash
import nacl.secret
import nacl.utils

from nyth.errors import AuthenticationError, DecodeError
from nyth.proto.identity import Identity

MAGIC = b"NYTHKEY1"
SALT_SIZE = nacl.pwhash.argon2id.SALTBYTES
_HEADER = struct.Struct(">8s16sIQ")
MAX_FILE_SIZE = 1 << 20

# Interactive limits keep a profile unlock under ~0.1 s on a 2-core machine while still
# costing an attacker 64 MiB per guess; a hardened deployment can raise them by env.
DEFAULT_OPSLIMIT = nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE
DEFAULT_MEMLIMIT = nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE


def derive_key(passphrase: str, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    if not passphrase:
        raise ValueError("passphrase must not be empty")
    return nacl.pwhash.argon2id.kdf(
        nacl.secret.SecretBox.KEY_SIZE, passphrase.encode("utf-8"), salt,
        opslimit=opslimit, memlimit=memlimit,
    )


def _check_kdf_params(opslimit: int, memlimit: int) -> None:
    if not (nacl.pwhash.argon2id.OPSLIMIT_MIN <= opslimit <= nacl.pwhash.argon2id.OPSLIMIT_SENSITIVE
            and nacl.pwhash.argon2id.MEMLIMIT_MIN <= memlimit
            <= nacl.pwhash.argon2id.MEMLIMIT_SENSITIVE):
        raise DecodeError("sealed key file has out-of-range KDF parameters")
    if memlimit % 1024:
        # Argon2 counts memory in KiB (memlimit // 1024): refuse non-canonical values, or a
        # changed low bit of this unauthenticated header would still open the file.
        raise DecodeError("sealed key file memlimit is not a whole number of KiB")


def seal(payload: bytes, passphrase: str, *, opslimit: int = DEFAULT_OPSLIMIT,
         memlimit: int = DEFAULT_MEMLIMIT) -> bytes:
    _check_kdf_params(opslimit, memlimit)  # never write a file open_sealed would refuse
    salt = nacl.utils.random(SALT_SIZE)
    key = derive_key(passphrase, salt, opslimit, memlimit)
    box = nacl.secret.SecretBox(key)
    return _HEADER.pack(MAGIC, salt, opslimit, memlimit) + bytes(box.encrypt(payload))


def open_sealed(data: bytes, passphrase: str) -> bytes:
    if len(data) > MAX_FILE_SIZE:
        raise DecodeError("sealed file is too large")
    if len(data) < _HEADER.size + 40 or not data.startswith(MAGIC):
        raise DecodeError("not a Nyth sealed key file")
    _magic, salt, opslimit, memlimit = _HEADER.unpack_from(data)
    _check_kdf_params(opslimit, memlimit)
    key = derive_key(passphrase, salt, opslimit, memlimit)
    try:
        return nacl.secret.SecretBox(key).decrypt(data[_HEADER.size:])
    except nacl.exceptions.CryptoError as exc:
        raise AuthenticationError("wrong passphrase or corrupted key file") from exc


BOUND_VERSION = 2
BOUND_AD_MAGIC = b"NYTHROW2"
BOUND_NONCE_SIZE = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
BOUND_OVERHEAD = 1 + BOUND_NONCE_SIZE + nacl.bindings.crypto_aead_xchacha20poly1305_ietf_ABYTES


def seal_bound(key: bytes, plaintext: bytes, slot: bytes) -> bytes:
    """0x02 ‖ nonce (24) ‖ XChaCha20-Poly1305-IETF(plaintext, AD = "NYTHROW2" ‖ slot).

    The AD makes the row open only under the same slot name, so a row copied or swapped
    into another place fails authentication instead of being read as that place's value.
    """
    nonce = nacl.utils.random(BOUND_NONCE_SIZE)
    sealed = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        plaintext, BOUND_AD_MAGIC + slot, nonce, key)
    return bytes([BOUND_VERSION]) + nonce + sealed


def open_bound(key: bytes, blob: bytes, slot: bytes) -> bytes:
    """Inverse of seal_bound; AuthenticationError for anything not sealed for this slot."""
    if len(blob) < BOUND_OVERHEAD or blob[0] != BOUND_VERSION:
        raise AuthenticationError(
            f"not a format-{BOUND_VERSION} sealed row (first byte {blob[:1].hex() or 'none'})")
    nonce, sealed = blob[1 : 1 + BOUND_NONCE_SIZE], blob[1 + BOUND_NONCE_SIZE :]
    try:
        return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            sealed, BOUND_AD_MAGIC + slot, nonce, key)
    except nacl.exceptions.CryptoError as exc:
        raise AuthenticationError(
            "sealed row failed authentication: it was changed, or moved here from another "
            "slot") from exc


def write_private_file(path: Path, data: bytes) -> None:
    """Atomically write a file only the owner can read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@contextlib.contextmanager
def creation_lock(directory: Path) -> Iterator[None]:
    """Held while a key file in directory is read or created: replicas of one service that
    share a data volume (a Swarm stack) start together, and two of them creating a key at
    once would each go on with a key the other overwrote."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / ".create.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def load_identity(path: Path, passphrase: str) -> Identity:
    """An identity sealed under passphrase at path (FileNotFoundError when there is none)."""
    return Identity.from_seed(open_sealed(path.read_bytes(), passphrase))


def load_or_create_identity(path: Path, passphrase: str) -> Identity:
    """The service's long-term identity, sealed under passphrase at path."""
    with creation_lock(path.parent):
        if path.exists():
            return load_identity(path, passphrase)
        identity = Identity.generate()
        write_private_file(path, seal(identity.seed, passphrase))
        return identity
