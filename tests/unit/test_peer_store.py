"""Profile database rows are bound to their slot (collection ‖ key): a row copied or
swapped into another slot does not open. Format-1 rows (secretbox, unbound) of an older
profile are read once, rewritten as format 2, and refused after that."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path

import nacl.bindings
import nacl.secret
import pytest
from nyth.errors import AuthenticationError
from nyth_peer.store import Store

KEY = bytes(range(32))


def _name(text: str) -> bytes:
    name_key = hashlib.blake2b(KEY, digest_size=32, person=b"nyth-store-name").digest()
    return hashlib.blake2b(text.encode(), key=name_key, digest_size=16).digest()


def _raw(path: Path, collection: str, key: str) -> bytes:
    with sqlite3.connect(path) as db:
        row = db.execute("SELECT value FROM records WHERE collection=? AND key=?",
                         (_name(collection), _name(key))).fetchone()
    assert row is not None
    return bytes(row[0])


def _overwrite(path: Path, collection: str, key: str, value: bytes) -> None:
    with sqlite3.connect(path) as db:
        changed = db.execute("UPDATE records SET value=? WHERE collection=? AND key=?",
                             (value, _name(collection), _name(key))).rowcount
    assert changed == 1


@pytest.fixture
def filled(tmp_path: Path) -> Path:
    path = tmp_path / "profile.db"
    store = Store(path, KEY)
    store.put("contacts", "alice", {"name": "alice", "state": "accepted"})
    store.put("contacts", "mallory", {"name": "mallory", "state": "refused"})
    store.put("outbox", "alice", {"text": "hello"})
    store.close()
    return path


def test_rows_open_where_they_were_written(filled: Path) -> None:
    store = Store(filled, KEY)
    assert store.get("contacts", "alice") == {"name": "alice", "state": "accepted"}
    assert [r["name"] for r in store.list("contacts")] == ["alice", "mallory"]
    assert store.get("outbox", "alice") == {"text": "hello"}


def test_a_row_copied_to_another_key_of_the_same_collection_does_not_open(filled: Path) -> None:
    _overwrite(filled, "contacts", "mallory", _raw(filled, "contacts", "alice"))
    store = Store(filled, KEY)
    with pytest.raises(AuthenticationError, match="moved here from another slot"):
        store.get("contacts", "mallory")
    with pytest.raises(AuthenticationError, match="moved here from another slot"):
        store.list("contacts")
    assert store.get("contacts", "alice") == {"name": "alice", "state": "accepted"}


def test_swapped_rows_do_not_open(filled: Path) -> None:
    alice, mallory = _raw(filled, "contacts", "alice"), _raw(filled, "contacts", "mallory")
    _overwrite(filled, "contacts", "alice", mallory)
    _overwrite(filled, "contacts", "mallory", alice)
    store = Store(filled, KEY)
    for key in ("alice", "mallory"):
        with pytest.raises(AuthenticationError, match="slot"):
            store.get("contacts", key)


def test_a_row_copied_to_another_collection_does_not_open(filled: Path) -> None:
    _overwrite(filled, "outbox", "alice", _raw(filled, "contacts", "alice"))
    store = Store(filled, KEY)
    with pytest.raises(AuthenticationError, match="moved here from another slot"):
        store.get("outbox", "alice")


def test_row_layout(filled: Path) -> None:
    # 0x02 ‖ nonce (24) ‖ XChaCha20-Poly1305-IETF under BLAKE2b-256(storage key,
    # person="nyth-store-row"), AD = "NYTHROW2" ‖ collection name ‖ key name.
    raw = _raw(filled, "outbox", "alice")
    assert raw[0] == 2
    row_key = hashlib.blake2b(KEY, digest_size=32, person=b"nyth-store-row").digest()
    plain = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
        raw[25:], b"NYTHROW2" + _name("outbox") + _name("alice"), raw[1:25], row_key)
    assert json.loads(plain) == {"text": "hello"}
    assert len(raw) == 1 + 24 + len(plain) + 16


def _old_profile(path: Path) -> dict[tuple[str, str], dict[str, object]]:
    """A database as the previous version wrote it: no meta table, secretbox rows."""
    rows: dict[tuple[str, str], dict[str, object]] = {
        ("contacts", "alice"): {"name": "alice"}, ("contacts", "bob"): {"name": "bob"},
        ("outbox", "m1"): {"text": "queued"}}
    box = nacl.secret.SecretBox(KEY)
    with sqlite3.connect(path) as db:
        db.executescript("""
            CREATE TABLE records (collection BLOB NOT NULL, key BLOB NOT NULL,
                seq INTEGER NOT NULL, value BLOB NOT NULL, PRIMARY KEY (collection, key));
            CREATE INDEX records_by_seq ON records (collection, seq);""")
        for seq, ((collection, key), value) in enumerate(rows.items(), 1):
            sealed = bytes(box.encrypt(json.dumps(value).encode()))
            db.execute("INSERT INTO records VALUES (?,?,?,?)",
                       (_name(collection), _name(key), seq, sealed))
    return rows


def test_old_format_rows_still_read_and_are_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "profile.db"
    rows = _old_profile(path)
    old_alice = _raw(path, "contacts", "alice")
    store = Store(path, KEY)
    for (collection, key), value in rows.items():
        assert store.get(collection, key) == value
    assert store.list("contacts") == [{"name": "alice"}, {"name": "bob"}]
    store.close()
    for collection, key in rows:
        assert _raw(path, collection, key)[0] == 2
    # Migrated once: an old-format row planted afterwards is refused, so unbound rows
    # cannot be used to get around the binding.
    _overwrite(path, "contacts", "bob", old_alice)
    store = Store(path, KEY)
    with pytest.raises(AuthenticationError, match="not a format-2 sealed row"):
        store.get("contacts", "bob")
    assert store.get("contacts", "alice") == {"name": "alice"}


def test_an_unreadable_old_row_does_not_stop_the_migration(tmp_path: Path) -> None:
    path = tmp_path / "profile.db"
    _old_profile(path)
    _overwrite(path, "contacts", "bob", os.urandom(60))
    store = Store(path, KEY)
    assert store.get("contacts", "alice") == {"name": "alice"}
    with pytest.raises(AuthenticationError):
        store.get("contacts", "bob")


def test_an_unknown_row_format_is_refused(filled: Path) -> None:
    with sqlite3.connect(filled) as db:
        db.execute("UPDATE meta SET value=3 WHERE name='row_format'")
    with pytest.raises(AuthenticationError, match="row format 3"):
        Store(filled, KEY)
