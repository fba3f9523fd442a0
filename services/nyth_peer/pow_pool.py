"""Mailbox proof of work on threads of its own, with a deadline, and stoppable.

A solve is CPU work the event loop must not do, but it must not go to the loop's default
executor either: that pool (`asyncio.to_thread`) also serves the onion publisher, NEWNYM,
profile unlocking and name lookups, and a few long solves for hostile or slow mailboxes
would leave them waiting. Solves get POW_WORKERS threads of their own and queue for
them; each one stops at POW_DEADLINE_SECONDS, and as soon as the task awaiting it is
cancelled (the solver looks at its flag every few thousand hashes).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from nyth.proto.hashcash import PowStopped

# Two, so one slow solve (a mailbox at the maximum, a slow CPU) does not hold up a
# message to another mailbox; more would not finish sooner: the solver holds the GIL.
POW_WORKERS = 2
# At MAX_POW_BITS (2^24 hashes expected) this is ≈ 20 times the expected work at the
# ≈ 0.55 M hashes/s measured on a 2.5 GHz Xeon core, ≈ 5 times on a core a quarter as
# fast (the solve then fails with probability e^-5 ≈ 0.7 %, and is tried again later).
POW_DEADLINE_SECONDS = 600.0

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None


def executor() -> ThreadPoolExecutor:
    """The peer's proof-of-work pool, made on first use."""
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=POW_WORKERS, thread_name_prefix="nyth-pow")
        return _executor


async def solve(solver: Callable[..., int], *args: Any, what: str,
                error: Callable[[str], Exception]) -> int:
    """solver(*args, stop=…, deadline=…) on the pool. Raises error(reason) when the solve
    runs out of time; cancelling the awaiting task stops the thread within milliseconds."""
    stop = threading.Event()
    seconds = POW_DEADLINE_SECONDS

    def work() -> int:
        # The deadline counts from the start of the work, not from the queue.
        return solver(*args, stop=stop.is_set, deadline=time.monotonic() + seconds)

    try:
        return await asyncio.get_running_loop().run_in_executor(executor(), work)
    except PowStopped as exc:
        raise error(f"the proof of work for {what} did not finish in {seconds:g} s "
                    f"({exc}); trying again later") from exc
    finally:
        stop.set()
