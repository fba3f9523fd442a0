"""A group server that requires tokens (NYTH_TOKENS_REQUIRED), as a real process on a real
Redis, driven by a client doing what the peer does (nyth.proto.tokens): issuance for
proof of work, one token per post bound to its blob, every refusal with its own status
and reason, a tokenless flood that evicts nothing, and a key that survives restarts.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from nyth.errors import AuthenticationError
from nyth.keystore import MAGIC as SEALED_MAGIC
from nyth.proto import tokens
from nyth.proto.bundle import BUNDLE_SIZE_V2, ServerBundle
from nyth_group_server.launch import GroupServerProcess

from tests.fixtures.services import stop_and_check_log

pytestmark = pytest.mark.integration

SIZE = 128  # smaller than an issue request: its own body limit must apply
BITS = 6
HEADER = "Nyth-Token"

Launch = Callable[..., GroupServerProcess]


@pytest.fixture
def launch(tmp_path: Path, redis_url: str, redis_prefix: str) -> Iterator[Launch]:
    started: list[GroupServerProcess] = []

    def _launch(name: str = "gs", *, tokens_required: bool = True,
                **env: str) -> GroupServerProcess:
        proc = GroupServerProcess(
            tmp_path / name, redis_url=redis_url, name=name, stream_key=f"{redis_prefix}:{name}",
            env={"NYTH_BLOB_SIZE": str(SIZE), "NYTH_LOG_LEVEL": "warning",
                 "NYTH_TOKENS_REQUIRED": str(tokens_required).lower(),
                 "NYTH_TOKEN_POW_BITS": str(BITS), **env})
        proc.start()
        started.append(proc)
        return proc

    yield _launch
    for proc in started:
        stop_and_check_log(proc)  # a 5xx would have logged a traceback


def _client(proc: GroupServerProcess) -> httpx.Client:
    return httpx.Client(base_url=proc.base_url, trust_env=False, timeout=20)


def _bundle(client: httpx.Client) -> ServerBundle:
    return ServerBundle.verify(base64.b64decode(client.get("/v1/bundle").json()["bundle"]))


def _issue_request(bundle: ServerBundle, count: int = tokens.MAX_BATCH,
                   ) -> tuple[tokens.PendingIssue, bytes]:
    pending = tokens.prepare_issue(count)
    nonce = tokens.solve_issue_pow(bundle.token_public_key, pending.blinded,
                                   bundle.token_pow_bits)
    return pending, pending.request(nonce).encode()


def _ask(client: httpx.Client, request: bytes) -> httpx.Response:
    return client.post("/v1/tokens",
                       json={"issue_request": base64.b64encode(request).decode()})


def get_tokens(client: httpx.Client, count: int = tokens.MAX_BATCH) -> list[tokens.Token]:
    """What the peer does: pay, ask, and keep the tokens only if the proof verifies
    against the key of the bundle (here, the one just fetched)."""
    bundle = _bundle(client)
    pending, request = _issue_request(bundle, count)
    response = _ask(client, request)
    assert response.status_code == 200, response.text
    return tokens.finalize_batch(bundle.token_public_key, pending,
                                 base64.b64decode(response.json()["issue_response"]))


def post(client: httpx.Client, blob: bytes, redemption: bytes | str | None) -> httpx.Response:
    headers = {"content-type": "application/octet-stream"}
    if redemption is not None:
        headers[HEADER] = (redemption if isinstance(redemption, str)
                           else base64.b64encode(redemption).decode())
    return client.post("/v1/blobs", content=blob, headers=headers)


def stored(client: httpx.Client) -> list[bytes]:
    page = client.get("/v1/blobs", params={"after": "0"}).json()
    return [base64.b64decode(item["blob"]) for item in page["blobs"]]


def metric(client: httpx.Client, name: str, labels: str = "") -> float:
    text = client.get("/metrics").text
    found = re.search(rf"^{re.escape(name + labels)} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_bundle_health_and_a_key_sealed_and_stable_across_restarts(launch: Launch,
                                                                  tmp_path: Path) -> None:
    proc = launch()
    with _client(proc) as client:
        answer = client.get("/v1/bundle").json()
        health = client.get("/healthz").json()
    raw = base64.b64decode(answer["bundle"])
    bundle = ServerBundle.verify(raw, answer["onion"])
    assert len(raw) == BUNDLE_SIZE_V2 and bundle.version == 2
    assert bundle.tokens_required and bundle.token_pow_bits == BITS
    assert (answer["tokens_required"], answer["token_pow_bits"]) == (True, BITS)
    assert health["tokens_required"] is True and health["status"] == "ok"
    key_file = tmp_path / "gs" / "token.key"
    assert key_file.read_bytes().startswith(SEALED_MAGIC)
    assert key_file.stat().st_mode & 0o077 == 0

    proc.restart()
    with _client(proc) as client:
        assert base64.b64decode(client.get("/v1/bundle").json()["bundle"]) == raw


def test_a_token_pays_for_one_post_of_one_blob(launch: Launch) -> None:
    proc = launch()
    with _client(proc) as client:
        first, second, third = get_tokens(client, 3)
        blob, other = os.urandom(SIZE), os.urandom(SIZE)
        response = post(client, blob, tokens.redeem(first, blob))
        assert response.status_code == 201, response.text
        # Spent: refused even for the very blob it paid for.
        again = post(client, blob, tokens.redeem(first, blob))
        assert again.status_code == 409 and "already spent" in again.json()["error"]
        # Bound to another blob: refused, and the token is not spent by the attempt.
        wrong_blob = post(client, other, tokens.redeem(second, blob))
        assert wrong_blob.status_code == 403 and "another blob" in wrong_blob.json()["error"]
        assert post(client, other, tokens.redeem(second, other)).status_code == 201
        missing = post(client, os.urandom(SIZE), None)
        assert missing.status_code == 402 and "POST /v1/tokens" in missing.json()["error"]
        for bad in ("x", base64.b64encode(bytes(63)).decode(), "!" * 88,
                    base64.b64encode(bytes(65)).decode()):
            malformed = post(client, os.urandom(SIZE), bad)
            assert malformed.status_code == 400, (bad, malformed.text)
            assert HEADER in malformed.json()["error"]
        assert stored(client) == [blob, other]
        assert metric(client, "nyth_group_tokens_issued_total") == 3
        assert metric(client, "nyth_group_tokens_redeemed_total") == 2
        for reason, count in (("spent", 1), ("invalid", 1), ("missing", 1), ("malformed", 4)):
            assert metric(client, "nyth_group_token_posts_refused_total",
                          f'{{reason="{reason}"}}') == count, reason
    assert third  # unused: an unspent token costs the server nothing


def test_a_token_of_another_server_is_refused(launch: Launch) -> None:
    ours, theirs = launch("ours"), launch("theirs")
    with _client(ours) as here, _client(theirs) as there:
        foreign = get_tokens(there, 1)[0]
        blob = os.urandom(SIZE)
        response = post(here, blob, tokens.redeem(foreign, blob))
        assert response.status_code == 403
        assert "not issued under this server's token key" in response.json()["error"]
        assert stored(here) == []


def test_issue_requests_are_paid_for_once(launch: Launch) -> None:
    proc = launch(NYTH_TOKEN_POW_BITS="12")
    with _client(proc) as client:
        bundle = _bundle(client)
        _pending, request = _issue_request(bundle, tokens.MAX_BATCH)
        assert len(request) > SIZE  # the body limit of /v1/tokens is not the blob size
        assert _ask(client, request).status_code == 200
        replayed = _ask(client, request)
        assert replayed.status_code == 409 and "answered before" in replayed.json()["error"]
        # Work below the bundle's bits (found for 0 bits: almost surely short of 12).
        cheap = tokens.prepare_issue(1)
        nonce = next(n for n in range(1 << 20)
                     if not tokens.issue_pow_ok(bundle.token_public_key, cheap.blinded, n, 12))
        short = _ask(client, cheap.request(nonce).encode())
        assert short.status_code == 403 and "12 bits" in short.json()["error"]
        # Work done for another key does not count here.
        other_key = tokens.TokenSecretKey.generate().public_key
        elsewhere = tokens.prepare_issue(1)
        paid = tokens.solve_issue_pow(other_key, elsewhere.blinded, 12)
        if not tokens.issue_pow_ok(bundle.token_public_key, elsewhere.blinded, paid, 12):
            assert _ask(client, elsewhere.request(paid).encode()).status_code == 403
        for garbage in (b"", b"\x00", b"\x21" + bytes(32 + 8), request[:-1],
                        b"\x01" + b"\xff" * 32 + bytes(8)):
            assert _ask(client, garbage).status_code == 400, garbage[:4]
        assert client.post("/v1/tokens", json={"issue_request": "***"}).status_code == 422
        assert client.post("/v1/tokens", json={"issue_request": "A" * 5000}).status_code in (
            413, 422)
        assert metric(client, "nyth_group_token_issues_refused_total",
                      '{reason="replayed"}') == 1
        assert metric(client, "nyth_group_token_issues_refused_total", '{reason="work"}') >= 1


def test_a_flood_without_tokens_evicts_nothing(launch: Launch) -> None:
    max_blobs = 5
    proc = launch(NYTH_MAX_BLOBS=str(max_blobs))
    with _client(proc) as client:
        paid = get_tokens(client, max_blobs)
        blobs = [os.urandom(SIZE) for _ in range(max_blobs)]
        for token, blob in zip(paid, blobs, strict=True):
            assert post(client, blob, tokens.redeem(token, blob)).status_code == 201
        fake = base64.b64encode(os.urandom(tokens.REDEMPTION_SIZE)).decode()
        statuses = {post(client, os.urandom(SIZE), header).status_code
                    for header in [None, fake] * max_blobs}
        assert statuses == {402, 403}
        assert stored(client) == blobs


def test_tokens_outlive_a_restart_of_the_server(launch: Launch) -> None:
    proc = launch()
    with _client(proc) as client:
        kept = get_tokens(client, 2)
    proc.restart()
    with _client(proc) as client:
        blob = os.urandom(SIZE)
        assert post(client, blob, tokens.redeem(kept[0], blob)).status_code == 201
        # The spent set is in Redis, not in the process: still spent after the restart.
        proc.restart()
    with _client(proc) as client:
        assert post(client, blob, tokens.redeem(kept[0], blob)).status_code == 409
        assert stored(client) == [blob]


def test_a_server_without_tokens_ignores_the_header(launch: Launch) -> None:
    proc = launch(tokens_required=False)
    with _client(proc) as client:
        bundle = _bundle(client)
        assert not bundle.tokens_required and bundle.version == 1
        assert client.get("/healthz").json()["tokens_required"] is False
        assert post(client, os.urandom(SIZE), None).status_code == 201
        assert post(client, os.urandom(SIZE), "garbage").status_code == 201
        assert client.post("/v1/tokens", json={"issue_request": ""}).status_code == 404
        document = client.get("/openapi.json").json()
        assert "/v1/tokens" not in document["paths"]


def test_wrong_key_fault_issues_proofs_an_honest_client_refuses(launch: Launch) -> None:
    proc = launch(NYTH_DEV_MODE="true", NYTH_FAULT_TOKEN_WRONG_KEY="true")
    with _client(proc) as client:
        assert client.get("/healthz").json()["faults"]["active"] == ["token_wrong_key"]
        with pytest.raises(AuthenticationError, match="pinned token key"):
            get_tokens(client, 2)


def test_the_wrong_key_fault_needs_dev_mode_and_tokens(tmp_path: Path, redis_url: str) -> None:
    for env in ({"NYTH_FAULT_TOKEN_WRONG_KEY": "true", "NYTH_TOKENS_REQUIRED": "true"},
                {"NYTH_FAULT_TOKEN_WRONG_KEY": "true", "NYTH_DEV_MODE": "true"}):
        proc = GroupServerProcess(tmp_path / "gs", redis_url=redis_url, env=env)
        with pytest.raises(Exception, match="TOKEN_WRONG_KEY"):
            proc.start()
