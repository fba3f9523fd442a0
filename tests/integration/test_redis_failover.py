"""Redis failover under the group server and the mailbox, all real processes on loopback:
a Redis primary, one replica, three sentinels (nyth.runtime.redis_sentinel), and the
services reaching the primary only through the sentinels.

- kill -9 of the primary while clients post (blobs to the group server, records to the
  mailbox): Sentinel promotes the replica, the service follows it by itself, posting
  resumes, every 201 is still readable, and nothing but 201 and 503 + Retry-After was
  ever answered;
- with NYTH_REDIS_WAIT_REPLICAS=1, no post is acknowledged that is not on the replica.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from nyth.runtime.redis_sentinel import SentinelCluster, wait_until
from nyth.runtime.redis_server import RedisServer
from nyth.runtime.redis_service import RedisServiceProcess
from nyth_group_server.launch import GroupServerProcess
from nyth_mailbox.launch import MailboxProcess

from tests.fixtures.mailbox import Mailbox, random_tag
from tests.fixtures.posting import Poster, RecordPoster
from tests.fixtures.services import stop_and_check_log

pytestmark = pytest.mark.integration

SIZE = 256
DB = 3
# Long enough for a loaded 2-core machine; a post on loopback waits for the replica in
# well under a millisecond.
WAIT_TIMEOUT_MS = 2000
Launch = Callable[..., RedisServiceProcess]


@pytest.fixture
def launch(tmp_path: Path, sentinel_cluster: SentinelCluster,
           redis_prefix: str) -> Iterator[Launch]:
    """Start a group server or mailbox that finds Redis through this test's sentinels."""
    started: list[RedisServiceProcess] = []

    def _launch(kind: type[RedisServiceProcess] = GroupServerProcess,
                **env: str) -> RedisServiceProcess:
        proc = kind(tmp_path / kind.default_name, redis_url=None, stream_key=redis_prefix,
                    env={**sentinel_cluster.redis_env(DB), "NYTH_BLOB_SIZE": str(SIZE),
                         "NYTH_RECORD_SIZE": str(SIZE), "NYTH_POW_BITS": "6",
                         "NYTH_LOG_LEVEL": "warning", **env})
        proc.start()
        started.append(proc)
        return proc

    yield _launch
    for proc in started:
        stop_and_check_log(proc)


def _read_all(base_url: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    after = "0"
    with httpx.Client(base_url=base_url, trust_env=False, timeout=30) as client:
        while True:
            response = client.get("/v1/blobs", params={"after": after, "limit": 1000})
            assert response.status_code == 200, response.text
            page = response.json()
            out.update((item["id"], base64.b64decode(item["blob"])) for item in page["blobs"])
            after = page["next"]
            if not page["more"]:
                return out


def _assert_all_acknowledged_readable(stored: dict[str, bytes], poster: Poster) -> None:
    missing = set(poster.acknowledged) - set(stored)
    assert not missing, f"{len(missing)} acknowledged posts lost, e.g. {sorted(missing)[:3]}"
    assert all(stored[i] == data for i, data in poster.acknowledged.items())


def _stream_length(server: RedisServer, prefix: str, name: str = "blobs") -> int:
    with redis.Redis(server.host, server.port, db=DB) as client:
        return int(client.xlen(f"{prefix}:{name}"))


def _kill_the_primary_while_posting(cluster: SentinelCluster, poster: Poster) -> None:
    """kill -9 of the primary mid-posting, then on until posting has resumed for good."""
    poster.wait_count(100, timeout=60)
    cluster.primary.kill()
    acknowledged_at_kill = poster.count()
    cluster.wait_for_primary(cluster.replica, timeout=60)
    # The new primary has no replica yet: with WAIT 1 nothing may be acknowledged
    # until the old primary is back, as a replica (Sentinel turns it into one).
    cluster.primary.start()
    wait_until(lambda: cluster.replica_confirms_writes(cluster.replica), 90,
               "old primary back as the new primary's replica")
    poster.wait_count(acknowledged_at_kill + 100, timeout=60)


def _assert_only_201_and_503_until_replicated(poster: Poster) -> None:
    assert not poster.broken, poster.broken[:5]
    assert poster.statuses[503] > 0, "the kill happened while nobody was posting?"
    assert any(text.startswith("not acknowledged: only 0 of 1 replica") for text in poster.refusals)


def test_acknowledged_posts_survive_the_primary_death(
        launch: Launch, sentinel_cluster: SentinelCluster, redis_prefix: str) -> None:
    cluster = sentinel_cluster
    proc = launch(NYTH_REDIS_WAIT_REPLICAS="1", NYTH_REDIS_WAIT_TIMEOUT_MS=str(WAIT_TIMEOUT_MS))
    with Poster(proc.base_url, SIZE) as poster:
        _kill_the_primary_while_posting(cluster, poster)
    _assert_only_201_and_503_until_replicated(poster)
    _assert_all_acknowledged_readable(_read_all(proc.base_url), poster)
    # Read through the server = read on the replica turned primary: the 201s live there.
    assert cluster.current_primary() == (cluster.replica.host, cluster.replica.port)
    assert _stream_length(cluster.replica, redis_prefix) >= len(poster.acknowledged)


def test_mailbox_acknowledged_records_survive_the_primary_death(
        launch: Launch, sentinel_cluster: SentinelCluster, redis_prefix: str) -> None:
    cluster = sentinel_cluster
    proc = launch(MailboxProcess, NYTH_REDIS_WAIT_REPLICAS="1",
                  NYTH_REDIS_WAIT_TIMEOUT_MS=str(WAIT_TIMEOUT_MS))
    assert isinstance(proc, MailboxProcess)
    mailbox = Mailbox(proc)
    with RecordPoster(proc.base_url, mailbox.bundle) as poster:
        _kill_the_primary_while_posting(cluster, poster)
    _assert_only_201_and_503_until_replicated(poster)
    # Tag and ciphertext both: the 201 acknowledged the pair.
    records = mailbox.download_all()
    stored = {record_id: tag + ciphertext for record_id, tag, ciphertext in records}
    _assert_all_acknowledged_readable(stored, poster)
    assert cluster.current_primary() == (cluster.replica.host, cluster.replica.port)
    assert _stream_length(cluster.replica, redis_prefix, "records") >= len(poster.acknowledged)
    # The same process all along, healthy on the new primary.
    assert mailbox.http.get("/healthz").json()["redis"] == "ok"
    mailbox.http.close()


def test_server_follows_the_new_primary_by_itself(
        launch: Launch, sentinel_cluster: SentinelCluster, redis_prefix: str) -> None:
    cluster = sentinel_cluster
    proc = launch()  # no WAIT: the new primary alone may acknowledge
    with Poster(proc.base_url, SIZE) as poster:
        poster.wait_count(100, timeout=60)
        cluster.primary.kill()
        acknowledged_at_kill = poster.count()
        # Without the old primary ever coming back.
        poster.wait_count(acknowledged_at_kill + 100, timeout=60)
    assert not poster.broken, poster.broken[:5]
    assert poster.statuses[503] > 0, "the kill happened while nobody was posting?"
    assert set(poster.refusals) == {"storage is unavailable, retry later"}
    assert cluster.current_primary() == (cluster.replica.host, cluster.replica.port)
    assert _stream_length(cluster.replica, redis_prefix) >= acknowledged_at_kill + 100
    with httpx.Client(base_url=proc.base_url, trust_env=False, timeout=10) as client:
        assert client.get("/healthz").json()["redis"] == "ok"


def test_no_replica_no_acknowledgement(launch: Launch, sentinel_cluster: SentinelCluster,
                                       redis_prefix: str) -> None:
    cluster = sentinel_cluster
    proc = launch(NYTH_REDIS_WAIT_REPLICAS="1", NYTH_REDIS_WAIT_TIMEOUT_MS="300")
    with httpx.Client(base_url=proc.base_url, trust_env=False, timeout=20) as client:
        assert client.post("/v1/blobs", content=os.urandom(SIZE)).status_code == 201
        cluster.replica.stop()
        wait_until(lambda: cluster.replicas_online(cluster.primary) == 0, 30,
                   "the primary notices its replica is gone")
        started = time.monotonic()
        refused = client.post("/v1/blobs", content=os.urandom(SIZE))
        assert time.monotonic() - started >= 0.3  # it did wait for the replica
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "2"
        assert refused.json()["error"] == ("not acknowledged: only 0 of 1 replica(s) confirmed "
                                           "the write within 300 ms; retry later")
        # Reads and health do not depend on the replica.
        assert client.get("/healthz").status_code == 200
        assert len(client.get("/v1/blobs").json()["blobs"]) == 2  # the primary has it
        cluster.replica.start()
        wait_until(lambda: cluster.replica_confirms_writes(cluster.primary), 30,
                   "replica back in sync")
        assert client.post("/v1/blobs", content=os.urandom(SIZE)).status_code == 201
    assert _stream_length(cluster.replica, redis_prefix) == 3


def test_mailbox_through_sentinel_acknowledges_only_replicated_records(
        launch: Launch, sentinel_cluster: SentinelCluster, redis_prefix: str) -> None:
    cluster = sentinel_cluster
    proc = launch(MailboxProcess, NYTH_REDIS_WAIT_REPLICAS="1", NYTH_REDIS_WAIT_TIMEOUT_MS="300")
    assert isinstance(proc, MailboxProcess)
    mailbox = Mailbox(proc)
    first = (random_tag(), os.urandom(SIZE))
    assert mailbox.post(*first).status_code == 201
    assert mailbox.post(*first).status_code == 409  # a replay, as without Sentinel
    cluster.replica.stop()
    wait_until(lambda: cluster.replicas_online(cluster.primary) == 0, 30,
               "the primary notices its replica is gone")
    second = (random_tag(), os.urandom(SIZE))
    refused = mailbox.post(*second)
    assert refused.status_code == 503 and "not acknowledged" in refused.json()["error"]
    # Its retry meets the replay guard, but "already posted" would claim a record only
    # the primary holds: it is refused the same way until the replica has it.
    assert mailbox.post(*second).status_code == 503
    cluster.replica.start()
    wait_until(lambda: cluster.replica_confirms_writes(cluster.primary), 30,
               "replica back in sync")
    assert mailbox.post(*second).status_code == 409
    with redis.Redis(cluster.replica.host, cluster.replica.port, db=DB) as replica:
        assert replica.xlen(f"{redis_prefix}:records") == 2
    assert len(mailbox.download_all()) == 2
    mailbox.http.close()
