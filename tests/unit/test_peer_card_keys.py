"""Our contact cards' X25519 keys on a real profile store: retries reuse an unpublished
key instead of piling up new ones, and expired keys go at start-up even when no poll
runs (mailbox down or no longer configured)."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import httpx
import pytest
from nyth_peer.card_keys import CardKeys
from nyth_peer.events import EventBus
from nyth_peer.mailbox import MailboxService
from nyth_peer.profile import Profile


@pytest.fixture
def profile(tmp_path: Path):
    profile = Profile.create(tmp_path, "alice", "correct horse battery")
    yield profile
    profile.store.close()


def test_a_failed_upload_reuses_its_key_and_a_published_one_is_never_reused(
        profile: Profile) -> None:
    keys = CardKeys(profile.store)
    now = int(time.time())
    first = keys.for_new_card(now + 100, 50)
    assert keys.for_new_card(now + 200, 50) == first     # the upload failed: same key
    keys.published(first)
    second = keys.for_new_card(now + 300, 50)
    assert second != first
    keys.published(second)
    assert keys.secrets(now) and len(keys.secrets(now)) == 2
    # The first key was re-dated by the retry: kept until now + 200 + 50.
    assert len(keys.secrets(now + 249)) == 2
    assert len(keys.secrets(now + 250)) == 1
    assert keys.secrets(now + 350) == []
    assert profile.store.get("mailbox", "card_keys") == {"keys": []}


async def test_expired_keys_are_deleted_at_start_without_a_mailbox(profile: Profile) -> None:
    keys = CardKeys(profile.store)
    now = int(time.time())
    keys.published(keys.for_new_card(now - 7200, 3600))
    kept = keys.for_new_card(now - 600, 3600)
    keys.published(kept)
    service = MailboxService(profile, EventBus(), lambda _isolation: httpx.AsyncClient(),
                             mailbox_onion=None,
                             poll_seconds=1, detection_bits=None, on_record=lambda *_: True)
    service.start()
    row = profile.store.get("mailbox", "card_keys")
    assert row is not None
    assert [k["public"] for k in row["keys"]] == [base64.b64encode(kept).decode()]
    await service.stop()
