"""The peer's discovery client (nyth_peer.discovery) against a fake index and a fake
directory server over httpx's mock transport: the index pinned on first use, the
directory read from its pages, then from the directory group while the index is down;
forged, tampered, stale and rolled-back directories refused with their reason while the
good one is kept (also across a restart); a changed index bundle refused; the view and
the choice of servers built from what is held."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from nyth.proto.bundle import ServerBundle
from nyth.proto.discovery import (
    AuditState,
    Directory,
    Entry,
    IndexBundle,
    ServerKind,
    chunk_directory,
    page_count,
    page_of,
)
from nyth.proto.group import GroupKind, seal_group_data
from nyth.proto.identity import Identity
from nyth.proto.server_choice import NotEnoughServers
from nyth_peer.discovery import GROUP_SOURCE, INDEX_SOURCE, Discovery
from nyth_peer.discovery_views import NoDirectory, choose_servers, discovery_view
from nyth_peer.pins import INDEX as INDEX_PIN
from nyth_peer.store import Store

KEY = bytes(range(32))
NOW = int(time.time())
INDEX = Identity.generate()
OTHER_INDEX = Identity.generate()
DIR_SERVER = Identity.generate()
GROUP_KEY = os.urandom(32)
SERVERS = [Identity.generate() for _ in range(3)]
EPOCH_LAST_BYTE = 8 + 32 + 7  # a directory's header: magic, index key, epoch (u64)


def server_bundle(identity: Identity) -> bytes:
    return ServerBundle(identity.public_key, bytes(32), 2048, 1000, 86_400, NOW).sign(identity)


def index_bundle(pow_bits: int = 8) -> bytes:
    return IndexBundle(INDEX.public_key, pow_bits, GROUP_KEY, NOW,
                       (DIR_SERVER.public_key,)).sign(INDEX)


def entry(identity: Identity, label: str, **figures: Any) -> Entry:
    base: dict[str, Any] = dict(probes=10, probes_ok=10, last_probe_at=NOW, last_ok_at=NOW,
                                latency_p50_ms=300, latency_p95_ms=900,
                                audit=AuditState.KEPT, audits_passed=2, audit_at=NOW)
    base.update(figures)
    return Entry(ServerKind.GROUP_SERVER, server_bundle(identity), label, NOW - 100,
                 NOW + 3600, **base)


def directory(epoch: int, *, signer: Identity = INDEX, expires: int = NOW + 3600,
              entries: tuple[Entry, ...] | None = None) -> bytes:
    if entries is None:
        entries = tuple(entry(s, f"op{i}") for i, s in enumerate(SERVERS))
    entries = tuple(sorted(entries, key=lambda e: e.server_key))
    return Directory(signer.public_key, epoch, NOW - 10, expires, entries).sign(signer)


def answer(status: int, body: Any) -> httpx.Response:
    return httpx.Response(status, headers={"content-type": "application/json"},
                          stream=httpx.ByteStream(json.dumps(body).encode()))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Net:
    """The index (up or down) and the one server of its directory group."""

    def __init__(self) -> None:
        self.index_up = True
        self.bundle = index_bundle()
        self.signed = directory(1)
        self.epoch = 1
        self.blobs: list[bytes] = []

    def post(self, signed: bytes, epoch: int, author: Identity = INDEX) -> None:
        gid = IndexBundle.verify(index_bundle()).directory_group_id
        for chunk in chunk_directory(signed, epoch):
            blob, _ = seal_group_data(author, GROUP_KEY, gid, kind=GroupKind.DIRECTORY,
                                      timestamp_ms=NOW * 1000, parents=(), data=chunk.encode())
            self.blobs.append(blob)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        host, path = request.url.host, request.url.path
        if host == f"{INDEX.onion}.onion":
            if not self.index_up:
                raise httpx.ConnectError("general SOCKS server failure")
            if path == "/v1/bundle":
                return answer(200, {"bundle": b64(self.bundle)})
            page = int(request.url.params["page"])
            chunks = chunk_directory(self.signed, self.epoch)
            return answer(200, {"epoch": self.epoch, "digest": chunks[0].digest.hex(),
                                "page": page, "pages": page_count(len(chunks)),
                                "chunks": [b64(c.encode()) for c in page_of(chunks, page)]})
        assert host == f"{DIR_SERVER.onion}.onion"
        if path == "/v1/bundle":
            return answer(200, {"bundle": b64(server_bundle(DIR_SERVER))})
        after = request.url.params["after"]
        start = 0 if after == "0" else int(after.split("-")[0])
        items = [{"id": f"{i + 1}-0", "blob": b64(b)} for i, b in enumerate(self.blobs)][start:]
        return answer(200, {"blobs": items, "next": items[-1]["id"] if items else after,
                            "more": False})


@pytest.fixture
def net() -> Net:
    return Net()


def discovery(tmp_path: Path, net: Net, pinned: list[str] | None = None,
              failures: list[str] | None = None) -> Discovery:
    async def pin_server(onion: str, bundle: bytes) -> None:
        ServerBundle.verify(bundle, onion)
        if pinned is not None:
            pinned.append(onion)

    return Discovery(Store(tmp_path / "profile.db", KEY),
                     lambda: httpx.AsyncClient(transport=httpx.MockTransport(net.handle)),
                     pin_server, indexes=[INDEX.onion], healthz=[], refresh_seconds=300,
                     on_onion_failure=None if failures is None else
                     lambda: failures.append("newnym"))


def index_view(d: Discovery) -> dict[str, Any]:
    return dict(discovery_view(d)["indexes"][0])


async def test_index_first_then_its_directory_group(tmp_path: Path, net: Net) -> None:
    pinned: list[str] = []
    d = discovery(tmp_path, net, pinned)
    await d.refresh()
    view = index_view(d)
    assert (view["state"], view["source"], view["epoch"]) == ("ok", INDEX_SOURCE, 1)
    assert d.pins.pinned(INDEX_PIN, INDEX.onion) == net.bundle
    assert view["directory_servers"] == [DIR_SERVER.onion]
    # The index goes down; its directory group holds a newer directory.
    net.index_up = False
    net.post(directory(2), 2)
    await d.refresh()
    view = index_view(d)
    assert (view["state"], view["source"], view["epoch"]) == ("ok", GROUP_SOURCE, 2)
    assert "SOCKS" in view["reason"] and "epoch 2 read from it and verified" in view["reason"]
    assert pinned == [DIR_SERVER.onion] and view["last_refusal"] is None


async def test_forged_tampered_stale_and_rolled_back_are_refused(tmp_path: Path,
                                                                  net: Net) -> None:
    d = discovery(tmp_path, net)
    net.signed, net.epoch = directory(5), 5
    await d.refresh()
    net.index_up = False
    # Signed by another key and posted by it: not the index's message, ignored.
    net.post(directory(9, signer=OTHER_INDEX), 9, author=OTHER_INDEX)
    await d.refresh()
    assert index_view(d)["epoch"] == 5 and "not by the index" in index_view(d)["last_refusal"]
    # Posted as the index, a real directory (epoch 6) relabelled as epoch 7: one bit of
    # its header flipped, its chunks' digest made to match.
    flipped = bytearray(directory(6))
    flipped[EPOCH_LAST_BYTE] ^= 1
    net.post(bytes(flipped), 7)
    await d.refresh()
    view = index_view(d)
    assert view["epoch"] == 5 and "signature does not verify" in view["last_refusal"]
    # Stale (expired), then older than the one held.
    net.post(directory(8, expires=NOW - 1), 8)
    await d.refresh()
    assert index_view(d)["epoch"] == 5 and "stale" in index_view(d)["last_refusal"]
    net.index_up = True
    net.signed, net.epoch = directory(3), 3
    await d.refresh()
    view = index_view(d)
    assert view["epoch"] == 5 and "rollback" in view["last_refusal"]
    # The good one survives a restart.
    d.store.close()
    again = discovery(tmp_path, net)
    assert index_view(again)["epoch"] == 5


async def test_a_changed_index_bundle_is_refused_loudly(tmp_path: Path, net: Net) -> None:
    d = discovery(tmp_path, net)
    await d.refresh()
    net.bundle = index_bundle(pow_bits=12)
    net.post(directory(2), 2)
    await d.refresh()
    view = index_view(d)
    assert "differs from the one pinned" in view["last_refusal"]
    assert "advert_pow_bits 8 -> 12" in view["last_refusal"]
    # The pinned bundle still names the directory group: it is read instead.
    assert (view["source"], view["epoch"]) == (GROUP_SOURCE, 2)
    assert d.pins.pinned(INDEX_PIN, INDEX.onion) == index_bundle()


async def test_a_failed_read_makes_tor_forget_failed_lookups(tmp_path: Path,
                                                               net: Net) -> None:
    """As everywhere in the peer: after an index could not be read, the engine's NEWNYM
    (forget_onion_failures) runs, so an index that comes online is read at the next try."""
    failures: list[str] = []
    d = discovery(tmp_path, net, failures=failures)
    await d.refresh()
    assert failures == []
    net.index_up = False
    await d.refresh()
    assert failures == ["newnym"]
    net.index_up = True
    await d.refresh()
    assert failures == ["newnym"] and index_view(d)["source"] == INDEX_SOURCE


async def test_unreachable_before_any_pin(tmp_path: Path, net: Net) -> None:
    net.index_up = False
    d = discovery(tmp_path, net)
    await d.refresh()
    view = index_view(d)
    assert view["state"] == "unreachable" and "no bundle of it is pinned" in view["reason"]
    with pytest.raises(NoDirectory, match="no valid directory"):
        choose_servers(d, k=2, known=[])


async def test_view_ranks_and_choice_spreads_operators(tmp_path: Path, net: Net) -> None:
    slow, fast, down = SERVERS
    entries = (entry(slow, "alpha", latency_p50_ms=2000), entry(fast, "alpha"),
               entry(down, "beta", consecutive_failures=3, last_error="timeout"))
    net.signed = directory(1, entries=entries)
    d = discovery(tmp_path, net)
    await d.refresh()
    servers = discovery_view(d)["servers"]
    assert [s["onion"] for s in servers] == [fast.onion, slow.onion, down.onion]
    assert servers[2]["state"] == "down" and "(timeout)" in servers[2]["reason"]
    assert servers[0]["listed_by"] == [INDEX.onion] and servers[0]["disagreements"] == []
    assert servers[0]["limits"]["max_blobs"] == 1000
    # Each row says whether --auto would pick it, agreeing with what choose does below.
    assert [s["eligible"] for s in servers] == [True, True, False]
    assert servers[0]["not_eligible"] is None and servers[2]["not_eligible"] == "down"
    # Two of operator alpha are up; with k=2 the second is taken only since no other is.
    choice = choose_servers(d, k=2, known=[])
    assert [c.onion for c in choice] == [fast.onion, slow.onion]
    assert "shares operator 'alpha'" in choice[1].reason
    assert [c.onion for c in choose_servers(d, k=1, known=[slow.onion])] == [slow.onion]
    with pytest.raises(NotEnoughServers, match="down"):
        choose_servers(d, k=3, known=[])


async def test_two_indexes_disagree(tmp_path: Path, net: Net) -> None:
    d = discovery(tmp_path, net)
    await d.refresh()
    # A second index's directory, held beside the first, says one server is down.
    held = d.directories[INDEX.onion]
    said_down = tuple(dataclasses.replace(e, consecutive_failures=4) if e.onion == SERVERS[0].onion
                      else e for e in held.entries)
    other = Directory(OTHER_INDEX.public_key, 1, NOW, NOW + 60, said_down)
    d.indexes.append(OTHER_INDEX.onion)
    d.directories[OTHER_INDEX.onion] = other
    servers = {s["onion"]: s for s in discovery_view(d)["servers"]}
    split = servers[SERVERS[0].onion]
    assert split["state"] == "down"  # the most cautious view ranks it
    assert any("says down" in x and "says up" in x for x in split["disagreements"])
    assert servers[SERVERS[1].onion]["disagreements"] == []
