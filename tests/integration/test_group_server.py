"""The group server as a real process (``python -m nyth_group_server``) on a real Redis.

Covers the HTTP API, retention actually enforced, SSE fan-out between two processes
sharing one Redis, and durability: after kill -9 of the server or of redis-server,
every post that was answered 201 is still there.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from nyth.proto.bundle import ServerBundle
from nyth.runtime.redis_server import RedisServer
from nyth_group_server.launch import GroupServerProcess

from tests.fixtures.posting import Poster
from tests.fixtures.sse import SseClient

pytestmark = pytest.mark.integration

SIZE = 256

Launch = Callable[..., GroupServerProcess]


@pytest.fixture
def launch(tmp_path: Path, redis_url: str, redis_prefix: str) -> Iterator[Launch]:
    """Start group server processes; by default all on this test's Redis db and prefix."""
    started: list[GroupServerProcess] = []

    def _launch(name: str = "gs", *, data_dir: str | None = None, redis: str | None = None,
                **env: str) -> GroupServerProcess:
        proc = GroupServerProcess(
            tmp_path / (data_dir or name), redis_url=redis or redis_url, name=name,
            stream_key=redis_prefix,
            env={"NYTH_BLOB_SIZE": str(SIZE), "NYTH_LOG_LEVEL": "warning", **env},
        )
        # Replicas share a data dir: a second process must not log into the first's file.
        proc.log_path = tmp_path / f"{name}.log"
        proc.start()
        started.append(proc)
        return proc

    yield _launch
    for proc in started:
        proc.stop()


def _client(proc: GroupServerProcess, **kwargs: Any) -> httpx.Client:
    kwargs.setdefault("timeout", 10)
    return httpx.Client(base_url=proc.base_url, trust_env=False, **kwargs)


def _post(client: httpx.Client, blob: bytes) -> httpx.Response:
    return client.post("/v1/blobs", content=blob,
                       headers={"content-type": "application/octet-stream"})


def _read_all(client: httpx.Client, limit: int = 1000) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    after = "0"
    while True:
        response = client.get("/v1/blobs", params={"after": after, "limit": limit})
        assert response.status_code == 200, response.text
        page = response.json()
        out += [(item["id"], base64.b64decode(item["blob"])) for item in page["blobs"]]
        after = page["next"]
        if not page["more"]:
            return out


# -- plain API --------------------------------------------------------------------------


def test_bundle_is_signed_and_states_the_enforced_limits(launch: Launch) -> None:
    proc = launch(NYTH_MAX_BLOBS="500", NYTH_MAX_AGE_SECONDS="7200")
    with _client(proc) as client:
        body = client.get("/v1/bundle").json()
        health = client.get("/healthz").json()
    raw = base64.b64decode(body["bundle"])
    bundle = ServerBundle.verify(raw, body["onion"])
    assert (bundle.blob_size, bundle.max_blobs, bundle.max_age_seconds) == (SIZE, 500, 7200)
    assert (body["blob_size"], body["max_blobs"], body["max_age_seconds"]) == (SIZE, 500, 7200)
    assert (body["tokens_required"], body["token_pow_bits"]) == (False, 0)
    assert bundle.version == 1 and not bundle.tokens_required
    assert health == {"status": "ok", "onion": body["onion"], "redis": "ok",
                      "onion_published": None, "onion_state": None, "onion_reason": None,
                      "reason": None, "dev_mode": False, "faults": None,
                      "tokens_required": False, "adverts": None}

    # Clients pin the exact bytes: a restart with the same limits must not re-sign.
    proc.restart()
    with _client(proc) as client:
        assert base64.b64decode(client.get("/v1/bundle").json()["bundle"]) == raw


def test_changed_limits_issue_a_new_bundle_for_the_same_onion(launch: Launch) -> None:
    first = launch("a", data_dir="shared", NYTH_MAX_BLOBS="500")
    with _client(first) as client:
        old = client.get("/v1/bundle").json()
    first.stop()
    second = launch("b", data_dir="shared", NYTH_MAX_BLOBS="600")
    with _client(second) as client:
        new = client.get("/v1/bundle").json()
    assert new["onion"] == old["onion"] and new["bundle"] != old["bundle"]
    assert ServerBundle.verify(base64.b64decode(new["bundle"]), new["onion"]).max_blobs == 600


def test_post_and_read_back_in_pages(launch: Launch) -> None:
    proc = launch()
    blobs = [os.urandom(SIZE) for _ in range(25)]
    with _client(proc) as client:
        ids = []
        for blob in blobs:
            response = _post(client, blob)
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])
        # Raw bodies without a content type are accepted too.
        extra = os.urandom(SIZE)
        response = client.post("/v1/blobs", content=extra)
        assert response.status_code == 201
        ids.append(response.json()["id"])
        blobs.append(extra)

        assert _read_all(client, limit=10) == list(zip(ids, blobs, strict=True))
        first = client.get("/v1/blobs", params={"limit": 10}).json()
        assert [b["id"] for b in first["blobs"]] == ids[:10]
        assert first["next"] == ids[9] and first["more"] is True
        last = client.get("/v1/blobs", params={"after": ids[-1]}).json()
        assert last == {"blobs": [], "next": ids[-1], "more": False}
        exact = client.get("/v1/blobs", params={"after": ids[-2], "limit": 1}).json()
        assert [b["id"] for b in exact["blobs"]] == [ids[-1]] and exact["more"] is False
        # Every stored blob has the same length: nothing about a blob's content shows.
        assert {len(blob) for _, blob in _read_all(client)} == {SIZE}

        metrics = client.get("/metrics").text
        assert "nyth_group_blobs_posted_total 26.0" in metrics
        assert 'route="/v1/blobs"' in metrics


def test_size_limits(launch: Launch) -> None:
    proc = launch()
    with _client(proc) as client:
        too_big = _post(client, b"x" * (SIZE + 1))
        assert too_big.status_code == 413
        assert too_big.json() == {"error": f"request body is larger than the limit of {SIZE} bytes"}

        def chunks() -> Iterator[bytes]:
            for _ in range(64):
                yield b"y" * 4096

        # Chunked, no Content-Length: cut off while streaming.
        chunked = client.post("/v1/blobs", content=chunks())
        assert "content-length" not in chunked.request.headers
        assert chunked.status_code == 413

        too_small = _post(client, b"x" * (SIZE - 1))
        assert too_small.status_code == 422
        assert too_small.json() == {"error": f"blob must be exactly {SIZE} bytes, got {SIZE - 1}"}
        assert _post(client, b"").status_code == 422
        wrong_type = client.post("/v1/blobs", content=b"x" * SIZE,
                                 headers={"content-type": "application/json"})
        assert wrong_type.status_code == 415
        assert _read_all(client) == []


def test_retention_by_count_is_enforced(launch: Launch) -> None:
    proc = launch(NYTH_MAX_BLOBS="5")
    with _client(proc) as client:
        ids = [_post(client, os.urandom(SIZE)).json()["id"] for _ in range(12)]
        assert [i for i, _ in _read_all(client)] == ids[-5:]
        assert client.get("/v1/bundle").json()["max_blobs"] == 5


def test_retention_by_age_is_enforced(launch: Launch, redis_url: str,
                                      redis_prefix: str) -> None:
    proc = launch(NYTH_MAX_AGE_SECONDS="1", NYTH_TRIM_INTERVAL_SECONDS="0.2")
    with _client(proc) as client:
        for _ in range(3):
            assert _post(client, os.urandom(SIZE)).status_code == 201
        assert len(_read_all(client)) == 3
        time.sleep(1.6)
        assert _read_all(client) == []
    # Not only hidden: the trimmer deleted them from Redis.
    with redis.Redis.from_url(redis_url) as raw:
        assert raw.xlen(f"{redis_prefix}:blobs") == 0


# -- Server-Sent Events ------------------------------------------------------------------


async def _apost(client: httpx.AsyncClient, blob: bytes) -> str:
    response = await client.post("/v1/blobs", content=blob)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def test_sse_two_processes_on_one_redis_serve_the_same_stream(
    launch: Launch, sse: Callable[[], SseClient]
) -> None:
    # Two replicas of one server: same keys (data dir), same Redis stream.
    a = launch("a", data_dir="replicated", NYTH_KEEPALIVE_SECONDS="0.5")
    b = launch("b", data_dir="replicated", NYTH_KEEPALIVE_SECONDS="0.5")
    blobs = [os.urandom(SIZE) for _ in range(6)]
    async with httpx.AsyncClient(base_url=a.base_url, trust_env=False) as to_a:
        backlog_ids = [await _apost(to_a, blob) for blob in blobs[:3]]

        client_of_b = sse()
        await client_of_b.open(f"{b.base_url}/v1/blobs/stream")
        assert client_of_b.status == 200
        events = await client_of_b.wait_for(3)
        assert events == [(i, "blob", base64.b64encode(blob).decode())
                          for i, blob in zip(backlog_ids, blobs[:3], strict=True)]

        started = time.monotonic()
        live_ids = [await _apost(to_a, blob) for blob in blobs[3:]]
        events = await client_of_b.wait_for(6, timeout=5)
        fan_out = time.monotonic() - started
        assert [e[0] for e in events] == backlog_ids + live_ids
        assert [base64.b64decode(e[2]) for e in events] == blobs
        # Pub-sub, not the periodic safety poll (5 s), carried them.
        assert fan_out < 1.5, f"fan-out took {fan_out:.2f} s"

        # Keep-alive comments flow while nothing is posted.
        comments = client_of_b.comments
        await asyncio.sleep(1.2)
        assert client_of_b.comments > comments

        # Resumption: Last-Event-ID wins over `after`, as after an EventSource reconnect.
        resumed = sse()
        await resumed.open(f"{a.base_url}/v1/blobs/stream", params={"after": "0"},
                           headers={"Last-Event-ID": backlog_ids[-1]})
        assert [e[0] for e in await resumed.wait_for(3)] == live_ids
        from_cursor = sse()
        await from_cursor.open(f"{b.base_url}/v1/blobs/stream",
                               params={"after": live_ids[0]})
        assert [e[0] for e in await from_cursor.wait_for(2)] == live_ids[1:]
        await asyncio.sleep(0.3)
        assert len(resumed.events) == 3 and len(from_cursor.events) == 2


async def test_sse_bad_inputs_and_stream_limit(launch: Launch, sse: Callable[[], SseClient]) -> None:
    proc = launch(NYTH_MAX_STREAMS="1")
    url = f"{proc.base_url}/v1/blobs/stream"
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        for params, headers in [({"after": "nope"}, {}), ({"after": "1-2-3"}, {}),
                                ({"after": "-1"}, {}), ({"after": "1" * 30 + "-0"}, {}),
                                ({}, {"Last-Event-ID": "garbage"}),
                                ({}, {"Last-Event-ID": "99999999999999999999-0"})]:
            response = await client.get(url, params=params, headers=headers)
            assert response.status_code == 422, (params, headers, response.text)
            assert "cursor" in response.json()["error"] or "40" in response.json()["error"]

        first = sse()
        await first.open(url)
        assert first.status == 200
        busy = await client.get(url)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "5"
        assert "too many open streams" in busy.json()["error"]
        await first.close()
        # The slot is released when the client goes away.
        deadline = time.monotonic() + 5
        while True:
            second = sse()
            await second.open(url)
            if second.status == 200:
                break
            await second.close()
            assert time.monotonic() < deadline, "stream slot was never released"
            await asyncio.sleep(0.1)


async def test_sigterm_stops_cleanly_with_streams_open(
    launch: Launch, sse: Callable[[], SseClient]
) -> None:
    proc = launch(NYTH_LOG_LEVEL="info")
    stream = sse()
    await stream.open(f"{proc.base_url}/v1/blobs/stream")
    started = time.monotonic()
    code = await asyncio.to_thread(proc.stop, 15)
    # uvicorn re-raises the signal after its clean shutdown: -15 (or 0), never -9.
    assert code in (0, -15), proc.log_tail()
    assert time.monotonic() - started < 8
    log = Path(proc.log_path).read_text()
    assert "Application shutdown complete" in log
    assert "ERROR" not in log and "Traceback" not in log


# -- durability ---------------------------------------------------------------------------


def _assert_all_acknowledged_present(proc: GroupServerProcess, poster: Poster) -> None:
    with _client(proc, timeout=30) as client:
        stored = dict(_read_all(client))
    missing = set(poster.acknowledged) - set(stored)
    assert not missing, f"{len(missing)} acknowledged blobs lost, e.g. {sorted(missing)[:3]}"
    for blob_id, blob in poster.acknowledged.items():
        assert stored[blob_id] == blob


def test_kill_9_of_the_server_loses_no_acknowledged_post(launch: Launch) -> None:
    proc = launch()
    with Poster(proc.base_url, SIZE, threads=4, timeout=5) as poster:
        poster.wait_count(150)
        proc.kill()
        before_restart = poster.count()
        proc.start()
        poster.wait_count(before_restart + 150)
    assert poster.failures > 0, "the kill happened while nobody was posting?"
    _assert_all_acknowledged_present(proc, poster)


def test_kill_9_of_redis_loses_no_acknowledged_post(tmp_path: Path, launch: Launch) -> None:
    own_redis = RedisServer(tmp_path / "own-redis")
    own_redis.start()
    try:
        proc = launch(redis=own_redis.url)
        with Poster(proc.base_url, SIZE, threads=4, timeout=5) as poster:
            poster.wait_count(150)
            own_redis.kill()
            acknowledged_at_kill = poster.count()
            with _client(proc) as client:
                health = client.get("/healthz")
                assert health.status_code == 503
                assert health.json()["status"] == "unavailable"
                assert health.json()["reason"] == "redis is unreachable"
                down = _post(client, os.urandom(SIZE))
                assert down.status_code == 503 and "error" in down.json()
            time.sleep(0.3)
            own_redis.start()
            poster.wait_count(acknowledged_at_kill + 150, timeout=30)
        with _client(proc) as client:
            assert client.get("/healthz").status_code == 200
        _assert_all_acknowledged_present(proc, poster)
    finally:
        own_redis.stop()


async def test_sse_streams_survive_a_redis_restart(tmp_path: Path, launch: Launch,
                                                  sse: Callable[[], SseClient]) -> None:
    own_redis = RedisServer(tmp_path / "own-redis")
    own_redis.start()
    try:
        proc = launch(redis=own_redis.url, NYTH_KEEPALIVE_SECONDS="0.5")
        stream = sse()
        await stream.open(f"{proc.base_url}/v1/blobs/stream")
        async with httpx.AsyncClient(base_url=proc.base_url, trust_env=False) as client:
            first = await _apost(client, os.urandom(SIZE))
            await stream.wait_for(1)
            await asyncio.to_thread(own_redis.kill)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(own_redis.start)
            deadline = time.monotonic() + 15
            while True:
                response = await client.post("/v1/blobs", content=os.urandom(SIZE))
                if response.status_code == 201:
                    break
                assert time.monotonic() < deadline, response.text
                await asyncio.sleep(0.2)
            events = await stream.wait_for(2, timeout=15)
        assert [e[0] for e in events] == [first, response.json()["id"]]
    finally:
        own_redis.stop()


# -- behind an onion ------------------------------------------------------------------------


@pytest.mark.slow
async def test_published_onion_serves_the_api_through_tor(launch: Launch, tor_gateway: Any) -> None:
    from nyth.tor.socks import onion_http_client

    control = tor_gateway.control
    proc = launch(NYTH_TOR_CONTROL=str(control), NYTH_TOR_CONTROL_PASSWORD=control.password,
                  NYTH_LOG_LEVEL="info")
    async with httpx.AsyncClient(base_url=proc.base_url, trust_env=False) as local:
        deadline = time.monotonic() + 90
        while True:
            health = (await local.get("/healthz")).json()
            if health["onion_published"]:
                break
            assert time.monotonic() < deadline, f"onion never published: {health}"
            await asyncio.sleep(0.5)
        assert health["onion_state"] == "published"
        onion = health["onion"]
    assert f"{onion}.onion" in Path(proc.log_path).read_text()

    blob = os.urandom(SIZE)
    async with onion_http_client(tor_gateway.socks, timeout=60) as via_tor:
        base = f"http://{onion}.onion"
        body = (await via_tor.get(f"{base}/v1/bundle")).json()
        assert ServerBundle.verify(base64.b64decode(body["bundle"]), onion).blob_size == SIZE
        posted = await via_tor.post(f"{base}/v1/blobs", content=blob)
        assert posted.status_code == 201
        page = (await via_tor.get(f"{base}/v1/blobs")).json()
    assert [(b["id"], base64.b64decode(b["blob"])) for b in page["blobs"]] == [
        (posted.json()["id"], blob)]


async def _published_onion(proc: GroupServerProcess) -> str:
    async with httpx.AsyncClient(base_url=proc.base_url, trust_env=False) as local:
        deadline = time.monotonic() + 90
        while True:
            health = (await local.get("/healthz")).json()
            if health["onion_published"]:
                return str(health["onion"])
            assert time.monotonic() < deadline, f"onion never published: {health}"
            await asyncio.sleep(0.5)


def _post_check(onion: str, socks: Any, posts: int) -> tuple[int, list[dict[str, Any]]]:
    result = subprocess.run(
        [sys.executable, "-m", "nyth.post_check", onion, "--posts", str(posts), "--clients", "2",
         "--socks", str(socks)], capture_output=True, text=True, timeout=300)
    return result.returncode, [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.slow
async def test_post_check_confirms_a_server_through_tor(launch: Launch, tor_gateway: Any) -> None:
    control = tor_gateway.control
    proc = launch(NYTH_TOR_CONTROL=str(control), NYTH_TOR_CONTROL_PASSWORD=control.password)
    onion = await _published_onion(proc)
    code, events = await asyncio.to_thread(_post_check, onion, tor_gateway.socks, 12)
    result = events[-1]
    assert (code, result["event"], result["acknowledged"], result["missing"]) == (
        0, "result", 12, [])
    acknowledged = {e["id"] for e in events if e["event"] == "acknowledged"}
    with _client(proc) as client:
        assert acknowledged <= {blob_id for blob_id, _ in _read_all(client)}


@pytest.mark.slow
async def test_post_check_reports_posts_a_server_dropped(launch: Launch, tor_gateway: Any) -> None:
    control = tor_gateway.control
    proc = launch(NYTH_TOR_CONTROL=str(control), NYTH_TOR_CONTROL_PASSWORD=control.password,
                  NYTH_DEV_MODE="true", NYTH_FAULT_DROP_FRACTION="0.5")
    onion = await _published_onion(proc)
    # Each blob is dropped with probability 1/2: all 40 kept would happen once in 2^40.
    code, events = await asyncio.to_thread(_post_check, onion, tor_gateway.socks, 40)
    result = events[-1]
    assert code == 1 and result["acknowledged"] == 40
    assert result["missing"], result
    assert result["stored"] == 40 - len(result["missing"])
