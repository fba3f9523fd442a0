"""Stopping asyncio tasks that read from Redis."""

from __future__ import annotations

import asyncio
import logging
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any], *, timeout: float = 5.0,
                          log: logging.Logger | None = None) -> bool:
    """Cancel task and wait until it is done, for at most timeout seconds; True if it is.

    Cancel repeatedly: on Python 3.11 a cancel that lands while redis-py's read timeout
    fires can be swallowed (redis-py then returns "no message" as if the wait had timed
    out), and a single cancel() followed by an unbounded wait then waits for ever. CI saw
    exactly that once: a test hung in its teardown for 300 s.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not task.done() and loop.time() < deadline:
        task.cancel()
        await asyncio.wait([task], timeout=0.1)
    if not task.done():
        if log is not None:
            log.warning("task %s did not stop within %.0f s", task.get_name(), timeout)
        return False
    if log is not None and not task.cancelled() and task.exception() is not None:
        log.warning("task %s failed: %r", task.get_name(), task.exception())
    return True
