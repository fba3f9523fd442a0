"""Check a deployed group server end to end, through Tor, as a client sees it:

    python -m nyth.post_check <onion> [--posts N] [--seconds S] [--clients C] [--socks host:port]

Posts N blobs of random bytes, or as many as it can in S seconds (C clients at once,
each post paid with a token when the server wants them), retrying each until the
server acknowledges it (201), then reads
the whole stream back and checks that every acknowledged blob is there, byte for byte,
under the id it was acknowledged with. SIGINT or SIGTERM stops it starting new posts:
it then finishes those under way and reads back. One JSON line per event on stdout;
exit 0 when nothing acknowledged is missing, 1 otherwise, 2 on bad arguments.

Operators run it against their own deployment (for example after `scripts/swarm up`, from a
container on the stack's `tor` network); the Swarm test runs it while it kills replicas.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from python_socks import ProxyError

from nyth.errors import NythError
from nyth.group_server_client import MAX_PAGE, GroupServerClient, TokenPurse
from nyth.proto.bundle import ServerBundle
from nyth.proto.identity import normalize_onion
from nyth.tor.endpoints import SocksEndpoint
from nyth.tor.socks import onion_http_client

PAGE = MAX_PAGE
# What one attempt may fail with; each is reported and the attempt retried. httpx passes
# tor's SOCKS refusals (an unreachable onion, a failed introduction) on as python_socks'
# own ProxyError, which is none of httpx's errors.
ATTEMPT_ERRORS = (NythError, httpx.HTTPError, OSError, ProxyError)
# A post that fails for longer than this is given up (reported, and counted as a failure).
GIVE_UP_SECONDS = 600.0


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": round(time.time(), 3), **fields}), flush=True)


@dataclass
class Tally:
    acknowledged: dict[str, str] = field(default_factory=dict)  # id -> sha256 of the blob
    retries: int = 0
    given_up: int = 0


async def _post_one(client: GroupServerClient, bundle: ServerBundle, purse: TokenPurse,
                    n: int, tally: Tally) -> None:
    blob = os.urandom(bundle.blob_size)
    began = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            token = await purse.take(client, bundle)
            blob_id = await client.post_blob(blob, token)
        except ATTEMPT_ERRORS as exc:
            tally.retries += 1
            if time.monotonic() - began > GIVE_UP_SECONDS:
                tally.given_up += 1
                emit("gave_up", n=n, attempts=attempt, error=str(exc)[:300])
                return
            emit("retry", n=n, attempt=attempt, error=f"{type(exc).__name__}: {str(exc)[:300]}")
            await asyncio.sleep(min(0.5 * attempt, 5.0))
            continue
        tally.acknowledged[blob_id] = hashlib.sha256(blob).hexdigest()
        emit("acknowledged", n=n, id=blob_id, attempts=attempt,
             seconds=round(time.monotonic() - began, 3))
        return


async def _bundle(client: GroupServerClient) -> ServerBundle:
    began = time.monotonic()
    while True:
        try:
            return await client.bundle()
        except ATTEMPT_ERRORS as exc:
            if time.monotonic() - began > GIVE_UP_SECONDS:
                raise
            emit("retry", n=None, attempt=None, error=f"bundle: {type(exc).__name__}: {exc}")
            await asyncio.sleep(2.0)


async def _read_back(client: GroupServerClient, bundle: ServerBundle) -> dict[str, str]:
    stored: dict[str, str] = {}
    after = "0"
    began = time.monotonic()
    while True:
        try:
            page = await client.read_page(after, PAGE, bundle.blob_size)
        except ATTEMPT_ERRORS as exc:
            if time.monotonic() - began > GIVE_UP_SECONDS:
                raise
            emit("retry", n=None, attempt=None, error=f"read: {type(exc).__name__}: {exc}")
            await asyncio.sleep(2.0)
            continue
        for item in page.blobs:
            stored[item.id] = hashlib.sha256(item.blob).hexdigest()
        if not page.more or page.next == after:
            return stored
        after = page.next


async def check(onion: str, socks: SocksEndpoint, posts: int, clients: int,
                seconds: float | None = None) -> int:
    tally = Tally()
    async with onion_http_client(socks, timeout=60) as http:
        client = GroupServerClient(http, onion)
        bundle = await _bundle(client)
        emit("bundle", onion=onion, blob_size=bundle.blob_size,
             tokens_required=bundle.tokens_required)
        purse = TokenPurse()
        queue = iter(range(posts))

        stop_at = None if seconds is None else time.monotonic() + seconds
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopped.set)

        async def worker() -> None:
            for n in queue:
                if stopped.is_set() or (stop_at is not None and time.monotonic() > stop_at):
                    return
                await _post_one(client, bundle, purse, n, tally)

        await asyncio.gather(*(worker() for _ in range(clients)))
        try:
            stored = await _read_back(client, bundle)
        except ATTEMPT_ERRORS as exc:
            emit("result", acknowledged=len(tally.acknowledged), stored=None, missing=None,
                 retries=tally.retries, given_up=tally.given_up,
                 error=f"cannot read the stream back: {type(exc).__name__}: {exc}")
            return 1
    missing = sorted(i for i, digest in tally.acknowledged.items() if stored.get(i) != digest)
    emit("result", acknowledged=len(tally.acknowledged), stored=len(stored),
         missing=missing, retries=tally.retries, given_up=tally.given_up)
    return 0 if not missing and not tally.given_up else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nyth.post_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("onion", help="the group server's onion address")
    parser.add_argument("--posts", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=None,
                        help="stop starting new posts after this long (at most --posts)")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--socks", default=os.environ.get("NYTH_TOR_SOCKS", "127.0.0.1:9050"),
                        help="tor's SOCKS port (default: NYTH_TOR_SOCKS or 127.0.0.1:9050)")
    args = parser.parse_args(argv)
    try:
        onion = normalize_onion(args.onion)
        socks = SocksEndpoint.from_string(args.socks)
        if not 1 <= args.posts <= 100_000 or not 1 <= args.clients <= 64:
            raise ValueError("--posts must be 1..100000 and --clients 1..64")
        if args.seconds is not None and not 0 < args.seconds <= 86_400:
            raise ValueError("--seconds must be more than 0 and at most 86400")
    except (ValueError, NythError) as exc:
        print(f"post_check: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(check(onion, socks, args.posts, args.clients, args.seconds))


if __name__ == "__main__":
    sys.exit(main())
