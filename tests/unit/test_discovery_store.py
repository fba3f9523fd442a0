"""The discovery index's storage and advert checks on a real redis-server (no Tor: the
server's bundle fetch is stubbed), and the prober, auditor and directory issue with
stubbed servers."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import redis.asyncio as aioredis
from nyth.errors import DecodeError
from nyth.proto import discovery
from nyth.proto.bundle import ServerBundle
from nyth.proto.discovery import Advert, AuditState, ServerKind
from nyth.proto.identity import Identity
from nyth.proto.tokens import NO_TOKENS
from nyth_discovery import adverts, audits, prober
from nyth_discovery.policy import Audit, Listing, Probe, ProbeStatus
from nyth_discovery.publisher import issue_directory
from nyth_discovery.reach import Reach, Unreachable
from nyth_discovery.storage import DiscoveryStore

INDEX = Identity.generate()
BITS = 4


@pytest.fixture
async def store(redis_url: str, redis_prefix: str) -> AsyncIterator[DiscoveryStore]:
    redis = aioredis.Redis.from_url(redis_url)
    yield DiscoveryStore(redis, key_prefix=redis_prefix, max_entries=3, probe_window=4)
    await redis.aclose()


@dataclass
class FakeReach(Reach):
    """Serves bundles from a dict instead of over Tor."""

    served: dict[str, bytes | Exception] = field(default_factory=dict)

    async def fetch_bundle(self, kind: ServerKind, onion: str, purpose: str) -> bytes:
        answer = self.served.get(onion, Unreachable("descriptor not found"))
        if isinstance(answer, Exception):
            raise answer
        discovery.verify_server_bundle(kind, answer)
        return answer


def fake_reach() -> FakeReach:
    return FakeReach(socks=None)


def available(reach: FakeReach) -> FakeReach:
    object.__setattr__(reach, "socks", object())
    return reach


def server(max_age: int = 600) -> tuple[Identity, bytes]:
    identity = Identity.generate()
    bundle = ServerBundle(identity.public_key, NO_TOKENS, 2048, 1000, max_age, int(time.time()))
    return identity, bundle.sign(identity)


def advert(identity: Identity, bundle: bytes, *, index: Identity = INDEX, bits: int = BITS,
           issued: int | None = None, lifetime: int = 3600, label: str = "op") -> bytes:
    issued = int(time.time()) - 5 if issued is None else issued
    a = Advert(ServerKind.GROUP_SERVER, identity.public_key, index.public_key,
               discovery.bundle_hash(bundle), label, issued, issued + lifetime)
    return discovery.solve_advert_pow(a, bits).sign(identity)


def desk(store: DiscoveryStore, reach: Reach, gap: float = 0) -> adverts.AdvertDesk:
    return adverts.AdvertDesk(store, reach, INDEX.public_key, BITS, gap, store.max_entries)


async def submit(d: adverts.AdvertDesk, data: bytes) -> tuple[int, dict[str, object]]:
    response = await d.submit(data)
    return response.status_code, json.loads(bytes(response.body))


# -- adverts ----------------------------------------------------------------------------------


async def test_a_good_advert_is_listed_and_renewal_keeps_first_seen(store: DiscoveryStore) -> None:
    identity, bundle = server()
    reach = available(fake_reach())
    reach.served[identity.onion] = bundle
    status, body = await submit(desk(store, reach), advert(identity, bundle))
    assert status == 201, body
    assert body["listed"] is False and body["kind"] == "group-server"
    first = await store.listing(identity.onion)
    assert first is not None and first.bundle == bundle
    status, body = await submit(desk(store, reach), advert(identity, bundle, label="renamed"))
    assert status == 201 and body["listed"] is True
    second = await store.listing(identity.onion)
    assert second is not None and second.label == "renamed"
    assert second.first_seen == first.first_seen


@pytest.mark.parametrize(("case", "status", "words"), [
    ("malformed", 422, "malformed"),
    ("forged", 403, "not signed by the key"),
    ("other index", 403, "another index"),
    ("expired", 422, "expired"),
    ("future", 422, "future"),
    ("weak work", 403, "proof of work"),
    ("mismatch", 409, "SHA-256"),
    ("wrong kind", 409, "bundle"),
    ("unreachable", 502, "descriptor not found"),
    ("timeout", 504, "no answer"),
])
async def test_refusals_each_with_a_reason(store: DiscoveryStore, case: str, status: int,
                                           words: str) -> None:
    identity, bundle = server()
    reach = available(fake_reach())
    reach.served[identity.onion] = bundle
    data = advert(identity, bundle)
    now = int(time.time())
    if case == "malformed":
        data = b"x" * discovery.ADVERT_SIZE
    elif case == "forged":
        data = data[:-64] + Identity.generate().sign(data[:-64])
    elif case == "other index":
        data = advert(identity, bundle, index=Identity.generate())
    elif case == "expired":
        data = advert(identity, bundle, issued=now - 7200)
    elif case == "future":
        data = advert(identity, bundle, issued=now + 3600)
    elif case == "weak work":
        weak = Advert.decode(data)
        nonce = next(n for n in range(1000) if not dataclasses.replace(weak, nonce=n).pow_ok(BITS))
        data = dataclasses.replace(weak, nonce=nonce).sign(identity)
    elif case == "mismatch":  # the advert names another bundle than the server serves
        other = ServerBundle(identity.public_key, NO_TOKENS, 2048, 1000, 1, 0).sign(identity)
        data = advert(identity, other)
    elif case == "wrong kind":
        reach.served[identity.onion] = DecodeError("not a Nyth mailbox bundle")
    elif case == "unreachable":
        reach.served[identity.onion] = Unreachable("descriptor not found")
    elif case == "timeout":
        reach.served[identity.onion] = Unreachable("no answer within 30 s", timeout=True)
    got, body = await submit(desk(store, reach), data)
    assert got == status, body
    assert words in str(body["error"])
    assert await store.listing(identity.onion) is None


async def test_rate_limit_per_onion(store: DiscoveryStore) -> None:
    identity, bundle = server()
    reach = available(fake_reach())
    reach.served[identity.onion] = bundle
    d = desk(store, reach, gap=30)
    assert (await submit(d, advert(identity, bundle)))[0] == 201
    response = await d.submit(advert(identity, bundle))
    assert response.status_code == 429 and 1 <= int(response.headers["retry-after"]) <= 30
    other, other_bundle = server()
    reach.served[other.onion] = other_bundle
    assert (await submit(d, advert(other, other_bundle)))[0] == 201


async def test_a_forged_advert_does_not_spend_the_servers_submission(store: DiscoveryStore) -> None:
    identity, bundle = server()
    reach = available(fake_reach())
    reach.served[identity.onion] = bundle
    d = desk(store, reach, gap=30)
    data = advert(identity, bundle)
    assert (await submit(d, data[:-64] + bytes(64)))[0] == 403
    assert (await submit(d, data))[0] == 201


async def test_full_index_refuses_new_servers_but_renews(store: DiscoveryStore) -> None:
    reach = available(fake_reach())
    d = desk(store, reach)
    listed = []
    for _ in range(3):
        identity, bundle = server()
        reach.served[identity.onion] = bundle
        assert (await submit(d, advert(identity, bundle)))[0] == 201
        listed.append((identity, bundle))
    identity, bundle = server()
    reach.served[identity.onion] = bundle
    status, body = await submit(d, advert(identity, bundle))
    assert status == 507 and "as many servers" in str(body["error"])
    assert (await submit(d, advert(*listed[0])))[0] == 201


async def test_no_tor_is_503(store: DiscoveryStore) -> None:
    identity, bundle = server()
    status, body = await submit(desk(store, fake_reach()), advert(identity, bundle))
    assert status == 503 and "Tor" in str(body["error"])


# -- storage ----------------------------------------------------------------------------------


async def _list(store: DiscoveryStore, expires: int | None = None) -> Listing:
    identity, bundle = server()
    now = int(time.time())
    item = Listing(ServerKind.GROUP_SERVER, identity.onion, bundle, "op", now, now,
                   expires or now + 3600)
    assert await store.upsert(item) == "new"
    return item


async def test_probe_window_is_capped_and_forget_removes_everything(store: DiscoveryStore) -> None:
    item = await _list(store)
    for i in range(10):
        await store.record_probe(item.onion, Probe(i, True, i), ProbeStatus(0, i, i))
    assert [p.at for p in await store.probes(item.onion)] == [9, 8, 7, 6]
    await store.save_audit(item.onion, Audit(AuditState.KEPT, 1))
    await store.forget(item.onion)
    assert await store.listing(item.onion) is None and await store.probes(item.onion) == []
    assert await store.status(item.onion) is None
    assert (await store.audit(item.onion)).state is AuditState.NOT_AUDITED
    # Measurements of a server dropped meanwhile are not recorded.
    await store.record_probe(item.onion, Probe(1, True, 1), ProbeStatus())
    await store.save_audit(item.onion, Audit(AuditState.KEPT, 1))
    assert await store.redis.keys(f"{store.prefix}*") == []


async def test_issue_forgets_expired_and_epochs_rise(store: DiscoveryStore) -> None:
    live = await _list(store)
    expired = await _list(store, expires=int(time.time()) - 1)
    first = await issue_directory(store, INDEX, max_entries=3, lifetime=60, now=time.time())
    second = await issue_directory(store, INDEX, max_entries=3, lifetime=60, now=time.time() - 5)
    assert second.epoch > first.epoch
    directory = discovery.accept_directory(second.signed, index_key=INDEX.public_key,
                                           now=int(time.time()))
    assert [e.onion for e in directory.entries] == [live.onion]
    assert await store.listing(expired.onion) is None
    stored = await store.directory()
    assert stored is not None and stored.epoch == second.epoch


async def test_prober_records_results_and_bundle_changes(store: DiscoveryStore) -> None:
    up, changed, down = await _list(store), await _list(store), await _list(store)
    reach = available(fake_reach())
    reach.served[up.onion] = up.bundle
    reach.served[changed.onion] = server()[1]  # valid, but another server's: refused
    p = prober.Prober(store, reach, interval=60)
    assert set(await p.start_due(time.time())) == {up.onion, changed.onion, down.onion}
    await p.inflight.wait()
    statuses = await store.statuses()
    assert statuses[up.onion].last_ok_at and not statuses[up.onion].consecutive_failures
    assert statuses[down.onion].consecutive_failures == 1
    assert "descriptor not found" in statuses[down.onion].last_error
    assert statuses[changed.onion].consecutive_failures == 1
    assert await p.start_due(time.time()) == []  # nobody due before the interval


async def test_a_changed_bundle_of_the_same_server_is_a_failed_probe(store: DiscoveryStore) -> None:
    identity = Identity.generate()
    old = ServerBundle(identity.public_key, NO_TOKENS, 2048, 1000, 600, 1).sign(identity)
    new = ServerBundle(identity.public_key, NO_TOKENS, 2048, 1000, 60, 2).sign(identity)
    item = Listing(ServerKind.GROUP_SERVER, identity.onion, old, "", 1, 1, 2**40)
    reach = available(fake_reach())
    reach.served[identity.onion] = new
    probe = await prober.probe_once(reach, item)
    assert not probe.ok and probe.error.startswith("bundle changed")


@dataclass
class FakeTarget:
    """A server that keeps canaries until `forget_at` (index time), or never fails."""

    onion: str = "a" * 56
    max_age: int = 100
    max_count: int = 1000
    kept: dict[str, str] = field(default_factory=dict)
    forget: bool = False
    down: bool = False
    posted: int = 0

    async def post(self) -> tuple[str, str]:
        self.posted += 1
        cursor = f"{1000 + self.posted}-0"
        self.kept[cursor] = f"{self.posted:064x}"
        return cursor, self.kept[cursor]

    async def first_after(self, before: str) -> tuple[str, str] | None:
        if self.down:
            raise Unreachable("descriptor not found")
        if self.forget:
            return None
        later = sorted(c for c in self.kept if c > before)
        return (later[0], self.kept[later[0]]) if later else None


async def test_auditor_decides_kept_lost_and_inconclusive(store: DiscoveryStore) -> None:
    auditor = audits.Auditor(store, available(fake_reach()), interval=3600)
    honest, forgetful = FakeTarget(), FakeTarget(forget=True)
    a = await auditor.post_canary(honest, Audit())
    b = await auditor.post_canary(forgetful, Audit())
    canary = a.canaries[0]
    assert len(canary.checks) == 3
    for _ in canary.checks:
        a = await auditor.check(honest, a, a.canaries[0])
    assert a.state is AuditState.KEPT and a.passed == 1
    b = await auditor.check(forgetful, b, b.canaries[0])
    assert b.state is AuditState.LOST and b.promised_max_age == 100
    down = FakeTarget(down=True)
    c = await auditor.post_canary(down, Audit())
    c = await auditor.check(down, c, c.canaries[0])
    assert c.state is AuditState.NOT_AUDITED and c.inconclusive == 1 and c.canaries
