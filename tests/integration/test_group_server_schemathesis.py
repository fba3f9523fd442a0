"""Schema-driven fuzzing of the running group server, plus hand-written garbage.

schemathesis generates valid and invalid requests for every operation in the server's
own OpenAPI document and checks: no 5xx, documented status codes, content types and
response bodies conforming to the schema, invalid input refused, valid input accepted.

Excluded from schemathesis: GET /v1/blobs/stream. A successful call is an endless
Server-Sent Events stream, which a request/response fuzzer would wait on forever; its
bad inputs are tested by hand below (and its behaviour in test_group_server.py).

Three servers: honest, faulty (dev mode, every fault) and tokens (NYTH_TOKENS_REQUIRED,
with POST /v1/tokens). On the tokens server a valid post needs a real token and a valid
issue request real proof of work, which no schema can describe: there, "valid input
accepted" (positive_data_acceptance) is not checked for those two operations; every other
check is (no 5xx, documented statuses and bodies, invalid input refused).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from nyth.runtime.redis_server import RedisServer
from nyth_group_server.launch import GroupServerProcess
from schemathesis.generation import GenerationMode

from tests.fixtures.redis import flushed_db
from tests.fixtures.schemathesis_run import case_ids, cases, check_operation, load_schema
from tests.fixtures.services import stop_and_check_log

pytestmark = pytest.mark.integration

SIZE = 128
MAX_PAGE = 50


# The same checks against a dev-mode server injecting every fault: its OpenAPI (the
# Nyth-Test-Reader header, the faults on /healthz) must describe what it answers too.
FAULTY = {"NYTH_DEV_MODE": "true", "NYTH_FAULT_DROP_FRACTION": "0.5",
          "NYTH_FAULT_WITHHOLD_FROM": "alice,bob", "NYTH_FAULT_WITHHOLD_FRACTION": "0.5",
          "NYTH_FAULT_FORGET_AFTER_SECONDS": "3600", "NYTH_FAULT_DELAY_MS": "1",
          "NYTH_FAULT_REORDER": "true"}
TOKENS = {"NYTH_TOKENS_REQUIRED": "true", "NYTH_TOKEN_POW_BITS": "4"}
ENVS = {"honest": {}, "faulty": FAULTY, "tokens": TOKENS,
        "faulty-tokens": {**FAULTY, **TOKENS, "NYTH_FAULT_TOKEN_WRONG_KEY": "true"}}


@pytest.fixture(scope="module", params=list(ENVS))
def group_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                 redis_server: RedisServer) -> Iterator[GroupServerProcess]:
    proc = GroupServerProcess(
        tmp_path_factory.mktemp("schemathesis") / "gs",
        redis_url=redis_server.url_for_db(flushed_db(redis_server)),
        stream_key=f"test:{uuid.uuid4().hex[:12]}",
        env={"NYTH_BLOB_SIZE": str(SIZE), "NYTH_MAX_PAGE": str(MAX_PAGE),
             "NYTH_MAX_BLOBS": "1000", "NYTH_LOG_LEVEL": "warning",
             **ENVS[request.param]},
    )
    proc.start()
    yield proc
    stop_and_check_log(proc)


@pytest.fixture(scope="module")
def api_schema(group_server: GroupServerProcess) -> schemathesis.BaseSchema:
    schema = load_schema(group_server.base_url)
    # 413 refuses a body over the limit before anything else is looked at (a spoilt
    # token header along with it, say): as good a refusal of invalid input as a 4xx.
    rejection = schema.config.checks.negative_data_rejection
    rejection.expected_statuses = [*rejection.expected_statuses, "413"]
    return schema


OPERATIONS = [("/v1/bundle", "GET"), ("/v1/blobs", "POST"), ("/v1/blobs", "GET"),
              ("/healthz", "GET"), ("/metrics", "GET"), ("/v1/tokens", "POST")]
# Where valid input needs what a schema cannot give: a token, proof of work.
NEEDS_MORE_THAN_SCHEMA = {("/v1/blobs", "POST"), ("/v1/tokens", "POST")}


def _requires_tokens(group_server: GroupServerProcess) -> bool:
    return bool(httpx.get(f"{group_server.base_url}/healthz",
                          trust_env=False).json()["tokens_required"])


CASES = cases(OPERATIONS, [("/v1/blobs", "POST"), ("/v1/blobs", "GET"), ("/v1/tokens", "POST")])


@pytest.mark.parametrize(("path", "method", "mode"), CASES, ids=case_ids(CASES))
def test_every_operation_conforms_and_never_fails(
    api_schema: schemathesis.BaseSchema, group_server: GroupServerProcess, path: str,
    method: str, mode: GenerationMode
) -> None:
    tokens_required = _requires_tokens(group_server)
    if path == "/v1/tokens" and not tokens_required:
        pytest.skip("a server without tokens has no /v1/tokens")
    check_operation(api_schema, path, method, mode, needs_more_than_schema=tokens_required
                    and (path, method) in NEEDS_MORE_THAN_SCHEMA)


def test_the_schema_covers_every_route(api_schema: schemathesis.BaseSchema,
                                       group_server: GroupServerProcess) -> None:
    document = httpx.get(f"{group_server.base_url}/openapi.json", trust_env=False).json()
    tokens_required = _requires_tokens(group_server)
    assert set(document["paths"]) == {"/v1/bundle", "/v1/blobs", "/v1/blobs/stream",
                                      "/healthz", "/metrics"} | (
                                          {"/v1/tokens"} if tokens_required else set())
    post = document["paths"]["/v1/blobs"]["post"]
    body_schema = post["requestBody"]["content"]["application/octet-stream"]["schema"]
    assert body_schema["minLength"] == body_schema["maxLength"] == SIZE
    assert {"201", "413", "415", "422", "503"} <= set(post["responses"])
    if tokens_required:
        assert {"400", "402", "403", "409"} <= set(post["responses"])
        assert [p["name"] for p in post["parameters"]] == ["Nyth-Token"]
        issue = document["paths"]["/v1/tokens"]["post"]
        assert {"200", "400", "403", "409", "413", "422", "503"} <= set(issue["responses"])


# -- hand-written garbage -------------------------------------------------------------------


@pytest.fixture
def client(group_server: GroupServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=group_server.base_url, trust_env=False, timeout=10) as c:
        yield c


BAD_CURSORS = ["", " ", "x", "-1", "1-", "-", "1-2-3", "0x1-0", "1.0-0", "1e3-0", "١-٠",
               "1" * 21 + "-0", "18446744073709551616-0", "0-18446744073709551616", "%00",
               "\x00", "0\n", "0-0 ", "💥", "1-1" * 20, "' OR 1=1 --", "+", "-inf"]


@pytest.mark.parametrize("cursor", BAD_CURSORS)
def test_bad_cursors_are_422_with_a_clear_message(client: httpx.Client, cursor: str) -> None:
    for path in ("/v1/blobs", "/v1/blobs/stream"):
        response = client.get(path, params={"after": cursor})
        assert response.status_code == 422, (path, cursor, response.text)
        body = response.json()
        assert set(body) == {"error"} and "after" in body["error"]


@pytest.mark.parametrize("value", ["x", "\x7f", "1-2-3", "9" * 41])
def test_bad_last_event_id_is_422(client: httpx.Client, value: str) -> None:
    response = client.get("/v1/blobs/stream", headers={"Last-Event-ID": value})
    assert response.status_code == 422 and "Last-Event-ID" in response.json()["error"]


@pytest.mark.parametrize("limit", ["0", "-1", str(MAX_PAGE + 1), "10" * 30, "1.5", "one",
                                   "", "1e2", "NaN", "0x10"])
def test_bad_limits_are_422(client: httpx.Client, limit: str) -> None:
    response = client.get("/v1/blobs", params={"limit": limit})
    assert response.status_code == 422, (limit, response.text)
    assert "limit" in response.json()["error"]


@pytest.mark.parametrize("size", [0, 1, SIZE - 1, SIZE + 1, 10 * SIZE, 1 << 20])
def test_wrong_body_sizes(client: httpx.Client, size: int) -> None:
    response = client.post("/v1/blobs", content=b"\x00" * size,
                           headers={"content-type": "application/octet-stream"})
    assert response.status_code == (413 if size > SIZE else 422), (size, response.text)
    assert "error" in response.json()


@pytest.mark.parametrize("body", [
    b"", b"{", b"[]", b"null", b'{"issue_request": 1}', b'{"issue_request": null}',
    b'{"issue_request": "' + b"A" * 4000 + b'"}', b"\xff\xfe", b'{"other": "AAAA"}',
    b'{"issue_request": "AAAA", "issue_request": "BB"}',
    b'{"issue_request": "' + base64.b64encode(b"\x01" + bytes(40)) + b'"}',
])
def test_garbage_issue_requests(client: httpx.Client, group_server: GroupServerProcess,
                                body: bytes) -> None:
    response = client.post("/v1/tokens", content=body,
                           headers={"content-type": "application/json"})
    if not _requires_tokens(group_server):  # no such route; the body limit is blob_size
        assert response.status_code == (413 if len(body) > SIZE else 404)
        return
    assert 400 <= response.status_code < 500, (body[:40], response.text)
    assert "error" in response.json()


def test_an_issue_request_body_is_bounded(client: httpx.Client,
                                          group_server: GroupServerProcess) -> None:
    if not _requires_tokens(group_server):
        pytest.skip("no /v1/tokens")
    response = client.post("/v1/tokens", content=b"{" * 100_000,
                           headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_lying_content_length(group_server: GroupServerProcess) -> None:
    import socket

    # A declared length the client never sends must not wedge or crash the server;
    # one that is shorter than what follows must not smuggle a second request.
    with socket.create_connection(("127.0.0.1", group_server.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/blobs HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n")
        assert sock.recv(200).startswith(b"HTTP/1.1 413")
    with socket.create_connection(("127.0.0.1", group_server.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/blobs HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
        assert sock.recv(200).startswith(b"HTTP/1.1 400")
    response = httpx.get(f"{group_server.base_url}/healthz", trust_env=False)
    assert response.status_code == 200


def test_garbage_methods_paths_and_headers(client: httpx.Client) -> None:
    assert client.put("/v1/blobs", content=b"x").status_code == 405
    assert client.get("/v1/blobs/../../etc/passwd").status_code == 404
    assert client.get("/v1/" + "a" * 5000).status_code == 404
    response = client.get("/v1/blobs", params={"after": "0", "limit": "1", "extra": "ignored"})
    assert response.status_code == 200
    response = client.post("/v1/blobs", content=b"x" * SIZE,
                           headers={"content-type": "multipart/form-data; boundary=x"})
    assert response.status_code == 415
    response = client.post("/v1/blobs", content=b"x" * SIZE,
                           headers={"content-type": "\x01garbage"})
    assert response.status_code == 415
