"""The recovery experiment: which strategy gets every post to every member of a group
whose server drops posts, how fast, and at what cost.

One devnet (private Tor network, real peers and group servers). Three members: alice
owns the groups and is a contact of bob and carol; bob and carol are not contacts of each
other, so a member pull between them goes to a stranger's onion, as in a real group.

For each drop rate, two fault-injecting group servers (NYTH_FAULT_DROP_FRACTION, each
with its own seed: they drop different posts) are (re)started, and one group per
strategy is made, all at once, on the same servers:

    none      one server, no recovery
    refetch   one server, re-read it from an earlier cursor
    server    two servers (every post goes to both), fill a gap from the other one
    member    one server, ask online members P2P for the missing hashes
    move      one server, no recovery; halfway through, alice moves the group to an
              honest server (a signed move message)
    default   two servers, the peer's default order (refetch, server, member, move)

Each member posts POSTS_EACH texts into each group, in turns, so parents interleave.
A post counts once its author made it (a dropping server answers 201 too). From the end
of the posting, we wait until every member holds every post, or WAIT_S has passed,
and record per strategy: the fraction of (member, post) pairs held, the time from the
last post until the last member had everything, and what recovery cost on top of one
download of each post: blobs downloaded again (duplicates from a second server or a
re-read), P2P sync messages and their bytes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nyth.runtime.devnet import Devnet, PeerHandle, ServiceHandle, wait_until

from benchmarks.common import Results, workdir

DROP_RATES = (0.0, 0.05, 0.2, 0.5)
STRATEGIES: dict[str, tuple[list[str] | None, int]] = {
    # name: (recovery strategies for PATCH, None = the peer's default; servers)
    "none": ([], 1),
    "refetch": (["refetch"], 1),
    "server": (["server"], 2),
    "member": (["member"], 1),
    "move": (["move"], 1),
    "default": (None, 2),
}
POSTS_EACH = 6
WAIT_S = 90.0
BLOB = 2048
PEER_ENV = {
    # A gap is worked on this long after it is found (default 15 s: a post that is merely
    # late, not lost, usually arrives in that time); short here so a run fits in minutes.
    "NYTH_RECOVERY_GRACE_SECONDS": "2",
    # Members tell each other their newest messages this often (default 60 s): the only
    # way to learn of a dropped post that no later post names, e.g. in the last round.
    "NYTH_RECOVERY_HEADS_SECONDS": "15",
}
DOCS = Path(__file__).resolve().parent.parent / "docs"


@dataclass
class Outcome:
    drop: float
    strategy: str
    sent: int
    held_fraction: float
    complete_after_s: float | None  # None: not every member had every post within WAIT_S
    extra_blobs: int
    p2p_messages: int
    p2p_bytes: int
    recovered: dict[str, int] = field(default_factory=dict)


def _client_get(peer: PeerHandle, path: str) -> Any:
    with peer.client() as c:
        return c.get(path)


def _start_servers(net: Devnet, drop: float, previous: list[ServiceHandle]) -> list[ServiceHandle]:
    for server in previous:
        server.process.stop()
    servers = []
    for i in range(2):
        server = net.add_group_server(
            f"drop{int(drop * 100)}-{i}", NYTH_DEV_MODE="true",
            NYTH_FAULT_DROP_FRACTION=str(drop), NYTH_FAULT_SEED=str(1000 + i))
        servers.append(server)
    for server in servers:
        server.wait_online()
    return servers


def _make_groups(owner: PeerHandle, others: list[PeerHandle], servers: list[ServiceHandle],
                 drop: float) -> dict[str, str]:
    groups: dict[str, str] = {}
    with owner.client() as c:
        for name, (strategies, count) in STRATEGIES.items():
            made = c.post("/v1/groups", {"name": f"{name}-{drop}",
                                         "servers": [s.onion for s in servers[:count]]})
            if strategies is not None:
                c.request("PATCH", f"/v1/groups/{made['id']}", json={"recovery": strategies})
            for other in others:
                c.post(f"/v1/groups/{made['id']}/invite", {"contact": other.onion})
            groups[name] = made["id"]
    for other in others:
        with other.client() as c:
            for name, gid in groups.items():
                wait_until(lambda c=c, gid=gid: any(i["id"] == gid for i in c.get("/v1/groups/invites")),
                           120, what=f"{other.name} to receive invite {gid[:8]}")
                c.post(f"/v1/groups/invites/{gid}/accept")
                # Strategies are each member's own choice: every member runs the one
                # under test.
                strategies = STRATEGIES[name][0]
                if strategies is not None:
                    c.request("PATCH", f"/v1/groups/{gid}", json={"recovery": strategies})
    return groups


def _post_all(members: list[PeerHandle], groups: dict[str, str], honest: ServiceHandle
              ) -> dict[str, set[str]]:
    """Every member posts POSTS_EACH texts into every group, in turns; returns the hashes
    each group's posts got. Halfway, the owner moves the "move" group to `honest`."""
    hashes: dict[str, set[str]] = {gid: set() for gid in groups.values()}
    clients = {m.name: m.client() for m in members}
    try:
        for round_ in range(POSTS_EACH):
            if round_ == POSTS_EACH // 2:
                clients[members[0].name].post(f"/v1/groups/{groups['move']}/move",
                                              {"servers": [honest.onion]})
            for member in members:
                for name, gid in groups.items():
                    made = clients[member.name].post(f"/v1/groups/{gid}/messages",
                                                     {"text": f"{member.name} {name} {round_}"})
                    hashes[gid].add(made["hash"])
            time.sleep(0.5)   # the next round names these posts as parents
    finally:
        for client in clients.values():
            client.close()
    return hashes


def _held(member: PeerHandle, gid: str, wanted: set[str]) -> int:
    history = _client_get(member, f"/v1/groups/{gid}/messages")
    return len(wanted & {m["hash"] for m in history["messages"]})


def _measure(members: list[PeerHandle], groups: dict[str, str], hashes: dict[str, set[str]],
             drop: float) -> list[Outcome]:
    """Waits for every member to hold every post (or WAIT_S); each group's figures. Each
    phase's groups are new, so their costs count from zero."""
    started = time.monotonic()
    complete: dict[str, float] = {}
    while time.monotonic() - started < WAIT_S and len(complete) < len(groups):
        # One pass over every group takes about a second; a group found complete counts
        # from the start of the pass, so the order of the checks does not show as time.
        pass_began = time.monotonic() - started
        for name, gid in groups.items():
            if name not in complete and all(_held(m, gid, hashes[gid]) == len(hashes[gid])
                                            for m in members):
                complete[name] = pass_began
        time.sleep(0.5)
    outcomes = []
    for name, gid in groups.items():
        held = sum(_held(m, gid, hashes[gid]) for m in members)
        extra = p2p = p2p_bytes = 0
        recovered: dict[str, int] = {}
        for m in members:
            view = _client_get(m, f"/v1/groups/{gid}")
            cost = view["recovery"]["cost"]
            extra += cost["blobs_read"] + cost["reread_blobs"]
            p2p += cost["p2p_messages"]
            p2p_bytes += cost["p2p_bytes"]
            for how, n in view["recovery"]["recovered"].items():
                recovered[how] = recovered.get(how, 0) + n
        # blobs_read counts every blob of this group downloaded; one per held post and
        # member is the honest minimum (our own posts come back from the server too).
        outcomes.append(Outcome(drop, name, len(hashes[gid]), held / (len(members) * len(hashes[gid])),
                                complete.get(name), max(0, extra - held), p2p, p2p_bytes, recovered))
    return outcomes


def run() -> Results:
    res = Results("recovery: dropped group posts, by strategy")
    net = Devnet(workdir("recovery") / "devnet", retry_cap_seconds=5.0)
    outcomes: list[Outcome] = []
    began = time.monotonic()
    try:
        net.start_infrastructure()
        honest = net.add_group_server("honest")
        members = [net.add_peer(n, **PEER_ENV) for n in ("alice", "bob", "carol")]
        honest.wait_online()
        for m in members:
            m.wait_online()
        from tests.fixtures.stack import befriend
        befriend(members[0], members[1])
        befriend(members[0], members[2])
        servers: list[ServiceHandle] = []
        for drop in DROP_RATES:
            servers = _start_servers(net, drop, servers)
            groups = _make_groups(members[0], members[1:], servers, drop)
            hashes = _post_all(members, groups, honest)
            phase = _measure(members, groups, hashes, drop)
            for o in phase:
                done = (f"{o.complete_after_s:.1f} s" if o.complete_after_s is not None
                        else f"> {WAIT_S:.0f} s")
                res.add(f"drop {o.drop:.0%} {o.strategy}", f"{o.held_fraction:.1%}",
                        f"complete {done}; +{o.extra_blobs} blobs, {o.p2p_messages} P2P msgs "
                        f"({o.p2p_bytes} B); recovered {o.recovered}")
            outcomes += phase
    finally:
        net.remove()
    res.note(f"{len(DROP_RATES)} drop rates x {len(STRATEGIES)} strategies, 3 members x "
             f"{POSTS_EACH} posts each; experiment wall time {time.monotonic() - began:.0f} s")
    _write(outcomes)
    return res


def _write(outcomes: list[Outcome]) -> None:
    data = [o.__dict__ for o in outcomes]
    (DOCS / "recovery-results.json").write_text(json.dumps(data, indent=1) + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot written")
        return
    fig, (held_ax, time_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for name in STRATEGIES:
        mine = [o for o in outcomes if o.strategy == name]
        xs = [o.drop * 100 for o in mine]
        held_ax.plot(xs, [o.held_fraction * 100 for o in mine], marker="o", label=name)
        time_ax.plot(xs, [o.complete_after_s if o.complete_after_s is not None else WAIT_S
                          for o in mine], marker="o", label=name)
    held_ax.set(xlabel="posts dropped by the server (%)", ylabel="(member, post) pairs held (%)",
                title="Posts every member ends up with")
    time_ax.set(xlabel="posts dropped by the server (%)",
                ylabel=f"seconds until complete (capped at {WAIT_S:.0f})",
                title="Time until the last member has every post")
    held_ax.legend()
    fig.tight_layout()
    fig.savefig(DOCS / "recovery.png", dpi=100)
