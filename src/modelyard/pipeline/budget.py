"""The budget stage: reserve the worst case before the call, commit the actual cost after."""

from __future__ import annotations

import time

from modelyard.economics.budget import BudgetBook, Hold, key_owner
from modelyard.errors import BudgetExceeded
from modelyard.pipeline.costing import PriceCatalog
from modelyard.pipeline.types import Handler, Request, Response, Stage


def budget(book: BudgetBook, catalog: PriceCatalog) -> Stage:
    def stage(next_handler: Handler) -> Handler:
        async def handle(request: Request) -> Response:
            owners = [request.tenant] + ([key_owner(request.policy.key_id)] if request.policy else [])
            owners = [o for o in owners if o in book.limits]
            if not owners:
                return await next_handler(request)
            holds = _reserve_all(book, owners, catalog.worst_case(request))
            # Committed when the request is over, however it ended (answered, failed, abandoned).
            request.finalizers.append(lambda: _commit_all(book, holds, catalog.actual(request)))
            return await next_handler(request)

        return handle

    return stage


def _reserve_all(book: BudgetBook, owners: list[str], amount: float) -> list[Hold]:
    """Holds on the tenant's and the key's budgets, or none at all."""
    holds: list[Hold] = []
    for owner in owners:
        hold = book.reserve(owner, amount, time.time())
        if hold is None:
            for taken in holds:
                book.release(taken)
            left = book.remaining(owner, time.time())
            who = f"API key {owner[4:]}" if owner.startswith("key:") else f"tenant '{owner}'"
            raise BudgetExceeded(f"{who} has ${min(left.values()):.6f} of budget left; this request may cost up to ${amount:.6f}")
        holds.append(hold)
    return holds


def _commit_all(book: BudgetBook, holds: list[Hold], actual: float) -> None:
    for hold in holds:
        book.commit(hold, actual)
