"""What strangers can make the messenger store, on a real profile store: pending requests
are capped, `seen` rows only follow state changes, connection states of strangers are a
small LRU, and mailbox text is held only behind a pending request."""

from __future__ import annotations

import time
from pathlib import Path

import nyth_peer.messenger as messenger_mod
import pytest
from nyth.proto.delivery import RetryPolicy
from nyth.proto.identity import Identity
from nyth.proto.p2p import ContactAccept, ContactRequest, Envelope, MessageKind, encode_text, new_msg_id
from nyth_peer.events import EventBus
from nyth_peer.messenger import ACCEPTED, PENDING_INBOUND, PENDING_OUTBOUND, REFUSED, Messenger
from nyth_peer.profile import Profile


@pytest.fixture
def messenger(tmp_path: Path):
    profile = Profile.create(tmp_path, "bob", "correct horse battery")
    yield Messenger(profile, EventBus(), RetryPolicy())
    profile.store.close()


def _request(name: str = "mallory") -> Envelope:
    return Envelope(new_msg_id(), MessageKind.CONTACT_REQUEST, 1,
                    ContactRequest(name, "let me in").encode())


def _text(text: str = "hi") -> Envelope:
    return Envelope(new_msg_id(), MessageKind.TEXT, 1, encode_text(text))


def _stranger() -> str:
    return Identity.generate().onion


def test_pending_requests_are_capped_oldest_dropped(messenger: Messenger, monkeypatch) -> None:
    monkeypatch.setattr(messenger_mod, "MAX_PENDING_REQUESTS", 5)
    store = messenger.store
    onions = [_stranger() for _ in range(8)]
    first_request = _request()
    assert messenger.on_mailbox_record(onions[0], first_request)
    held = _text("held with the first request")
    assert messenger.on_mailbox_record(onions[0], held)
    assert len(store.list(f"held:{onions[0]}")) == 1
    # Our user wrote to the second requester: that request is kept whatever its age.
    messenger.on_mailbox_record(onions[1], _request())
    messenger.send_text(onions[1], "who are you?")
    for onion in onions[2:]:
        time.sleep(0.001)   # distinct created_at
        assert messenger.on_mailbox_record(onion, _request())

    pending = [c["onion"] for c in messenger.contacts() if c["status"] == PENDING_INBOUND]
    assert len(pending) == 5
    assert onions[1] in pending and onions[-1] in pending
    assert onions[0] not in pending and onions[2] not in pending and onions[3] not in pending
    assert messenger.dropped_requests == 3
    # Nothing of a dropped request is left behind.
    assert store.get("contacts", onions[0]) is None
    assert store.list(f"held:{onions[0]}") == []
    assert not store.has(f"seen:{onions[0]}", first_request.msg_id.hex())
    assert not store.has(f"seen:{onions[0]}", held.msg_id.hex())
    dropped = [e for e in messenger.events.recent if e["type"] == "contact_request_dropped"]
    assert [e["onion"] for e in dropped] == onions[0:1] + onions[2:4]


def test_a_new_request_is_refused_when_every_pending_one_was_written_to(
        messenger: Messenger, monkeypatch) -> None:
    monkeypatch.setattr(messenger_mod, "MAX_PENDING_REQUESTS", 2)
    for onion in (_stranger(), _stranger()):
        messenger.on_mailbox_record(onion, _request())
        messenger.send_text(onion, "hello")
    late = _stranger()
    assert messenger.on_mailbox_record(late, _request()) is False   # unacked: retried later
    assert messenger.store.get("contacts", late) is None


async def test_seen_rows_only_for_messages_that_changed_state(messenger: Messenger) -> None:
    store = messenger.store
    stranger = _stranger()
    for kind in (MessageKind.CONTACT_ACCEPT, MessageKind.CONTACT_REFUSE):
        envelope = Envelope(new_msg_id(), kind, 1, b"")
        assert await messenger.on_message(stranger, envelope)   # acked, and forgotten
        assert not store.has(f"seen:{stranger}", envelope.msg_id.hex())
    malformed = Envelope(new_msg_id(), MessageKind.CONTACT_REQUEST, 1, b"\xff" * 7)
    assert await messenger.on_message(stranger, malformed)
    assert not store.has(f"seen:{stranger}", malformed.msg_id.hex())
    assert store.get("contacts", stranger) is None
    text = _text()
    assert await messenger.on_message(stranger, text) is False
    assert not store.has(f"seen:{stranger}", text.msg_id.hex())

    request = _request("first name")
    assert await messenger.on_message(stranger, request)
    assert store.has(f"seen:{stranger}", request.msg_id.hex())
    # A repeated request only renames: not remembered (so renaming cannot grow the store).
    again = _request("second name")
    assert await messenger.on_message(stranger, again)
    assert not store.has(f"seen:{stranger}", again.msg_id.hex())
    assert messenger.contact(stranger)["name"] == "second name"

    # A real state change from a contact we asked is remembered, so a resend is a no-op.
    friend = _stranger()
    messenger.add_contact(friend, "hi")
    accept = Envelope(new_msg_id(), MessageKind.CONTACT_ACCEPT, 1,
                      ContactAccept("friend <b>").encode())
    assert await messenger.on_message(friend, accept)
    assert store.has(f"seen:{friend}", accept.msg_id.hex())
    assert messenger.contact(friend)["status"] == ACCEPTED
    # The accept names them (we added them by address, so we had no name).
    assert messenger.contact(friend)["name"] == "friend <b>"


def test_connection_states_of_strangers_are_bounded(messenger: Messenger) -> None:
    friend = _stranger()
    messenger.add_contact(friend, "hi")
    messenger.on_state(friend, "connected", None)
    strangers = [_stranger() for _ in range(messenger_mod.MAX_STRANGER_CONNECTIONS * 3)]
    for onion in strangers:
        messenger.on_state(onion, "connected", None)
        messenger.on_state(onion, "disconnected", "closed by the contact")
    # /v1/status shows messenger.connection: contacts only.
    assert list(messenger.connection) == [friend]
    assert len(messenger._stranger_connection) == messenger_mod.MAX_STRANGER_CONNECTIONS
    # A stranger whose request arrives while connected shows as connected on its contact.
    caller = _stranger()
    messenger.on_state(caller, "connected", None)
    messenger.on_mailbox_record(caller, _request())
    assert messenger.contact(caller)["connection"]["state"] == "connected"
    assert caller in messenger.connection


@pytest.mark.parametrize("accept", [True, False])
def test_mailbox_text_is_held_only_behind_a_pending_request(messenger: Messenger,
                                                             accept: bool) -> None:
    store = messenger.store
    nobody = _stranger()
    assert messenger.on_mailbox_record(nobody, _text()) is False
    assert store.list(f"held:{nobody}") == []

    sender = _stranger()
    messenger.on_mailbox_record(sender, _request())
    assert messenger.on_mailbox_record(sender, _text("came with the request"))
    assert len(store.list(f"held:{sender}")) == 1
    messenger.answer_request(sender, accept)
    assert store.list(f"held:{sender}") == []
    shown = [m["text"] for m in store.list(f"messages:{sender}") if m["direction"] == "in"]
    assert shown == (["came with the request"] if accept else [])
    # Once answered (refused), later mailbox text is not held any more.
    if not accept:
        assert messenger.on_mailbox_record(sender, _text()) is False
        assert store.list(f"held:{sender}") == []


def test_is_contact_means_chosen_by_our_user(messenger: Messenger) -> None:
    asked, requester, refused, nobody = (_stranger() for _ in range(4))
    messenger.add_contact(asked, "hi")
    messenger.on_mailbox_record(requester, _request())
    messenger.on_mailbox_record(refused, _request())
    messenger.answer_request(refused, False)
    assert messenger.contact(asked)["status"] == PENDING_OUTBOUND
    assert messenger.contact(refused)["status"] == REFUSED
    assert messenger.is_contact(asked)
    assert not messenger.is_contact(requester)
    assert not messenger.is_contact(refused)
    assert not messenger.is_contact(nobody)
    messenger.answer_request(requester, True)
    assert messenger.is_contact(requester)
