"""The advertiser (nyth.advertiser) against a fake index over httpx's mock transport:
adverts verify for the index that asked, are renewed before they lapse, failures are
retried with their reason shown, and shutdown stops the proof of work."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import httpx
import pytest
from nyth.advertiser import LISTED, RETRYING, Advertiser
from nyth.config import ConfigError, load_settings
from nyth.proto.delivery import RetryPolicy
from nyth.proto.discovery import Advert, IndexBundle, ServerKind, bundle_hash
from nyth.proto.identity import Identity
from nyth_group_server.settings import GroupServerSettings
from nyth_mailbox.settings import MailboxSettings

SERVER = Identity.generate()
INDEX = Identity.generate()
OWN_BUNDLE = b"signed bundle bytes"


def index_bundle(identity: Identity = INDEX, bits: int = 4) -> bytes:
    return IndexBundle(identity.public_key, bits, bytes(32), int(time.time()),
                       (Identity.generate().public_key,)).sign(identity)


def answer(status: int, body: Any) -> httpx.Response:
    # A streamed answer, as over the network: bounded reads consume the raw stream.
    return httpx.Response(status, headers={"content-type": "application/json"},
                          stream=httpx.ByteStream(json.dumps(body).encode()))


class FakeIndex:
    def __init__(self, bundle: bytes, refuse: int = 0) -> None:
        self.bundle = bundle
        self.refuse = refuse  # refuse this many adverts first
        self.adverts: list[Advert] = []

    async def handle(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        if request.url.path == "/v1/bundle":
            return answer(200, {"bundle": base64.b64encode(self.bundle).decode()})
        advert = Advert.decode(base64.b64decode(json.loads(request.content)["advert"]))
        if self.refuse:
            self.refuse -= 1
            return answer(429, {"error": "too soon\x1b[31m, come back later"})
        self.adverts.append(advert)
        return answer(201, {"expires_at": advert.expires_at})


def advertiser(index: FakeIndex, onion: str, lifetime: int = 4) -> Advertiser:
    return Advertiser(ServerKind.MAILBOX, SERVER, OWN_BUNDLE, indexes=[onion], healthz=[],
                      label="ops team", lifetime=lifetime,
                      http_factory=lambda: httpx.AsyncClient(
                          transport=httpx.MockTransport(index.handle)),
                      retry=RetryPolicy(initial=0.2, cap=0.2, jitter=0))


async def _run_until(adv: Advertiser, predicate: Any, timeout: float = 10.0) -> None:
    task = asyncio.ensure_future(adv.run())
    try:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, adv.view()
            await asyncio.sleep(0.05)
    finally:
        adv.close()
        await asyncio.gather(task, return_exceptions=True)


async def test_advert_is_signed_for_the_index_and_renewed() -> None:
    index = FakeIndex(index_bundle())
    adv = advertiser(index, INDEX.onion)
    await _run_until(adv, lambda: len(index.adverts) >= 2, timeout=15)
    first, second = index.adverts[:2]
    assert first.index_key == INDEX.public_key and first.server_key == SERVER.public_key
    assert first.kind is ServerKind.MAILBOX and first.label == "ops team"
    assert first.bundle_sha256 == bundle_hash(OWN_BUNDLE)
    assert first.pow_ok(4) and first.expires_at - first.issued_at == 4
    # Renewed before the first one lapsed.
    assert second.issued_at <= first.expires_at
    view = adv.view()[INDEX.onion]
    assert view["state"] == LISTED and view["accepted"] >= 2
    assert view["expires_at"] == index.adverts[-1].expires_at


async def test_refusal_is_retried_and_its_reason_shown_clean() -> None:
    index = FakeIndex(index_bundle(), refuse=1)
    adv = advertiser(index, INDEX.onion, lifetime=60)
    reasons: list[str] = []

    def seen() -> bool:
        state = adv.view()[INDEX.onion]
        if state["state"] == RETRYING:
            reasons.append(state["reason"])
        return bool(index.adverts)

    await _run_until(adv, seen)
    assert reasons and "429" in reasons[0] and "too soon" in reasons[0]
    assert "\x1b" not in reasons[0]
    assert adv.view()[INDEX.onion]["state"] == LISTED


async def test_a_bundle_of_another_index_is_refused() -> None:
    other = Identity.generate()
    index = FakeIndex(index_bundle(other))
    adv = advertiser(index, INDEX.onion)
    await _run_until(adv, lambda: adv.view()[INDEX.onion]["state"] == RETRYING)
    assert "different index" in adv.view()[INDEX.onion]["reason"]
    assert not index.adverts


async def test_close_stops_the_proof_of_work() -> None:
    index = FakeIndex(index_bundle(bits=28))  # hours of work in Python
    adv = advertiser(index, INDEX.onion)
    task = asyncio.ensure_future(adv.run())
    while adv.view()[INDEX.onion]["state"] != "proof_of_work":
        await asyncio.sleep(0.05)
    began = time.monotonic()
    adv.close()
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0)  # the thread notices the flag within its next batch
    assert time.monotonic() - began < 5


BASE = {"NYTH_DATA_DIR": "/tmp/x", "NYTH_KEY_PASSPHRASE": "correct horse"}


@pytest.mark.parametrize("cls", [GroupServerSettings, MailboxSettings])
def test_settings(monkeypatch: pytest.MonkeyPatch, cls: Any) -> None:
    for name, value in BASE.items():
        monkeypatch.setenv(name, value)
    plain = load_settings(cls)
    assert plain.discovery_indexes == [] and plain.operator_label == ""
    assert plain.advert_lifetime_seconds == 86_400 and plain.tor_socks is None
    monkeypatch.setenv("NYTH_DISCOVERY_INDEXES", INDEX.onion + ".onion")
    with pytest.raises(ConfigError, match="NYTH_TOR_SOCKS"):
        load_settings(cls)
    monkeypatch.setenv("NYTH_TOR_SOCKS", "127.0.0.1:9050")
    monkeypatch.setenv("NYTH_OPERATOR_LABEL", "team ä")
    s = load_settings(cls)
    assert s.discovery_indexes == [INDEX.onion] and s.tor_socks == "127.0.0.1:9050"
    for bad in ("x" * 33, "bad\nlabel"):
        monkeypatch.setenv("NYTH_OPERATOR_LABEL", bad)
        with pytest.raises(ConfigError, match="OPERATOR_LABEL"):
            load_settings(cls)
    monkeypatch.setenv("NYTH_OPERATOR_LABEL", "")
    monkeypatch.setenv("NYTH_ADVERT_LIFETIME_SECONDS", str(8 * 86_400))
    with pytest.raises(ConfigError, match="ADVERT_LIFETIME"):
        load_settings(cls)
