"""The discovery index as a real process on the private Tor network, measuring real group
servers and a mailbox: adverts refused with a reason each or accepted (the index fetches
the server's bundle over Tor during the request), a stopped server shown down and back
up, a server that forgets early caught by the retention audit and ranked below an honest
one, and the signed directory published into the public directory group.

Until servers advertise by themselves, adverts are made here, signed with each server's
own key (the devnet made it, sealed, in the server's data dir).

One devnet for the module (servers take a while to publish their onions); each test
looks at its own server(s) only.
"""

from __future__ import annotations

import base64
import dataclasses
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from nyth.proto import discovery
from nyth.proto.discovery import Advert, Chunk, ChunkAssembler, IndexBundle, ServerKind
from nyth.proto.group import GroupKind, open_group_message
from nyth.proto.identity import Identity
from nyth.runtime.devnet import DISCOVERY_DEFAULTS, Devnet, ServiceHandle, wait_until
from nyth.runtime.redis_server import RedisServer
from nyth.tor.gateway import TorGateway
from nyth.tor.privnet import PrivateTorNetwork

from tests.fixtures.redis import flushed_db
from tests.fixtures.stack import running_devnet

pytestmark = pytest.mark.integration

BITS = int(DISCOVERY_DEFAULTS["NYTH_ADVERT_POW_BITS"])
GAP = float(DISCOVERY_DEFAULTS["NYTH_ADVERT_MIN_GAP_SECONDS"])
# Short retention, so canaries are checked within seconds (at 25 %, 50 % and 90 % of it).
MAX_AGE = "30"
KEY_FILES = {ServerKind.GROUP_SERVER: "group_server.key", ServerKind.MAILBOX: "mailbox.key"}


@dataclass
class Net:
    devnet: Devnet
    index: ServiceHandle
    index_bundle: IndexBundle
    servers: dict[str, ServiceHandle]

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.index.url, trust_env=False, timeout=90)

    def identity(self, name: str, kind: ServerKind = ServerKind.GROUP_SERVER) -> Identity:
        return self.devnet.service_identity(name, KEY_FILES[kind])

    def advert(self, name: str, kind: ServerKind = ServerKind.GROUP_SERVER, *,
               bundle: bytes | None = None, lifetime: int = 3600, issued: int | None = None,
               bits: int = BITS, label: str = "test operator") -> Advert:
        if bundle is None:
            served = httpx.get(f"{self.servers[name].url}/v1/bundle", trust_env=False).json()
            bundle = base64.b64decode(served["bundle"])
        issued = int(time.time()) - 5 if issued is None else issued
        advert = Advert(kind, self.identity(name, kind).public_key, self.index_bundle.index_key,
                        discovery.bundle_hash(bundle), label, issued, issued + lifetime)
        return discovery.solve_advert_pow(advert, bits)

    def submit(self, data: bytes) -> httpx.Response:
        with self.http() as http:
            return http.post("/v1/adverts", json={"advert": base64.b64encode(data).decode()})

    def advertise(self, name: str, kind: ServerKind = ServerKind.GROUP_SERVER) -> None:
        """Submit a good advert for `name`, waiting out the rate limit and Tor hiccups."""
        def accepted() -> bool:
            response = self.submit(self.advert(name, kind).sign(self.identity(name, kind)))
            assert response.status_code in (201, 429, 502, 504), response.text
            return response.status_code == 201
        wait_until(accepted, 120, interval=1.5, what=f"the index to accept {name}'s advert")

    def servers_view(self, **params: Any) -> list[dict[str, Any]]:
        with self.http() as http:
            response = http.get("/v1/servers", params={"limit": 100, **params})
        assert response.status_code == 200, response.text
        return list(response.json()["servers"])

    def view(self, name: str) -> dict[str, Any] | None:
        onion = self.servers[name].onion
        return next((s for s in self.servers_view() if s["onion"] == onion), None)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, tor_network: PrivateTorNetwork,
        tor_gateway: TorGateway, redis_server: RedisServer) -> Iterator[Net]:
    with running_devnet(tmp_path_factory.mktemp("discovery"), tor_network, tor_gateway,
                        redis_server, flushed_db(redis_server)) as devnet:
        servers = {
            "honest": devnet.add_group_server("honest", NYTH_MAX_AGE_SECONDS=MAX_AGE),
            "forgetful": devnet.add_group_server(
                "forgetful", NYTH_MAX_AGE_SECONDS=MAX_AGE, NYTH_DEV_MODE="true",
                NYTH_FAULT_FORGET_AFTER_SECONDS="3", NYTH_TRIM_INTERVAL_SECONDS="1"),
            "flaky": devnet.add_group_server("flaky", NYTH_TOKENS_REQUIRED="false"),
            "mailbox": devnet.add_mailbox("mailbox", NYTH_POW_BITS="4",
                                          NYTH_MAX_AGE_SECONDS=MAX_AGE),
        }
        for handle in servers.values():
            handle.wait_online()
        index = devnet.add_discovery(directory_servers=[servers["honest"].onion])
        index.wait_online()
        bundle = httpx.get(f"{index.url}/v1/bundle", trust_env=False).json()
        index_bundle = IndexBundle.verify(base64.b64decode(bundle["bundle"]), index.onion)
        yield Net(devnet, index, index_bundle, servers)
        for handle in (index, *servers.values()):
            print(f"--- {handle.name} log tail ---\n{handle.process.log_tail(30)}")
        # A 5xx, or a background task that crashed, shows as a traceback in its log.
        log = (devnet.base_dir / "discovery" / "service.log").read_text()
        assert "Traceback" not in log, log[-3000:]


# -- adverts ----------------------------------------------------------------------------------


def test_forged_adverts_are_refused_with_a_reason_and_a_good_one_accepted(net: Net) -> None:
    honest = net.identity("honest")
    good = net.advert("honest")
    signed = good.sign(honest)
    refusals = {
        "wrong signature": (signed[:-64] + bytes(64), 403, "not signed by the key"),
        "someone else's onion": (signed[:-64] + Identity.generate().sign(signed[:-64]), 403,
                                 "a server can only advertise itself"),
        "expired": (net.advert("honest", issued=int(time.time()) - 7200).sign(honest), 422,
                    "expired"),
        "missing work": (_without_work(good).sign(honest), 403, "proof of work"),
        "weak work": (_weak_work(good).sign(honest), 403, "proof of work"),
        "another index": (dataclasses.replace(
            good, index_key=Identity.generate().public_key).sign(honest), 403, "another index"),
    }
    for case, (data, status, words) in refusals.items():
        response = net.submit(data)
        assert response.status_code == status, (case, response.text)
        assert words in response.json()["error"], (case, response.text)
    # The bundle check goes to the server over Tor, during the request.
    other = dataclasses.replace(discovery_bundle(net, "honest"), max_age_seconds=12345)
    mismatch = net.advert("honest", bundle=other.sign(honest)).sign(honest)
    response = _submit_past_rate_limit(net, mismatch)
    assert response.status_code == 409, response.text
    assert "SHA-256" in response.json()["error"]
    time.sleep(GAP + 0.2)  # the gap the mismatch started (at its claim, before its fetch)
    # Twice at once: one is checked (over Tor) and accepted, the other rate limited.
    with ThreadPoolExecutor(2) as pool:
        answers = sorted(pool.map(net.submit, [signed, signed]), key=lambda r: r.status_code)
    accepted, limited = answers
    assert (accepted.status_code, limited.status_code) == (201, 429), [a.text for a in answers]
    body = accepted.json()
    assert body["onion"] == net.servers["honest"].onion and body["kind"] == "group-server"
    assert int(limited.headers["retry-after"]) >= 1
    assert "less than" in limited.json()["error"]


def test_an_unreachable_server_is_refused(net: Net) -> None:
    stranger = Identity.generate()
    bundle = dataclasses.replace(discovery_bundle(net, "honest"),
                                 onion_public_key=stranger.public_key).sign(stranger)
    advert = Advert(ServerKind.GROUP_SERVER, stranger.public_key, net.index_bundle.index_key,
                    discovery.bundle_hash(bundle), "", int(time.time()), int(time.time()) + 60)
    response = net.submit(discovery.solve_advert_pow(advert, BITS).sign(stranger))
    assert response.status_code in (502, 504), response.text
    assert "could not fetch the bundle" in response.json()["error"]


def test_a_mailbox_is_listed_probed_and_audited(net: Net) -> None:
    net.advertise("mailbox", ServerKind.MAILBOX)
    view = wait_until(lambda: (v := net.view("mailbox")) and v["state"] == "up"
                      and v["audits_passed"] >= 1 and v, 120,
                      what="the mailbox to be up and to keep a canary",
                      state=lambda: net.view("mailbox"))
    assert view["kind"] == "mailbox" and view["audit"] == "kept"
    assert view["limits"]["max_age_seconds"] == int(MAX_AGE)
    assert [v["kind"] for v in net.servers_view(kind="mailbox")] == ["mailbox"]


# -- probes -----------------------------------------------------------------------------------


def test_a_stopped_server_is_shown_down_within_three_probes_and_up_after_restart(net: Net) -> None:
    net.advertise("flaky")
    wait_until(lambda: (v := net.view("flaky")) and v["state"] == "up", 90,
               what="flaky to be probed up", state=lambda: net.view("flaky"))
    process = net.servers["flaky"].process
    process.stop()
    try:
        down = wait_until(lambda: (v := net.view("flaky")) and v["state"] == "down" and v,
                          120, interval=0.3, what="flaky to be shown down",
                          state=lambda: net.view("flaky"))
        assert down["consecutive_failures"] <= 3, down
        assert down["last_error"], down
    finally:
        process.start()
    up = wait_until(lambda: (v := net.view("flaky")) and v["state"] == "up" and v, 180,
                    what="flaky to be shown up again", state=lambda: net.view("flaky"))
    assert up["consecutive_failures"] == 0


# -- audits -----------------------------------------------------------------------------------


def test_a_server_that_forgets_early_is_caught_and_ranked_below_an_honest_one(net: Net) -> None:
    net.advertise("honest")
    net.advertise("forgetful")
    lost = wait_until(lambda: (v := net.view("forgetful")) and v["audit"] == "lost" and v, 120,
                      what="the audit to catch forgetful", state=lambda: net.view("forgetful"))
    assert lost["state"] == "lost" and lost["lost_age_seconds"] < int(MAX_AGE), lost
    kept = wait_until(lambda: (v := net.view("honest")) and v["audit"] == "kept" and v, 120,
                      what="honest to keep a canary through every check",
                      state=lambda: net.view("honest"))
    assert kept["audits_passed"] >= 1 and kept["state"] == "up"
    lost, honest = net.view("forgetful"), net.view("honest")
    assert lost is not None and honest is not None
    assert lost["rank"] > honest["rank"], (lost, honest)
    group_servers = [v["onion"] for v in net.servers_view(kind="group-server")]
    assert group_servers.index(net.servers["honest"].onion) < group_servers.index(
        net.servers["forgetful"].onion)


# -- the directory ------------------------------------------------------------------------------


def test_the_directory_is_published_into_the_public_group(net: Net) -> None:
    net.advertise("honest")
    index_key = net.index_bundle.index_key

    def published() -> bytes | None:
        with net.http() as http:
            health = http.get("/healthz").json()
        if not any(p["state"] == "published" for p in health["publish"]):
            return None
        # The first directories may predate the advert: wait for one listing the server
        # (the set changed, so it is published at once).
        signed = _read_directory_group(net)
        listed = signed is not None and net.servers["honest"].onion in {
            e.onion for e in discovery.Directory.verify(signed).entries}
        return signed if listed else None

    signed = wait_until(published, 120, interval=1, what="a directory in the directory group",
                        state=lambda: httpx.get(f"{net.index.url}/healthz", trust_env=False).json())
    directory = discovery.accept_directory(signed, index_key=index_key, now=int(time.time()))
    assert net.servers["honest"].onion in {e.onion for e in directory.entries}
    # The same kind of directory over HTTP, page by page.
    with net.http() as http:
        first = http.get("/v1/directory", params={"page": 0}).json()
        pages = [first] + [http.get("/v1/directory", params={"page": page}).json()
                           for page in range(1, first["pages"])]
        chunks = [Chunk.decode(base64.b64decode(c)) for p in pages for c in p["chunks"]]
        beyond = http.get("/v1/directory", params={"page": first["pages"]})
    over_http = discovery.accept_directory(discovery.assemble(chunks), index_key=index_key,
                                           now=int(time.time()))
    assert over_http.epoch >= directory.epoch
    assert beyond.status_code == 404 and "does not exist" in beyond.json()["error"]


# -- helpers ------------------------------------------------------------------------------------


def discovery_bundle(net: Net, name: str) -> Any:
    from nyth.proto.bundle import ServerBundle

    served = httpx.get(f"{net.servers[name].url}/v1/bundle", trust_env=False).json()
    return ServerBundle.verify(base64.b64decode(served["bundle"]))


def _without_work(advert: Advert) -> Advert:
    """The advert with a nonce that does not reach BITS."""
    nonce = next(n for n in range(10_000)
                 if not dataclasses.replace(advert, nonce=n).pow_ok(BITS))
    return dataclasses.replace(advert, nonce=nonce)


def _weak_work(advert: Advert) -> Advert:
    """The advert with a nonce reaching BITS - 4 bits but not BITS."""
    nonce = next(n for n in range(1_000_000)
                 if (a := dataclasses.replace(advert, nonce=n)).pow_ok(BITS - 4)
                 and not a.pow_ok(BITS))
    return dataclasses.replace(advert, nonce=nonce)


def _submit_past_rate_limit(net: Net, data: bytes) -> httpx.Response:
    """Submit data, again while the onion's gap is not over (a 429 starts no new gap)."""
    def answer() -> httpx.Response | None:
        response = net.submit(data)
        return None if response.status_code == 429 else response
    result: httpx.Response = wait_until(answer, 30, interval=0.5, what="the rate limit to pass")
    return result


def _read_directory_group(net: Net) -> bytes | None:
    """The newest complete directory in the directory group on the honest server (read
    locally: what is stored there is what any peer reads over Tor)."""
    bundle = net.index_bundle
    assembler = ChunkAssembler()
    found: bytes | None = None
    after = "0"
    with httpx.Client(base_url=net.servers["honest"].url, trust_env=False, timeout=20) as http:
        while True:
            page = http.get("/v1/blobs", params={"after": after, "limit": 500}).json()
            for item in page["blobs"]:
                try:
                    message = open_group_message(bundle.group_key, bundle.directory_group_id,
                                                 base64.b64decode(item["blob"]))
                except Exception:  # canaries and other groups' blobs: not ours
                    continue
                assert message.kind == GroupKind.DIRECTORY
                assert message.author == bundle.index_key
                signed = assembler.add(Chunk.decode(message.data))
                if signed is not None:
                    found = signed
            after = page["next"]
            if not page["more"]:
                return found
