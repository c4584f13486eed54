"""A per-deployment circuit breaker: a small state machine driven by an injected clock.

CLOSED ──(N consecutive failures, or failure rate over the window)──▶ OPEN
OPEN ──(cool-down elapsed)──▶ HALF_OPEN: up to ``half_open_probes`` requests pass
HALF_OPEN ──(a probe succeeds)──▶ CLOSED;  ──(a probe fails)──▶ OPEN again
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from modelyard.config.schema import BreakerPolicy


class BreakerState(enum.IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass(frozen=True, slots=True)
class Transition:
    at: float
    state: BreakerState
    reason: str


TransitionListener = Callable[[Transition], None]


class CircuitBreaker:
    """Decides whether a deployment may take traffic, from its recent outcomes."""

    def __init__(self, policy: BreakerPolicy, clock: Callable[[], float]) -> None:
        self.policy = policy
        self.clock = clock
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self.opened_at = 0.0
        self.probes_in_flight = 0
        self.outcomes: deque[tuple[float, bool]] = deque()
        self.transitions: list[Transition] = []
        self.listener: TransitionListener | None = None  # told of this breaker's own transitions (shared breakers)

    def _move(self, state: BreakerState, reason: str, tell: bool = True) -> None:
        self.state = state
        transition = Transition(self.clock(), state, reason)
        self.transitions.append(transition)
        if self.listener is not None and tell:
            self.listener(transition)
        if state == BreakerState.OPEN:
            self.opened_at = self.clock()
            self.probes_in_flight = 0
        elif state == BreakerState.CLOSED:
            self.consecutive_failures = 0
            self.outcomes.clear()

    def current(self) -> BreakerState:
        """The state now (an expired cool-down reads as half-open)."""
        if self.state == BreakerState.OPEN and self.clock() - self.opened_at >= self.policy.cooldown_s:
            self._move(BreakerState.HALF_OPEN, "cool-down elapsed")
        return self.state

    def allow(self) -> bool:
        """May a request go to this deployment now? A half-open pass counts as a probe."""
        state = self.current()
        if state == BreakerState.CLOSED:
            return True
        if state == BreakerState.HALF_OPEN and self.probes_in_flight < self.policy.half_open_probes:
            self.probes_in_flight += 1
            return True
        return False

    def available(self) -> bool:
        """Like :meth:`allow` without taking a probe slot (for ranking candidates)."""
        if self.state == BreakerState.CLOSED:
            return True  # the common case, without reading the clock
        state = self.current()
        return state == BreakerState.CLOSED or (state == BreakerState.HALF_OPEN and self.probes_in_flight < self.policy.half_open_probes)

    def record_success(self) -> None:
        if self.state == BreakerState.HALF_OPEN:
            self._move(BreakerState.CLOSED, "probe succeeded")
            return
        self.consecutive_failures = 0
        self._remember(True)

    def record_failure(self) -> None:
        if self.state == BreakerState.HALF_OPEN:
            self._move(BreakerState.OPEN, "probe failed")
            return
        if self.state == BreakerState.OPEN:
            return
        self.consecutive_failures += 1
        self._remember(False)
        if self.consecutive_failures >= self.policy.consecutive_failures:
            self._move(BreakerState.OPEN, f"{self.consecutive_failures} consecutive failures")
            return
        total = len(self.outcomes)
        failures = sum(1 for _, ok in self.outcomes if not ok)
        if total >= self.policy.min_requests and failures / total >= self.policy.failure_rate:
            self._move(BreakerState.OPEN, f"failure rate {failures}/{total} over {self.policy.window_s:g}s")

    def open_from_peer(self, reason: str, cooldown_left_s: float) -> None:
        """Another replica opened its breaker for this deployment: open this one for the rest of that cool-down."""
        if self.state == BreakerState.OPEN and self.policy.cooldown_s - (self.clock() - self.opened_at) >= cooldown_left_s:
            return  # already open at least as long
        self._move(BreakerState.OPEN, reason, tell=False)
        self.opened_at = self.clock() - max(0.0, self.policy.cooldown_s - cooldown_left_s)

    def release_probe(self) -> None:
        """A probe ended without a verdict (e.g. the client went away)."""
        if self.state == BreakerState.HALF_OPEN and self.probes_in_flight > 0:
            self.probes_in_flight -= 1

    def _remember(self, ok: bool) -> None:
        now = self.clock()
        self.outcomes.append((now, ok))
        while self.outcomes and now - self.outcomes[0][0] > self.policy.window_s:
            self.outcomes.popleft()

    def describe(self) -> dict[str, object]:
        return {
            "state": self.current().name.lower(),
            "consecutive_failures": self.consecutive_failures,
            "opened_at": self.opened_at if self.state != BreakerState.CLOSED else None,
            "transitions": [{"at": t.at, "state": t.state.name.lower(), "reason": t.reason} for t in self.transitions[-10:]],
        }
