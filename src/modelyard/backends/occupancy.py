"""How long an engine held work: busy seconds and slot-seconds, integrated as requests start and end.

A sampled "is it busy now?" undercounts a loaded engine: the probe itself
waits behind the load, so busy moments yield fewer samples. These totals are
exact at every start and end instead; a reader takes the difference of two
readings over the time between them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Occupancy:
    """Sequences in flight, and the integrals of "at least one" and "how many" over time."""

    clock: Callable[[], float] = time.monotonic
    in_flight: int = 0
    _busy_s: float = 0.0
    _slot_s: float = 0.0
    _since: float = field(default=0.0, init=False)

    def started(self) -> None:
        self._advance(self.clock())
        self.in_flight += 1

    def ended(self) -> None:
        self._advance(self.clock())
        self.in_flight = max(0, self.in_flight - 1)

    def totals(self) -> tuple[float, float]:
        """(seconds with at least one sequence in flight, sequence-seconds), up to now."""
        now = self.clock()
        span = now - self._since if self.in_flight else 0.0
        return self._busy_s + span, self._slot_s + span * self.in_flight

    def _advance(self, now: float) -> None:
        if self.in_flight:
            self._busy_s += now - self._since
            self._slot_s += (now - self._since) * self.in_flight
        self._since = now
