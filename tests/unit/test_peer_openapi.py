"""The peer API's OpenAPI says what it accepts, and the API refuses what it says it
refuses, with a reason (in-process; tests/integration/test_peer_schemathesis.py fuzzes
the running peer against the same document)."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from nyth.proto.contact_id import ContactId
from nyth.proto.delivery import RetryPolicy
from nyth.proto.identity import Identity
from nyth_peer.api import create_app
from nyth_peer.events import EVENT_TYPES, EventBus
from nyth_peer.messenger import Messenger
from nyth_peer.profile import Profile
from nyth_peer.routes.common import ONION_PATTERN
from nyth_peer.routes.profile import NAME_PATTERN, WHITESPACE

BOB = Identity.from_seed(b"B" * 32)
TOKEN = "t" * 32
TYPO = BOB.onion[:10] + ("b" if BOB.onion[10] != "b" else "c") + BOB.onion[11:]


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    profile = Profile.create(tmp_path, "alice", "correct horse battery")
    messenger = Messenger(profile, EventBus(), RetryPolicy())
    engine: Any = SimpleNamespace(profile=profile, messenger=messenger, events=messenger.events,
                                  mailbox=None, settings=SimpleNamespace(data_dir=tmp_path))
    yield TestClient(create_app(engine, TOKEN), headers={"authorization": f"Bearer {TOKEN}"})
    profile.store.close()


@pytest.mark.parametrize("onion", [
    "0" * 56, f"{BOB.onion[:-1]}1",   # base32 has no 0, 1, 8, 9
    "a" * 55, "a" * 57,               # lengths
    BOB.onion.upper(),                # one form: lowercase
    f"{BOB.onion}.onion.onion", f"{BOB.onion}.onio", f" {BOB.onion}",
])
def test_a_malformed_onion_in_a_path_is_422_naming_the_parameter(api: TestClient,
                                                                  onion: str) -> None:
    assert not re.fullmatch(ONION_PATTERN, onion)
    for method, path in (("GET", f"/v1/contacts/{onion}"),
                         ("POST", f"/v1/contacts/{onion}/messages"),
                         ("POST", f"/v1/contacts/{onion}/accept")):
        response = api.request(method, path, json={"text": "hi"})
        assert response.status_code == 422, (path, response.text)
        assert "path parameter 'onion'" in response.json()["error"]


def test_a_well_formed_onion_with_a_typo_is_422_and_a_real_one_is_looked_up(
        api: TestClient) -> None:
    typo = api.get(f"/v1/contacts/{TYPO}")
    assert typo.status_code == 422 and "checksum" in typo.json()["error"]
    # Both accepted forms reach the lookup: an unknown contact is 404, not a 422.
    for form in (BOB.onion, f"{BOB.onion}.onion"):
        assert api.get(f"/v1/contacts/{form}").status_code == 404


def test_the_invites_path_is_never_a_group_id(api: TestClient) -> None:
    # PATCH /v1/groups/invites once reached PATCH /v1/groups/{gid} (422 on the id).
    patch = api.patch("/v1/groups/invites", json={})
    assert patch.status_code == 405 and patch.headers["allow"] == "GET"
    both = api.delete("/v1/groups/0123456789abcdef0123456789abcdef")
    assert both.status_code == 405 and both.headers["allow"] == "GET, PATCH"
    bad = api.get("/v1/groups/not-hex")
    assert bad.status_code == 422 and "path parameter 'gid'" in bad.json()["error"]


def test_exactly_one_of_onion_and_contact_id(api: TestClient) -> None:
    contact_id = ContactId(BOB.public_key, Identity.from_seed(b"M" * 32).public_key).encode()
    for body in ({}, {"onion": BOB.onion, "contact_id": contact_id}, {"onion": None}):
        response = api.post("/v1/contacts", json=body)
        assert response.status_code == 422, (body, response.text)
    schema = api.get("/openapi.json").json()["components"]["schemas"]["ContactAdd"]
    assert [branch["required"] for branch in schema["oneOf"]] == [["onion"], ["contact_id"]]
    assert re.fullmatch(schema["properties"]["contact_id"]["anyOf"][0]["pattern"], contact_id)
    assert re.fullmatch(schema["properties"]["contact_id"]["anyOf"][0]["pattern"],
                        contact_id.upper())


def test_the_document_declares_the_token_the_errors_and_the_events(api: TestClient) -> None:
    document = api.get("/openapi.json").json()
    assert document["components"]["securitySchemes"]["api-token"]["scheme"] == "bearer"
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if not path.startswith("/v1/"):
                assert "security" not in operation, (method, path)
                continue
            assert operation["security"] == [{"api-token": []}], (method, path)
            assert {"401", "422"} <= set(operation["responses"]), (method, path)
            for parameter in operation.get("parameters", ()):
                if parameter["name"] == "onion":
                    assert parameter["schema"]["pattern"] == ONION_PATTERN
    event = document["paths"]["/v1/events"]["get"]["responses"]["200"]["content"][
        "text/event-stream"]["schema"]
    assert event["properties"]["event"]["enum"] == list(EVENT_TYPES)
    assert api.get("/v1/events", headers={"authorization": "Bearer wrong"}).status_code == 401


def test_a_profile_name_of_only_whitespace_is_refused_as_the_schema_says(
        api: TestClient) -> None:
    # The list is what str.strip() removes, which is what Profile.create does to a name.
    assert set(WHITESPACE) == {c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace()}
    pattern = api.get("/openapi.json").json()["components"]["schemas"]["ProfileCreate"][
        "properties"]["name"]["pattern"]
    assert pattern == NAME_PATTERN
    for name in (" ", "\x1c", "\u3000 \t"):
        assert not re.search(pattern, name)
        # Once a schema-valid " " was refused with 400 after the model let it through.
        response = api.post("/v1/profile", json={"name": name, "passphrase": "12345678"})
        assert response.status_code == 422 and "whitespace" in response.json()["error"]
    assert re.search(pattern, " bob ")
    existing = api.post("/v1/profile", json={"name": " bob ", "passphrase": "12345678"})
    assert existing.status_code == 409
