"""Pinning, sans-IO: what changed between two bundles, and re-pinning bound to the hash
of the exact bytes the user reviewed."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from nyth.errors import AuthenticationError, BundleChangedError, DecodeError, RepinMismatchError
from nyth.proto.bundle import ServerBundle
from nyth.proto.identity import Identity
from nyth.proto.mailbox_bundle import MailboxBundle
from nyth.proto.pinning import (
    accept_reviewed,
    bundle_changes,
    bundle_limits,
    bundle_sha256,
    check_pin,
    repin_command,
)
from nyth.proto.tokens import TokenSecretKey

SERVER = Identity.from_seed(b"S" * 32)
OTHER = Identity.from_seed(b"O" * 32)


def group(identity: Identity = SERVER, **overrides: Any) -> ServerBundle:
    fields: dict[str, Any] = {
        "onion_public_key": identity.public_key, "token_public_key": bytes(32),
        "blob_size": 2048, "max_blobs": 100_000, "max_age_seconds": 604_800,
        "issued_at": 1_800_000_000,
    }
    return ServerBundle(**{**fields, **overrides})


def mailbox(**overrides: Any) -> MailboxBundle:
    fields: dict[str, Any] = {
        "onion_public_key": SERVER.public_key, "tag_size": 67, "record_size": 2304,
        "max_records": 100_000, "max_age_seconds": 604_800, "pow_bits": 20,
        "issued_at": 1_800_000_000,
    }
    return MailboxBundle(**{**fields, **overrides})


def tamper(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


# -- what changed ------------------------------------------------------------------------


def test_changes_name_each_field_with_old_and_new_values_issued_at_last() -> None:
    changes = bundle_changes(group(), group(max_age_seconds=86_400, issued_at=1_800_000_100))
    assert changes == ("max_age_seconds 604800 -> 86400", "issued_at 1800000000 -> 1800000100")


def test_identical_bundles_have_no_changes_and_a_reissue_alone_still_shows() -> None:
    assert bundle_changes(group(), group()) == ()
    assert bundle_changes(group(), group(issued_at=1_800_000_001)) == (
        "issued_at 1800000000 -> 1800000001",)


def test_a_new_token_key_is_shown_by_a_hex_prefix() -> None:
    key = TokenSecretKey.from_seed(b"k" * 32).public_key
    changes = bundle_changes(group(), group(token_public_key=key))
    assert changes == (f"token_public_key 0000000000000000… -> {key[:8].hex()}…",)


def test_mailbox_bundles_list_their_own_limits() -> None:
    changes = bundle_changes(mailbox(), mailbox(pow_bits=22, record_size=4096))
    assert changes == ("record_size 2304 -> 4096", "pow_bits 20 -> 22")


def test_limits_are_the_integer_promises_without_issued_at() -> None:
    assert bundle_limits(group()) == {"blob_size": 2048, "max_blobs": 100_000,
                                      "max_age_seconds": 604_800, "token_pow_bits": 0}
    assert bundle_limits(mailbox()) == {"tag_size": 67, "record_size": 2304, "max_records": 100_000,
                                        "max_age_seconds": 604_800, "pow_bits": 20}


# -- pinning -------------------------------------------------------------------------------


def test_check_pin_trusts_first_use_and_the_same_bytes() -> None:
    signed = group().sign(SERVER)
    assert check_pin(SERVER.onion, signed, None, ServerBundle.verify) == group()
    assert check_pin(SERVER.onion, signed, signed, ServerBundle.verify) == group()


def test_a_changed_bundle_is_refused_naming_the_changes_and_the_command() -> None:
    pinned = group().sign(SERVER)
    changed = group(max_age_seconds=86_400, issued_at=1_800_000_100).sign(SERVER)
    with pytest.raises(BundleChangedError) as info:
        check_pin(SERVER.onion, changed, pinned, ServerBundle.verify)
    assert info.value.changes == ("max_age_seconds 604800 -> 86400",
                                  "issued_at 1800000000 -> 1800000100")
    message = str(info.value)
    assert "max_age_seconds 604800 -> 86400" in message
    assert f"nyth server repin {SERVER.onion}" in message
    assert repin_command(SERVER.onion.upper() + ".onion") == f"nyth server repin {SERVER.onion}"


def test_the_same_rules_hold_for_mailbox_bundles() -> None:
    pinned = mailbox().sign(SERVER)
    with pytest.raises(BundleChangedError) as info:
        check_pin(SERVER.onion, mailbox(pow_bits=8).sign(SERVER), pinned, MailboxBundle.verify)
    assert info.value.changes == ("pow_bits 20 -> 8",)


@pytest.mark.parametrize(("presented", "error"), [
    (lambda: tamper(group(max_blobs=1).sign(SERVER)), AuthenticationError),
    (lambda: group(OTHER).sign(OTHER), DecodeError),
    (lambda: b"junk", DecodeError),
])
def test_an_invalid_bundle_is_refused_before_any_comparison(presented: Any, error: type) -> None:
    with pytest.raises(error):
        check_pin(SERVER.onion, presented(), group().sign(SERVER), ServerBundle.verify)


# -- re-pinning is bound to the reviewed hash ---------------------------------------------


def test_the_hash_is_sha256_of_the_exact_bytes() -> None:
    signed = group().sign(SERVER)
    assert bundle_sha256(signed) == hashlib.sha256(signed).hexdigest()
    assert len(bundle_sha256(signed)) == 64


def test_accept_reviewed_takes_exactly_the_reviewed_bundle() -> None:
    fresh = group(max_age_seconds=86_400).sign(SERVER)
    reviewed = bundle_sha256(fresh)
    assert accept_reviewed(SERVER.onion, fresh, reviewed, ServerBundle.verify).max_age_seconds == 86_400
    # A hash typed or pasted in upper case names the same bytes.
    assert accept_reviewed(SERVER.onion, fresh, reviewed.upper(), ServerBundle.verify)


def test_a_bundle_other_than_the_reviewed_one_is_not_accepted() -> None:
    reviewed = bundle_sha256(group(max_age_seconds=86_400).sign(SERVER))
    now = group(max_age_seconds=60).sign(SERVER)
    with pytest.raises(RepinMismatchError, match="nothing was re-pinned") as info:
        accept_reviewed(SERVER.onion, now, reviewed, ServerBundle.verify)
    assert bundle_sha256(now) in str(info.value) and reviewed in str(info.value)


@pytest.mark.parametrize(("presented", "error"), [
    (lambda: tamper(group(max_age_seconds=60).sign(SERVER)), AuthenticationError),
    (lambda: group(OTHER).sign(OTHER), DecodeError),
])
def test_an_invalid_bundle_is_never_accepted_even_with_its_own_hash(presented: Any,
                                                                    error: type) -> None:
    data = presented()
    with pytest.raises(error):
        accept_reviewed(SERVER.onion, data, bundle_sha256(data), ServerBundle.verify)
