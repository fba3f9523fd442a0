"""HTTP conventions shared by every Nyth service (group server, peer engine, mailbox...).

- Errors are always JSON ``{"error": "<message>"}``; malformed input is a 4xx, never a
  5xx, and the OpenAPI document describes that shape (not FastAPI's default
  ``{"detail": [...]}``), so schema-driven fuzzers can check conformance.
- ``/metrics`` exposes Prometheus counters and latency histograms labelled by route
  *template* (``/v1/blobs``), never by raw path, so a scanner cannot blow up cardinality.
- `MaxBodySizeMiddleware` bounds request bodies while they stream in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Host, Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nyth.errors import DecodeError

log = logging.getLogger(__name__)

_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "<unmatched>"

# Module-level so that several apps in one process (tests) share one registration in
# prometheus' default registry instead of failing with "Duplicated timeseries".
REQUESTS = Counter(
    "nyth_http_requests_total",
    "HTTP requests handled, by service, method, route template and status code.",
    ["service", "method", "route", "status"],
)
LATENCY = Histogram(
    "nyth_http_request_duration_seconds",
    "Time from request start to the end of the response body (streams included).",
    ["service", "method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


class ErrorResponse(BaseModel):
    """The body of every error response from a Nyth service."""

    error: str = Field(description="What was wrong, in words meant for a developer.")


_ERROR_DESCRIPTIONS = {
    400: "Malformed input",
    402: "Payment required",
    403: "Refused",
    406: "The Accept header allows none of the media types this answer comes in",
    404: "Not found",
    409: "Conflict with the current state",
    413: "Request body too large",
    422: "Invalid request (parameters or body)",
    502: "A server reached over Tor failed or sent something invalid",
    503: "Service unavailable (a dependency is down, or too busy)",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: document these error codes with the ErrorResponse shape."""
    return {
        code: {"model": ErrorResponse, "description": _ERROR_DESCRIPTIONS.get(code, "Error")}
        for code in codes
    }


def error_json(
    status_code: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status_code, headers=headers)


def describe_validation_errors(errors: Iterable[Any]) -> str:
    """Readable one-liner from pydantic/FastAPI errors; input values are left out because
    they may be huge or hostile (and are echoed back to the client)."""
    parts = []
    for error in errors:
        loc = [str(p) for p in error.get("loc", ())]
        if loc and loc[0] in {"query", "path", "header", "cookie"}:
            where = f"{loc[0]} parameter {'.'.join(loc[1:])!r}"
        elif loc and loc[0] == "body":
            where = "request body" + (f" field {'.'.join(loc[1:])!r}" if len(loc) > 1 else "")
        else:
            where = ".".join(loc) or "request"
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts) or "invalid request"


async def _validation_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_json(422, describe_validation_errors(exc.errors()))


async def _decode_error_handler(request: Request, exc: Exception) -> Response:
    return error_json(400, str(exc) or "malformed input")


_PROBED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(scope: Scope, routes: Iterable[BaseRoute]) -> list[str]:
    """Every method some route serves at this path. Starlette's 405 names only the first
    route whose path matched, so where two routes share a path (GET and POST /v1/groups)
    its `Allow` left the other's methods out. Each method is asked of the routes' own
    matching (which sees through included routers and path convertors). Mounts match a
    prefix whatever the method: what a mounted app serves is its own to say (StaticFiles
    sends its own `Allow`)."""
    by_method = [route for route in routes if not isinstance(route, Mount | Host)]
    return [method for method in _PROBED_METHODS
            if any(route.matches({**scope, "method": method})[0] == Match.FULL
                   for route in by_method)]


async def _http_exception_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    headers = getattr(exc, "headers", None)
    if exc.status_code == 405:
        allowed = _allowed_methods(request.scope, request.app.router.routes)
        if allowed:
            headers = {**(headers or {}), "Allow": ", ".join(allowed)}
    if exc.status_code in (204, 304) or exc.status_code < 200:
        return Response(status_code=exc.status_code, headers=headers)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return error_json(exc.status_code, detail, headers=headers)


async def _unhandled_error_handler(request: Request, exc: Exception) -> Response:
    # Runs inside Starlette's ServerErrorMiddleware, which logs and re-raises anyway;
    # here we only make sure the client sees our error shape and no traceback.
    return error_json(500, "internal server error")


class _MetricsMiddleware:
    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # Anything that escapes without a response start is answered 500 by the
        # outer ServerErrorMiddleware.
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            method = scope["method"] if scope["method"] in _KNOWN_METHODS else "OTHER"
            route = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
            REQUESTS.labels(self.service, method, route, str(status)).inc()
            LATENCY.labels(self.service, method, route).observe(time.perf_counter() - started)


class BodyTooLarge(StarletteHTTPException):
    """Raised from receive() once a body passes the limit.

    It is an HTTPException so that whoever is reading the body (FastAPI re-raises
    HTTPExceptions from its body parsing) turns it into our JSON 413 response.
    """

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body is larger than the limit of {max_bytes} bytes")


class MaxBodySizeMiddleware:
    """Answer 413 to request bodies longer than max_bytes (or, for a path named in
    path_limits, that path's own limit).

    A declared Content-Length over the limit is refused before the app runs. Without
    one (chunked uploads), bytes are counted as they arrive and the read that crosses
    the limit raises BodyTooLarge, so at most one chunk past the limit is ever held.
    """

    def __init__(self, app: ASGIApp, max_bytes: int,
                 path_limits: Mapping[str, int] | None = None) -> None:
        limits = dict(path_limits or {})
        if max_bytes < 0 or any(limit < 0 for limit in limits.values()):
            raise ValueError("body limits must be >= 0")
        self.app = app
        self.max_bytes = max_bytes
        self.path_limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.path_limits.get(scope.get("path", ""), self.max_bytes)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await self._reject(scope, receive, send, limit)
            return

        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if response_started:
                raise
            await self._reject(scope, receive, send, limit)

    async def _reject(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        # Connection: close, because the rest of the body is never read; the server
        # must not try to parse it as the next request.
        response = error_json(
            413,
            f"request body is larger than the limit of {limit} bytes",
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _patch_openapi_errors(app: FastAPI) -> None:
    """Make the OpenAPI document describe the error bodies we really send."""
    original: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = original()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components["ErrorResponse"] = ErrorResponse.model_json_schema()
        error_content = {
            "application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}
        }
        for path_item in schema.get("paths", {}).values():
            for operation in path_item.values():
                if not isinstance(operation, dict) or "responses" not in operation:
                    continue
                responses = operation["responses"]
                if "422" in responses or operation.get("parameters") or "requestBody" in operation:
                    responses["422"] = {
                        "description": _ERROR_DESCRIPTIONS[422], "content": error_content,
                    }
                if "requestBody" in operation and "413" not in responses:
                    responses["413"] = {
                        "description": _ERROR_DESCRIPTIONS[413], "content": error_content,
                    }
                # A body that is not even parsable (bytes that are not UTF-8 JSON) is
                # refused by FastAPI with 400 before any validation.
                if _takes_json_body(operation) and "400" not in responses:
                    responses["400"] = {
                        "description": _ERROR_DESCRIPTIONS[400], "content": error_content,
                    }
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _takes_json_body(operation: dict[str, Any]) -> bool:
    return "application/json" in operation.get("requestBody", {}).get("content", {})


MAX_QUERY_FIELDS = 64


class SingleQueryValuesMiddleware:
    """Every query parameter of ours takes one value. FastAPI would silently use the last
    of a repeated one (`?page=x&page=0` reads page 0), so what a client sent and what it
    was answered could differ, and the OpenAPI (one integer) would not describe what is
    accepted: a repeated parameter is refused with 422 instead, as are absurdly many."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = scope.get("query_string", b"") if scope["type"] == "http" else b""
        if query:
            problem = None
            try:
                seen: set[str] = set()
                for key, _ in parse_qsl(query.decode("latin-1"), keep_blank_values=True,
                                        max_num_fields=MAX_QUERY_FIELDS):
                    if key in seen:
                        problem = f"query parameter {key[:40]!r} is given more than once"
                        break
                    seen.add(key)
            except ValueError:
                problem = f"more than {MAX_QUERY_FIELDS} query parameters"
            if problem is not None:
                await error_json(422, problem)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def install_common(app: FastAPI, service: str, *, max_body_bytes: int | None = None,
                   path_body_bytes: Mapping[str, int] | None = None) -> None:
    """Apply the shared conventions to app: metrics, JSON errors, optional body limit
    (max_body_bytes; path_body_bytes overrides it for the paths it names).

    Call it once, after the routes are declared (the OpenAPI patch reads them lazily,
    so later routes are covered too).
    """
    app.add_exception_handler(RequestValidationError, _validation_error_handler)
    app.add_exception_handler(DecodeError, _decode_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_exception_handler)
    app.add_exception_handler(Exception, _unhandled_error_handler)
    if max_body_bytes is not None:
        app.add_middleware(MaxBodySizeMiddleware, max_bytes=max_body_bytes,
                           path_limits=path_body_bytes)
    app.add_middleware(SingleQueryValuesMiddleware)
    # Added last so it is the outermost of ours: it sees the final status, 413s included.
    app.add_middleware(_MetricsMiddleware, service=service)

    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route(
        "/metrics", metrics, methods=["GET"], tags=["operations"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                         "description": "Prometheus text exposition format"}},
    )
    _patch_openapi_errors(app)


__all__ = [
    "BodyTooLarge",
    "ErrorResponse",
    "MaxBodySizeMiddleware",
    "describe_validation_errors",
    "error_json",
    "error_responses",
    "install_common",
]
