"""Shared HTTP conventions (nyth.web), exercised in-process through ASGI."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Request
from fastapi.staticfiles import StaticFiles
from fastapi.testclient import TestClient
from nyth.errors import DecodeError
from nyth.web import ErrorResponse, MaxBodySizeMiddleware, install_common
from prometheus_client import REGISTRY
from starlette.types import Receive, Scope, Send

LIMIT = 100


def _app() -> tuple[FastAPI, dict[str, Any]]:
    app = FastAPI()
    seen: dict[str, Any] = {"bytes": 0, "calls": 0}

    @app.get("/items/{item_id}", response_model=ErrorResponse)
    async def item(item_id: int, n: int = 1) -> ErrorResponse:
        return ErrorResponse(error=str(item_id * n))

    @app.get("/decode")
    async def decode() -> None:
        raise DecodeError("bundle must be 164 bytes, got 3")

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    @app.post("/upload")
    async def upload(request: Request) -> dict[str, int]:
        seen["calls"] += 1
        async for chunk in request.stream():
            seen["bytes"] += len(chunk)
        return {"received": seen["bytes"]}

    install_common(app, "test-svc", max_body_bytes=LIMIT)
    return app, seen


@pytest.fixture
def app_and_seen() -> tuple[FastAPI, dict[str, Any]]:
    return _app()


@pytest.fixture
async def client(app_and_seen: tuple[FastAPI, dict[str, Any]]) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app_and_seen[0], raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def test_validation_errors_are_422_with_a_readable_message(client: httpx.AsyncClient) -> None:
    response = await client.get("/items/abc", params={"n": "x"})
    assert response.status_code == 422
    body = response.json()
    assert set(body) == {"error"}
    assert "path parameter 'item_id'" in body["error"]
    assert "query parameter 'n'" in body["error"]


async def test_decode_error_is_400(client: httpx.AsyncClient) -> None:
    response = await client.get("/decode")
    assert response.status_code == 400
    assert response.json() == {"error": "bundle must be 164 bytes, got 3"}


async def test_http_errors_keep_our_shape_and_headers(client: httpx.AsyncClient) -> None:
    response = await client.get("/nothing-here")
    assert response.status_code == 404 and response.json() == {"error": "Not Found"}
    response = await client.delete("/upload")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert "error" in response.json()


async def test_unhandled_errors_hide_internals(client: httpx.AsyncClient) -> None:
    response = await client.get("/boom")
    assert response.status_code == 500
    assert response.json() == {"error": "internal server error"}


async def test_declared_oversize_is_refused_before_the_app_runs(
    client: httpx.AsyncClient, app_and_seen: tuple[FastAPI, dict[str, Any]]
) -> None:
    response = await client.post("/upload", content=b"x" * (LIMIT + 1))
    assert response.status_code == 413
    assert response.json() == {"error": f"request body is larger than the limit of {LIMIT} bytes"}
    assert app_and_seen[1]["calls"] == 0


async def test_chunked_oversize_is_cut_off_while_streaming(
    client: httpx.AsyncClient, app_and_seen: tuple[FastAPI, dict[str, Any]]
) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(1000):
            sent += 30
            yield b"y" * 30

    response = await client.post("/upload", content=chunks())
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert "error" in response.json()
    # The app never saw a byte past the chunk that crossed the limit.
    assert app_and_seen[1]["bytes"] <= LIMIT


async def test_bodies_up_to_the_limit_pass(client: httpx.AsyncClient) -> None:
    response = await client.post("/upload", content=b"z" * LIMIT)
    assert response.status_code == 200 and response.json() == {"received": LIMIT}

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"z" * 25

    response = await client.post("/upload", content=chunks())
    assert response.status_code == 200


async def _length_echo(scope: Scope, receive: Receive, send: Send) -> None:
    """A bare ASGI app that answers the length of the body it read."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(len(body)).encode()})


async def test_middleware_alone_on_a_raw_asgi_app() -> None:
    transport = httpx.ASGITransport(app=MaxBodySizeMiddleware(_length_echo, 10))

    def chunks(n: int) -> Iterator[bytes]:
        for _ in range(n):
            yield b"abc"

    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        assert (await c.post("/", content=b"0123456789")).text == "10"
        response = await c.post("/", content=_aiter(chunks(5)))
        assert response.status_code == 413
        assert response.json()["error"].startswith("request body is larger")


async def test_a_path_can_have_a_limit_of_its_own() -> None:
    transport = httpx.ASGITransport(
        app=MaxBodySizeMiddleware(_length_echo, 10, path_limits={"/big": 20}))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        assert (await c.post("/big", content=b"x" * 20)).text == "20"
        too_big = await c.post("/big", content=b"x" * 21)
        assert too_big.status_code == 413 and "limit of 20 bytes" in too_big.json()["error"]
        small = await c.post("/other", content=b"x" * 11)
        assert small.status_code == 413 and "limit of 10 bytes" in small.json()["error"]
        chunked = await c.post("/big", content=_aiter(iter([b"x" * 15, b"x" * 15])))
        assert chunked.status_code == 413
    with pytest.raises(ValueError):
        MaxBodySizeMiddleware(_length_echo, 10, path_limits={"/x": -1})


async def _aiter(items: Iterator[bytes]) -> AsyncIterator[bytes]:
    for item in items:
        yield item


async def test_metrics_use_route_templates(client: httpx.AsyncClient) -> None:
    for item_id in (1, 2, 3):
        assert (await client.get(f"/items/{item_id}")).status_code == 200
    await client.get("/random/garbage/path")
    labels = {"service": "test-svc", "method": "GET", "route": "/items/{item_id}",
              "status": "200"}
    assert (REGISTRY.get_sample_value("nyth_http_requests_total", labels) or 0) >= 3
    unmatched = dict(labels, route="<unmatched>", status="404")
    assert (REGISTRY.get_sample_value("nyth_http_requests_total", unmatched) or 0) >= 1
    text = (await client.get("/metrics")).text
    assert "nyth_http_request_duration_seconds_bucket" in text
    assert "/random/garbage/path" not in text


def test_openapi_documents_our_error_shape(app_and_seen: tuple[FastAPI, dict[str, Any]]) -> None:
    schema = app_and_seen[0].openapi()
    components = schema["components"]["schemas"]
    assert "HTTPValidationError" not in components and "ErrorResponse" in components
    item = schema["paths"]["/items/{item_id}"]["get"]["responses"]["422"]
    assert item["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")




async def test_a_405_allows_every_method_of_the_path_across_routers(tmp_path: Path) -> None:
    # Two routes on one path, each in a router of its own: Starlette's 405 named only the
    # first one's method, and clients (and schemathesis) were told POST did not exist.
    app = FastAPI()
    first, second = APIRouter(prefix="/v1"), APIRouter(prefix="/v1")

    @first.get("/things")
    async def things() -> list[int]:
        return []

    @second.post("/things")
    async def add_thing() -> int:
        return 1

    @second.get("/things/{thing_id}")
    async def thing(thing_id: int) -> int:
        return thing_id

    app.include_router(first)
    app.include_router(second)
    # A mounted app matches its whole prefix for every method: its 405 keeps its Allow.
    app.mount("/static", StaticFiles(directory=tmp_path))
    install_common(app, "test-svc")
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        for method in ("DELETE", "OPTIONS", "PUT"):
            response = await c.request(method, "/v1/things")
            assert response.status_code == 405
            assert response.headers["allow"] == "GET, POST"
            assert set(response.json()) == {"error"}
        single = await c.delete("/v1/things/3")
        assert single.status_code == 405 and single.headers["allow"] == "GET"
        assert (await c.delete("/v1/nothing")).status_code == 404
        static = await c.post("/static/x.css")
        assert static.status_code == 405 and static.headers["allow"] == "GET, HEAD"


def test_openapi_documents_400_for_json_bodies(app_and_seen: tuple[FastAPI, dict[str, Any]]) -> None:
    app = FastAPI()

    @app.post("/json")
    async def json_body(item: ErrorResponse) -> ErrorResponse:
        return item

    install_common(app, "test-svc")
    client = TestClient(app)
    # Bytes that are not UTF-8 never reach validation: FastAPI answers 400 itself.
    response = client.post("/json", content=b'{"error": "\x80"}',
                           headers={"content-type": "application/json"})
    assert response.status_code == 400 and set(response.json()) == {"error"}
    responses = app.openapi()["paths"]["/json"]["post"]["responses"]
    assert {"400", "413", "422"} <= set(responses)
    # A route without a JSON body does not claim a 400 it never answers.
    assert "400" not in app_and_seen[0].openapi()["paths"]["/upload"]["post"]["responses"]


def test_a_repeated_query_parameter_is_refused_not_silently_the_last() -> None:
    app = FastAPI()

    @app.get("/page")
    async def page(page: int = 0) -> dict[str, int]:
        return {"page": page}

    install_common(app, "test-query")
    client = TestClient(app)
    assert client.get("/page?page=3").json() == {"page": 3}
    repeated = client.get("/page?page=%C3%8B3&page=0.0")
    assert repeated.status_code == 422
    assert repeated.json() == {"error": "query parameter 'page' is given more than once"}
    many = client.get("/page?" + "&".join(f"p{i}=1" for i in range(100)))
    assert many.status_code == 422 and "query parameters" in many.json()["error"]
    assert client.get("/page?page=1&other=&x=2").status_code == 200
