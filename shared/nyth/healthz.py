"""Learning a neighbour's onion from its /healthz: services deployed side by side (one
compose project) find each other this way without anyone copying onions by hand. The
traffic itself still goes through Tor; only the onion is read over the local network."""

from __future__ import annotations

import asyncio
import logging

import httpx

from nyth.proto.identity import normalize_onion

log = logging.getLogger(__name__)


async def onion_from_healthz(url: str, *, attempts: int = 60, delay: float = 1.0) -> str | None:
    """The onion the service at `url` reports (its "onion" field, once published); None
    after `attempts` tries `delay` s apart."""
    async with httpx.AsyncClient(timeout=5, trust_env=False) as http:
        for _ in range(attempts):
            try:
                return normalize_onion((await http.get(url)).json()["onion"])
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                await asyncio.sleep(delay)
    log.warning("%s did not tell its onion after %d tries", url, attempts)
    return None
