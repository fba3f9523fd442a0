"""What the index decides, without IO: which server to probe next, what a probe or an
audit read means, when a canary is checked, and how measurements become a directory entry.

The IO around it (Tor, Redis) is in prober.py, audits.py and publisher.py; every function
here takes the time as an argument, so the tests give it any clock they like.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from nyth.proto import discovery
from nyth.proto.discovery import NO_LATENCY, AuditState, Entry, ServerKind

JITTER = 0.2
# Fractions of the promised max_age at which a canary is looked for: early (a server that
# forgets at once), middle, and late but safely before the promise ends.
CHECK_FRACTIONS = (0.25, 0.5, 0.9)
# Canaries posted to one server and not yet decided, at most: with the default hour between
# canaries and a 30-day retention there would otherwise be hundreds of them per server.
MAX_ACTIVE_CANARIES = 8


# -- records (kept in Redis as JSON) ----------------------------------------------------------


@dataclass(frozen=True)
class Listing:
    """A server as its last accepted advert lists it."""

    kind: ServerKind
    onion: str
    bundle: bytes  # the signed bundle the server served when it advertised
    label: str
    first_seen: int
    advert_issued: int
    advert_expires: int

    def to_json(self) -> dict[str, Any]:
        return {"kind": int(self.kind), "onion": self.onion, "bundle": self.bundle.hex(),
                "label": self.label, "first_seen": self.first_seen,
                "advert_issued": self.advert_issued, "advert_expires": self.advert_expires}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Listing:
        return cls(ServerKind(data["kind"]), data["onion"], bytes.fromhex(data["bundle"]),
                   data["label"], data["first_seen"], data["advert_issued"],
                   data["advert_expires"])


@dataclass(frozen=True)
class Probe:
    at: int
    ok: bool
    latency_ms: int  # time to the verified answer; for a failure, time until it failed
    error: str = ""


@dataclass(frozen=True)
class ProbeStatus:
    """What the prober keeps per server beside the window of recent probes."""

    consecutive_failures: int = 0
    last_probe_at: int = 0
    last_ok_at: int = 0
    last_error: str = ""
    next_probe_at: float = 0.0  # 0: never probed (due at once)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProbeStatus:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class Canary:
    """One canary posted to a server, and how far its checks got."""

    cursor: str        # the id the server gave it
    digest: str        # hex SHA-256 of what was posted (blob, or tag ‖ ciphertext)
    posted_at: float   # just before the post was sent: its age is at most now - posted_at
    checks: tuple[float, ...]  # when to look for it
    done: int = 0      # checks passed so far

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "checks": list(self.checks)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Canary:
        return cls(data["cursor"], data["digest"], data["posted_at"], tuple(data["checks"]),
                   data["done"])

    @property
    def next_check(self) -> float:
        return self.checks[self.done]


@dataclass(frozen=True)
class Audit:
    """A server's retention audits."""

    state: AuditState = AuditState.NOT_AUDITED
    passed: int = 0
    at: int = 0                 # last decided audit; for LOST when the loss was found
    last_posted_at: float = 0.0  # the last canary's post (a new one every audit interval)
    canaries: tuple[Canary, ...] = ()
    # For a loss, the numbers a reader needs to judge it (docs/discovery.md, audit limits):
    # how old the canary at most was, and what the bundle promised.
    lost_age_seconds: int = 0
    promised_max_age: int = 0
    promised_max_count: int = 0
    inconclusive: int = 0       # checks that could not be made (server unreachable)
    last_error: str = ""

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "state": int(self.state),
                "canaries": [c.to_json() for c in self.canaries]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Audit:
        values = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        values["state"] = AuditState(values.get("state", 0))
        values["canaries"] = tuple(Canary.from_json(c) for c in values.get("canaries", ()))
        return cls(**values)


# -- probing ----------------------------------------------------------------------------------


def next_probe_at(now: float, interval: float, rng: random.Random | None = None) -> float:
    """When to probe a server again: interval ±20 %, so probes of many servers spread out
    and a server cannot learn the exact moment it will be measured."""
    r = (rng or random).uniform(1 - JITTER, 1 + JITTER)
    return now + interval * r


def probe_order(statuses: Mapping[str, ProbeStatus | None], now: float) -> list[str]:
    """The servers due for a probe, most urgent first: never probed, then failing (the
    sooner a server is seen down or back up, the better), then by how overdue."""
    due = [(onion, s) for onion, s in statuses.items()
           if s is None or s.next_probe_at <= now]

    def urgency(item: tuple[str, ProbeStatus | None]) -> tuple[int, float, str]:
        onion, s = item
        if s is None or s.last_probe_at == 0:
            return (0, 0.0, onion)
        if s.consecutive_failures:
            return (1, s.next_probe_at, onion)
        return (2, s.next_probe_at, onion)

    return [onion for onion, _ in sorted(due, key=urgency)]


def after_probe(status: ProbeStatus | None, probe: Probe, next_at: float) -> ProbeStatus:
    status = status or ProbeStatus()
    if probe.ok:
        return ProbeStatus(0, probe.at, probe.at, status.last_error, next_at)
    return ProbeStatus(min(status.consecutive_failures + 1, 0xFFFF), probe.at,
                       status.last_ok_at, discovery.short_error(probe.error), next_at)


def percentile(sorted_values: Sequence[int], fraction: float) -> int:
    """Nearest-rank percentile of sorted values (NO_LATENCY when there are none)."""
    if not sorted_values:
        return NO_LATENCY
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return min(sorted_values[rank - 1], NO_LATENCY - 1)


# -- audits -----------------------------------------------------------------------------------


def check_times(posted_at: float, max_age: int, min_gap: float) -> tuple[float, ...]:
    """When to look for a canary: at CHECK_FRACTIONS of the promised max_age, but never
    less than min_gap apart (the audit loop's tick), and every check strictly before the
    promise ends; a retention too short for that gets as many checks as fit (at least one,
    at half of it)."""
    times: list[float] = []
    for fraction in CHECK_FRACTIONS:
        at = posted_at + fraction * max_age
        if times:
            at = max(at, times[-1] + min_gap)
        if at - posted_at < max_age - min_gap / 2:
            times.append(at)
    return tuple(times) or (posted_at + max_age / 2,)


def judge_read(found: bool, *, posted_at: float, answered_at: float, max_age: int) -> str:
    """What one read of a canary shows: "kept" (found), "lost" (missing while the bundle
    still promised to keep it), or "void" (missing, but the answer came when the canary
    may already have been older than max_age: an honest server may have dropped it).

    posted_at is taken before the post was sent and answered_at after the answer came,
    so answered_at - posted_at bounds the canary's age at the server from above."""
    if found:
        return "kept"
    return "lost" if answered_at - posted_at < max_age else "void"


def new_canary_due(audit: Audit, now: float, interval: float) -> bool:
    return (len(audit.canaries) < MAX_ACTIVE_CANARIES
            and (audit.last_posted_at == 0 or now - audit.last_posted_at >= interval))


def after_check(audit: Audit, canary: Canary, outcome: str, now: float, *,
                max_age: int, max_count: int, error: str = "") -> Audit:
    """The audit after one check of one canary: kept (one more check passed; all passed:
    audits_passed + 1), lost (the state becomes LOST and stays so while the server is
    listed), void (the canary is dropped, nothing counted) or "failed" (the read failed:
    inconclusive, tried again next round)."""
    others = tuple(c for c in audit.canaries if c.cursor != canary.cursor)
    if outcome == "failed":
        return replace(audit, inconclusive=audit.inconclusive + 1,
                       last_error=discovery.short_error(error))
    if outcome == "void":
        return replace(audit, canaries=others)
    if outcome == "lost":
        return replace(audit, state=AuditState.LOST, at=int(now), canaries=others,
                       lost_age_seconds=int(now - canary.posted_at),
                       promised_max_age=max_age, promised_max_count=max_count)
    done = replace(canary, done=canary.done + 1)
    if done.done < len(done.checks):
        return replace(audit, canaries=(*others, done))
    state = AuditState.LOST if audit.state is AuditState.LOST else AuditState.KEPT
    return replace(audit, state=state, passed=min(audit.passed + 1, 0xFFFF), at=int(now),
                   canaries=others)


def due_checks(audit: Audit, now: float) -> list[Canary]:
    return sorted((c for c in audit.canaries if c.next_check <= now),
                  key=lambda c: c.next_check)


# -- the directory ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurements:
    listing: Listing
    probes: Sequence[Probe] = ()
    status: ProbeStatus | None = None
    audit: Audit = field(default_factory=Audit)


def build_entry(m: Measurements) -> Entry:
    """One directory entry: the listing and what the index measured of it."""
    status = m.status or ProbeStatus()
    answered = sorted(p.latency_ms for p in m.probes if p.ok)
    return Entry(
        kind=m.listing.kind, bundle=m.listing.bundle, label=m.listing.label,
        first_seen=m.listing.first_seen, advert_expires=m.listing.advert_expires,
        probes=min(len(m.probes), 0xFFFF), probes_ok=min(len(answered), 0xFFFF),
        consecutive_failures=min(status.consecutive_failures, 0xFFFF),
        last_probe_at=status.last_probe_at, last_ok_at=status.last_ok_at,
        latency_p50_ms=percentile(answered, 0.5), latency_p95_ms=percentile(answered, 0.95),
        audit=m.audit.state, audits_passed=m.audit.passed, audit_at=m.audit.at,
        last_error=discovery.short_error(status.last_error),
    )


def build_entries(measured: Iterable[Measurements], now: int, max_entries: int) -> tuple[Entry, ...]:
    """Entries of the listings whose advert has not expired, in directory order; at most
    max_entries (the store refuses more, this only guards a lowered setting: the longest
    listed stay)."""
    live = [m for m in measured if m.listing.advert_expires > now]
    live.sort(key=lambda m: (m.listing.first_seen, m.listing.onion))
    return discovery.sorted_entries([build_entry(m) for m in live[:max_entries]])


def next_epoch(previous: int | None, now_ms: int) -> int:
    """Epochs are unix milliseconds, and always rise, even if the clock steps back."""
    return now_ms if previous is None or now_ms > previous else previous + 1


def publish_due(*, published_epoch: int | None, published_set: str | None, current_set: str,
                last_published_at: float, now: float, interval: float) -> bool:
    """Post the directory to a directory server now? Never posted there; the listed servers
    changed since; or publish_interval passed."""
    return (published_epoch is None or published_set != current_set
            or now - last_published_at >= interval)
