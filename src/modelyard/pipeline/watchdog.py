"""A stall guard for a stream: one timer per stream instead of one per chunk.

``asyncio.timeout`` around every chunk costs a timer-heap insert and cancel per
token, which was the gateway's largest single CPU cost when relaying streams.
The guard keeps one timer that re-arms itself lazily: it cancels the waiting
task only if no chunk arrived for ``stall_s`` (or the deadline passed) while
the task was actually waiting for the upstream.
"""

from __future__ import annotations

import asyncio


class StallGuard:
    def __init__(self, stall_s: float, remaining_s: float) -> None:
        """``remaining_s``: seconds until the request's deadline (whatever clock the deadline is kept on)."""
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.stall_s = stall_s
        self.deadline = self.loop.time() + remaining_s  # timers run on the loop's own clock
        self.last = self.loop.time()
        self.waiting = False
        self.fired = False
        self.handle = self.loop.call_at(self._next_check(), self._check)

    def _next_check(self) -> float:
        return min(self.last + self.stall_s, self.deadline)

    def begin_wait(self) -> None:
        """The task now waits for the upstream; the silence counts from here."""
        self.last = self.loop.time()
        self.waiting = True

    def end_wait(self) -> None:
        self.waiting = False

    def _check(self) -> None:
        now = self.loop.time()
        if self.waiting and self.task is not None and now >= self._next_check():
            self.fired = True
            self.task.cancel()
            return
        self.handle = self.loop.call_at(max(now + 0.001, self._next_check() if self.waiting else now + self.stall_s), self._check)

    def consume_cancel(self) -> None:
        """After catching the CancelledError this guard caused, so the task is not left cancelled."""
        if self.task is not None:
            self.task.uncancel()

    def close(self) -> None:
        self.handle.cancel()
