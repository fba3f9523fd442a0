"""The X25519 keys of our contact cards: offline records are sealed to them.

Each card gets a fresh random key, not one derived from the identity: the identity's
private half also goes to the (shared) tor gateway in ADD_ONION, and a mailbox keeping
ciphertexts plus a later compromise of that key would otherwise open every offline
message ever sent. A replaced card's key is kept only while records sealed to it can
still be on the mailbox — senders may use the card until it expires, and the mailbox
keeps a record for its bundle's retention window after that — and then deleted, which
is what gives offline records forward secrecy.

Stored in the profile store (rows sealed with the profile's storage key), as the FMD
secret is: one row, a list of {secret, public, expires_at, retention, published}.
"""

from __future__ import annotations

import base64
from typing import Any

import nacl.public

from nyth_peer.store import Store

_COLLECTION, _ROW = "mailbox", "card_keys"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class CardKeys:
    def __init__(self, store: Store) -> None:
        self.store = store

    def _entries(self) -> list[dict[str, Any]]:
        row = self.store.get(_COLLECTION, _ROW)
        return list(row["keys"]) if row is not None else []

    def _save(self, entries: list[dict[str, Any]]) -> None:
        self.store.put(_COLLECTION, _ROW, {"keys": entries})

    def for_new_card(self, expires_at: int, retention: int) -> bytes:
        """The public key for a card about to be published: a fresh one, or the key of a
        card whose upload failed (so retries against a refusing mailbox do not pile up
        keys). Stored before the card leaves, so a record sealed to it always opens."""
        entries = self._entries()
        pending = next((e for e in entries if not e["published"]), None)
        if pending is None:
            private = nacl.public.PrivateKey.generate()
            pending = {"secret": _b64(bytes(private)), "public": _b64(bytes(private.public_key)),
                       "published": False}
            entries.append(pending)
        pending["expires_at"], pending["retention"] = int(expires_at), int(retention)
        self._save(entries)
        return base64.b64decode(pending["public"])

    def published(self, public: bytes) -> None:
        entries = self._entries()
        for entry in entries:
            if entry["public"] == _b64(public):
                entry["published"] = True
        self._save(entries)

    def has(self, public: bytes) -> bool:
        return any(e["public"] == _b64(public) for e in self._entries())

    def prune(self, now: float) -> list[dict[str, Any]]:
        """Delete the keys whose records can no longer be on the mailbox; the rest."""
        entries = self._entries()
        keep = [e for e in entries if now < e["expires_at"] + e["retention"]]
        if len(keep) != len(entries):
            self._save(keep)
        return keep

    def secrets(self, now: float) -> list[bytes]:
        """The secrets that may still open a record, newest first (after pruning)."""
        return [base64.b64decode(e["secret"]) for e in reversed(self.prune(now))]
