"""Requests- and tokens-per-minute limits over a sliding 60 s window (no I/O, clock passed in).

Exact under concurrency: the check and the reservation are one step on the
event loop, so no two requests can both take the last unit. Tokens are
reserved from an estimate before the call and settled to the actual count
after it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
class LimitState:
    limit: int
    remaining: int
    reset_s: float


class Window:
    """Amounts taken in the last 60 s. Every operation is O(1) amortised."""

    def __init__(self) -> None:
        self.events: deque[list[float]] = deque()  # [time, amount, alive]
        self.total = 0.0

    def _expire(self, now: float) -> None:
        while self.events and now - self.events[0][0] >= WINDOW_S:
            entry = self.events.popleft()
            entry[2] = 0.0  # an adjustment after expiry must not touch the total
            self.total -= entry[1]

    def used(self, now: float) -> float:
        self._expire(now)
        return self.total

    def take(self, now: float, amount: float) -> list[float]:
        entry = [now, amount, 1.0]
        self.events.append(entry)
        self.total += amount
        return entry

    def adjust(self, entry: list[float], amount: float) -> None:
        if entry[2]:
            self.total += amount - entry[1]
            entry[1] = amount

    def reset_s(self, now: float) -> float:
        self._expire(now)
        return WINDOW_S - (now - self.events[0][0]) if self.events else 0.0


class _Checked(NamedTuple):
    key: str
    limit: int
    window: Window
    amount: int
    settles: bool  # a token window: the estimate is settled to the actual count later
    used: float
    reset_s: float


def _window(windows: dict[str, Window], name: str) -> Window:
    window = windows.get(name)
    if window is None:
        window = windows[name] = Window()
    return window


def _check(key: str, limit: int, window: Window, amount: int, settles: bool, now: float) -> _Checked:
    used = window.used(now)
    return _Checked(key, limit, window, amount, settles, used, window.reset_s(now))


@dataclass(slots=True)
class Reservation:
    token_entries: list[tuple[Window, list[float]]]


class RateLimiter:
    def __init__(self) -> None:
        self.requests: dict[str, Window] = {}
        self.tokens: dict[str, Window] = {}

    def check(self, scopes: list[tuple[str, int | None, int | None]], tokens: int, now: float) -> tuple[Reservation | None, float, dict[str, LimitState]]:
        """``scopes``: (name, rpm, tpm). Returns (reservation or None when refused, retry_after_s, states).

        The states count this request's amounts as taken when it is admitted, not when it is refused.
        """
        checked: list[_Checked] = []
        for name, rpm, tpm in scopes:
            if rpm is not None:
                checked.append(_check(f"requests:{name}", rpm, _window(self.requests, name), 1, False, now))
            if tpm is not None:
                checked.append(_check(f"tokens:{name}", tpm, _window(self.tokens, name), tokens, True, now))
        retry = max((c.reset_s or 1.0 for c in checked if c.used + c.amount > c.limit), default=0.0)
        if retry:
            return None, retry, {c.key: LimitState(c.limit, max(0, int(c.limit - c.used)), c.reset_s) for c in checked}
        entries = []
        states: dict[str, LimitState] = {}
        for c in checked:
            entry = c.window.take(now, c.amount)
            if c.settles:
                entries.append((c.window, entry))
            states[c.key] = LimitState(c.limit, max(0, int(c.limit - c.used) - c.amount), c.reset_s)
        return Reservation(entries), 0.0, states

    def settle(self, reservation: Reservation, actual_tokens: int) -> None:
        for window, entry in reservation.token_entries:
            window.adjust(entry, actual_tokens)
