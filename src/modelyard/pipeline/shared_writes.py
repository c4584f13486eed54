"""Writes to shared state (Redis) started from a request's finalizers, which are not async.

They run as tasks, are kept until they finish (so they are not collected
half-way), and can be awaited at shutdown. While the shared state cannot be
reached, one warning a minute says so instead of one per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

from modelyard.store.redis_client import SharedStateUnavailable

WARN_EVERY_S = 60.0


class SharedWrites:
    def __init__(self, log: logging.Logger, consequence: str) -> None:
        self.log = log
        self.consequence = consequence  # what the warning says happens meanwhile
        self.pending: set[asyncio.Task[None]] = set()
        self._warned_at = -float("inf")

    def start(self, write: Coroutine[Any, Any, None]) -> None:
        """Run ``write`` in the background; a failure to reach the shared state is a (throttled) warning."""
        task = asyncio.get_running_loop().create_task(self._guarded(write))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def drain(self) -> None:
        """Wait for the writes still on their way."""
        if self.pending:
            await asyncio.gather(*self.pending, return_exceptions=True)

    def unavailable(self, exc: Exception) -> None:
        """Note that the shared state could not be reached (logged at most once a minute)."""
        if time.monotonic() - self._warned_at >= WARN_EVERY_S:
            self._warned_at = time.monotonic()
            self.log.warning("%s: Redis cannot be reached (%s)", self.consequence, exc)

    async def _guarded(self, write: Coroutine[Any, Any, None]) -> None:
        try:
            await write
        except SharedStateUnavailable as exc:
            self.unavailable(exc)
