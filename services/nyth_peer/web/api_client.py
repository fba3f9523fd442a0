"""The UI reads and acts through the peer's own API, in process: one place validates
input and decides what each answer means, whether the caller is the CLI, a bot or the UI."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Api:
    def __init__(self, app: FastAPI, api_token: str) -> None:
        self._client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://peer-ui.invalid",
            headers={"authorization": f"Bearer {api_token}"}, timeout=120)

    async def get(self, path: str, **params: Any) -> Any:
        return self._answer(await self._client.get(path, params=params))

    async def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._answer(await self._client.post(path, json=body))

    async def patch(self, path: str, body: dict[str, Any]) -> Any:
        return self._answer(await self._client.patch(path, json=body))

    async def close(self) -> None:
        await self._client.aclose()

    @staticmethod
    def _answer(response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                message = str(response.json().get("error", response.text))
            except ValueError:
                message = response.text
            raise ApiError(response.status_code, message[:1000])
        return response.json() if response.content else None
