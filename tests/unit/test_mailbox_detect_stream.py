"""POST /v1/detect/stream: the detection key travels in the body, never in the URL.

Only what the mailbox decides before touching Redis is tested here (no lifespan runs);
the stream itself is tested against a real Redis in tests/integration/test_mailbox.py.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import httpx
import pytest
from nyth.config import load_settings
from nyth_mailbox.app import create_app
from nyth_mailbox.settings import MailboxSettings

KEY = base64.b64encode(bytes(range(1, 33))).decode()


@pytest.fixture
async def client(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[httpx.AsyncClient]:
    monkeypatch.setenv("NYTH_DATA_DIR", "/nonexistent/mailbox")
    monkeypatch.setenv("NYTH_KEY_PASSPHRASE", "unused: no lifespan runs")
    app = create_app(load_settings(MailboxSettings))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://mailbox") as c:
        yield c


async def test_the_old_query_form_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/detect/stream", params={"key": KEY})
    assert response.status_code == 405
    assert set(response.json()) == {"error"}


@pytest.mark.parametrize("query", [{"key": KEY}, {"after": "0"}, {"detection_key": KEY}])
async def test_a_query_string_is_refused_even_with_a_valid_body(
    client: httpx.AsyncClient, query: dict[str, str]
) -> None:
    response = await client.post("/v1/detect/stream", params=query,
                                 json={"detection_key": KEY, "after": "0"})
    assert response.status_code == 422
    assert "no query parameters" in response.json()["error"]


@pytest.mark.parametrize("body", [
    {}, {"key": KEY}, {"detection_key": "abc"}, {"detection_key": "!!!!"},
    {"detection_key": base64.b64encode(b"x" * 33).decode()},
    {"detection_key": "A" * 2000}, {"detection_key": KEY, "after": "x"},
    {"detection_key": 5}, [], "key",
])
async def test_bad_bodies_are_422(client: httpx.AsyncClient, body: object) -> None:
    response = await client.post("/v1/detect/stream", json=body)
    assert response.status_code == 422, response.text
    assert set(response.json()) == {"error"}


async def test_bad_last_event_id_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/detect/stream", json={"detection_key": KEY},
                                 headers={"Last-Event-ID": "x"})
    assert response.status_code == 422


async def test_the_schema_puts_the_key_in_the_body(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    route = document["paths"]["/v1/detect/stream"]
    assert set(route) == {"post"}
    post = route["post"]
    assert [p["name"] for p in post.get("parameters", [])] == ["Last-Event-ID"]
    schema_ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body = document["components"]["schemas"][schema_ref.rsplit("/", 1)[-1]]
    assert set(body["properties"]) == {"detection_key", "after"}
    assert body["required"] == ["detection_key"]
    assert "text/event-stream" in post["responses"]["200"]["content"]
