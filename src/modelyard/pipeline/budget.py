"""The budget stage: reserve the worst case before the call, commit the actual cost after.

Budgets are counted in this process (:class:`LocalBudgets`) or in Redis, shared
by every replica that names the same one (:class:`SharedBudgets`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from modelyard.economics.budget import PERIODS, BudgetBook, Hold, key_owner, period_keys
from modelyard.errors import BudgetExceeded
from modelyard.pipeline.costing import PriceCatalog
from modelyard.pipeline.shared_writes import SharedWrites
from modelyard.pipeline.types import Handler, Request, Response, Stage
from modelyard.store.redis_budgets import OwnerCheck, RedisBudgets, Refusal, SharedHold, StateLost
from modelyard.store.redis_client import SharedStateUnavailable

log = logging.getLogger("modelyard.budget")

Commit = Callable[[float], None]  # called once with the request's actual cost


SpendReload = Callable[[], Awaitable[None]]

class Budgets(Protocol):
    book: BudgetBook  # the limits (kept current by the keyring) and this replica's view of the spend

    async def reserve(self, owners: list[str], amount: float) -> Commit:
        """Hold ``amount`` on every owner's budget, or raise :class:`BudgetExceeded` holding nothing."""
        ...

    async def drain(self) -> None:
        """Wait for commits still on their way (at shutdown)."""
        ...


def budget(budgets: Budgets, catalog: PriceCatalog) -> Stage:
    def stage(next_handler: Handler) -> Handler:
        async def handle(request: Request) -> Response:
            owners = [request.tenant] + ([key_owner(request.policy.key_id)] if request.policy else [])
            owners = [o for o in owners if o in budgets.book.limits]
            if not owners:
                return await next_handler(request)
            commit = await budgets.reserve(owners, catalog.worst_case(request))
            # Committed when the request is over, however it ended (answered, failed, abandoned).
            request.finalizers.append(lambda: commit(catalog.actual(request)))
            return await next_handler(request)

        return handle

    return stage


def _refused(owner: str, left: float, amount: float) -> BudgetExceeded:
    who = f"API key {owner[4:]}" if owner.startswith("key:") else f"tenant '{owner}'"
    return BudgetExceeded(f"{who} has ${left:.6f} of budget left; this request may cost up to ${amount:.6f}")


class LocalBudgets:
    """Budgets counted in this process."""

    def __init__(self, book: BudgetBook, clock: Callable[[], float] = time.time) -> None:
        self.book = book
        self.clock = clock  # wall time: budgets run per calendar day and month

    async def reserve(self, owners: list[str], amount: float) -> Commit:
        holds: list[Hold] = []
        for owner in owners:
            hold = self.book.reserve(owner, amount, self.clock())
            if hold is None:
                for taken in holds:
                    self.book.release(taken)
                raise _refused(owner, min(self.book.remaining(owner, self.clock()).values()), amount)
            holds.append(hold)

        def commit(actual: float) -> None:
            for hold in holds:
                self.book.commit(hold, actual)

        return commit

    async def drain(self) -> None:
        return None  # commits are immediate


class SharedBudgets:
    """Budgets counted in Redis. This replica's book keeps the limits and what it knows was
    spent (passed along, less the commits Redis has not answered yet, so a Redis that lost its
    data is corrected and none is counted twice). When Redis cannot be reached, budgets are
    enforced by this replica alone, with a warning at most once a minute."""

    def __init__(
        self, shared: RedisBudgets, book: BudgetBook, clock: Callable[[], float] = time.time, reload: SpendReload | None = None
    ) -> None:
        self.shared = shared
        self.book = book
        self.clock = clock
        self.reload = reload  # raises the book to everyone's spend (the shared ledger) after Redis lost its figures
        self.local = LocalBudgets(book, clock)
        self.writes = SharedWrites(log, "budgets are enforced per replica")
        self._restoring = asyncio.Lock()
        self.restorations = 0  # ledger reloads after Redis lost its figures
        self._reloaded_at = -float("inf")
        # Spend in the book whose commit Redis has not answered yet: left out of the floor passed along, or a check
        # sent meanwhile would raise Redis to it and the commit would then add it a second time.
        self.unsent: dict[tuple[str, str, str], float] = {}

    async def reserve(self, owners: list[str], amount: float) -> Commit:
        periods = period_keys(self.clock())
        sent_at = time.monotonic()
        try:
            result = await self.shared.reserve([self._check_of(owner, periods) for owner in owners], amount, periods)
            if isinstance(result, StateLost):
                await self._restore(sent_at, owners)
                result = await self.shared.reserve([self._check_of(owner, periods) for owner in owners], amount, periods)
        except SharedStateUnavailable as exc:
            self.writes.unavailable(exc)
            return await self.local.reserve(owners, amount)
        if isinstance(result, StateLost):  # emptied again at once: this replica's book decides this one
            return await self.local.reserve(owners, amount)
        if isinstance(result, Refusal):
            raise _refused(result.owner, result.left, amount)
        return lambda actual: self._commit(result, owners, periods, actual)

    async def drain(self) -> None:
        await self.writes.drain()

    async def _restore(self, sent_at: float, owners: list[str]) -> None:
        """Reload everyone's spend into the book, then mark the owners' figures whole.

        One reload serves every request that noticed the loss before it began (however many there were).
        """
        async with self._restoring:
            if self._reloaded_at < sent_at:
                self._reloaded_at = time.monotonic()
                log.warning("Redis lost the shared budget figures (restarted empty?): reloading spend from the ledger")
                if self.reload is not None:
                    await self.reload()
                self.restorations += 1
            await self.shared.mark_kept(owners)

    def _check_of(self, owner: str, periods: dict[str, str]) -> OwnerCheck:
        limits = self.book.limits[owner]
        day, month, total = (limits.of(p) for p in PERIODS)
        known = tuple(self.book.spent.get((owner, p, periods[p]), 0.0) - self.unsent.get((owner, p, periods[p]), 0.0) for p in PERIODS)
        return OwnerCheck(owner, (day, month, total), (known[0], known[1], known[2]))

    def _commit(self, hold: SharedHold, owners: list[str], periods: dict[str, str], actual: float) -> None:
        slots = [(owner, period, periods[period]) for owner in owners for period in PERIODS]
        for slot in slots:  # this replica's own spend: the floor it passes along once Redis has answered the commit
            self.book.spent[slot] = self.book.spent.get(slot, 0.0) + actual
            self.unsent[slot] = self.unsent.get(slot, 0.0) + actual
        # If Redis is gone the hold expires by itself; the spend is in this replica's book and the ledger.
        self.writes.start(self._send(hold, slots, actual))

    async def _send(self, hold: SharedHold, slots: list[tuple[str, str, str]], actual: float) -> None:
        try:
            await self.shared.commit(hold, actual)
        finally:  # answered, or failed: either way the floor now carries it (a failed commit is what the floor is for)
            for slot in slots:
                left = self.unsent.get(slot, 0.0) - actual
                if left > 1e-12:
                    self.unsent[slot] = left
                else:
                    self.unsent.pop(slot, None)
