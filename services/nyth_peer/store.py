"""The profile's on-disk state: SQLite whose rows are sealed with the profile key.

Row values are XSalsa20-Poly1305 sealed JSON; collection names and row keys are keyed
BLAKE2b hashes, so the file shows neither contacts' onion addresses nor group ids.
Rows keep their insertion order (seq), which is the order conversations are shown in.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.secret
from nyth.errors import AuthenticationError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    collection BLOB NOT NULL,
    key BLOB NOT NULL,
    seq INTEGER NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (collection, key)
);
CREATE INDEX IF NOT EXISTS records_by_seq ON records (collection, seq);
"""


class Store:
    def __init__(self, path: Path, storage_key: bytes) -> None:
        self._box = nacl.secret.SecretBox(storage_key)
        self._name_key = hashlib.blake2b(storage_key, digest_size=32, person=b"nyth-store-name").digest()
        self._lock = threading.RLock()
        self._depth = 0
        # SQLite gives the -wal and -shm files the database file's mode, so the database
        # must be 0600 before SQLite opens it, whatever the umask.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        path.chmod(0o600)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a message the API reported as queued must survive a power cut.
        self._db.execute("PRAGMA synchronous=FULL")
        # Deleted rows are overwritten, not left in free pages: an expired contact-card
        # key (forward secrecy of offline records) must be gone, not just unlinked.
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.executescript(_SCHEMA)
        for suffix in ("-wal", "-shm"):   # left by an older version with a laxer mode
            side = path.with_name(path.name + suffix)
            if side.exists():
                side.chmod(0o600)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _name(self, text: str) -> bytes:
        return hashlib.blake2b(text.encode(), key=self._name_key, digest_size=16).digest()

    def _seal(self, value: dict[str, Any]) -> bytes:
        return bytes(self._box.encrypt(json.dumps(value, separators=(",", ":")).encode()))

    def _open(self, blob: bytes) -> dict[str, Any]:
        try:
            return json.loads(self._box.decrypt(blob))
        except nacl.exceptions.CryptoError as exc:
            raise AuthenticationError("profile database row failed authentication") from exc

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All-or-nothing; nested calls join the outermost transaction."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self._db.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            finally:
                self._depth = 0
            self._db.execute("COMMIT")

    def put(self, collection: str, key: str, value: dict[str, Any]) -> None:
        c, k = self._name(collection), self._name(key)
        with self._lock:
            row = self._db.execute("SELECT seq FROM records WHERE collection=? AND key=?",
                                   (c, k)).fetchone()
            if row is not None:
                self._db.execute("UPDATE records SET value=? WHERE collection=? AND key=?",
                                 (self._seal(value), c, k))
                return
            seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM records WHERE collection=?",
                                   (c,)).fetchone()[0]
            self._db.execute("INSERT INTO records (collection, key, seq, value) VALUES (?,?,?,?)",
                             (c, k, seq, self._seal(value)))

    def get(self, collection: str, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM records WHERE collection=? AND key=?",
                                   (self._name(collection), self._name(key))).fetchone()
        return None if row is None else self._open(row[0])

    def has(self, collection: str, key: str) -> bool:
        with self._lock:
            return self._db.execute(
                "SELECT 1 FROM records WHERE collection=? AND key=?",
                (self._name(collection), self._name(key))).fetchone() is not None

    def delete(self, collection: str, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM records WHERE collection=? AND key=?",
                             (self._name(collection), self._name(key)))

    def clear(self, collection: str) -> None:
        """Delete every row of collection."""
        with self._lock:
            self._db.execute("DELETE FROM records WHERE collection=?", (self._name(collection),))

    def list(self, collection: str, *, limit: int | None = None) -> list[dict[str, Any]]:
        """Rows in insertion order; with limit, the newest `limit` rows (still oldest first)."""
        with self._lock:
            if limit is None:
                rows = self._db.execute(
                    "SELECT value FROM records WHERE collection=? ORDER BY seq",
                    (self._name(collection),)).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT value FROM records WHERE collection=? ORDER BY seq DESC LIMIT ?",
                    (self._name(collection), limit)).fetchall()[::-1]
        return [self._open(r[0]) for r in rows]
