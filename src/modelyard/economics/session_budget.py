"""Per-session budgets (no I/O, clock passed in): dollars, tokens, model calls and wall-clock time.

A session is one agent run, named by the client. Every call reserves its worst
case (dollars, tokens and one call) before it runs and commits what it
actually used when it ends, as tenant budgets do (:mod:`modelyard.economics.budget`),
so concurrent steps of one session can never jointly pass a limit. Time runs
from the session's first call; a call that would start after the limit is
refused.

The first refusal stops the session: every later call is refused with the same
reason, whatever it would cost, so an agent that was told to stop sees the
same answer on every retry (a cheaper call squeezing under the limit later
would make the refusal depend on timing). The Redis implementation
(:mod:`modelyard.store.redis_sessions`) applies the same rule in one script.
"""

from __future__ import annotations

from dataclasses import dataclass

REASONS = ("usd", "tokens", "calls", "seconds")


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """What one session may use (None: no limit)."""

    usd: float | None = None
    tokens: int | None = None
    calls: int | None = None
    seconds: float | None = None

    def any(self) -> bool:
        return any(v is not None for v in (self.usd, self.tokens, self.calls, self.seconds))


@dataclass(frozen=True, slots=True)
class Cost:
    """What one call may use (a reservation) or used (a commit)."""

    usd: float = 0.0
    tokens: int = 0


@dataclass(frozen=True, slots=True)
class Refused:
    """Why a call was refused: which limit, how much of it was used or held, and what the call asked for."""

    reason: str  # one of REASONS
    used: float
    limit: float
    ask: float

    @property
    def detail(self) -> str:
        if self.reason == "seconds":
            return f"the session started {self.used:.1f}s ago; its limit is {self.limit:g}s"
        if self.reason == "calls":
            return f"{self.used:g} of {self.limit:g} model calls used or in flight"
        if self.reason == "usd":
            return f"${self.used:.6f} of ${self.limit:g} used or held; this call may cost up to ${self.ask:.6f}"
        return f"{self.used:g} of {self.limit:g} tokens used or held; this call may use up to {self.ask:g}"


@dataclass(slots=True)
class SessionTally:
    """One session's spend: committed, held by calls in flight, and the refusal that stopped it."""

    started: float
    usd: float = 0.0
    tokens: int = 0
    calls: int = 0
    held_usd: float = 0.0
    held_tokens: int = 0
    held_calls: int = 0
    stopped: Refused | None = None
    touched: float = 0.0  # last reservation or commit (idle sessions are forgotten)


def _over(tally: SessionTally, limits: SessionLimits, ask: Cost, now: float) -> Refused | None:
    if limits.seconds is not None and now - tally.started > limits.seconds:
        return Refused("seconds", now - tally.started, limits.seconds, 0.0)
    if limits.calls is not None and tally.calls + tally.held_calls + 1 > limits.calls:
        return Refused("calls", tally.calls + tally.held_calls, limits.calls, 1)
    if limits.usd is not None and tally.usd + tally.held_usd + ask.usd > limits.usd:
        return Refused("usd", tally.usd + tally.held_usd, limits.usd, ask.usd)
    if limits.tokens is not None and tally.tokens + tally.held_tokens + ask.tokens > limits.tokens:
        return Refused("tokens", tally.tokens + tally.held_tokens, limits.tokens, ask.tokens)
    return None


def reserve(tally: SessionTally, limits: SessionLimits, ask: Cost, now: float) -> Refused | None:
    """Hold ``ask`` and one call on the session, or refuse (and stop the session) holding nothing."""
    tally.touched = now
    if tally.stopped is not None:
        return tally.stopped
    refused = _over(tally, limits, ask, now)
    if refused is not None:
        tally.stopped = refused
        return refused
    tally.held_usd += ask.usd
    tally.held_tokens += ask.tokens
    tally.held_calls += 1
    return None


def commit(tally: SessionTally, held: Cost, used: Cost, now: float) -> None:
    """Release a call's hold and count what it used (a failed call uses what its attempts used)."""
    tally.touched = now
    tally.held_usd -= held.usd
    tally.held_tokens -= held.tokens
    tally.held_calls -= 1
    tally.usd += used.usd
    tally.tokens += used.tokens
    tally.calls += 1
