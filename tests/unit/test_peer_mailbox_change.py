"""A contact's mailbox is never replaced behind the user's back: a contact id naming
another mailbox for a known contact becomes a proposal (`mailbox_change`) shown by the
API, and only an explicit confirmation switches; until then the old mailbox is used."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from nyth.proto.contact_id import ContactId
from nyth.proto.delivery import RetryPolicy
from nyth.proto.identity import Identity
from nyth_peer.api import create_app
from nyth_peer.events import EventBus
from nyth_peer.messenger import Messenger
from nyth_peer.profile import Profile

BOB = Identity.from_seed(b"B" * 32)
REAL = Identity.from_seed(b"R" * 32)   # Bob's mailbox
EVIL = Identity.from_seed(b"E" * 32)   # a mailbox someone else runs
TOKEN = "t" * 32


@pytest.fixture
def messenger(tmp_path: Path):
    profile = Profile.create(tmp_path, "alice", "correct horse battery")
    yield Messenger(profile, EventBus(), RetryPolicy())
    profile.store.close()


@pytest.fixture
def api(messenger: Messenger) -> TestClient:
    engine: Any = SimpleNamespace(profile=messenger.profile, messenger=messenger,
                                  events=messenger.events, mailbox=None,
                                  settings=SimpleNamespace(data_dir=Path("/nonexistent")))
    return TestClient(create_app(engine, TOKEN),
                      headers={"authorization": f"Bearer {TOKEN}"})


def contact_id(mailbox: Identity) -> str:
    return ContactId(BOB.public_key, mailbox.public_key).encode()


def test_messenger_keeps_the_stored_mailbox_until_confirmed(messenger: Messenger) -> None:
    messenger.add_contact(BOB.onion, "hi", REAL.onion)
    view = messenger.add_contact(BOB.onion, "hi again", EVIL.onion)
    assert view["mailbox"] == REAL.onion
    change = view["mailbox_change"]
    assert (change["from"], change["to"]) == (REAL.onion, EVIL.onion)
    assert messenger.store.get("contacts", BOB.onion)["mailbox"] == REAL.onion  # type: ignore[index]
    # The same proposal again does not restart its clock.
    assert messenger.add_contact(BOB.onion, "", EVIL.onion)["mailbox_change"] == change
    view = messenger.confirm_mailbox(BOB.onion, EVIL.onion)
    assert view["mailbox"] == EVIL.onion and "mailbox_change" not in view


def test_a_p2p_only_contact_takes_its_first_mailbox(messenger: Messenger) -> None:
    messenger.add_contact(BOB.onion, "hi")
    view = messenger.add_contact(BOB.onion, "hi", REAL.onion)
    assert view["mailbox"] == REAL.onion and "mailbox_change" not in view


def test_api_shows_the_proposal_and_switches_only_on_confirmation(api: TestClient) -> None:
    first = api.post("/v1/contacts", json={"contact_id": contact_id(REAL), "text": "hi"})
    assert first.status_code == 201 and first.json()["mailbox"] == REAL.onion
    assert first.json()["mailbox_change"] is None
    # Fields the view does not name pass through.
    assert first.json()["request_text"] == "hi" and "connection" in first.json()

    again = api.post("/v1/contacts", json={"contact_id": contact_id(EVIL)})
    assert again.status_code == 201
    body = again.json()
    assert body["mailbox"] == REAL.onion
    assert body["mailbox_change"]["from"] == REAL.onion
    assert body["mailbox_change"]["to"] == EVIL.onion
    assert isinstance(body["mailbox_change"]["since"], float)
    shown = api.get(f"/v1/contacts/{BOB.onion}").json()
    assert shown["mailbox"] == REAL.onion and shown["mailbox_change"]["to"] == EVIL.onion
    assert api.get("/v1/contacts").json()[0]["mailbox_change"]["to"] == EVIL.onion

    # Naming a third mailbox is refused, and nothing changes.
    other = Identity.from_seed(b"O" * 32).onion
    wrong = api.post(f"/v1/contacts/{BOB.onion}/mailbox/confirm", json={"mailbox": other})
    assert wrong.status_code == 409
    assert api.get(f"/v1/contacts/{BOB.onion}").json()["mailbox"] == REAL.onion

    done = api.post(f"/v1/contacts/{BOB.onion}/mailbox/confirm", json={"mailbox": EVIL.onion})
    assert done.status_code == 200, done.text
    assert done.json()["mailbox"] == EVIL.onion and done.json()["mailbox_change"] is None
    again = api.post(f"/v1/contacts/{BOB.onion}/mailbox/confirm", json={"mailbox": EVIL.onion})
    assert again.status_code == 409


def test_api_dismissing_keeps_the_current_mailbox(api: TestClient) -> None:
    api.post("/v1/contacts", json={"contact_id": contact_id(REAL)})
    api.post("/v1/contacts", json={"contact_id": contact_id(EVIL)})
    kept = api.post(f"/v1/contacts/{BOB.onion}/mailbox/confirm", json={"mailbox": REAL.onion})
    assert kept.status_code == 200
    assert kept.json()["mailbox"] == REAL.onion and kept.json()["mailbox_change"] is None


def test_api_confirm_errors(api: TestClient) -> None:
    stranger = Identity.from_seed(b"S" * 32).onion
    missing = api.post(f"/v1/contacts/{stranger}/mailbox/confirm", json={"mailbox": REAL.onion})
    assert missing.status_code == 404
    bad = api.post(f"/v1/contacts/{BOB.onion}/mailbox/confirm", json={"mailbox": "x" * 56})
    assert bad.status_code == 422
    schema = api.get("/openapi.json").json()
    confirm = schema["paths"]["/v1/contacts/{onion}/mailbox/confirm"]["post"]
    assert {"200", "404", "409", "422", "423"} <= set(confirm["responses"])
