"""``python -m benchmarks {group-server,p2p,devnet,fmd,mailbox,tokens,recovery,discovery,all}``:
run, print a results table."""

from __future__ import annotations

import argparse
import logging
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__)
    parser.add_argument("which", choices=["group-server", "p2p", "devnet", "fmd", "mailbox", "tokens",
                                          "recovery", "discovery", "busy-server", "all"])
    parser.add_argument("-n", type=int, default=200, help="round trips for p2p (default 200)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("stem").setLevel(logging.WARNING)
    every = ["group-server", "p2p", "devnet", "fmd", "mailbox", "tokens", "recovery",
             "discovery", "busy-server"]
    names = every if args.which == "all" else [args.which]
    tables = []
    for name in names:
        started = time.monotonic()
        print(f"### {name}", flush=True)
        if name == "group-server":
            from benchmarks import group_server
            results = group_server.run()
        elif name == "p2p":
            from benchmarks import p2p
            results = p2p.run(args.n)
        elif name == "fmd":
            from benchmarks import fmd
            results = fmd.run()
        elif name == "mailbox":
            from benchmarks import mailbox
            results = mailbox.run()
        elif name == "tokens":
            from benchmarks import tokens
            results = tokens.run()
        elif name == "recovery":
            from benchmarks import recovery
            results = recovery.run()
        elif name == "busy-server":
            from benchmarks import busy_server
            results = busy_server.run()
        elif name == "discovery":
            from benchmarks import discovery
            results = discovery.run()
        else:
            from benchmarks import devnet_startup
            results = devnet_startup.run()
        results.note(f"benchmark wall time {time.monotonic() - started:.0f} s")
        tables.append(results.render())
    print()
    print("\n\n".join(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
