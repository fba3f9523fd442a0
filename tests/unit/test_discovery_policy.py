"""The discovery index's decisions without IO (nyth_discovery.policy): probe order and
jitter, latency percentiles, audit check times and verdicts, entries and epochs."""

from __future__ import annotations

import itertools
import logging
import random
import time
from pathlib import Path

import pytest
from nyth.proto import discovery
from nyth.proto.bundle import ServerBundle
from nyth.proto.discovery import NO_LATENCY, AuditState, Directory, ServerKind
from nyth.proto.identity import Identity
from nyth.proto.tokens import NO_TOKENS
from nyth_discovery import policy
from nyth_discovery.audits import cursor_before
from nyth_discovery.policy import Audit, Canary, Listing, Measurements, Probe, ProbeStatus

NOW = 1_800_000_000


def listing(identity: Identity | None = None, *, first_seen: int = NOW - 100,
            expires: int = NOW + 3600, max_age: int = 600) -> Listing:
    identity = identity or Identity.generate()
    bundle = ServerBundle(identity.public_key, NO_TOKENS, 2048, 1000, max_age, NOW - 1000)
    return Listing(ServerKind.GROUP_SERVER, identity.onion, bundle.sign(identity), "op",
                   first_seen, NOW - 10, expires)


# -- probing ----------------------------------------------------------------------------------


def test_new_then_failing_then_most_overdue() -> None:
    statuses = {
        "healthy-late": ProbeStatus(0, NOW - 50, NOW - 50, "", NOW - 40),
        "healthy-later": ProbeStatus(0, NOW - 90, NOW - 90, "", NOW - 80),
        "failing": ProbeStatus(2, NOW - 5, NOW - 100, "down", NOW - 1),
        "new": None,
        "not-due": ProbeStatus(0, NOW - 1, NOW - 1, "", NOW + 100),
    }
    assert policy.probe_order(statuses, NOW) == ["new", "failing", "healthy-later",
                                                 "healthy-late"]


def test_jitter_stays_within_twenty_percent() -> None:
    rng = random.Random(1)
    delays = [policy.next_probe_at(NOW, 100, rng) - NOW for _ in range(500)]
    assert 80 <= min(delays) < 85 and 115 < max(delays) <= 120


def test_after_probe_counts_failures_in_a_row_and_keeps_last_answer() -> None:
    ok = policy.after_probe(None, Probe(NOW, True, 120), NOW + 300)
    assert (ok.consecutive_failures, ok.last_ok_at, ok.next_probe_at) == (0, NOW, NOW + 300)
    failed = policy.after_probe(ok, Probe(NOW + 300, False, 30000, "timeout \x00 x" * 20), 0)
    failed = policy.after_probe(failed, Probe(NOW + 600, False, 100, "refused"), 0)
    assert failed.consecutive_failures == 2 and failed.last_ok_at == NOW
    assert failed.last_error == "refused"
    back = policy.after_probe(failed, Probe(NOW + 900, True, 90), 0)
    assert back.consecutive_failures == 0 and back.last_ok_at == NOW + 900


def test_percentiles_nearest_rank() -> None:
    assert policy.percentile([], 0.5) == NO_LATENCY
    values = sorted(range(1, 21))
    assert policy.percentile(values, 0.5) == 10
    assert policy.percentile(values, 0.95) == 19
    assert policy.percentile([7], 0.95) == 7


# -- audits -----------------------------------------------------------------------------------


def test_checks_at_fractions_of_max_age() -> None:
    assert policy.check_times(1000, 1000, 2) == (1250, 1500, 1900)


def test_short_retention_checks_are_spread_and_before_the_promise_ends() -> None:
    times = policy.check_times(0, 6, 2)
    assert all(b - a >= 2 for a, b in itertools.pairwise(times))
    assert all(t < 6 for t in times) and times
    assert policy.check_times(0, 1, 2) == (0.5,)


def test_a_missing_canary_is_lost_only_while_the_promise_holds() -> None:
    assert policy.judge_read(True, posted_at=0, answered_at=10_000, max_age=60) == "kept"
    assert policy.judge_read(False, posted_at=0, answered_at=59, max_age=60) == "lost"
    assert policy.judge_read(False, posted_at=0, answered_at=60, max_age=60) == "void"


def _canary(cursor: str = "5-0", checks: tuple[float, ...] = (10, 20, 30)) -> Canary:
    return Canary(cursor, "ab" * 32, 0.0, checks)


def test_kept_after_every_check() -> None:
    canary = _canary()
    audit = Audit(canaries=(canary,))
    for at in (10, 20):
        audit = policy.after_check(audit, audit.canaries[0], "kept", at, max_age=40,
                                   max_count=100)
        assert audit.state is AuditState.NOT_AUDITED and audit.canaries[0].done
    audit = policy.after_check(audit, audit.canaries[0], "kept", 30, max_age=40, max_count=100)
    assert (audit.state, audit.passed, audit.at, audit.canaries) == (AuditState.KEPT, 1, 30, ())


def test_lost_is_recorded_with_the_numbers_and_sticks() -> None:
    audit = Audit(state=AuditState.KEPT, passed=3, canaries=(_canary("1-0"), _canary("2-0")))
    audit = policy.after_check(audit, audit.canaries[0], "lost", 12, max_age=40, max_count=100)
    assert audit.state is AuditState.LOST and audit.at == 12
    assert (audit.lost_age_seconds, audit.promised_max_age, audit.promised_max_count) == (12, 40, 100)
    assert [c.cursor for c in audit.canaries] == ["2-0"]
    for at in (10, 20, 30):
        audit = policy.after_check(audit, audit.canaries[0], "kept", at, max_age=40,
                                   max_count=100)
    assert audit.state is AuditState.LOST and audit.passed == 4


def test_failed_reads_are_inconclusive_and_void_ones_forgotten() -> None:
    audit = Audit(canaries=(_canary(),))
    failed = policy.after_check(audit, audit.canaries[0], "failed", 10, max_age=40,
                                max_count=1, error="no answer")
    assert failed.canaries == audit.canaries and failed.inconclusive == 1
    assert failed.state is AuditState.NOT_AUDITED and failed.last_error == "no answer"
    void = policy.after_check(audit, audit.canaries[0], "void", 45, max_age=40, max_count=1)
    assert void.canaries == () and void.state is AuditState.NOT_AUDITED and void.passed == 0


def test_new_canaries_follow_the_interval_and_are_capped() -> None:
    assert policy.new_canary_due(Audit(), NOW, 3600)
    assert not policy.new_canary_due(Audit(last_posted_at=NOW - 10), NOW, 3600)
    assert policy.new_canary_due(Audit(last_posted_at=NOW - 3600), NOW, 3600)
    full = Audit(canaries=tuple(_canary(f"{i}-0") for i in range(policy.MAX_ACTIVE_CANARIES)))
    assert not policy.new_canary_due(full, NOW, 1)


def test_due_checks_in_time_order() -> None:
    audit = Audit(canaries=(_canary("1-0", (50, 60)), _canary("2-0", (5, 60)),
                            _canary("3-0", (500,))))
    assert [c.cursor for c in policy.due_checks(audit, 55)] == ["2-0", "1-0"]


def test_audit_round_trips_through_json() -> None:
    audit = Audit(AuditState.LOST, 2, 7, 8.5, (_canary(),), 3, 4, 5, 6, "x")
    assert Audit.from_json(audit.to_json()) == audit


@pytest.mark.parametrize(("cursor", "before"), [
    ("5-3", "5-2"), ("5-0", "4-9999999999999999999"), ("0-0", "0"), ("0-1", "0-0")])
def test_the_cursor_just_before(cursor: str, before: str) -> None:
    assert cursor_before(cursor) == before


# -- the directory ----------------------------------------------------------------------------


def test_entry_from_measurements() -> None:
    m = Measurements(listing(), [Probe(NOW, True, 200), Probe(NOW - 1, False, 30000, "x"),
                                 Probe(NOW - 2, True, 100)],
                     ProbeStatus(0, NOW, NOW, "x", NOW + 10),
                     Audit(AuditState.KEPT, 2, NOW - 5))
    entry = policy.build_entry(m)
    assert (entry.probes, entry.probes_ok, entry.latency_p50_ms, entry.latency_p95_ms) == (3, 2, 100, 200)
    assert (entry.audit, entry.audits_passed, entry.audit_at) == (AuditState.KEPT, 2, NOW - 5)
    assert entry.onion == m.listing.onion and entry.last_error == "x"


def test_entries_drop_expired_adverts_sort_and_cap() -> None:
    live = [Measurements(listing(first_seen=NOW - i)) for i in range(5)]
    expired = Measurements(listing(expires=NOW))
    entries = policy.build_entries([*live, expired], NOW, 3)
    assert len(entries) == 3
    assert [e.server_key for e in entries] == sorted(e.server_key for e in entries)
    # The longest listed are kept when the cap is lowered.
    assert {e.onion for e in entries} == {m.listing.onion for m in live[2:]}
    index = Identity.generate()
    signed = Directory(index.public_key, 1, NOW, NOW + 60, entries).sign(index)
    assert discovery.accept_directory(signed, index_key=index.public_key, now=NOW).entries == entries


def test_epochs_always_rise() -> None:
    assert policy.next_epoch(None, 5000) == 5000
    assert policy.next_epoch(4000, 5000) == 5000
    assert policy.next_epoch(5000, 5000) == 5001
    assert policy.next_epoch(9000, 5000) == 9001  # the clock stepped back


def test_publish_when_new_changed_or_due() -> None:
    base = {"published_epoch": 1, "published_set": "a", "current_set": "a",
            "last_published_at": 100.0, "interval": 600.0}
    assert not policy.publish_due(**base, now=200)  # type: ignore[arg-type]
    assert policy.publish_due(**{**base, "published_epoch": None}, now=200)  # type: ignore[arg-type]
    assert policy.publish_due(**{**base, "current_set": "b"}, now=200)  # type: ignore[arg-type]
    assert policy.publish_due(**base, now=700)  # type: ignore[arg-type]


def test_listing_round_trips_through_json() -> None:
    item = listing()
    assert Listing.from_json(item.to_json()) == item


# -- the index's bundle -------------------------------------------------------------------------


def test_the_index_bundle_is_resigned_only_when_it_changes(tmp_path: Path) -> None:
    from nyth.config import load_settings
    from nyth.runtime.onion_service import load_or_issue_bundle
    from nyth_discovery.index_bundle import load_or_create_group_key, wanted_bundle
    from nyth_discovery.settings import DiscoverySettings

    identity = Identity.generate()
    servers = [Identity.generate().onion]
    settings = load_settings(DiscoverySettings, data_dir=tmp_path, key_passphrase="x",
                             directory_servers=servers)
    key = load_or_create_group_key(tmp_path / "group.key")
    assert load_or_create_group_key(tmp_path / "group.key") == key
    log = logging.getLogger("test")
    path = tmp_path / "index_bundle.bin"
    first = load_or_issue_bundle(path, identity, wanted_bundle(settings, identity, key, servers),
                                 log)
    time.sleep(1.1)  # a new issued_at alone must not re-sign
    assert load_or_issue_bundle(path, identity, wanted_bundle(settings, identity, key, servers),
                                log) == first
    more = settings.model_copy(update={"advert_pow_bits": 12})
    changed = load_or_issue_bundle(path, identity, wanted_bundle(more, identity, key, servers),
                                   log)
    assert changed != first
    assert discovery.IndexBundle.verify(changed, identity.onion).advert_pow_bits == 12


def test_settings_need_directory_servers(tmp_path: Path) -> None:
    from nyth.config import ConfigError, load_settings
    from nyth.runtime.devnet import DISCOVERY_KEY_FILE
    from nyth_discovery.settings import DiscoverySettings

    with pytest.raises(ConfigError, match="NYTH_DIRECTORY_SERVERS"):
        load_settings(DiscoverySettings, data_dir=tmp_path, key_passphrase="x")
    settings = load_settings(DiscoverySettings, data_dir=tmp_path, key_passphrase="x",
                             directory_servers_healthz="http://gs:8080/healthz")
    assert (settings.listen_port, settings.stream_key, settings.advert_pow_bits) == (
        8082, "nyth:discovery", 20)
    assert DiscoverySettings.key_file == DISCOVERY_KEY_FILE  # the devnet names it early
