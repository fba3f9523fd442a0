"""At most one background task per server: the prober, the auditor and the publisher each
keep theirs here, so a slow server (a Tor timeout) never holds up the others and is never
worked on twice at once."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class KeyedTasks:
    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    def start(self, key: str, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=f"{name}-{key[:8]}")
        self._tasks[key] = task
        task.add_done_callback(lambda _t: self._tasks.pop(key, None))

    async def wait(self) -> None:
        """Until every task running now is done (tests)."""
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
