"""The ``session_budget`` stage: an agent session gets so many dollars, tokens, model calls and seconds.

A session is named by ``x-modelyard-session`` (Anthropic: ``metadata.user_id``;
Responses API: the ``previous_response_id`` chain). Before each call the
stage reserves the call's worst case on the session (the rule is
:mod:`modelyard.economics.session_budget`) and commits what the call used
when it ends. Over budget: a 400 with code ``session_budget_exceeded`` in the
API's own error shape, and the session is stopped — every later call gets the
same answer. With a time limit, a call's deadline is also cut to the session's
end.

Tallies are kept in Redis when the server has one (``--redis-url``: exact
across replicas), else in this process. Requests without a session pass.
Scoping (``tenants``, ``keys``, ``models``) is the stage entry's; separate
entries count separately unless they share a ``name``.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from modelyard.config import Reader
from modelyard.economics.session_budget import Cost, Refused, SessionLimits, SessionTally, commit, reserve
from modelyard.errors import SessionBudgetExceeded
from modelyard.pipeline.costing import PriceCatalog
from modelyard.pipeline.shared_writes import SharedWrites
from modelyard.pipeline.slots import StageEnvironment
from modelyard.pipeline.types import Handler, Request, Response, Stage
from modelyard.store.redis_client import SharedStateUnavailable
from modelyard.store.redis_sessions import RedisSessions, SessionHold, SessionRefusal

log = logging.getLogger("modelyard.sessions")

DEFAULT_IDLE_TTL_S = 24 * 3600.0
MAX_LOCAL_SESSIONS = 100_000
HOLD_TTL_S = 3600.0  # a hold outlives any call (the longest request timeout is capped well below)


@dataclass(frozen=True, slots=True)
class SessionBudgetOptions:
    limits: SessionLimits
    name: str = "default"  # entries with one name share their tallies
    idle_ttl_s: float = DEFAULT_IDLE_TTL_S  # a session idle this long is forgotten (a later call starts afresh)


def parse_options(r: Reader) -> SessionBudgetOptions:
    calls = r.get("calls")
    tokens = r.get("tokens")
    for key, value in (("calls", calls), ("tokens", tokens)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise r.fail(key, f"expected an integer >= 1, got {value!r}")
    limits = SessionLimits(usd=r.optional_number("usd"), tokens=tokens, calls=calls, seconds=r.optional_number("seconds", minimum=0.001))
    if not limits.any():
        raise r.fail("usd", "a session budget needs at least one of usd, tokens, calls, seconds")
    idle = r.number("idle_ttl_s", DEFAULT_IDLE_TTL_S, minimum=1.0)
    return SessionBudgetOptions(limits, r.string("name", "default"), idle)


class Held(Protocol):
    @property
    def started(self) -> float:
        """The session's first call, epoch seconds."""
        ...

    def commit(self, used: Cost) -> None: ...


class Tallies(Protocol):
    async def reserve(self, scope: str, limits: SessionLimits, ask: Cost) -> Held | Refused: ...


@dataclass(slots=True)
class _LocalHold:
    tally: SessionTally
    ask: Cost
    clock: Callable[[], float]

    @property
    def started(self) -> float:
        return self.tally.started

    def commit(self, used: Cost) -> None:
        commit(self.tally, self.ask, used, self.clock())


class LocalTallies:
    """Session tallies in this process: the least recently used are dropped past ``max_sessions`` or when idle."""

    def __init__(self, idle_ttl_s: float, clock: Callable[[], float] = time.time, max_sessions: int = MAX_LOCAL_SESSIONS) -> None:
        self.idle_ttl_s = idle_ttl_s
        self.clock = clock
        self.max_sessions = max_sessions
        self.tallies: OrderedDict[str, SessionTally] = OrderedDict()

    async def reserve(self, scope: str, limits: SessionLimits, ask: Cost) -> Held | Refused:
        now = self.clock()
        self._forget_idle(now)
        tally = self.tallies.get(scope)
        if tally is None:
            tally = self.tallies[scope] = SessionTally(started=now, touched=now)
        self.tallies.move_to_end(scope)
        refused = reserve(tally, limits, ask, now)
        return refused if refused is not None else _LocalHold(tally, ask, self.clock)

    def _forget_idle(self, now: float) -> None:
        while self.tallies:
            scope, oldest = next(iter(self.tallies.items()))
            if len(self.tallies) <= self.max_sessions and now - oldest.touched < self.idle_ttl_s:
                return
            if oldest.held_calls > 0 and len(self.tallies) <= self.max_sessions:
                return  # a call is still running on it
            del self.tallies[scope]


@dataclass(slots=True)
class _SharedHold:
    hold: SessionHold
    writes: SharedWrites
    shared: RedisSessions

    @property
    def started(self) -> float:
        return self.hold.started

    def commit(self, used: Cost) -> None:
        self.writes.start(self.shared.commit(self.hold, used.usd, used.tokens))


class SharedTallies:
    """Session tallies in Redis; while Redis cannot be reached, this replica's own tallies decide (with a warning)."""

    def __init__(self, shared: RedisSessions, local: LocalTallies) -> None:
        self.shared = shared
        self.local = local
        self.writes = SharedWrites(log, "session budgets are enforced per replica")

    async def reserve(self, scope: str, limits: SessionLimits, ask: Cost) -> Held | Refused:
        try:
            outcome = await self.shared.reserve(scope, (limits.usd, limits.tokens, limits.calls, limits.seconds), ask.usd, ask.tokens)
        except SharedStateUnavailable as exc:
            self.writes.unavailable(exc)
            return await self.local.reserve(scope, limits, ask)
        if isinstance(outcome, SessionRefusal):
            return Refused(outcome.reason, outcome.used, outcome.limit, outcome.ask)
        return _SharedHold(outcome, self.writes, self.shared)


def worst_tokens(request: Request, catalog: PriceCatalog) -> int:
    """The most tokens one attempt may use: the prompt (bounded by its bytes) plus ``max_tokens``, at most the window per choice."""
    if request.call is None:
        return sum(len(t.encode()) for t in request.inputs)
    call = request.call
    prompt = len((call.prompt + "".join(str(m.get("content") or "") for m in call.messages)).encode())
    worst = 0
    for name in [*request.plan, *request.escalations]:
        model = catalog.config.model(name)
        if model is not None:
            completion = (call.sampling.max_tokens or model.context_window) * request.n
            worst = max(worst, min(prompt + completion, model.context_window * request.n))
    return worst


def used_by(request: Request, catalog: PriceCatalog) -> Cost:
    """What every attempt of the request used (retries and failed attempts included), at the catalog's prices."""
    tokens = sum(a.usage.total_tokens for a in request.attempts if a.usage is not None)
    return Cost(catalog.actual(request), tokens)


class SessionBudget:
    def __init__(self, options: SessionBudgetOptions, tallies: Tallies, catalog: PriceCatalog,
                 clock: Callable[[], float], wallclock: Callable[[], float]) -> None:
        self.options = options
        self.tallies = tallies
        self.catalog = catalog
        self.clock = clock  # the dispatcher's: deadlines
        self.wallclock = wallclock  # the session's start is wall time (shared across replicas)

    def stage(self, next_handler: Handler) -> Handler:
        async def handle(request: Request) -> Response:
            if not request.session:
                return await next_handler(request)
            limits = self.options.limits
            ask = Cost(self.catalog.worst_case(request), worst_tokens(request, self.catalog))
            outcome = await self.tallies.reserve(f"{self.options.name}:{request.tenant}:{request.session}", limits, ask)
            if isinstance(outcome, Refused):
                request.session_stopped = f"{outcome.reason}: {outcome.detail}"
                raise SessionBudgetExceeded(
                    f"session '{request.session}' is stopped: its {outcome.reason} budget is spent ({outcome.detail})", param="session"
                )
            if limits.seconds is not None:
                left = outcome.started + limits.seconds - self.wallclock()
                request.deadline = min(request.deadline, self.clock() + max(left, 0.0))
            request.finalizers.append(lambda: outcome.commit(used_by(request, self.catalog)))
            return await next_handler(request)

        return handle


class SessionBudgetFactory:
    """The ``session_budget`` stage kind."""

    default_slot = "after_route"  # the model is known (worst case), the cache has had its turn

    def build(self, options: Reader, environment: StageEnvironment) -> Stage:
        parsed = parse_options(options)
        local = LocalTallies(parsed.idle_ttl_s, environment.wallclock)
        tallies: Tallies = local
        if environment.redis is not None:
            tallies = SharedTallies(RedisSessions(environment.redis, HOLD_TTL_S, parsed.idle_ttl_s), local)
        return SessionBudget(parsed, tallies, environment.prices, environment.clock, environment.wallclock).stage
