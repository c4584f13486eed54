"""Background tasks' shutdown: the one way modelyard stops a loop it started."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and wait until it has ended (its own cancellation is not an error); None does nothing.

    Callers then do their final work (flush, drain) knowing the loop will not run again.
    """
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
