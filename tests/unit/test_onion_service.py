"""What the group server and the mailbox share in their apps: the signed bundle kept
across restarts, the publisher's status, /healthz, SSE stream slots and shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from nyth.config import OnionServiceSettings
from nyth.proto.bundle import ServerBundle
from nyth.proto.identity import Identity
from nyth.runtime import onion_service
from nyth.runtime.onion_service import Health, OnionService, onion_status
from prometheus_client import Counter, Gauge
from pydantic import Field, SecretStr
from redis.exceptions import ConnectionError as RedisConnectionError
from sse_starlette import ServerSentEvent

LOG = logging.getLogger("test-service")


ME = Identity.generate()


def wanted(blob_size: int = 2048, issued_at: int = 1000) -> ServerBundle:
    return ServerBundle(onion_public_key=ME.public_key, token_public_key=bytes(32),
                        blob_size=blob_size, max_blobs=10, max_age_seconds=60,
                        issued_at=issued_at)


def issue(path: Path, bundle: ServerBundle) -> bytes:
    return onion_service.load_or_issue_bundle(path, ME, bundle, LOG)


def test_a_bundle_is_issued_once_and_then_reused(tmp_path: Path) -> None:
    path = tmp_path / "bundle.bin"
    first = issue(path, wanted())
    assert path.read_bytes() == first
    assert ServerBundle.verify(first, ME.onion) == wanted()
    # Same limits: the pinned bytes stay, however often (and late) the service restarts.
    assert issue(path, wanted(issued_at=2000)) == first


def test_changed_limits_issue_a_new_bundle_and_say_which(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "bundle.bin"
    issue(path, wanted())
    with caplog.at_level(logging.WARNING):
        data = issue(path, wanted(blob_size=1024, issued_at=2000))
    assert ServerBundle.verify(data, ME.onion) == wanted(blob_size=1024, issued_at=2000)
    assert path.read_bytes() == data
    assert "limits changed (blob_size 2048->1024)" in caplog.text and "re-pin" in caplog.text


def _garbage(data: bytes) -> bytes:
    return b"junk"


def _tampered(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


def _someone_elses(data: bytes) -> bytes:
    other = Identity.generate()
    return ServerBundle(other.public_key, bytes(32), 2048, 10, 60, 1000).sign(other)


@pytest.mark.parametrize("spoil", [_garbage, _tampered, _someone_elses])
def test_an_unreadable_bundle_is_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                          spoil: Callable[[bytes], bytes]) -> None:
    path = tmp_path / "bundle.bin"
    path.write_bytes(spoil(issue(path, wanted())))
    with caplog.at_level(logging.WARNING):
        data = issue(path, wanted(issued_at=2000))
    assert ServerBundle.verify(data, ME.onion).issued_at == 2000
    assert "ignoring unreadable bundle" in caplog.text


@dataclass
class Status:
    state: Any
    reason: str | None = None


class Publisher:
    def __init__(self, status: Any) -> None:
        self.status = status


def test_onion_status_reads_the_publishers_status() -> None:
    assert onion_status(None) == (None, None, None)
    assert onion_status(Publisher(Status("published"))) == (True, "published", None)
    assert onion_status(Publisher(Status("unreachable", "gateway down"))) == (
        False, "unreachable", "gateway down")
    assert onion_status(Publisher("up")) == (True, "up", None)


class FakeRedis:
    def __init__(self, up: bool = True) -> None:
        self.up = up
        self.closed = False

    async def ping(self) -> bool:
        if not self.up:
            raise RedisConnectionError("refused")
        return True

    async def aclose(self) -> None:
        self.closed = True


@dataclass
class Service(OnionService[OnionServiceSettings]):
    log = LOG
    streams_gauge = Gauge("test_streams", "Open streams.", registry=None)
    trimmed_counter = Counter("test_trimmed", "Trimmed.", registry=None)
    entries = "things"


def service(tmp_path: Path, redis: FakeRedis | None = None, **settings: Any) -> Service:
    return Service(
        OnionServiceSettings(data_dir=tmp_path, key_passphrase=SecretStr("pass"), **settings),
        Identity.generate(), b"bundle", cast(Any, redis or FakeRedis()),
    )


class MailboxHealth(Health):
    fmd: bool = Field(description="extra")


async def test_health_is_503_while_redis_does_not_answer(tmp_path: Path) -> None:
    svc = service(tmp_path)
    ok = await svc.health()
    assert ok.status_code == 200
    assert json.loads(bytes(ok.body)) == {
        "status": "ok", "onion": svc.identity.onion, "redis": "ok", "onion_published": None,
        "onion_state": None, "onion_reason": None, "reason": None}
    svc.redis = cast(Any, FakeRedis(up=False))
    down = await svc.health(MailboxHealth, fmd=True)
    body = json.loads(bytes(down.body))
    assert down.status_code == 503
    assert (body["status"], body["redis"], body["reason"], body["fmd"]) == (
        "unavailable", "unreachable: ConnectionError", "redis is unreachable", True)


async def test_stream_slots_are_limited_and_released_once(tmp_path: Path) -> None:
    svc = service(tmp_path, max_streams=1)
    closed: list[bool] = []

    async def events() -> AsyncIterator[ServerSentEvent]:
        yield ServerSentEvent(data="x")

    first = svc.event_stream(events(), close_feed=lambda: closed.append(True))
    assert svc.active_streams == 1 and svc.streams_gauge._value.get() == 1
    refused = svc.event_stream(events(), close_feed=lambda: None)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
    assert svc.active_streams == 1

    body = cast(Any, first).body_iterator
    assert [event.data async for event in body] == ["x"]
    assert svc.active_streams == 0
    assert first.background is not None
    await first.background()  # after the response: must not release the slot twice
    assert svc.active_streams == 0 and svc.streams_gauge._value.get() == 0
    assert closed == []  # the feed is closed only when the server shuts down


async def test_stop_ends_every_task_and_closes_redis(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    redis = FakeRedis()
    svc = service(tmp_path, redis)

    async def fails() -> None:
        raise RuntimeError("boom")

    svc.spawn(asyncio.sleep(3600), "sleeper")
    svc.spawn(fails(), "failing")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING):
        await svc.stop()
    assert all(task.done() for task in svc.tasks) and redis.closed
    assert "task failing failed: RuntimeError('boom')" in caplog.text
