"""A user's profile on disk: identity and storage key sealed under the passphrase.

    <data dir>/profile.key   keystore-sealed: seed (32) | storage key (32) | name (UTF-8)
    <data dir>/profile.db    Store sealed with the storage key
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import nyth.keystore as keystore
from nyth.errors import DecodeError
from nyth.proto.identity import Identity

from nyth_peer.store import Store

MAX_NAME_CHARS = 64
# Profile creation runs in worker threads (the API's, the startup's): without this two
# concurrent creations could each write a key, the engine running with one and the
# other left on disk. O_EXCL on the key file covers other processes.
_create_lock = threading.Lock()


class ProfileExistsError(Exception):
    pass


class NoProfileError(Exception):
    pass


@dataclass
class Profile:
    name: str
    identity: Identity
    store: Store

    @staticmethod
    def key_path(data_dir: Path) -> Path:
        return data_dir / "profile.key"

    @classmethod
    def exists(cls, data_dir: Path) -> bool:
        return cls.key_path(data_dir).exists()

    @classmethod
    def create(cls, data_dir: Path, name: str, passphrase: str) -> Profile:
        name = name.strip()
        if not name or len(name) > MAX_NAME_CHARS:
            raise DecodeError(f"profile name must be 1..{MAX_NAME_CHARS} characters")
        if len(passphrase) < 8:
            raise DecodeError("passphrase must be at least 8 characters")
        with _create_lock:
            if cls.exists(data_dir):
                raise ProfileExistsError("a profile already exists in this data directory")
            data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            identity = Identity.generate()
            storage_key = os.urandom(32)
            sealed = keystore.seal(identity.seed + storage_key + name.encode("utf-8"), passphrase)
            cls._write_key_exclusively(cls.key_path(data_dir), sealed)
            return cls(name, identity, Store(data_dir / "profile.db", storage_key))

    @staticmethod
    def _write_key_exclusively(path: Path, data: bytes) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError as exc:
            raise ProfileExistsError("a profile already exists in this data directory") from exc
        try:
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            # A partial key would read as a profile that no passphrase unlocks.
            path.unlink(missing_ok=True)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    @classmethod
    def unlock(cls, data_dir: Path, passphrase: str) -> Profile:
        """Raises NoProfileError, or nyth.errors.AuthenticationError on a wrong passphrase."""
        path = cls.key_path(data_dir)
        if not path.exists():
            raise NoProfileError("no profile in this data directory")
        payload = keystore.open_sealed(path.read_bytes(), passphrase)
        seed, storage_key, name = payload[:32], payload[32:64], payload[64:].decode("utf-8")
        return cls(name, Identity.from_seed(seed), Store(data_dir / "profile.db", storage_key))
