"""The peer's pins in its (sealed, real SQLite) store: first use, a refused change kept
for review, and a re-pin that takes only the reviewed bundle — for group servers and
mailboxes alike."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest
from nyth.errors import AuthenticationError, BundleChangedError, RepinMismatchError
from nyth.proto.bundle import ServerBundle
from nyth.proto.identity import Identity
from nyth.proto.mailbox_bundle import MailboxBundle
from nyth.proto.pinning import bundle_sha256
from nyth_peer.pins import GROUP, MAILBOX, Pins, UnknownServerError, UnusableBundleError
from nyth_peer.store import Store

SERVER = Identity.from_seed(b"G" * 32)
MAILBOX_ID = Identity.from_seed(b"M" * 32)


def group(**overrides: Any) -> bytes:
    fields: dict[str, Any] = {
        "onion_public_key": SERVER.public_key, "token_public_key": bytes(32),
        "blob_size": 2048, "max_blobs": 100_000, "max_age_seconds": 604_800,
        "issued_at": 1_800_000_000,
    }
    return ServerBundle(**{**fields, **overrides}).sign(SERVER)


def mailbox(**overrides: Any) -> bytes:
    fields: dict[str, Any] = {
        "onion_public_key": MAILBOX_ID.public_key, "tag_size": 67, "record_size": 2304,
        "max_records": 100_000, "max_age_seconds": 604_800, "pow_bits": 20,
        "issued_at": 1_800_000_000,
    }
    return MailboxBundle(**{**fields, **overrides}).sign(MAILBOX_ID)


@pytest.fixture
def pins(tmp_path: Path) -> Pins:
    return Pins(Store(tmp_path / "db.sqlite", os.urandom(32)))


def test_first_use_pins_and_lists_the_server(pins: Pins) -> None:
    pins.check(GROUP, SERVER.onion, group())
    pins.check(MAILBOX, MAILBOX_ID.onion, mailbox())
    views = {v["onion"]: v for v in pins.views()}
    assert views[SERVER.onion]["kind"] == "group"
    assert views[SERVER.onion]["pinned"] == {
        "bundle_sha256": bundle_sha256(group()), "issued_at": 1_800_000_000,
        "limits": {"blob_size": 2048, "max_blobs": 100_000, "max_age_seconds": 604_800,
                   "token_pow_bits": 0}}
    assert views[MAILBOX_ID.onion]["kind"] == "mailbox"
    assert views[MAILBOX_ID.onion]["pinned"]["limits"]["pow_bits"] == 20
    assert all(v["presented"] is None and v["pinned_at"] for v in views.values())
    assert pins.kind_of(MAILBOX_ID.onion) is MAILBOX


@pytest.mark.parametrize(("kind", "onion", "make", "change", "shown"), [
    (GROUP, SERVER.onion, group, {"max_age_seconds": 86_400}, "max_age_seconds 604800 -> 86400"),
    (MAILBOX, MAILBOX_ID.onion, mailbox, {"pow_bits": 22}, "pow_bits 20 -> 22"),
])
def test_a_change_is_refused_kept_for_review_and_re_pinned_only_by_its_hash(
        pins: Pins, kind: Any, onion: str, make: Any, change: dict[str, int], shown: str) -> None:
    pins.check(kind, onion, make())
    changed = make(**change, issued_at=1_800_000_100)
    with pytest.raises(BundleChangedError):
        pins.check(kind, onion, changed)
    presented = pins.view(onion)["presented"]
    assert presented["bundle_sha256"] == bundle_sha256(changed)
    assert presented["changes"] == [shown, "issued_at 1800000000 -> 1800000100"]
    assert pins.pinned(kind, onion) == make()
    refusal = pins.refusal(kind, onion)
    assert refusal is not None and shown in refusal and f"nyth server repin {onion}" in refusal

    # The server now presents yet another bundle: the re-pin of what was reviewed fails,
    # the pin stays, and the new one is what is shown for review.
    other = make(**change, issued_at=1_800_000_200)
    with pytest.raises(RepinMismatchError):
        pins.repin(kind, onion, other, presented["bundle_sha256"])
    assert pins.pinned(kind, onion) == make()
    assert pins.view(onion)["presented"]["bundle_sha256"] == bundle_sha256(other)

    pins.repin(kind, onion, other, bundle_sha256(other))
    assert pins.pinned(kind, onion) == other
    assert pins.view(onion)["presented"] is None and pins.refusal(kind, onion) is None
    assert pins.check(kind, onion, other)  # what is pinned now is accepted as is


def test_a_revert_by_the_operator_leaves_nothing_to_review(pins: Pins) -> None:
    pins.check(GROUP, SERVER.onion, group())
    with pytest.raises(BundleChangedError):
        pins.check(GROUP, SERVER.onion, group(max_blobs=10))
    pins.check(GROUP, SERVER.onion, group())
    assert pins.view(SERVER.onion)["presented"] is None
    assert pins.refusal(GROUP, SERVER.onion) is None


def test_an_invalid_bundle_is_neither_pinned_nor_kept_for_review(pins: Pins) -> None:
    pins.check(GROUP, SERVER.onion, group())
    forged = group(max_blobs=10)
    forged = forged[:-1] + bytes([forged[-1] ^ 1])
    with pytest.raises(AuthenticationError):
        pins.check(GROUP, SERVER.onion, forged)
    with pytest.raises(AuthenticationError):
        pins.repin(GROUP, SERVER.onion, forged, bundle_sha256(forged))
    assert pins.pinned(GROUP, SERVER.onion) == group()
    assert pins.view(SERVER.onion)["presented"] is None


def test_a_bundle_this_peer_cannot_use_is_never_pinned(pins: Pins) -> None:
    with pytest.raises(UnusableBundleError, match="1024-byte blobs"):
        pins.check(GROUP, SERVER.onion, group(blob_size=1024))
    assert pins.views() == []
    pins.check(GROUP, SERVER.onion, group())
    unusable = group(blob_size=1024)
    with pytest.raises(UnusableBundleError):
        pins.repin(GROUP, SERVER.onion, unusable, bundle_sha256(unusable))
    assert pins.pinned(GROUP, SERVER.onion) == group()


def test_unknown_servers(pins: Pins) -> None:
    with pytest.raises(UnknownServerError):
        pins.kind_of(SERVER.onion)
    with pytest.raises(UnknownServerError):
        pins.repin(GROUP, SERVER.onion, group(), bundle_sha256(group()))


def test_a_pin_that_no_longer_verifies_does_not_hide_the_others(pins: Pins) -> None:
    """A mailbox pinned when 25-bit proof of work was still accepted: the list of servers
    still answers, without it (its mailbox state says why it is refused)."""
    import struct
    import time

    from nyth.proto.mailbox_bundle import MAGIC

    body = MAGIC + MAILBOX_ID.public_key + struct.pack(
        ">HIQQBQ", 67, 2304, 100_000, 604_800, 25, int(time.time()))
    too_much = body + MAILBOX_ID.sign(body)
    with pytest.raises(Exception, match="25-bit proof of work"):
        MailboxBundle.verify(too_much, MAILBOX_ID.onion)
    pins.check(GROUP, SERVER.onion, group())
    pins.store.put(MAILBOX.table, MAILBOX_ID.onion, {"bundle": base64.b64encode(too_much).decode(),
                                                     "pinned_at": 1.0})
    assert [v["onion"] for v in pins.views()] == [SERVER.onion]
