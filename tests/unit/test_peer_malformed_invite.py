"""A group invite whose server bundle is badly signed, from an accepted contact, on a
real profile store: it is dropped and acked (not re-offered forever, no session ended),
and what the contact sends next still arrives, over P2P and through the mailbox."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from nyth.errors import AuthenticationError
from nyth.proto.bundle import ServerBundle
from nyth.proto.delivery import RetryPolicy
from nyth.proto.group import Invite, new_group_key
from nyth.proto.identity import Identity
from nyth.proto.p2p import Envelope, MessageKind, encode_text, new_msg_id
from nyth_peer.events import EventBus
from nyth_peer.groups import GroupService
from nyth_peer.messenger import ACCEPTED, Messenger
from nyth_peer.profile import Profile

BOB = Identity.from_seed(b"B" * 32)
SERVER = Identity.from_seed(b"S" * 32)


def forged_invite() -> bytes:
    bundle = bytearray(ServerBundle(SERVER.public_key, bytes(32), 2048, 100_000, 86_400,
                                    int(time.time())).sign(SERVER))
    bundle[-1] ^= 1
    body = Invite("friends", new_group_key(), (bytes(bundle),)).encode()
    with pytest.raises(AuthenticationError):
        Invite.decode(body)  # what used to escape the handler
    return body


def envelope(kind: MessageKind, body: bytes) -> Envelope:
    return Envelope(new_msg_id(), kind, int(time.time() * 1000), body)


@pytest.fixture
def messenger(tmp_path: Path):
    profile = Profile.create(tmp_path, "alice", "correct horse battery")
    events, retry = EventBus(), RetryPolicy()
    messenger = Messenger(profile, events, retry)
    GroupService(profile, events, messenger, lambda: httpx.AsyncClient(), retry)  # on_invite
    profile.store.put("contacts", BOB.onion, {"onion": BOB.onion, "name": "bob",
                                              "status": ACCEPTED, "created_at": 0.0})
    yield messenger
    profile.store.close()


async def test_over_p2p_it_is_acked_and_the_next_message_arrives(messenger: Messenger) -> None:
    bad = envelope(MessageKind.GROUP_INVITE, forged_invite())
    assert await messenger.on_message(BOB.onion, bad) is True
    assert await messenger.on_message(BOB.onion, bad) is True  # a retry is acked again
    assert messenger.store.list("invites") == []

    text = envelope(MessageKind.TEXT, encode_text("still there?"))
    assert await messenger.on_message(BOB.onion, text) is True
    assert [m["text"] for m in messenger.messages(BOB.onion)] == ["still there?"]


def test_through_the_mailbox_it_is_acked_and_the_next_message_arrives(messenger: Messenger) -> None:
    assert messenger.on_mailbox_record(
        BOB.onion, envelope(MessageKind.GROUP_INVITE, forged_invite())) is True
    assert messenger.store.list("invites") == []
    text = envelope(MessageKind.TEXT, encode_text("via the mailbox"))
    assert messenger.on_mailbox_record(BOB.onion, text) is True
    assert [m["via"] for m in messenger.messages(BOB.onion)] == ["mailbox"]
