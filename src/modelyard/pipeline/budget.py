"""The budget stage: reserve the worst case before the call, commit the actual cost after."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from modelyard.economics.budget import BudgetBook, Hold
from modelyard.errors import BudgetExceeded
from modelyard.pipeline.costing import PriceCatalog
from modelyard.pipeline.types import Handler, Request, Response, Stage
from modelyard.protocol import Chunk


def budget(book: BudgetBook, catalog: PriceCatalog) -> Stage:
    def stage(next_handler: Handler) -> Handler:
        async def handle(request: Request) -> Response:
            if request.tenant not in book.limits:
                return await next_handler(request)
            amount = catalog.worst_case(request)
            hold = book.reserve(request.tenant, amount, time.time())
            if hold is None:
                left = book.remaining(request.tenant, time.time())
                raise BudgetExceeded(
                    f"tenant '{request.tenant}' has ${min(left.values()):.6f} of budget left; this request may cost up to ${amount:.6f}"
                )
            try:
                response = await next_handler(request)
            except BaseException:
                book.commit(hold, catalog.actual(request))  # failed attempts still cost what they used
                raise
            if response.embeddings is not None:
                book.commit(hold, catalog.actual(request))
            else:
                response.streams = _committing(book, hold, catalog, request, response.streams)
            return response

        return handle

    return stage


def _committing(book: BudgetBook, hold: Hold, catalog: PriceCatalog, request: Request, streams: list[AsyncIterator[Chunk]]) -> list[AsyncIterator[Chunk]]:
    remaining = len(streams)

    async def wrap(stream: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
        nonlocal remaining
        try:
            async for chunk in stream:
                yield chunk
        finally:
            remaining -= 1
            if remaining == 0:
                book.commit(hold, catalog.actual(request))

    return [wrap(s) for s in streams]
