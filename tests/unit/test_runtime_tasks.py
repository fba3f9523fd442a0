"""cancel_and_wait stops a task even when a cancel is lost, and never waits for ever."""

from __future__ import annotations

import asyncio
import logging

import pytest
from nyth.runtime.tasks import cancel_and_wait


async def _swallows_first_cancel() -> None:
    # What redis-py on Python 3.11 can do: a cancel that coincides with its read timeout
    # comes back as "no message", and the loop goes on.
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        asyncio.current_task().uncancel()  # type: ignore[union-attr]
    await asyncio.sleep(3600)


async def _ignores_cancels_until(released: asyncio.Event) -> None:
    while not released.is_set():
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            asyncio.current_task().uncancel()  # type: ignore[union-attr]


async def test_a_lost_cancel_is_repeated() -> None:
    task = asyncio.create_task(_swallows_first_cancel())
    await asyncio.sleep(0)
    assert await cancel_and_wait(task, timeout=5)
    assert task.cancelled()


async def test_a_task_that_never_stops_is_reported_not_awaited_for_ever(
        caplog: pytest.LogCaptureFixture) -> None:
    released = asyncio.Event()
    task = asyncio.create_task(_ignores_cancels_until(released), name="stubborn")
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with caplog.at_level(logging.WARNING):
        assert not await cancel_and_wait(task, timeout=0.5, log=logging.getLogger("t"))
    assert loop.time() - started < 2
    assert "stubborn did not stop" in caplog.text
    released.set()
    await task  # leave no task behind


async def test_a_failed_task_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def fails() -> None:
        raise ValueError("boom")

    task = asyncio.create_task(fails(), name="failing")
    await asyncio.sleep(0.01)
    with caplog.at_level(logging.WARNING):
        assert await cancel_and_wait(task, log=logging.getLogger("t"))
    assert "failing failed" in caplog.text and "boom" in caplog.text
