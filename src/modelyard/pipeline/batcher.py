"""Dynamic batching for embeddings: requests are merged (up to ``max_batch_size`` texts
and ``max_batch_tokens``), run as one call, and split back.

A request that finds the batcher idle and alone runs at once (no added latency
at low load); requests arriving while a batch runs form the next one. Only
under load (the last batch merged several requests) does a lone request wait
up to ``max_wait_ms`` for companions."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from modelyard.config import BatchingPolicy
from modelyard.protocol import Embeddings
from modelyard.scheduling.packing import take_count
from modelyard.tasks import stop_task

EmbedFn = Callable[[list[str]], Awaitable[Embeddings]]


class EmbeddingBatcher:
    def __init__(self, embed: EmbedFn, policy: BatchingPolicy) -> None:
        self.embed = embed
        self.policy = policy
        self.pending: list[tuple[list[str], asyncio.Future[Embeddings]]] = []
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.last_batch_requests = 0

    async def submit(self, texts: list[str]) -> Embeddings:
        if self.task is None:
            self.task = asyncio.create_task(self._loop())
        future: asyncio.Future[Embeddings] = asyncio.get_running_loop().create_future()
        self.pending.append((texts, future))
        self.wakeup.set()
        return await future

    async def _loop(self) -> None:
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            if not self.pending:
                continue
            if len(self.pending) == 1 and self.policy.max_wait_ms > 0 and self.last_batch_requests > 1:
                await asyncio.sleep(self.policy.max_wait_ms / 1000)  # under load: let companions arrive
            while self.pending:
                self.pending = [(t, f) for t, f in self.pending if not f.done()]
                count = take_count([t for t, _ in self.pending], self.policy.max_batch_size, self.policy.max_batch_tokens)
                batch, self.pending = self.pending[:count], self.pending[count:]
                if batch:
                    await self._run(batch)

    async def _run(self, batch: list[tuple[list[str], asyncio.Future[Embeddings]]]) -> None:
        texts = [t for request, _ in batch for t in request]
        self.last_batch_requests = len(batch)
        try:
            result = await self.embed(texts)
        except Exception as exc:  # every caller of the batch hears the same failure
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        total_chars = sum(len(t) for t in texts) or 1
        offset = 0
        for request, future in batch:
            part = slice(offset, offset + len(request))
            offset += len(request)
            if result.token_counts is not None:
                counts = result.token_counts[part]
                tokens = sum(counts)
            else:
                # Only a batch total is known (a remote API): split it in proportion to length.
                counts = None
                tokens = max(1, round(result.prompt_tokens * sum(len(t) for t in request) / total_chars))
            if not future.done():
                future.set_result(Embeddings(result.vectors[part], tokens, counts))

    async def aclose(self) -> None:
        await stop_task(self.task)
