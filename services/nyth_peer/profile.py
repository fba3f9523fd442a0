"""A user's profile on disk: identity and storage key sealed under the passphrase.

    <data dir>/profile.key   keystore-sealed: seed (32) | storage key (32) | name (UTF-8)
    <data dir>/profile.db    Store sealed with the storage key
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nyth.keystore as keystore
from nyth.errors import DecodeError
from nyth.proto.identity import Identity

from nyth_peer.store import Store

MAX_NAME_CHARS = 64


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
        if cls.exists(data_dir):
            raise ProfileExistsError("a profile already exists in this data directory")
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        identity = Identity.generate()
        storage_key = os.urandom(32)
        keystore.write_private_file(
            cls.key_path(data_dir),
            keystore.seal(identity.seed + storage_key + name.encode("utf-8"), passphrase),
        )
        return cls(name, identity, Store(data_dir / "profile.db", storage_key))

    @classmethod
    def unlock(cls, data_dir: Path, passphrase: str) -> Profile:
        """Raises NoProfileError, or nyth.errors.AuthenticationError on a wrong passphrase."""
        path = cls.key_path(data_dir)
        if not path.exists():
            raise NoProfileError("no profile in this data directory")
        payload = keystore.open_sealed(path.read_bytes(), passphrase)
        seed, storage_key, name = payload[:32], payload[32:64], payload[64:].decode("utf-8")
        return cls(name, Identity.from_seed(seed), Store(data_dir / "profile.db", storage_key))
