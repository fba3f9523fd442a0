"""Schema-driven fuzzing of the running discovery index, plus hand-written garbage.

schemathesis generates valid and invalid requests for every operation in the index's own
OpenAPI document and checks: no 5xx, documented status codes, content types and response
bodies conforming to the schema, invalid input refused.

The "valid input is accepted" check is off for POST /v1/adverts (a schema-valid body
still needs a signature and a proof of work, which no JSON schema can express: refusing
it is right) and GET /v1/directory (a page past the last one is 404). The index runs
without Tor here: nothing it is sent gets as far as a server.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from nyth.proto import discovery
from nyth.proto.bundle import ServerBundle
from nyth.proto.discovery import ADVERT_SIZE, Advert, IndexBundle, ServerKind
from nyth.proto.identity import Identity
from nyth.proto.tokens import NO_TOKENS
from nyth.runtime.devnet import wait_until
from nyth.runtime.redis_server import RedisServer
from nyth_discovery.launch import DiscoveryProcess
from schemathesis.generation import GenerationMode

from tests.fixtures.redis import flushed_db
from tests.fixtures.schemathesis_run import case_ids, cases, check_operation, load_schema
from tests.fixtures.services import stop_and_check_log

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory,
          redis_server: RedisServer) -> Iterator[DiscoveryProcess]:
    proc = DiscoveryProcess(
        tmp_path_factory.mktemp("schemathesis") / "index",
        redis_url=redis_server.url_for_db(flushed_db(redis_server)),
        stream_key=f"test:{uuid.uuid4().hex[:12]}",
        env={"NYTH_DIRECTORY_SERVERS": Identity.generate().onion, "NYTH_ADVERT_POW_BITS": "0",
             "NYTH_DIRECTORY_INTERVAL_SECONDS": "1", "NYTH_LOG_LEVEL": "warning"},
    )
    proc.start()
    # The first directory is issued at start; wait for it so GET /v1/directory has pages.
    wait_until(lambda: httpx.get(f"{proc.base_url}/v1/directory", trust_env=False)
               .status_code == 200, 30, what="the first directory")
    yield proc
    stop_and_check_log(proc)


@pytest.fixture(scope="module")
def api_schema(index: DiscoveryProcess) -> schemathesis.BaseSchema:
    return load_schema(index.base_url)


OPERATIONS = [("/v1/bundle", "GET"), ("/v1/adverts", "POST"), ("/v1/directory", "GET"),
              ("/v1/servers", "GET"), ("/healthz", "GET"), ("/metrics", "GET")]
WITH_INPUT = [("/v1/adverts", "POST"), ("/v1/directory", "GET"), ("/v1/servers", "GET")]
NEEDS_MORE_THAN_SCHEMA = {("/v1/adverts", "POST"), ("/v1/directory", "GET")}
CASES = cases(OPERATIONS, WITH_INPUT)


@pytest.mark.parametrize(("path", "method", "mode"), CASES, ids=case_ids(CASES))
def test_every_operation_conforms_and_never_fails(
    api_schema: schemathesis.BaseSchema, path: str, method: str, mode: GenerationMode
) -> None:
    check_operation(api_schema, path, method, mode,
                    needs_more_than_schema=(path, method) in NEEDS_MORE_THAN_SCHEMA)


def test_the_schema_covers_every_route(index: DiscoveryProcess) -> None:
    document = httpx.get(f"{index.base_url}/openapi.json", trust_env=False).json()
    assert set(document["paths"]) == {"/v1/bundle", "/v1/adverts", "/v1/directory",
                                      "/v1/servers", "/healthz", "/metrics"}
    post = document["paths"]["/v1/adverts"]["post"]
    assert {"201", "403", "409", "413", "422", "429", "502", "503", "504", "507"} <= set(
        post["responses"])


# -- hand-written garbage -------------------------------------------------------------------


@pytest.fixture
def client(index: DiscoveryProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=index.base_url, trust_env=False, timeout=10) as c:
        yield c


@pytest.mark.parametrize("advert", [
    "", "A" * 300, "!" * 300, base64.b64encode(b"x" * ADVERT_SIZE).decode(),
    base64.b64encode(b"x" * (ADVERT_SIZE - 1)).decode(), "A" * 10_000])
def test_bad_adverts_are_refused(client: httpx.Client, advert: str) -> None:
    response = client.post("/v1/adverts", json={"advert": advert})
    assert response.status_code in (413, 422), (advert[:20], response.text)
    assert set(response.json()) == {"error"}


def test_garbage_bodies_and_parameters(client: httpx.Client) -> None:
    for body in (b"", b"{", b"[]", b"null", b'{"advert": 1}', b"\xff" * 10):
        response = client.post("/v1/adverts", content=body,
                               headers={"content-type": "application/json"})
        assert response.status_code in (400, 422), (body, response.text)
        assert set(response.json()) == {"error"}
    for params in ({"page": "-1"}, {"page": "x"}, {"page": str(10**20)}):
        assert client.get("/v1/directory", params=params).status_code == 422
    assert client.get("/v1/directory", params={"page": "5"}).status_code == 404
    for params in ({"kind": "x"}, {"limit": "0"}, {"limit": "101"}, {"offset": "-1"}):
        assert client.get("/v1/servers", params=params).status_code == 422
    assert client.post("/v1/adverts", content=b"x" * 1_000_000).status_code == 413
    assert client.delete("/v1/adverts").status_code == 405


def test_a_valid_advert_with_no_tor_is_503(client: httpx.Client) -> None:
    index = IndexBundle.verify(base64.b64decode(client.get("/v1/bundle").json()["bundle"]))
    index_key = index.index_key
    server = Identity.generate()
    bundle = ServerBundle(server.public_key, NO_TOKENS, 2048, 10, 60, 1).sign(server)
    now = int(time.time())
    advert = Advert(ServerKind.GROUP_SERVER, server.public_key, index_key,
                    discovery.bundle_hash(bundle), "", now, now + 60).sign(server)
    response = client.post("/v1/adverts", json={"advert": base64.b64encode(advert).decode()})
    assert response.status_code == 503 and "Tor" in response.json()["error"]
