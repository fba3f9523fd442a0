"""The group server's fault-injecting mode (NYTH_DEV_MODE + NYTH_FAULT_*) as a real
process on a real Redis: each fault does what it says and nothing else, on the paged
reads and on the live stream, and nothing of it runs without dev mode.

Decisions are keyed by NYTH_FAULT_SEED and the server's onion, so every test knows
exactly which blobs a fault hits (`FaultPolicy` built from what /healthz reports), and
the blobs are deterministic: no statistics, no timing races.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from nyth.runtime.stream_store import Cursor
from nyth_group_server.faults import FaultPolicy
from nyth_group_server.launch import GroupServerProcess

from tests.fixtures.services import stop_and_check_log
from tests.fixtures.sse import SseClient

pytestmark = pytest.mark.integration

SIZE = 256
SEED = 11
READER = "Nyth-Test-Reader"

Launch = Callable[..., GroupServerProcess]


@pytest.fixture
def launch(tmp_path: Path, redis_url: str, redis_prefix: str) -> Iterator[Launch]:
    """Group servers on this test's Redis db and prefix; dev mode unless dev_mode=False."""
    started: list[GroupServerProcess] = []

    def _launch(name: str = "gs", *, dev_mode: bool = True, **env: str) -> GroupServerProcess:
        dev = {"NYTH_DEV_MODE": "true", "NYTH_FAULT_SEED": str(SEED)} if dev_mode else {}
        proc = GroupServerProcess(
            tmp_path / name, redis_url=redis_url, name=name, stream_key=redis_prefix,
            env={"NYTH_BLOB_SIZE": str(SIZE), "NYTH_LOG_LEVEL": "warning", **dev, **env},
        )
        proc.start()
        started.append(proc)
        return proc

    yield _launch
    for proc in started:
        stop_and_check_log(proc)  # a 5xx would have logged a traceback


def blob(i: int) -> bytes:
    """The i-th test blob: deterministic, so which ones a fault hits is too."""
    return hashlib.sha256(b"blob %d" % i).digest() * (SIZE // 32)


def client(proc: GroupServerProcess) -> httpx.Client:
    return httpx.Client(base_url=proc.base_url, trust_env=False, timeout=30)


def post(http: httpx.Client, data: bytes) -> str:
    response = http.post("/v1/blobs", content=data,
                         headers={"content-type": "application/octet-stream"})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def read_all(http: httpx.Client, reader: str | None = None, *, after: str = "0",
             limit: int = 1000) -> list[tuple[str, bytes]]:
    headers = {READER: reader} if reader else {}
    out: list[tuple[str, bytes]] = []
    while True:
        response = http.get("/v1/blobs", params={"after": after, "limit": limit}, headers=headers)
        assert response.status_code == 200, response.text
        page = response.json()
        ids = [item["id"] for item in page["blobs"]]
        # Faults or not, a page's `next` is its last blob, as an honest server's.
        assert Cursor.parse(page["next"]) == max(map(Cursor.parse, [*ids, after]))
        out += [(item["id"], base64.b64decode(item["blob"])) for item in page["blobs"]]
        after = page["next"]
        if not page["more"]:
            return out


def predictor(http: httpx.Client) -> FaultPolicy:
    """The server's policy, rebuilt from what its /healthz says it does."""
    health = http.get("/healthz").json()
    view = health["faults"]
    return FaultPolicy(
        dev_mode=True, onion=health["onion"], seed=view["seed"],
        drop_fraction=view["drop_fraction"], withhold_from=frozenset(view["withhold_from"]),
        withhold_fraction=view["withhold_fraction"],
        forget_after_seconds=view["forget_after_seconds"], delay_ms=view["delay_ms"],
        reorder=view["reorder"],
    )


def metric(http: httpx.Client, name: str) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def ids_of(events: list[tuple[str, str, str]]) -> list[str]:
    return [event_id for event_id, _, _ in events]


# -- dev mode only -----------------------------------------------------------------------------


def test_a_fault_setting_without_dev_mode_refuses_to_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NYTH_")}
    env.update({"NYTH_DATA_DIR": str(tmp_path / "gs"), "NYTH_KEY_PASSPHRASE": "x" * 20,
                "NYTH_FAULT_DROP_FRACTION": "0.5", "NYTH_REDIS_URL": "redis://127.0.0.1:1/0"})
    result = subprocess.run([sys.executable, "-m", "nyth_group_server"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert ("NYTH_FAULT_DROP_FRACTION is a test hook accepted only with NYTH_DEV_MODE=true"
            in result.stderr)
    assert not (tmp_path / "gs").exists()  # refused before touching anything


def test_healthz_and_openapi_show_dev_mode_and_the_faults(launch: Launch) -> None:
    faulty = launch("faulty", NYTH_FAULT_DROP_FRACTION="0.25",
                    NYTH_FAULT_WITHHOLD_FROM="bob,alice", NYTH_FAULT_WITHHOLD_FRACTION="0.5",
                    NYTH_FAULT_FORGET_AFTER_SECONDS="3600", NYTH_FAULT_DELAY_MS="1",
                    NYTH_FAULT_REORDER="true")
    quiet = launch("quiet")
    honest = launch("honest", dev_mode=False)
    with client(faulty) as http:
        health = http.get("/healthz").json()
        assert health["status"] == "ok" and health["dev_mode"] is True
        assert health["faults"] == {
            "active": ["drop", "withhold", "forget", "delay", "reorder"], "seed": SEED,
            "drop_fraction": 0.25, "withhold_from": ["alice", "bob"], "withhold_fraction": 0.5,
            "forget_after_seconds": 3600.0, "delay_ms": 1, "reorder": True,
            "token_wrong_key": False}
        document = http.get("/openapi.json").json()
        assert "Dev mode" in document["info"]["description"]
        for path in ("/v1/blobs", "/v1/blobs/stream"):
            names = [p["name"] for p in document["paths"][path]["get"]["parameters"]]
            assert READER in names, path
        # In dev mode the hook is validated like any input.
        bad = http.get("/v1/blobs", headers={READER: "not a label"})
        assert bad.status_code == 422 and READER in bad.json()["error"]
        # The bundle promises what the settings say, faults or not.
        assert http.get("/v1/bundle").json()["max_age_seconds"] == 30 * 24 * 3600
    with client(quiet) as http:
        health = http.get("/healthz").json()
        assert health["dev_mode"] is True and health["faults"]["active"] == []
    with client(honest) as http:
        health = http.get("/healthz").json()
        assert health["dev_mode"] is False and health["faults"] is None
        document = http.get("/openapi.json").json()
        assert "Dev mode" not in document["info"]["description"]
        for path in ("/v1/blobs", "/v1/blobs/stream"):
            names = [p["name"] for p in document["paths"][path]["get"]["parameters"]]
            assert READER not in names, path
        # Outside dev mode the header means nothing, not even when malformed.
        assert http.get("/v1/blobs", headers={READER: "not a label"}).status_code == 200


# -- drop ----------------------------------------------------------------------------------------


def test_drop_everything_answers_201_and_stores_nothing(launch: Launch, redis_url: str,
                                                        redis_prefix: str) -> None:
    proc = launch(NYTH_FAULT_DROP_FRACTION="1.0")
    with client(proc) as http:
        ids = [post(http, blob(i)) for i in range(20)]
        cursors = [Cursor.parse(i) for i in ids]
        assert cursors == sorted(set(cursors))  # plausible: distinct and increasing
        assert read_all(http) == []
        assert metric(http, "nyth_group_fault_dropped_total") == 20
        assert metric(http, "nyth_group_blobs_posted_total") == 0
    with redis.Redis.from_url(redis_url) as raw:
        assert raw.xlen(f"{redis_prefix}:blobs") == 0


async def test_drop_a_fraction_exactly_as_seeded(launch: Launch,
                                                 sse: Callable[[], SseClient]) -> None:
    proc = launch(NYTH_FAULT_DROP_FRACTION="0.5")
    with client(proc) as http:
        policy = predictor(http)
        posted = [(post(http, blob(i)), blob(i)) for i in range(200)]
        kept = [(i, b) for i, b in posted if not policy.drops(b)]
        assert 70 < len(kept) < 130  # exact for these blobs; a band only against a bad hash
        # Dropped or stored, ids come from one sequence: a dropped post is not given away
        # by an id out of order or one that a stored blob gets too.
        cursors = [Cursor.parse(i) for i, _ in posted]
        assert cursors == sorted(set(cursors))
        assert read_all(http, limit=30) == kept
        assert metric(http, "nyth_group_fault_dropped_total") == 200 - len(kept)
        assert metric(http, "nyth_group_blobs_posted_total") == len(kept)
    stream = sse()
    await stream.open(f"{proc.base_url}/v1/blobs/stream")
    events = await stream.wait_for(len(kept))
    assert [(i, base64.b64decode(data)) for i, _, data in events] == kept


# -- withhold ------------------------------------------------------------------------------------


async def test_withhold_hides_the_same_blobs_from_the_labelled_reader_only(
    launch: Launch, sse: Callable[[], SseClient]
) -> None:
    proc = launch(NYTH_FAULT_WITHHOLD_FROM="alice,carol", NYTH_FAULT_WITHHOLD_FRACTION="0.5")
    with client(proc) as http:
        policy = predictor(http)
        posted = [(post(http, blob(i)), blob(i)) for i in range(40)]
        # End on a blob alice may see: once her stream delivered it, everything before
        # it that she was going to get has arrived (streams are in id order).
        n = 40
        while policy.withholds("alice", Cursor.parse(posted[-1][0])):
            posted.append((post(http, blob(n)), blob(n)))
            n += 1
        visible = [(i, b) for i, b in posted if not policy.withholds("alice", Cursor.parse(i))]
        assert 10 < len(visible) < len(posted) - 10

        assert read_all(http, "alice", limit=7) == visible
        assert read_all(http, "alice") == visible  # a re-fetch meets the same withholding
        middle = posted[len(posted) // 2][0]
        assert read_all(http, "alice", after=middle) == [
            (i, b) for i, b in visible if Cursor.parse(i) > Cursor.parse(middle)]
        assert read_all(http, "carol") == visible  # one set per blob, for every label
        for reader in ("bob", None):
            assert read_all(http, reader, limit=7) == posted
        withheld = metric(http, "nyth_group_fault_withheld_total")
        assert withheld > 0

    for reader, expected in (("alice", visible), ("bob", posted)):
        stream = sse()
        await stream.open(f"{proc.base_url}/v1/blobs/stream", headers={READER: reader})
        events = await stream.wait_for(len(expected))
        assert [(i, base64.b64decode(data)) for i, _, data in events] == expected, reader
    # Live blobs too: withheld ones never reach alice, the visible ones do.
    alice = sse()
    await alice.open(f"{proc.base_url}/v1/blobs/stream",
                     params={"after": posted[-1][0]}, headers={READER: "alice"})
    with client(proc) as http:
        live: list[str] = []

        def hidden(blob_id: str) -> bool:
            return policy.withholds("alice", Cursor.parse(blob_id))

        while not (any(hidden(i) for i in live) and not hidden(live[-1])):
            live.append(post(http, blob(n)))
            n += 1
        expected_live = [i for i in live if not hidden(i)]
        assert ids_of(await alice.wait_for(len(expected_live))) == expected_live
        assert metric(http, "nyth_group_fault_withheld_total") > withheld


# -- forget --------------------------------------------------------------------------------------


async def test_forget_deletes_blobs_older_than_n_seconds(
    launch: Launch, redis_url: str, redis_prefix: str, sse: Callable[[], SseClient]
) -> None:
    raw = redis.Redis.from_url(redis_url)
    key = f"{redis_prefix}:blobs"
    # A blob stored two minutes ago, well within the 30 days the bundle promises.
    old_id = f"{int(time.time() * 1000) - 120_000}-0"
    raw.xadd(key, {"b": blob(0)}, id=old_id)
    honest = launch("honest", dev_mode=False)
    with client(honest) as http:
        assert read_all(http) == [(old_id, blob(0))]

    proc = launch("forgetful", NYTH_FAULT_FORGET_AFTER_SECONDS="60",
                  NYTH_TRIM_INTERVAL_SECONDS="0.2")
    with client(proc) as http:
        fresh = post(http, blob(1))
        assert read_all(http) == [(fresh, blob(1))]
        assert read_all(http, after=old_id) == [(fresh, blob(1))]
        stream = sse()
        await stream.open(f"{proc.base_url}/v1/blobs/stream")
        assert ids_of(await stream.wait_for(1)) == [fresh]
        # Not only hidden: deleted from Redis, so the honest replica lost it too.
        deadline = time.monotonic() + 30
        while raw.xlen(key) != 1:
            assert time.monotonic() < deadline, "the forgotten blob was never deleted"
            time.sleep(0.05)
        assert metric(http, "nyth_group_fault_forgotten_total") == 1
        assert http.get("/v1/bundle").json()["max_age_seconds"] == 30 * 24 * 3600
    with client(honest) as http:
        assert read_all(http) == [(fresh, blob(1))]
    raw.close()


# -- reorder ---------------------------------------------------------------------------------------


async def test_reorder_shuffles_pages_and_stream_batches(launch: Launch,
                                                         sse: Callable[[], SseClient]) -> None:
    proc = launch(NYTH_FAULT_REORDER="true")
    with client(proc) as http:
        posted = [(post(http, blob(i)), blob(i)) for i in range(30)]
        ids = [i for i, _ in posted]
        page = http.get("/v1/blobs", params={"limit": 30}).json()
        order = [item["id"] for item in page["blobs"]]
        assert sorted(order, key=Cursor.parse) == ids and order != ids
        assert page["next"] == ids[-1] and page["more"] is False
        # The same page is shuffled the same way when asked for again.
        assert [item["id"] for item in http.get("/v1/blobs", params={"limit": 30}).json()["blobs"]] \
            == order
        # Following `next` still reads everything exactly once.
        everything = read_all(http, limit=7)
        assert sorted(everything, key=lambda item: Cursor.parse(item[0])) == posted
        assert [i for i, _ in everything] != ids
    stream = sse()
    await stream.open(f"{proc.base_url}/v1/blobs/stream")
    streamed = ids_of(await stream.wait_for(30))
    assert sorted(streamed, key=Cursor.parse) == ids and streamed != ids


# -- delay -----------------------------------------------------------------------------------------


async def test_delay_slows_posts_and_reads_and_changes_nothing_else(
    launch: Launch, sse: Callable[[], SseClient]
) -> None:
    proc = launch(NYTH_FAULT_DELAY_MS="400")
    with client(proc) as http:
        started = time.monotonic()
        first = post(http, blob(0))
        assert time.monotonic() - started >= 0.4
        started = time.monotonic()
        assert read_all(http) == [(first, blob(0))]
        assert time.monotonic() - started >= 0.4
    stream = sse()
    started = time.monotonic()
    await stream.open(f"{proc.base_url}/v1/blobs/stream")
    assert ids_of(await stream.wait_for(1)) == [first]
    assert time.monotonic() - started >= 0.4

