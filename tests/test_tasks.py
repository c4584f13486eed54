"""stop_task: cancel a background loop and wait for it to end."""

from __future__ import annotations

import asyncio

from modelyard.tasks import stop_task


async def test_stop_task_cancels_and_waits() -> None:
    ended = asyncio.Event()

    async def loop() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            ended.set()

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)  # let it start
    await stop_task(task)
    assert task.cancelled() and ended.is_set()


async def test_stop_task_accepts_none_and_a_finished_task() -> None:
    await stop_task(None)
    done = asyncio.create_task(asyncio.sleep(0))
    await done
    await stop_task(done)
    assert done.done() and not done.cancelled()
