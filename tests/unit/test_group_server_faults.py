"""The group server's fault policy on its own: its decisions (deterministic, in the
proportions asked for, only for whom they are meant) and the pages it answers, over an
in-memory stream. The server applying it is tested in
tests/integration/test_group_server_faults.py."""

from __future__ import annotations

import hashlib
from typing import Any, cast

import pytest
from nyth.runtime.stream_store import Cursor
from nyth_group_server.faults import FaultPolicy, FaultsView
from nyth_group_server.storage import BlobStore, Page, StoredBlob

ONION = "a" * 56


def blob(i: int) -> bytes:
    """A deterministic stand-in for a sealed blob."""
    return hashlib.sha256(b"blob %d" % i).digest() * 8


def policy(**kwargs: Any) -> FaultPolicy:
    return FaultPolicy(dev_mode=True, onion=ONION, **kwargs)


def test_honest_policy_changes_nothing() -> None:
    honest = FaultPolicy.HONEST
    assert honest.active == () and honest.view() is None and not honest.alters_reads
    assert not any(honest.drops(blob(i)) for i in range(100))
    assert not honest.withholds("alice", Cursor(1, 0))
    assert honest.forgotten_below() is None
    blobs = [StoredBlob(Cursor(i, 0), blob(i)) for i in range(10)]
    assert honest.serve(blobs, "alice") == blobs


def test_dev_mode_without_faults_is_shown_but_inert() -> None:
    quiet = policy()
    assert quiet.active == () and not quiet.alters_reads
    view = quiet.view()
    assert isinstance(view, FaultsView) and view.active == [] and view.drop_fraction == 0


def test_active_faults_are_named() -> None:
    everything = policy(drop_fraction=0.1, withhold_from=frozenset({"bob", "alice"}),
                        withhold_fraction=0.5, forget_after_seconds=30.0, delay_ms=5,
                        reorder=True, seed=9)
    assert everything.active == ("drop", "withhold", "forget", "delay", "reorder")
    view = everything.view()
    assert view is not None and view.withhold_from == ["alice", "bob"] and view.seed == 9
    # Labels with nothing to withhold are no fault.
    assert policy(withhold_from=frozenset({"a"}), withhold_fraction=0.0).active == ()


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_drops_are_deterministic_and_in_proportion(fraction: float) -> None:
    dropper = policy(drop_fraction=fraction, seed=1)
    decisions = [dropper.drops(blob(i)) for i in range(2000)]
    assert decisions == [policy(drop_fraction=fraction, seed=1).drops(blob(i))
                         for i in range(2000)]
    # Exact for these inputs; the band only says the hash is not degenerate.
    assert abs(sum(decisions) / 2000 - fraction) < 0.04


def test_drop_extremes() -> None:
    assert all(policy(drop_fraction=1.0).drops(blob(i)) for i in range(200))
    assert not any(policy(drop_fraction=0.0).drops(blob(i)) for i in range(200))


def test_decisions_depend_on_seed_and_server() -> None:
    def dropped(p: FaultPolicy) -> list[int]:
        return [i for i in range(200) if p.drops(blob(i))]

    base = dropped(policy(drop_fraction=0.5, seed=1))
    assert dropped(policy(drop_fraction=0.5, seed=2)) != base
    # Two servers sharing a seed still fail independently of each other.
    other = FaultPolicy(dev_mode=True, onion="b" * 56, drop_fraction=0.5, seed=1)
    assert dropped(other) != base


def test_withholding_is_per_blob_id_and_only_for_labelled_readers() -> None:
    withholder = policy(withhold_from=frozenset({"alice"}), withhold_fraction=0.5)
    ids = [Cursor(1_700_000_000_000 + i, i % 3) for i in range(1000)]
    hidden = [c for c in ids if withholder.withholds("alice", c)]
    assert 400 < len(hidden) < 600
    assert hidden == [c for c in ids if withholder.withholds("alice", c)]  # again: the same
    assert not any(withholder.withholds(reader, c) for c in ids for reader in ("bob", None))
    everything = policy(withhold_from=frozenset({"alice"}), withhold_fraction=1.0)
    assert all(everything.withholds("alice", c) for c in ids)


def test_forgetting_is_by_age() -> None:
    now = 1_700_000_100.0
    forgetful = policy(forget_after_seconds=60.0, clock=lambda: now)
    floor = forgetful.forgotten_below()
    assert floor == Cursor(1_700_000_040_000, 0)
    old = StoredBlob(Cursor(1_700_000_039_999, 5), blob(1))
    young = StoredBlob(Cursor(1_700_000_040_000, 0), blob(2))
    assert forgetful.serve([old, young], None) == [young]


def test_reorder_is_a_stable_permutation() -> None:
    shuffler = policy(reorder=True)
    blobs = [StoredBlob(Cursor(100 + i, 0), blob(i)) for i in range(20)]
    served = shuffler.serve(blobs, None)
    assert sorted(served, key=lambda b: b.id) == blobs and served != blobs
    assert shuffler.serve(blobs, None) == served
    assert shuffler.serve(blobs[:1], None) == blobs[:1]


# -- pages over an in-memory stream ------------------------------------------------------------


class MemoryStore:
    """BlobStore.read_after over a list (what read_page needs of a store), counting reads."""

    def __init__(self, blobs: list[StoredBlob]) -> None:
        self.blobs = blobs
        self.reads = 0

    async def read_after(self, after: Cursor, limit: int) -> Page:
        self.reads += 1
        items = [b for b in self.blobs if b.id > after]
        page = items[:limit]
        return Page(page, page[-1].id if page else after, len(items) > limit)


def stream(count: int) -> list[StoredBlob]:
    return [StoredBlob(Cursor(1000 + i, 0), blob(i)) for i in range(count)]


async def read_all(p: FaultPolicy, store: MemoryStore, reader: str | None,
                   limit: int) -> list[StoredBlob]:
    out: list[StoredBlob] = []
    after = Cursor.ZERO
    while True:
        page = await p.read_page(cast(BlobStore, store), after, limit, reader)
        # As an honest page: `next` is the last blob returned, or `after` for none.
        assert page.next == (max(b.id for b in page.blobs) if page.blobs else after)
        assert len(page.blobs) <= limit
        out += page.blobs
        after = page.next
        if not page.more:
            return out


@pytest.mark.parametrize("limit", [1, 3, 7, 50])
async def test_pages_leave_out_exactly_the_withheld_blobs(limit: int) -> None:
    blobs = stream(40)
    store = MemoryStore(blobs)
    withholder = policy(withhold_from=frozenset({"alice"}), withhold_fraction=0.5)
    expected = [b for b in blobs if not withholder.withholds("alice", b.id)]
    assert 0 < len(expected) < 40
    assert await read_all(withholder, store, "alice", limit) == expected
    assert await read_all(withholder, store, "bob", limit) == blobs
    assert await read_all(withholder, store, None, limit) == blobs


async def test_a_page_is_filled_past_withheld_blobs() -> None:
    blobs = stream(40)
    withholder = policy(withhold_from=frozenset({"alice"}), withhold_fraction=0.5)
    visible = [b for b in blobs if not withholder.withholds("alice", b.id)]
    page = await withholder.read_page(cast(BlobStore, MemoryStore(blobs)), Cursor.ZERO, 5, "alice")
    assert page.blobs == visible[:5] and page.next == visible[4].id and page.more is True


async def test_everything_withheld_reads_as_an_empty_stream() -> None:
    blobs = stream(30)
    store = MemoryStore(blobs)
    withholder = policy(withhold_from=frozenset({"alice"}), withhold_fraction=1.0)
    page = await withholder.read_page(cast(BlobStore, store), Cursor.ZERO, 7, "alice")
    # `next` stays put and `more` is false: no hint that anything was passed over.
    assert page == Page([], Cursor.ZERO, False)
    assert store.reads == 4  # one pass over the stream, 7 + 1 per read


async def test_withheld_tail_does_not_move_the_cursor() -> None:
    blobs = stream(12)
    withholder = policy(withhold_from=frozenset({"alice"}), withhold_fraction=0.5)
    visible = [b for b in blobs if not withholder.withholds("alice", b.id)]
    last_visible = visible[-1]
    page = await withholder.read_page(cast(BlobStore, MemoryStore(blobs)), last_visible.id, 5,
                                      "alice")
    assert page == Page([], last_visible.id, False)


async def test_reordered_pages_keep_their_cursor() -> None:
    blobs = stream(25)
    shuffler = policy(reorder=True)
    page = await shuffler.read_page(cast(BlobStore, MemoryStore(blobs)), Cursor.ZERO, 10, None)
    assert sorted(page.blobs, key=lambda b: b.id) == blobs[:10] and page.blobs != blobs[:10]
    assert page.next == blobs[9].id and page.more is True
    assert await read_all(shuffler, MemoryStore(blobs), None, 10) != blobs
    assert sorted(await read_all(shuffler, MemoryStore(blobs), None, 10),
                  key=lambda b: b.id) == blobs


async def test_forgotten_blobs_are_skipped_in_pages() -> None:
    blobs = stream(20)  # ids 1000-0 .. 1019-0 (ms)
    forgetful = policy(forget_after_seconds=1.0, clock=lambda: 2.0105)  # below 1010 ms
    store = MemoryStore(blobs)
    assert await read_all(forgetful, store, None, 4) == blobs[10:]
    page = await forgetful.read_page(cast(BlobStore, store), Cursor.ZERO, 100, None)
    assert page.blobs == blobs[10:] and page.next == blobs[-1].id


async def test_honest_pages_are_the_stores_own() -> None:
    blobs = stream(5)
    store = MemoryStore(blobs)
    page = await FaultPolicy.HONEST.read_page(cast(BlobStore, store), Cursor(1001, 0), 2, "alice")
    assert page == await store.read_after(Cursor(1001, 0), 2)
