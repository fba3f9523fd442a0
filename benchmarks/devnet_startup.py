"""Time from nothing to the first delivered message: a fresh Devnet (redis, private Tor
network, gateway, group server, alice, bob), befriending, one text alice -> bob."""

from __future__ import annotations

import time

from nyth.runtime.devnet import Devnet

from benchmarks.common import Results, workdir


def run() -> Results:
    from tests.fixtures.stack import befriend, wait_delivered
    res = Results("devnet: cold start to first delivered message")
    base = workdir("devnet")
    net = Devnet(base / "devnet")
    marks: list[tuple[str, float]] = []
    t0 = time.perf_counter()

    def mark(label: str) -> None:
        marks.append((label, time.perf_counter() - t0))

    try:
        net.start_infrastructure()
        mark("redis + Tor network + gateway bootstrapped")
        server = net.add_group_server()
        alice, bob = net.add_peer("alice"), net.add_peer("bob")
        mark("group server + 2 peer processes healthy")
        server.wait_online()
        alice.wait_online()
        bob.wait_online()
        mark("all 3 onions published")
        befriend(alice, bob)
        mark("alice and bob befriended")
        with alice.client() as ca:
            msg = ca.send(bob.onion, "first message")
            wait_delivered(ca, bob.onion, msg["id"])
        mark("first message delivered alice -> bob")
        previous = 0.0
        for label, at in marks:
            res.add(label, f"{at:.1f} s", f"(+{at - previous:.1f} s)")
            previous = at
        res.note("helpers poll every 0.2 s (nyth.runtime.devnet.wait_until): +/-0.2 s per step")
    finally:
        net.remove()
    return res
