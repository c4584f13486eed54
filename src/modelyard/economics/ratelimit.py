"""Requests- and tokens-per-minute limits over a sliding 60 s window (no I/O, clock passed in).

Exact under concurrency: the check and the reservation are one step on the
event loop, so no two requests can both take the last unit. Tokens are
reserved from an estimate before the call and settled to the actual count
after it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

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


@dataclass(slots=True)
class Reservation:
    token_entries: list[tuple[Window, list[float]]]


class RateLimiter:
    def __init__(self) -> None:
        self.requests: dict[str, Window] = {}
        self.tokens: dict[str, Window] = {}

    def check(self, scopes: list[tuple[str, int | None, int | None]], tokens: int, now: float) -> tuple[Reservation | None, float, dict[str, LimitState]]:
        """``scopes``: (name, rpm, tpm). Returns (reservation or None when refused, retry_after_s, states)."""
        states: dict[str, LimitState] = {}
        retry = 0.0
        for name, rpm, tpm in scopes:
            for kind, limit, windows, amount in (("requests", rpm, self.requests, 1), ("tokens", tpm, self.tokens, tokens)):
                if limit is None:
                    continue
                window = windows.setdefault(name, Window())
                used = window.used(now)
                states[f"{kind}:{name}"] = LimitState(limit, max(0, int(limit - used)), window.reset_s(now))
                if used + amount > limit:
                    retry = max(retry, window.reset_s(now) or 1.0)
        if retry:
            return None, retry, states
        entries = []
        for name, rpm, tpm in scopes:
            if rpm is not None:
                self.requests[name].take(now, 1)
            if tpm is not None:
                entries.append((self.tokens[name], self.tokens[name].take(now, tokens)))
        for key, state in list(states.items()):
            amount = 1 if key.startswith("requests") else tokens
            states[key] = LimitState(state.limit, max(0, state.remaining - amount), state.reset_s)
        return Reservation(entries), 0.0, states

    def settle(self, reservation: Reservation, actual_tokens: int) -> None:
        for window, entry in reservation.token_entries:
            window.adjust(entry, actual_tokens)
