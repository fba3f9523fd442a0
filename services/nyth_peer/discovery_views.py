"""What `GET /v1/discovery` shows, and the choice of a new group's servers from it.

Servers are merged over every index's directory held (`server_choice.merge`); where
several indexes list a server its most cautious view (`worst`) ranks it, and what they
say differently is shown (`disagreements`). Only directories still valid rank servers
for a choice; an expired one is still shown, with its index marked "stale".

Everything an index or a server wrote (labels, last errors inside reasons, refusals
quoting them) passes `printable` before it is shown.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from nyth.http_limits import printable
from nyth.proto.discovery import NO_LATENCY, Directory, IndexBundle, ServerKind
from nyth.proto.pinning import bundle_limits
from nyth.proto.server_choice import (
    Choice,
    Policy,
    Standing,
    choose,
    disagreements,
    ineligibility,
    merge,
    worst,
)
from pydantic import BaseModel, Field

from nyth_peer.pins import INDEX

if TYPE_CHECKING:
    from nyth_peer.discovery import Discovery

KindLabel = Literal["group-server", "mailbox"]


class NoDirectory(Exception):
    """No index's directory is held (or none is valid now): nothing to choose from."""


class IndexView(BaseModel):
    onion: str
    state: Literal["waiting", "ok", "stale", "unreachable", "failed"] = Field(
        description='"ok": a valid directory is held; "stale": the one held expired and no '
                    'newer one could be read; "unreachable": none held and none readable; '
                    '"waiting": not read yet')
    source: Literal["index", "directory group"] | None = Field(
        description="where the directory held was last read or confirmed: the index itself, "
                    "or its directory group (the index was down or refused)")
    epoch: int | None
    issued_at: int | None
    expires_at: int | None
    fetched_at: float | None = Field(description="when it was last read or confirmed")
    entries: int = Field(description="servers it lists")
    directory_servers: list[str] = Field(
        description="the directory group's servers, from the pinned index bundle")
    last_refusal: str | None = Field(
        description="the last directory (or index bundle) refused, and why")
    refused_at: float | None
    reason: str | None = Field(description="what the last refresh did, in one line")


class AuditView(BaseModel):
    state: Literal["not audited", "kept", "lost"]
    passed: int = Field(description="retention audits passed")
    at: int | None = Field(description="the last audit (for lost: when the loss was found)")


class DiscoveredServer(BaseModel):
    rank: int = Field(description="1 for the best ranked (all kinds together)")
    kind: KindLabel
    onion: str
    label: str = Field(description="the operator's own label: a claim, not measured")
    state: Literal["up", "down", "never", "lost"]
    reason: str = Field(description="why it sits where it does, in one line")
    availability: float = Field(description="answered / probes in the index's window")
    probes: int
    probes_ok: int
    latency_p50_ms: int | None
    latency_p95_ms: int | None
    audit: AuditView
    limits: dict[str, int] = Field(description="what its signed bundle promises")
    first_seen: int
    listed_by: list[str] = Field(description="indexes whose directory lists it")
    disagreements: list[str] = Field(description="what those indexes say differently")
    eligible: bool = Field(description="whether `--auto` (the default policy) would pick it")
    not_eligible: str | None = Field(description="why the default policy would not pick it")


class DiscoveryView(BaseModel):
    indexes: list[IndexView]
    servers: list[DiscoveredServer] = Field(description="best ranked first")


class ChoiceView(BaseModel):
    onion: str
    reason: str = Field(description="why the policy chose it")


def _index_view(discovery: Discovery, onion: str) -> dict[str, Any]:
    row = discovery.row(onion)
    runtime = discovery.runtime.get(onion, {})
    directory = discovery.directories.get(onion)
    pinned = discovery.pins.pinned(INDEX, onion)
    state = runtime.get("state", "waiting")
    if directory is not None and state in ("ok", "stale", "unreachable"):
        state = "ok" if directory.expires_at > time.time() else "stale"
    return {
        "onion": onion, "state": state, "source": row.get("source"),
        "epoch": directory.epoch if directory else None,
        "issued_at": directory.issued_at if directory else None,
        "expires_at": directory.expires_at if directory else None,
        "fetched_at": row.get("fetched_at"),
        "entries": len(directory.entries) if directory else 0,
        "directory_servers": IndexBundle.verify(pinned).directory_onions if pinned else [],
        "last_refusal": row.get("last_refusal"), "refused_at": row.get("refused_at"),
        "reason": printable(runtime["reason"], 1000) if runtime.get("reason") else None}


def _ms(value: int) -> int | None:
    return None if value == NO_LATENCY else value


def _server_view(rank: int, standing: Standing, views: Mapping[str, Standing],
                 indexes: Iterable[str]) -> dict[str, Any]:
    entry = standing.entry
    why_not = ineligibility(standing)
    return {
        "rank": rank, "kind": entry.kind.label, "onion": standing.onion,
        "label": printable(entry.label, 64), "state": standing.state,
        "reason": printable(standing.reason, 500), "availability": round(standing.availability, 4),
        "probes": entry.probes, "probes_ok": entry.probes_ok,
        "latency_p50_ms": _ms(entry.latency_p50_ms), "latency_p95_ms": _ms(entry.latency_p95_ms),
        "audit": {"state": entry.audit.name.lower().replace("_", " "),
                  "passed": entry.audits_passed, "at": entry.audit_at or None},
        "limits": bundle_limits(entry.verified_bundle),
        "first_seen": min(v.entry.first_seen for v in views.values()),
        "listed_by": sorted(views),
        "disagreements": [printable(d, 300) for d in disagreements(views, indexes)],
        "eligible": why_not is None,
        "not_eligible": None if why_not is None else printable(why_not, 300)}


def ranked(directories: Mapping[str, Directory]
           ) -> list[tuple[Standing, dict[str, Standing]]]:
    """Every server listed by these directories, best first, by its most cautious view."""
    merged = merge({onion: d.entries for onion, d in directories.items()})
    rows = [(worst(views) if len(views) > 1 else next(iter(views.values())), views)
            for views in merged.values()]
    return sorted(rows, key=lambda r: (r[0].sort_key, r[0].onion))


def discovery_view(discovery: Discovery, kind: ServerKind | None = None) -> dict[str, Any]:
    directories = discovery.directories
    servers = [_server_view(i, standing, views, directories)
               for i, (standing, views) in enumerate(ranked(directories), start=1)
               if kind is None or standing.kind is kind]
    return {"indexes": [_index_view(discovery, o) for o in discovery.indexes],
            "servers": servers}


def choose_servers(discovery: Discovery, *, k: int | None,
                   known: Iterable[str]) -> list[Choice]:
    """Group servers by the default policy (docs/discovery.md) from the valid directories
    held: k of them when the user asked for k (NotEnoughServers if fewer are eligible),
    else the policy's 2, or fewer, each saying so, when fewer are eligible. NoDirectory,
    or server_choice.NotEnoughServers, say why not."""
    now = time.time()
    valid = {o: d for o, d in discovery.directories.items() if d.expires_at > now}
    if not valid:
        held = "no index is configured (NYTH_DISCOVERY_INDEXES)" if not discovery.indexes else (
            "no valid directory is held from any index: " + "; ".join(
                f"{o[:8]}… {_index_view(discovery, o)['state']}" for o in discovery.indexes))
        raise NoDirectory(f"cannot choose servers: {held}")
    standings = [standing for standing, _ in ranked(valid)]
    return [Choice(c.onion, printable(c.reason, 500))
            for c in choose(standings, known=known,
                            policy=Policy() if k is None else Policy(k=k, minimum=k))]
