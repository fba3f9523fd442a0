"""Schema-driven fuzzing of the running mailbox, plus hand-written garbage.

schemathesis generates valid and invalid requests for every operation in the mailbox's
own OpenAPI document and checks: no 5xx, documented status codes, content types and
response bodies conforming to the schema, invalid input refused.

Excluded from schemathesis: POST /v1/detect/stream (an endless SSE stream; its bad
inputs are tested by hand below). For PUT /v1/cards, POST /v1/records and POST
/v1/detect the "valid input is accepted" check is off: schema-valid bodies there still
need a signature, a proof of work, a valid FMD tag or scalars, which no JSON schema can
express, so refusing them (4xx) is the right answer; and GET /v1/cards answers 404 for
an onion that holds no card.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from nyth.runtime.redis_server import RedisServer
from nyth_mailbox.launch import MailboxProcess
from schemathesis.generation import GenerationMode

from tests.fixtures.redis import flushed_db
from tests.fixtures.schemathesis_run import case_ids, cases, check_operation, load_schema
from tests.fixtures.services import stop_and_check_log

pytestmark = pytest.mark.integration

SIZE = 128
MAX_PAGE = 50


@pytest.fixture(scope="module")
def mailbox(tmp_path_factory: pytest.TempPathFactory,
            redis_server: RedisServer) -> Iterator[MailboxProcess]:
    proc = MailboxProcess(
        tmp_path_factory.mktemp("schemathesis") / "mb",
        redis_url=redis_server.url_for_db(flushed_db(redis_server)),
        stream_key=f"test:{uuid.uuid4().hex[:12]}",
        env={"NYTH_RECORD_SIZE": str(SIZE), "NYTH_MAX_PAGE": str(MAX_PAGE),
             "NYTH_MAX_RECORDS": "1000", "NYTH_POW_BITS": "0", "NYTH_LOG_LEVEL": "warning"},
    )
    proc.start()
    yield proc
    stop_and_check_log(proc)


@pytest.fixture(scope="module")
def api_schema(mailbox: MailboxProcess) -> schemathesis.BaseSchema:
    return load_schema(mailbox.base_url)


OPERATIONS = [("/v1/bundle", "GET"), ("/v1/cards/{onion}", "PUT"),
              ("/v1/cards/{onion}", "GET"), ("/v1/records", "POST"), ("/v1/records", "GET"),
              ("/v1/detect", "POST"), ("/healthz", "GET"), ("/metrics", "GET")]
WITH_INPUT = [op for op in OPERATIONS if op[0] not in ("/v1/bundle", "/healthz", "/metrics")]
NEEDS_MORE_THAN_SCHEMA = {("/v1/cards/{onion}", "PUT"), ("/v1/cards/{onion}", "GET"),
                          ("/v1/records", "POST"), ("/v1/detect", "POST")}
CASES = cases(OPERATIONS, WITH_INPUT)


@pytest.mark.parametrize(("path", "method", "mode"), CASES, ids=case_ids(CASES))
def test_every_operation_conforms_and_never_fails(
    api_schema: schemathesis.BaseSchema, path: str, method: str, mode: GenerationMode
) -> None:
    check_operation(api_schema, path, method, mode,
                    needs_more_than_schema=(path, method) in NEEDS_MORE_THAN_SCHEMA)


def test_the_schema_covers_every_route(mailbox: MailboxProcess) -> None:
    document = httpx.get(f"{mailbox.base_url}/openapi.json", trust_env=False).json()
    assert set(document["paths"]) == {"/v1/bundle", "/v1/cards/{onion}", "/v1/records",
                                      "/v1/detect", "/v1/detect/stream", "/healthz",
                                      "/metrics"}
    assert set(document["paths"]["/v1/detect/stream"]) == {"post"}
    post = document["paths"]["/v1/records"]["post"]
    assert {"201", "403", "409", "413", "422", "503"} <= set(post["responses"])


# -- hand-written garbage -------------------------------------------------------------------


@pytest.fixture
def client(mailbox: MailboxProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=mailbox.base_url, trust_env=False, timeout=10) as c:
        yield c


BAD_CURSORS = ["", "x", "-1", "1-", "1-2-3", "18446744073709551616-0", "\x00", "💥"]


@pytest.mark.parametrize("cursor", BAD_CURSORS)
def test_bad_cursors_are_422(client: httpx.Client, cursor: str) -> None:
    for response in (client.get("/v1/records", params={"after": cursor}),
                     client.post("/v1/detect/stream",
                                 json={"detection_key": "", "after": cursor}),
                     client.post("/v1/detect", json={"detection_key": "", "after": cursor})):
        assert response.status_code == 422, (cursor, response.text)
        assert set(response.json()) == {"error"}


@pytest.mark.parametrize("key", ["a", "abc", "!!!!", "A" * 2000, base64.b64encode(b"x" * 33).decode()])
def test_bad_stream_keys_are_422(client: httpx.Client, key: str) -> None:
    response = client.post("/v1/detect/stream", json={"detection_key": key})
    assert response.status_code == 422, (key, response.text)
    assert set(response.json()) == {"error"}


def test_bad_last_event_id_and_missing_key(client: httpx.Client) -> None:
    response = client.post("/v1/detect/stream", json={"detection_key": ""},
                           headers={"Last-Event-ID": "x"})
    assert response.status_code == 422
    assert client.post("/v1/detect/stream", json={}).status_code == 422


def test_the_key_in_a_url_is_refused(client: httpx.Client) -> None:
    # The old GET ?key= form, and a query string next to a valid body: never accepted.
    old = client.get("/v1/detect/stream", params={"key": ""})
    assert old.status_code == 405 and set(old.json()) == {"error"}
    mixed = client.post("/v1/detect/stream", params={"key": ""}, json={"detection_key": ""})
    assert mixed.status_code == 422 and "no query parameters" in mixed.json()["error"]


@pytest.mark.parametrize("onion", ["a" * 56, "A" * 56, "a" * 55, "x.onion", "%00" * 20])
def test_bad_onions_are_refused(client: httpx.Client, onion: str) -> None:
    for response in (client.get(f"/v1/cards/{onion}"),
                     client.put(f"/v1/cards/{onion}", json={"card": "AAAA"})):
        assert 400 <= response.status_code < 500, (onion, response.text)


def test_garbage_bodies(client: httpx.Client) -> None:
    for path in ("/v1/records", "/v1/detect"):
        for body in (b"", b"{", b"[]", b"null", b'{"tag": 1}', b"\xff" * 10):
            response = client.post(path, content=body,
                                   headers={"content-type": "application/json"})
            # 400: not JSON at all; 422: JSON of the wrong shape.
            assert response.status_code in (400, 422), (path, body, response.text)
            assert set(response.json()) == {"error"}
    assert client.post("/v1/records", content=b"x" * 1_000_000).status_code == 413
    assert client.delete("/v1/records").status_code == 405
