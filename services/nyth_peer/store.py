"""The profile's on-disk state: SQLite whose rows are sealed with the profile key.

Row values are sealed JSON; collection names and row keys are keyed BLAKE2b hashes, so
the file shows neither contacts' onion addresses nor group ids. Rows keep their insertion
order (seq), which is the order conversations are shown in.

Row format 2 (current): XChaCha20-Poly1305 with the row's slot (collection name ‖ key
name, as stored) as associated data (`nyth.keystore.seal_bound`), so whoever can write
the file cannot swap rows between keys or collections: a moved row fails to open.
Format 1 (before): secretbox without any binding. A database without the `row_format`
mark in `meta` holds only format-1 rows; opening it rewrites them all as format 2 in one
transaction and sets the mark, after which format-1 rows are refused (docs/protocol.md §6.1).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.secret
from nyth import keystore
from nyth.errors import AuthenticationError

log = logging.getLogger(__name__)

ROW_FORMAT = keystore.BOUND_VERSION

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    collection BLOB NOT NULL,
    key BLOB NOT NULL,
    seq INTEGER NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (collection, key)
);
CREATE INDEX IF NOT EXISTS records_by_seq ON records (collection, seq);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


class Store:
    def __init__(self, path: Path, storage_key: bytes) -> None:
        self._name_key = hashlib.blake2b(storage_key, digest_size=32, person=b"nyth-store-name").digest()
        # Its own key for the AEAD, rather than the format-1 secretbox key again.
        self._row_key = hashlib.blake2b(storage_key, digest_size=32, person=b"nyth-store-row").digest()
        self._legacy_box = nacl.secret.SecretBox(storage_key)
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
        self._migrate()
        for suffix in ("-wal", "-shm"):   # left by an older version with a laxer mode
            side = path.with_name(path.name + suffix)
            if side.exists():
                side.chmod(0o600)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _name(self, text: str) -> bytes:
        return hashlib.blake2b(text.encode(), key=self._name_key, digest_size=16).digest()

    def _seal(self, value: dict[str, Any], c: bytes, k: bytes) -> bytes:
        return keystore.seal_bound(
            self._row_key, json.dumps(value, separators=(",", ":")).encode(), c + k)

    def _open(self, blob: bytes, c: bytes, k: bytes) -> dict[str, Any]:
        try:
            return json.loads(keystore.open_bound(self._row_key, blob, c + k))
        except AuthenticationError as exc:
            raise AuthenticationError(f"profile database row (slot {c.hex()}/{k.hex()}): "
                                      f"{exc}") from exc

    def _migrate(self) -> None:
        """Rewrite format-1 rows as format 2 once, then mark the database."""
        with self.transaction():
            row = self._db.execute("SELECT value FROM meta WHERE name='row_format'").fetchone()
            if row is not None:
                if row[0] != ROW_FORMAT:
                    raise AuthenticationError(
                        f"profile database row format {row[0]} is not {ROW_FORMAT}, the only "
                        "one this version reads")
                return
            rows = self._db.execute("SELECT collection, key, value FROM records").fetchall()
            failed = 0
            for c, k, blob in rows:
                try:
                    plain = self._legacy_box.decrypt(blob)
                except nacl.exceptions.CryptoError:
                    # Left as it is: it fails to open when read, as it did before.
                    failed += 1
                    continue
                self._db.execute("UPDATE records SET value=? WHERE collection=? AND key=?",
                                 (keystore.seal_bound(self._row_key, plain, c + k), c, k))
            self._db.execute("INSERT INTO meta (name, value) VALUES ('row_format', ?)",
                             (ROW_FORMAT,))
            if rows:
                log.info("profile database: %d rows rewritten in row format %d "
                         "(bound to their slot)%s", len(rows) - failed, ROW_FORMAT,
                         f"; {failed} did not authenticate and were left" if failed else "")

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
                                 (self._seal(value, c, k), c, k))
                return
            seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM records WHERE collection=?",
                                   (c,)).fetchone()[0]
            self._db.execute("INSERT INTO records (collection, key, seq, value) VALUES (?,?,?,?)",
                             (c, k, seq, self._seal(value, c, k)))

    def get(self, collection: str, key: str) -> dict[str, Any] | None:
        c, k = self._name(collection), self._name(key)
        with self._lock:
            row = self._db.execute("SELECT value FROM records WHERE collection=? AND key=?",
                                   (c, k)).fetchone()
        return None if row is None else self._open(row[0], c, k)

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
        c = self._name(collection)
        with self._lock:
            if limit is None:
                rows = self._db.execute(
                    "SELECT key, value FROM records WHERE collection=? ORDER BY seq",
                    (c,)).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT key, value FROM records WHERE collection=? ORDER BY seq DESC LIMIT ?",
                    (c, limit)).fetchall()[::-1]
        return [self._open(value, c, k) for k, value in rows]
