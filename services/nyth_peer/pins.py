"""The pins this profile holds: group servers (table "pins"), mailboxes ("mailbox_pins")
and discovery indexes ("index_pins").

Pinning itself is `nyth.proto.pinning`. On top of it this keeps what a user needs to act
on a refusal: the bundle the server presented instead (so a re-pin accepts exactly what
was shown, named by its hash) and what changed.

Row: {"bundle": b64, "pinned_at": unix s (absent on pins made before it was recorded),
"presented": b64 and "presented_at": unix s while the server presents another bundle}.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nyth.errors import (
    AuthenticationError,
    BundleChangedError,
    DecodeError,
    NythError,
    RepinMismatchError,
)
from nyth.proto import fmd
from nyth.proto.bundle import ServerBundle
from nyth.proto.discovery import IndexBundle
from nyth.proto.group import BLOB_SIZE
from nyth.proto.identity import normalize_onion
from nyth.proto.mailbox_bundle import MailboxBundle
from nyth.proto.pinning import (
    accept_reviewed,
    bundle_changes,
    bundle_limits,
    bundle_sha256,
    check_pin,
    refusal,
)

from nyth_peer.store import Store

log = logging.getLogger(__name__)


class UnusableBundleError(NythError):
    """A valid bundle whose promises this peer cannot work with (e.g. another blob size)."""


class UnknownServerError(NythError):
    """No pin is held for that onion."""


@dataclass(frozen=True)
class PinKind:
    name: str
    table: str
    verify: Callable[[bytes, str | None], Any]
    # Why a verified bundle cannot be used by this peer, or None.
    unusable: Callable[[Any], str | None]


def _group_unusable(bundle: ServerBundle) -> str | None:
    if bundle.blob_size == BLOB_SIZE:
        return None
    return f"it stores {bundle.blob_size}-byte blobs, Nyth groups need {BLOB_SIZE}"


def _mailbox_unusable(bundle: MailboxBundle) -> str | None:
    if bundle.tag_size == fmd.TAG_SIZE:
        return None
    return f"it uses {bundle.tag_size}-byte tags, we need {fmd.TAG_SIZE}"


GROUP = PinKind("group", "pins", ServerBundle.verify, _group_unusable)
MAILBOX = PinKind("mailbox", "mailbox_pins", MailboxBundle.verify, _mailbox_unusable)
KINDS = {kind.name: kind for kind in (GROUP, MAILBOX)}
# Discovery indexes (nyth_peer.discovery): pinned like servers, listed apart from them (an
# index is not a server a group or a mailbox uses).
INDEX = PinKind("index", "index_pins", IndexBundle.verify, lambda bundle: None)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _bytes(text: str) -> bytes:
    return base64.b64decode(text)


def _bundle_view(bundle: Any, data: bytes) -> dict[str, Any]:
    return {"bundle_sha256": bundle_sha256(data), "limits": bundle_limits(bundle),
            "issued_at": bundle.issued_at}


class Pins:
    def __init__(self, store: Store) -> None:
        self.store = store

    def kind_of(self, onion: str) -> PinKind:
        for kind in KINDS.values():
            if self.store.has(kind.table, onion):
                return kind
        raise UnknownServerError(f"no pinned server {onion}.onion")

    def pinned(self, kind: PinKind, onion: str) -> bytes | None:
        row = self.store.get(kind.table, onion)
        return None if row is None else _bytes(row["bundle"])

    def refusal(self, kind: PinKind, onion: str) -> str | None:
        """Why the server is refused, while the last bundle it presented is not the pinned
        one (kept across restarts, so nothing is sent to it before it is checked again)."""
        row = self.store.get(kind.table, onion)
        if row is None or "presented" not in row:
            return None
        changes = bundle_changes(kind.verify(_bytes(row["bundle"]), onion),
                                 kind.verify(_bytes(row["presented"]), onion))
        return refusal(onion, changes)

    def check(self, kind: PinKind, onion: str, presented: bytes) -> Any:
        """The verified bundle, pinned on first use. On a change, what was presented is
        kept for the user to review, and BundleChangedError is raised."""
        onion = normalize_onion(onion)
        row = self.store.get(kind.table, onion)
        try:
            bundle = check_pin(onion, presented, None if row is None else _bytes(row["bundle"]),
                               kind.verify)
        except BundleChangedError:
            assert row is not None
            self._remember_presented(kind, onion, row, presented)
            raise
        if row is None:
            self._refuse_unusable(kind, onion, bundle)
            self.store.put(kind.table, onion, {"bundle": _b64(presented), "pinned_at": time.time()})
        else:
            self._remember_presented(kind, onion, row, presented)
        return bundle

    def repin(self, kind: PinKind, onion: str, fresh: bytes, reviewed_sha256: str) -> Any:
        """Pin fresh (just fetched from the server) if it verifies and is exactly the
        bundle the user reviewed; otherwise pin nothing and keep fresh for review."""
        onion = normalize_onion(onion)
        row = self.store.get(kind.table, onion)
        if row is None:
            raise UnknownServerError(f"no pinned server {onion}.onion")
        try:
            bundle = accept_reviewed(onion, fresh, reviewed_sha256, kind.verify)
        except RepinMismatchError:
            self._remember_presented(kind, onion, row, fresh)
            raise
        self._refuse_unusable(kind, onion, bundle)
        self.store.put(kind.table, onion, {"bundle": _b64(fresh), "pinned_at": time.time()})
        return bundle

    def views(self) -> list[dict[str, Any]]:
        """Every pin: kind, pinned bundle, and the differing bundle presented, if any.

        A pin that no longer verifies (the rules tightened since it was pinned, e.g. the
        proof-of-work maximum) is left out here rather than failing the whole list: the
        service using it shows why it is refused."""
        views = []
        for kind in KINDS.values():
            for row in self.store.list(kind.table):
                try:
                    views.append(self._view(kind, row))
                except (DecodeError, AuthenticationError) as exc:
                    log.warning("a pinned %s bundle no longer verifies and is not listed: %s",
                                kind.name, exc)
        return views

    def view(self, onion: str) -> dict[str, Any]:
        kind = self.kind_of(onion)
        row = self.store.get(kind.table, onion)
        assert row is not None
        return self._view(kind, row)

    def _view(self, kind: PinKind, row: dict[str, Any]) -> dict[str, Any]:
        data = _bytes(row["bundle"])
        # Rows are keyed by a hash of the onion; the onion itself is in the bundle.
        pinned = kind.verify(data, None)
        view = {"onion": pinned.onion, "kind": kind.name, "pinned": _bundle_view(pinned, data),
                "pinned_at": row.get("pinned_at"), "presented": None}
        if "presented" in row:
            shown = _bytes(row["presented"])
            presented = kind.verify(shown, pinned.onion)
            view["presented"] = {**_bundle_view(presented, shown),
                                 "changes": list(bundle_changes(pinned, presented)),
                                 "seen_at": row["presented_at"]}
        return view

    def _remember_presented(self, kind: PinKind, onion: str, row: dict[str, Any],
                            presented: bytes) -> None:
        if presented == _bytes(row["bundle"]):
            # Back to the pinned bundle (the operator reverted): nothing left to review.
            if "presented" in row:
                row.pop("presented")
                row.pop("presented_at", None)
                self.store.put(kind.table, onion, row)
        elif row.get("presented") != _b64(presented):
            row.update(presented=_b64(presented), presented_at=time.time())
            self.store.put(kind.table, onion, row)

    @staticmethod
    def _refuse_unusable(kind: PinKind, onion: str, bundle: Any) -> None:
        reason = kind.unusable(bundle)
        if reason is not None:
            raise UnusableBundleError(f"{onion}.onion cannot be used: {reason}")
