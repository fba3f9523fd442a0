"""Ranking measured servers and choosing a new group's servers (sans-IO).

Input: directory entries (nyth.proto.discovery) from one or more indexes, the servers the
user already relies on, and a policy. Output: each server's standing with one line on
why it sits where it does, where indexes disagree, and a choice with a reason per server.

Only what indexes *measured* ranks a server: its answered probes, its latency, its
retention audits. Its bundle's promises and its operator label never raise it (a label
only spreads a choice over operators; docs/discovery.md states the policy and its
trade-off).

Standing, worst to best:

    lost      an audit found a canary gone before the retention its bundle promises
    never     no probe ever answered (never listed as up, whatever it claims)
    down      the last DOWN_AFTER probes failed
    up        answered recently; ranked by availability (answered / probes in the
              index's window), then audits passed, then median latency
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from nyth.errors import NythError
from nyth.proto.discovery import NO_LATENCY, AuditState, Entry, ServerKind
from nyth.proto.identity import normalize_onion

DOWN_AFTER = 2
LOST, NEVER, DOWN, UP = "lost", "never", "down", "up"
_ORDER = {LOST: 0, NEVER: 1, DOWN: 2, UP: 3}


@dataclass(frozen=True)
class Standing:
    onion: str
    kind: ServerKind
    state: str
    availability: float  # answered / probes in the window (0 with no probes)
    reason: str
    entry: Entry = field(repr=False)

    @property
    def sort_key(self) -> tuple[float, ...]:
        e = self.entry
        latency = e.latency_p50_ms if e.latency_p50_ms != NO_LATENCY else float("inf")
        return (-_ORDER[self.state], -round(self.availability, 2), -e.audits_passed, latency,
                -e.probes)


def _ms(value: int) -> str:
    return "none" if value == NO_LATENCY else f"{value / 1000:.1f} s"


def assess(entry: Entry) -> Standing:
    """Where one measured server stands, and why, in one line."""
    availability = entry.probes_ok / entry.probes if entry.probes else 0.0
    answered = f"{entry.probes_ok}/{entry.probes} probes answered"
    if entry.audit is AuditState.LOST:
        state, reason = LOST, (f"lost a canary before its promised retention (found at "
                               f"{entry.audit_at}); ranked below every server that kept them")
    elif entry.last_ok_at == 0:
        state = NEVER
        reason = "never answered a probe" + (f" ({entry.last_error})" if entry.last_error else "")
    elif entry.consecutive_failures >= DOWN_AFTER:
        state = DOWN
        reason = (f"down: the last {entry.consecutive_failures} probes failed"
                  + (f" ({entry.last_error})" if entry.last_error else "")
                  + f"; last answered at {entry.last_ok_at}")
    else:
        state = UP
        audit = (f"kept {entry.audits_passed} canaries" if entry.audit is AuditState.KEPT
                 else "not audited yet")
        reason = (f"up: {answered} ({availability:.0%}), latency p50 {_ms(entry.latency_p50_ms)}"
                  f" p95 {_ms(entry.latency_p95_ms)}, {audit}")
    return Standing(entry.onion, entry.kind, state, availability, reason, entry)


def rank(entries: Iterable[Entry]) -> list[Standing]:
    """Best first."""
    return sorted((assess(e) for e in entries), key=lambda s: (s.sort_key, s.onion))


def merge(directories: Mapping[str, Sequence[Entry]]) -> dict[str, dict[str, Standing]]:
    """server onion -> {index onion: standing} over every index's entries."""
    merged: dict[str, dict[str, Standing]] = {}
    for index, entries in directories.items():
        for entry in entries:
            merged.setdefault(entry.onion, {})[index] = assess(entry)
    return merged


def disagreements(views: Mapping[str, Standing], indexes: Iterable[str]) -> list[str]:
    """What the indexes say differently about one server: its state, its audits, the
    bundle it serves, or one listing it and another not. Empty when they agree."""
    indexes = list(indexes)
    found: list[str] = []
    missing = [i for i in indexes if i not in views]
    if missing and views:
        found.append(f"listed by {_names(views)}, not by {_names(missing)}")
    states = {i: s.state for i, s in views.items()}
    if len(set(states.values())) > 1:
        found.append("state: " + ", ".join(f"{_short(i)} says {v}" for i, v in states.items()))
    audits = {i: s.entry.audit.name.lower().replace("_", " ") for i, s in views.items()}
    if len(set(audits.values())) > 1:
        found.append("retention: " + ", ".join(f"{_short(i)} says {v}"
                                               for i, v in audits.items()))
    if len({s.entry.bundle for s in views.values()}) > 1:
        found.append("the indexes saw different signed bundles from it")
    return found


def worst(views: Mapping[str, Standing]) -> Standing:
    """The most cautious view of a server when indexes disagree: the lowest standing
    (the view `rank` would put last)."""
    # sort_key grows as standing falls: the worst view is its maximum.
    return max(views.values(), key=lambda s: s.sort_key)


def _short(onion: str) -> str:
    return onion[:8] + "…"


def _names(onions: Iterable[str]) -> str:
    return ", ".join(_short(o) for o in onions)


@dataclass(frozen=True)
class Policy:
    """The default policy (docs/discovery.md): k servers per group, each up with at least
    min_availability over at least min_probes probes, none that lost a canary, servers
    the user already relies on first, then at most one per operator label while
    candidates allow, then by rank (busier-answering, better-audited, faster first)."""

    k: int = 2
    # Fewer than k eligible servers still make a group (each choice says so) down to this.
    minimum: int = 1
    min_availability: float = 0.8
    min_probes: int = 3
    prefer_known: bool = True
    distinct_operators: bool = True


@dataclass(frozen=True)
class Choice:
    onion: str
    reason: str


class NotEnoughServers(NythError):
    """Fewer eligible servers than the policy's minimum; the message says which fell out."""


def ineligibility(standing: Standing, policy: Policy = Policy()) -> str | None:
    """Why the policy would not pick this server for a group, or None if it would."""
    if standing.kind is not ServerKind.GROUP_SERVER:
        return "not a group server"
    if standing.state != UP:
        return standing.state
    if standing.entry.probes < policy.min_probes:
        return f"measured by only {standing.entry.probes} probes"
    if standing.availability < policy.min_availability:
        return (f"answered {standing.availability:.0%}, the policy wants "
                f"{policy.min_availability:.0%}")
    return None


def choose(standings: Sequence[Standing], *, known: Iterable[str] = (),
           policy: Policy = Policy()) -> list[Choice]:
    """Pick policy.k group servers from ranked standings (best first; one per server,
    e.g. `worst` of what several indexes say)."""
    known = {normalize_onion(o) for o in known}
    group_servers = [s for s in standings if s.kind is ServerKind.GROUP_SERVER]
    eligible: list[Standing] = []
    refused: list[str] = []
    for s in group_servers:
        why_not = ineligibility(s, policy)
        if why_not is None:
            eligible.append(s)
        else:
            refused.append(f"{_short(s.onion)} {why_not}")
    order = sorted(eligible, key=lambda s: (not (policy.prefer_known and s.onion in known),
                                            s.sort_key, s.onion))
    chosen: list[Choice] = []
    operators: set[str] = set()
    for second_pass in (False, True):
        for s in order:
            if len(chosen) == policy.k:
                break
            if any(c.onion == s.onion for c in chosen):
                continue
            label = s.entry.label
            is_known = policy.prefer_known and s.onion in known
            # A server the user already relies on is never passed over for its operator.
            if (policy.distinct_operators and not second_pass and not is_known and label
                    and label in operators):
                continue
            why = ["already used by you" if is_known else
                   f"rank {group_servers.index(s) + 1} of {len(group_servers)} group servers"]
            if second_pass and label in operators:
                why.append(f"shares operator {label!r}: no other eligible operator left")
            elif label:
                why.append(f"operator {label!r}")
            chosen.append(Choice(s.onion, "; ".join([*why, s.reason])))
            operators.add(label)
    shortfall = (f"the policy wants {policy.k} group servers and only {len(chosen)} "
                 f"{'is' if len(chosen) == 1 else 'are'} eligible"
                 + (f" (not eligible: {'; '.join(refused)})" if refused else ""))
    if len(chosen) < policy.minimum:
        raise NotEnoughServers(shortfall)
    if len(chosen) < policy.k:
        chosen = [Choice(c.onion, f"{c.reason}; {shortfall}") for c in chosen]
    return chosen
