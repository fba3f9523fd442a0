"""Schema-driven fuzzing of a running peer engine's local API, on the private Tor network.

schemathesis generates valid and invalid requests for every operation in the peer's own
OpenAPI document, authenticated with the peer's bearer token, and checks each with every
check (`--checks all`): no 5xx, documented status codes, content types, headers and
bodies, invalid input refused, valid input accepted, the token not ignored. Each
operation runs the coverage phase too (boundary values, each constraint broken, methods
the path does not declare: their 405 must name the path's methods in `Allow`), then
random cases.

One check is off for some operations: "valid input is accepted" (positive_data_acceptance)
where the input holds an onion address or a contact id. The schema describes their form
exactly (56 base32 characters; nyth1 and 109), but inside that form is a checksum and a
version byte, which no JSON schema can express: a well-formed onion with a typo is
refused with 422, which is right. What the check would have shown there, that a real
onion is accepted, test_a_real_onion_is_accepted_where_a_typo_is_refused shows by hand.
For POST /v1/groups, valid input also needs group servers that answer over Tor.

The peer stays usable throughout: the API has no lock or delete; creating the profile
again is 409; contacts, groups and moves need checksummed onions the fuzzer never hits,
so nothing it sends changes what the next case sees. The event stream is tested on its
own, while messages are sent to make events to check.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from nyth.proto.contact_id import ContactId
from nyth.proto.identity import Identity
from nyth.runtime.devnet import PeerHandle
from nyth_peer.events import EVENT_TYPES
from schemathesis.generation import GenerationMode

from tests.fixtures.redis import flushed_db
from tests.fixtures.schemathesis_run import (
    case_ids,
    cases,
    check_coverage,
    check_operation,
    load_schema,
)
from tests.fixtures.stack import running_devnet

pytestmark = pytest.mark.integration

# A contact that never answers (no such onion service): the lists the fuzzer reads then
# hold a real contact, its queued messages and its connection state, and sending to it
# makes events for the stream.
STRANGER = Identity.generate()


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory, tor_network: Any, tor_gateway: Any,
         redis_server: Any) -> Iterator[PeerHandle]:
    with running_devnet(tmp_path_factory.mktemp("peer-schemathesis"), tor_network,
                        tor_gateway, redis_server, flushed_db(redis_server)) as net:
        alice = net.add_peer("alice")
        alice.wait_online()
        with alice.client() as client:
            client.add_contact(STRANGER.onion, "hello")
            client.send(STRANGER.onion, "queued until they accept")
        yield alice


@pytest.fixture(scope="module")
def api_schema(peer: PeerHandle) -> schemathesis.BaseSchema:
    schema = load_schema(peer.api_url)
    # The longest answer is POST /v1/discovery/refresh, immediate here (no index is
    # configured); 30 s is far beyond any healthy answer, short of a hung test.
    schema.config.update(headers={"Authorization": f"Bearer {peer.token}"}, request_timeout=30)
    return schema


OPERATIONS = [
    ("/healthz", "GET"), ("/metrics", "GET"),
    ("/v1/profile", "GET"), ("/v1/profile", "POST"), ("/v1/profile/unlock", "POST"),
    ("/v1/status", "GET"), ("/v1/mailbox", "GET"),
    ("/v1/servers", "GET"), ("/v1/servers/{onion}/repin", "POST"),
    ("/v1/contacts", "GET"), ("/v1/contacts", "POST"), ("/v1/contacts/{onion}", "GET"),
    ("/v1/contacts/{onion}/mailbox/confirm", "POST"), ("/v1/contacts/{onion}/accept", "POST"),
    ("/v1/contacts/{onion}/refuse", "POST"), ("/v1/contacts/{onion}/messages", "POST"),
    ("/v1/contacts/{onion}/messages", "GET"), ("/v1/contacts/{onion}/messages/{msg_id}", "GET"),
    ("/v1/contacts/{onion}/messages/{msg_id}/retry", "POST"),
    ("/v1/contacts/{onion}/messages/{msg_id}/cancel", "POST"),
    ("/v1/groups", "GET"), ("/v1/groups", "POST"), ("/v1/groups/invites", "GET"),
    ("/v1/groups/invites/{gid}/accept", "POST"), ("/v1/groups/{gid}", "GET"),
    ("/v1/groups/{gid}", "PATCH"), ("/v1/groups/{gid}/move", "POST"),
    ("/v1/groups/{gid}/invite", "POST"), ("/v1/groups/{gid}/messages", "POST"),
    ("/v1/groups/{gid}/messages", "GET"),
    ("/v1/discovery", "GET"), ("/v1/discovery/refresh", "POST"),
]
EVENTS = ("/v1/events", "GET")   # endless: test_the_event_stream_conforms
# Without parameters or a body there is nothing to spoil.
WITHOUT_INPUT = {("/healthz", "GET"), ("/metrics", "GET"), ("/v1/profile", "GET"),
                 ("/v1/status", "GET"), ("/v1/mailbox", "GET"), ("/v1/servers", "GET"),
                 ("/v1/contacts", "GET"), ("/v1/groups", "GET"), ("/v1/groups/invites", "GET"),
                 ("/v1/discovery/refresh", "POST")}
WITH_INPUT = [op for op in OPERATIONS if op not in WITHOUT_INPUT]
# An onion or a contact id in the input: its checksum is beyond a schema (see the top).
ONION_IN_PATH = {op for op in OPERATIONS if "{onion}" in op[0]}
NEEDS_MORE_THAN_SCHEMA = ONION_IN_PATH | {
    ("/v1/contacts", "POST"), ("/v1/groups", "POST"), ("/v1/groups/{gid}/move", "POST"),
    ("/v1/groups/{gid}/invite", "POST")}
CASES = cases(OPERATIONS, WITH_INPUT)
# Enough to cross every constraint the coverage phase does not already pin, while the
# whole file stays within a few minutes (about 2,000 requests, most answered in ms).
MAX_EXAMPLES = 25


@pytest.mark.parametrize(("path", "method"), OPERATIONS, ids=[f"{m} {p}" for p, m in OPERATIONS])
def test_the_coverage_cases_conform(api_schema: schemathesis.BaseSchema, path: str,
                                    method: str) -> None:
    statuses = check_coverage(api_schema, path, method,
                              needs_more_than_schema=(path, method) in NEEDS_MORE_THAN_SCHEMA)
    # Some case got past the token: the cases did carry it.
    assert any(status != 401 for status in statuses), statuses


@pytest.mark.parametrize(("path", "method", "mode"), CASES, ids=case_ids(CASES))
def test_every_operation_conforms_and_never_fails(
    api_schema: schemathesis.BaseSchema, path: str, method: str, mode: GenerationMode
) -> None:
    check_operation(api_schema, path, method, mode, max_examples=MAX_EXAMPLES,
                    needs_more_than_schema=(path, method) in NEEDS_MORE_THAN_SCHEMA)


def test_the_event_stream_conforms(api_schema: schemathesis.BaseSchema,
                                   peer: PeerHandle) -> None:
    """Each event the stream sends matches the documented event (and its JSON data);
    the stream is read for a few seconds while messages make events."""
    done = threading.Event()

    def make_events() -> None:
        with peer.client() as client:
            while not done.wait(0.3):
                client.send(STRANGER.onion, "an event")

    maker = threading.Thread(target=make_events, daemon=True)
    maker.start()
    try:
        response = api_schema[EVENTS[0]][EVENTS[1]].Case().call_and_validate(
            headers=api_schema.config.headers_for(), timeout=4)
        # The coverage cases of a path without input: the GET (a stream, read as long)
        # and the methods it does not declare.
        check_coverage(api_schema, *EVENTS, timeout=4)
    finally:
        done.set()
        maker.join(10)
    # Validated only if events came: at least the queued messages sent meanwhile.
    assert "event: message\r\n" in response.text, response.text[:500]


def test_the_schema_covers_every_route(peer: PeerHandle) -> None:
    document = httpx.get(f"{peer.api_url}/openapi.json", trust_env=False).json()
    declared = {(path, method.upper()) for path, item in document["paths"].items()
                for method in item}
    assert declared == {*OPERATIONS, EVENTS}
    assert WITHOUT_INPUT == {(path, method) for path, method in declared
                             if not document["paths"][path][method.lower()].get("parameters")
                             and "requestBody" not in document["paths"][path][method.lower()]
                             } - {EVENTS}
    stream = document["paths"]["/v1/events"]["get"]["responses"]["200"]["content"]
    assert set(stream) == {"text/event-stream"}
    assert stream["text/event-stream"]["schema"]["properties"]["event"]["enum"] == list(
        EVENT_TYPES)


# -- by hand: what the excluded check would have covered, and 405s ----------------------


@pytest.fixture
def client(peer: PeerHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=peer.api_url, trust_env=False, timeout=30,
                      headers={"Authorization": f"Bearer {peer.token}"}) as c:
        yield c


def test_a_real_onion_is_accepted_where_a_typo_is_refused(client: httpx.Client) -> None:
    """Each operation that takes an onion looks a real one up, in both accepted forms
    (it is unknown: 404, 409, or 400 where that is the documented answer to sending to a
    stranger), and refuses one with a typo in its checksum with 422."""
    unknown = Identity.generate().onion
    typo = unknown[:10] + ("b" if unknown[10] != "b" else "c") + unknown[11:]
    msg, gid = "0" * 32, "0" * 32
    in_path: list[tuple[str, str, dict[str, str] | None, int]] = [
        ("GET", "/v1/contacts/{}", None, 404),
        ("GET", "/v1/contacts/{}/messages", None, 404),
        ("GET", f"/v1/contacts/{{}}/messages/{msg}", None, 404),
        ("POST", "/v1/contacts/{}/accept", None, 409),
        ("POST", "/v1/contacts/{}/refuse", None, 409),
        ("POST", "/v1/contacts/{}/mailbox/confirm", {"mailbox": STRANGER.onion}, 404),
        ("POST", "/v1/contacts/{}/messages", {"text": "hi"}, 400),
        ("POST", f"/v1/contacts/{{}}/messages/{msg}/retry", None, 409),
        ("POST", f"/v1/contacts/{{}}/messages/{msg}/cancel", None, 409),
        ("POST", "/v1/servers/{}/repin", {"bundle_sha256": "0" * 64}, 404),
    ]
    # (path, body with the onion, status for a real one): a known contact without a
    # proposed mailbox change is 409; the group does not exist, 404.
    in_body: list[tuple[str, Callable[[str], dict[str, Any]], int]] = [
        (f"/v1/contacts/{STRANGER.onion}/mailbox/confirm", lambda o: {"mailbox": o}, 409),
        (f"/v1/groups/{gid}/invite", lambda o: {"contact": o}, 404),
        (f"/v1/groups/{gid}/move", lambda o: {"servers": [o]}, 404),
    ]
    for onion, typo_status in ((unknown, None), (f"{unknown}.onion", None), (typo, 422)):
        answers = [(client.request(method, template.format(onion), json=body),
                    typo_status or status) for method, template, body, status in in_path]
        answers += [(client.post(path, json=body(onion)), typo_status or status)
                    for path, body, status in in_body]
        for response, expected in answers:
            assert response.status_code == expected, (response.request.url, response.text)
            if expected == 422:
                assert "checksum" in response.json()["error"], response.text
    # POST /v1/contacts: a real onion and a real contact id are accepted (contact
    # requests nobody answers), typos in either are not.
    contact_id = ContactId(Identity.generate().public_key,
                           Identity.generate().public_key).encode()
    bad_id = contact_id[:20] + ("a" if contact_id[20] != "a" else "b") + contact_id[21:]
    assert client.post("/v1/contacts", json={"onion": typo}).status_code == 422
    assert client.post("/v1/contacts", json={"contact_id": bad_id}).status_code == 422
    assert client.post("/v1/contacts", json={"onion": unknown}).status_code == 201
    assert client.post("/v1/contacts", json={"contact_id": contact_id}).status_code == 201


def test_a_405_names_every_method_of_the_path(client: httpx.Client) -> None:
    for method, path, allow in (("DELETE", "/v1/groups", "GET, POST"),
                                ("PUT", "/v1/profile", "GET, POST"),
                                ("PATCH", "/v1/groups/invites", "GET"),
                                ("DELETE", f"/v1/groups/{'a' * 32}", "GET, PATCH"),
                                ("OPTIONS", f"/v1/contacts/{STRANGER.onion}/messages",
                                 "GET, POST")):
        response = client.request(method, path)
        assert response.status_code == 405, (method, path, response.text)
        assert response.headers["allow"] == allow, (method, path)
