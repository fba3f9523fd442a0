"""Binary pages on a real group server process and a real redis-server: the same blobs,
ids and cursors as the JSON pages, byte for byte, over a backlog of several pages; Accept
headers that allow neither type refused with 406; and the peer's page reader taking a
real answer, and refusing it cut short."""

from __future__ import annotations

import base64
import os
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from nyth.group_server_client import PAGE_ACCEPT, BlobPage, page_limits, parse_page
from nyth.http_limits import BoundedResponse, UntrustedResponseError, bounded_request
from nyth.proto import blob_page
from nyth.runtime.redis_server import RedisServer
from nyth_group_server.launch import GroupServerProcess

from tests.fixtures.redis import flushed_db

pytestmark = pytest.mark.integration

SIZE = 256
MAX_PAGE = 10
BACKLOG = 25   # three pages of MAX_PAGE
BINARY = {"accept": blob_page.MEDIA_TYPE}


# One server and one backlog for the module: every test only reads (a server start
# costs about 2 s, the tests a few ms each).
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory,
           redis_server: RedisServer) -> Iterator[GroupServerProcess]:
    proc = GroupServerProcess(tmp_path_factory.mktemp("pages") / "gs",
                              redis_url=redis_server.url_for_db(flushed_db(redis_server)),
                              stream_key=f"test:{uuid.uuid4().hex[:12]}",
                              env={"NYTH_BLOB_SIZE": str(SIZE), "NYTH_MAX_PAGE": str(MAX_PAGE),
                                   "NYTH_LOG_LEVEL": "warning"})
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def client(server: GroupServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, trust_env=False, timeout=10) as c:
        yield c


@pytest.fixture(scope="module")
def posted(server: GroupServerProcess) -> list[tuple[str, bytes]]:
    """The backlog; the store held nothing before it (tested by the first test to run)."""
    client = httpx.Client(base_url=server.base_url, trust_env=False, timeout=10)
    empty = client.get("/v1/blobs", headers=BINARY)
    assert empty.content == blob_page.encode_page([], [], (0, 0), False, SIZE)
    assert client.get("/v1/blobs").json() == {"blobs": [], "next": "0-0", "more": False}
    out = []
    for _ in range(BACKLOG):
        blob = os.urandom(SIZE)
        response = client.post("/v1/blobs", content=blob,
                               headers={"content-type": "application/octet-stream"})
        assert response.status_code == 201, response.text
        out.append((response.json()["id"], blob))
    client.close()
    return out


def _json_pages(client: httpx.Client, limit: int,
                headers: dict[str, str] | None = None) -> list[tuple[list[tuple[str, bytes]], str, bool]]:
    pages, after = [], "0"
    while True:
        response = client.get("/v1/blobs", params={"after": after, "limit": limit},
                              headers=headers)
        assert response.headers["content-type"] == "application/json"
        page = response.json()
        pages.append(([(i["id"], base64.b64decode(i["blob"])) for i in page["blobs"]],
                      page["next"], page["more"]))
        after = page["next"]
        if not page["more"]:
            return pages


def _binary_pages(client: httpx.Client, limit: int, headers: dict[str, str] | None = None,
                  ) -> list[tuple[list[tuple[str, bytes]], str, bool]]:
    pages, after = [], "0"
    while True:
        response = client.get("/v1/blobs", params={"after": after, "limit": limit},
                              headers={**BINARY, **(headers or {})})
        assert response.status_code == 200
        assert response.headers["content-type"] == blob_page.MEDIA_TYPE
        assert response.headers["vary"] == "Accept"
        page = blob_page.decode_page(response.content, blob_size=SIZE, max_count=limit)
        pages.append(([(str(i), b) for i, b in zip(page.ids, page.blobs, strict=True)],
                      str(page.next), page.more))
        after = str(page.next)
        if not page.more:
            return pages


@pytest.mark.parametrize("limit", [MAX_PAGE, 7, 1])
def test_binary_pages_carry_the_json_pages_byte_for_byte(
        client: httpx.Client, posted: list[tuple[str, bytes]], limit: int) -> None:
    json_pages = _json_pages(client, limit)
    binary_pages = _binary_pages(client, limit)
    assert len(binary_pages) == len(json_pages) == -(-BACKLOG // limit)
    assert binary_pages == json_pages
    assert [item for blobs, _, _ in binary_pages for item in blobs] == posted


def test_a_faulty_server_serves_the_same_faults_in_both_formats(
        tmp_path: Path, redis_server: RedisServer) -> None:
    """With faults that alter reads (dev mode), pages come from the fault policy rather
    than the binary fast path: withheld and reordered the same way in either format."""
    proc = GroupServerProcess(
        tmp_path / "faulty", redis_url=redis_server.url_for_db(flushed_db(redis_server)),
        stream_key=f"test:{uuid.uuid4().hex[:12]}",
        env={"NYTH_BLOB_SIZE": str(SIZE), "NYTH_MAX_PAGE": str(MAX_PAGE),
             "NYTH_LOG_LEVEL": "warning", "NYTH_DEV_MODE": "true",
             "NYTH_FAULT_WITHHOLD_FROM": "alice", "NYTH_FAULT_WITHHOLD_FRACTION": "0.5",
             "NYTH_FAULT_REORDER": "true"})
    proc.start()
    try:
        with httpx.Client(base_url=proc.base_url, trust_env=False, timeout=10) as client:
            for _ in range(BACKLOG):
                assert client.post("/v1/blobs", content=os.urandom(SIZE)).status_code == 201
            for reader in ({"nyth-test-reader": "alice"}, {"nyth-test-reader": "bob"}):
                json_pages = _json_pages(client, 7, reader)
                assert _binary_pages(client, 7, reader) == json_pages
                served = sum(len(blobs) for blobs, _, _ in json_pages)
                assert served < BACKLOG if reader["nyth-test-reader"] == "alice" else served == BACKLOG
    finally:
        proc.stop()


def test_the_empty_end(client: httpx.Client, posted: list[tuple[str, bytes]]) -> None:
    last = posted[-1][0]
    end = client.get("/v1/blobs", params={"after": last}, headers=BINARY)
    ms, seq = (int(part) for part in last.split("-"))
    assert end.content == blob_page.encode_page([], [], (ms, seq), False, SIZE)
    assert client.get("/v1/blobs", params={"after": last}).json() == {
        "blobs": [], "next": last, "more": False}


def test_the_page_layout_on_the_wire(client: httpx.Client,
                                     posted: list[tuple[str, bytes]]) -> None:
    """docs/protocol.md §4.1, rebuilt by hand from what the JSON page says."""
    json_page = client.get("/v1/blobs", params={"limit": 2}).json()
    data = client.get("/v1/blobs", params={"limit": 2}, headers=BINARY).content
    ids = [tuple(int(p) for p in item["id"].split("-")) for item in json_page["blobs"]]
    next_ms, next_seq = (int(p) for p in json_page["next"].split("-"))
    assert data == (b"NYTHPAG1" + b"\x01" + struct.pack(">IIQQ", SIZE, 2, next_ms, next_seq)
                    + struct.pack(">QQQQ", *ids[0], *ids[1])
                    + b"".join(base64.b64decode(i["blob"]) for i in json_page["blobs"]))


@pytest.mark.parametrize("accept", [
    "application/json", "*/*", "application/*", "", "text/html, */*;q=0.1",
    f"{blob_page.MEDIA_TYPE}, application/json",  # a tie: the default
])
def test_json_stays_the_default(client: httpx.Client, accept: str) -> None:
    response = client.get("/v1/blobs", headers={"accept": accept})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert set(response.json()) == {"blobs", "next", "more"}


@pytest.mark.parametrize("accept", [
    "text/html", "text/event-stream", "application/xml", "image/*", "application/json;q=0",
    f"{blob_page.MEDIA_TYPE};q=0, application/json;q=0", "*/*;q=0", "nonsense", "a/b/c",
    ", ".join(["text/html"] * 200),
])
def test_accept_headers_allowing_neither_are_406(client: httpx.Client, accept: str) -> None:
    response = client.get("/v1/blobs", headers={"accept": accept})
    assert response.status_code == 406, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert "Accept header" in error
    # The cursor is still checked first or after, never a 500.
    bad = client.get("/v1/blobs", params={"after": "x"}, headers={"accept": accept})
    assert bad.status_code in (406, 422)


def test_the_openapi_document_names_both_types_and_406(client: httpx.Client) -> None:
    get = client.get("/openapi.json").json()["paths"]["/v1/blobs"]["get"]
    assert set(get["responses"]["200"]["content"]) == {"application/json",
                                                       blob_page.MEDIA_TYPE}
    assert "406" in get["responses"]


async def test_the_peers_reader_takes_a_real_binary_page_and_refuses_it_cut_short(
        server: GroupServerProcess, posted: list[tuple[str, bytes]]) -> None:
    limits = page_limits(1 << 20, MAX_PAGE, SIZE)
    async with httpx.AsyncClient(trust_env=False) as http:
        answer = await bounded_request(
            http, "GET", f"{server.base_url}/v1/blobs", params={"after": "0", "limit": MAX_PAGE},
            headers={"accept": PAGE_ACCEPT}, max_bytes=limits, deadline=10, what="page of blobs")
    assert answer.media_type == blob_page.MEDIA_TYPE
    assert len(answer.content) == blob_page.page_size(MAX_PAGE, SIZE)
    page = parse_page(answer, BlobPage, limit=MAX_PAGE, blob_size=SIZE)
    assert [(b.id, b.blob) for b in page.blobs] == posted[:MAX_PAGE]
    assert page.next == posted[MAX_PAGE - 1][0] and page.more

    for cut in (0, 1, blob_page.HEADER_SIZE - 1, blob_page.HEADER_SIZE, len(answer.content) - 1):
        truncated = BoundedResponse(200, answer.content[:cut], answer.server, answer.what,
                                    answer.media_type)
        with pytest.raises(UntrustedResponseError, match="malformed page of blobs: blob page "
                                                         "truncated"):
            parse_page(truncated, BlobPage, limit=MAX_PAGE, blob_size=SIZE)
    # A reader that pinned another blob size, or asked for fewer blobs, refuses it too.
    with pytest.raises(UntrustedResponseError, match="carries 256-byte blobs"):
        parse_page(answer, BlobPage, limit=MAX_PAGE, blob_size=2048)
    with pytest.raises(UntrustedResponseError, match="more than the 5 asked for"):
        parse_page(answer, BlobPage, limit=5, blob_size=SIZE)
