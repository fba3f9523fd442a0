"""A thin synchronous client of the peer engine's API, for the CLI and tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
from httpx_sse import connect_sse


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class PeerClient:
    def __init__(self, base_url: str, token: str, *, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout,
                                  headers={"authorization": f"Bearer {token}"})

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PeerClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            raise ApiError(response.status_code, message)
        return response.json()

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params or None)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.request("POST", path, json=body or {})

    # Convenience wrappers used by the CLI and the test harness.
    def profile(self) -> dict[str, Any]:
        return self.get("/v1/profile")

    def add_contact(self, onion: str, text: str = "") -> dict[str, Any]:
        return self.post("/v1/contacts", {"onion": onion, "text": text})

    def send(self, onion: str, text: str) -> dict[str, Any]:
        return self.post(f"/v1/contacts/{onion}/messages", {"text": text})

    def messages(self, onion: str) -> list[dict[str, Any]]:
        return self.get(f"/v1/contacts/{onion}/messages")

    def events(self) -> Iterator[dict[str, Any]]:
        """Iterate the server-sent event stream (blocking)."""
        with connect_sse(self._http, "GET", "/v1/events",
                         timeout=httpx.Timeout(30.0, read=None)) as source:
            for event in source.iter_sse():
                yield json.loads(event.data)
