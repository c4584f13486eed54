"""Run one call against the fleet, resiliently.

For each choice the dispatcher picks a deployment (balancer, circuit
breakers), waits for the first chunk under the deployment's first-token
timeout, and on a retryable failure backs off and moves on: to another
deployment of the model, then to the model's fallbacks (a context-window
overflow skips straight to a fallback with a larger window). Until the first
chunk reaches the caller every failure is invisible; after it, a failure ends
the stream with an error. Optionally a late first token triggers a hedged
copy on another deployment; the first to answer wins and the loser is
cancelled. Every attempt is recorded on the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from modelyard.backends.base import Backend
from modelyard.config import DeploymentConfig, FleetConfig, ModelConfig
from modelyard.errors import ModelyardError, UpstreamTimeout
from modelyard.pipeline.admission import SchedulerGate
from modelyard.pipeline.batcher import EmbeddingBatcher
from modelyard.pipeline.engine_load import EngineLoadPoller
from modelyard.pipeline.failover import Failover, FailoverInputs, Pause, failover
from modelyard.pipeline.picker import DeploymentPicker
from modelyard.pipeline.runtime import Runtime
from modelyard.pipeline.types import Attempt, Request
from modelyard.pipeline.watchdog import StallGuard
from modelyard.protocol import Chunk, Embeddings, ModelCall, Usage
from modelyard.reliability.retry import is_retryable
from modelyard.scheduling.scheduler import URGENT_RANK

OnOpen = Callable[[str, str], None]


@dataclass(slots=True)
class Opened:
    """A stream whose first chunk has arrived."""

    model: str
    deployment: str
    first: Chunk
    rest: AsyncGenerator[Chunk, None]
    attempt: Attempt


class Dispatcher:
    """Deployment choice, retries, failover, hedging and breakers for every call.

    The choices and the retry rules are pure (:mod:`.picker`, :mod:`.failover`)
    and shared with the planner's simulator; this class performs them.
    """

    def __init__(
        self, fleet: Runtime, config: FleetConfig, clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None
    ) -> None:
        self.fleet = fleet
        self.config = config
        self.clock = clock
        self.rng = rng or random.Random()
        self.deployments: dict[str, tuple[ModelConfig, DeploymentConfig]] = {d.name: (m, d) for m in config.models for d in m.deployments}
        # Whether any deployment fetches whole answers: if none does, a non-streamed call is not copied to say so.
        self.whole_answers = any(d.upstream_streaming != "always" for _, d in self.deployments.values())
        self.engine_load = EngineLoadPoller(fleet, config, clock=clock)
        self.picker = DeploymentPicker(config, fleet, clock, self.rng, self.engine_load.load)
        self.gate = SchedulerGate(config, clock)
        self.batchers = {
            name: EmbeddingBatcher(self._backend(name).embed, d.batching)
            for name, (m, d) in self.deployments.items()
            if m.kind == "embedding" and d.batching.enabled
        }

    def _failover(self, request: Request, models: Sequence[str], avoid: frozenset[str], exhausted: str) -> Failover:
        inputs = FailoverInputs(models, request.deadline, request.session, avoid, exhausted, request.workload)
        return failover(self.config, self.picker, inputs, self.clock, self.rng)

    # -- one attempt ----------------------------------------------------------------
    async def _prime(self, request: Request, model: ModelConfig, deployment: str, call: ModelCall) -> Opened:
        attempt = Attempt(model=model.name, deployment=deployment, started=self.clock())
        request.attempts.append(attempt)
        settings = self.deployments[deployment][1]
        call = _as_fetched(call, model, settings)
        # A whole answer's first chunk is the whole answer: only the total limit applies to it.
        limit = min(settings.timeouts.total_s if call.whole else settings.timeouts.first_token_s, request.deadline - self.clock())
        stream = self._scheduled(request, deployment, call)
        try:
            async with asyncio.timeout(max(0.0, limit)):  # no extra task per call, unlike wait_for
                first = await stream.__anext__()
        except (TimeoutError, StopAsyncIteration) as exc:
            await stream.aclose()
            error: ModelyardError = UpstreamTimeout(f"deployment {deployment} gave no {'answer' if call.whole else 'first token'} within {limit:.1f}s")
            if isinstance(exc, StopAsyncIteration):
                error = ModelyardError(f"deployment {deployment} ended the stream without a chunk")
            attempt.fail(error, self.clock())
            self.picker.failed(deployment, error)
            raise error from None
        except ModelyardError as error:
            await stream.aclose()
            attempt.fail(error, self.clock())
            self.picker.failed(deployment, error)
            raise
        except asyncio.CancelledError:
            await stream.aclose()
            attempt.outcome = "cancelled"
            attempt.finish(self.clock())
            self.picker.breakers[deployment].release_probe()
            raise
        attempt.ttft_s = None if call.whole else self.clock() - attempt.started  # a whole answer's wait is not a TTFT
        self.picker.succeeded(deployment, attempt.ttft_s)
        return Opened(model.name, deployment, first, stream, attempt)

    async def _scheduled(self, request: Request, deployment: str, call: ModelCall) -> AsyncGenerator[Chunk, None]:
        """The deployment's stream, started only once its scheduler grants a slot."""
        ticket = await self.gate.acquire(deployment, request)
        if ticket.rank > URGENT_RANK:
            call = dataclasses.replace(call, deferrable=True)
        started = self.clock()
        finished = False
        try:
            # Closed here, not left to the garbage collector: the runtime's in-flight count drops when the answer ends.
            async with contextlib.aclosing(self.fleet.generate(deployment, call)) as chunks:
                async for chunk in chunks:
                    finished = finished or chunk.finish_reason is not None
                    yield chunk
        finally:
            self.gate.release(deployment, ticket, self.clock() - started if finished else None)

    async def _prime_hedged(self, request: Request, model: ModelConfig, deployment: str, call: ModelCall) -> Opened:
        delay = self.picker.hedge_delay_s(model, deployment)
        if delay is None:  # no hedge: the attempt runs in this task (a task of its own costs a loop turn per request)
            return await self._prime(request, model, deployment, call)
        primary = asyncio.create_task(self._prime(request, model, deployment, call))
        done, _ = await asyncio.wait({primary}, timeout=delay)
        if done:
            return primary.result()
        second = self.picker.pick(model, exclude={deployment}, workload=request.workload)
        if second is None or second == deployment:
            return await primary
        backup = asyncio.create_task(self._prime(request, model, second, call))
        return await _first_success([primary, backup], self.clock)

    # -- the public surface -------------------------------------------------------------
    async def open(self, request: Request, call: ModelCall, models: Sequence[str], avoid: frozenset[str] = frozenset()) -> Opened:
        """Retry and fail over until some deployment yields a first chunk, or raise the last error."""
        steps = self._failover(request, models, avoid, "no model could serve the request")
        step = next(steps)
        while True:
            if isinstance(step, Pause):
                await asyncio.sleep(step.seconds)
                step = steps.send(None)
                continue
            try:
                return await self._prime_hedged(request, step.model, step.deployment, _for_model(call, step.model))
            except ModelyardError as error:
                step = steps.send(error)

    async def stream(
        self, request: Request, call: ModelCall, models: Sequence[str], on_open: OnOpen | None = None, avoid: frozenset[str] = frozenset()
    ) -> AsyncIterator[Chunk]:
        """The resilient stream of one choice: invisible failover until the first chunk, stall and deadline guards after."""
        opened = await self.open(request, call, models, avoid)
        if on_open is not None:
            on_open(opened.model, opened.deployment)
        stall = self.deployments[opened.deployment][1].timeouts.stall_s
        rest = opened.rest
        guard = StallGuard(stall, request.deadline - self.clock())
        try:
            chunk = opened.first
            while True:
                if chunk.usage is not None:
                    opened.attempt.usage = chunk.usage
                yield chunk
                if chunk.finish_reason is not None:
                    opened.attempt.outcome = "ok"
                    opened.attempt.finish_reason = chunk.finish_reason
                    return
                guard.begin_wait()
                try:
                    chunk = await rest.__anext__()
                except asyncio.CancelledError:
                    if not guard.fired:
                        raise
                    guard.consume_cancel()
                    raise UpstreamTimeout(
                        f"deployment {opened.deployment} stalled for {stall:g}s mid-stream (or the request's deadline passed)"
                    ) from None
                except StopAsyncIteration:
                    return
                finally:
                    guard.end_wait()
        except ModelyardError as error:
            opened.attempt.fail(error, self.clock())
            self.picker.failed(opened.deployment, error)
            raise
        finally:
            guard.close()
            opened.attempt.finish(self.clock())
            with contextlib.suppress(Exception):
                await rest.aclose()

    async def complete(
        self, request: Request, call: ModelCall, models: Sequence[str], on_open: OnOpen | None = None
    ) -> AsyncIterator[Chunk]:
        """For a client that sees nothing until the end: a failure mid-answer is retried too."""
        first_model = self.config.model(models[0]) if models else None
        tries = first_model.retry.max_attempts if first_model else 1
        if self.whole_answers:
            call = dataclasses.replace(call, whole=True)
        last: ModelyardError | None = None
        failed: set[str] = set()
        for _ in range(tries):
            chunks: list[Chunk] = []
            try:
                async for chunk in self.stream(request, call, models, on_open, frozenset(failed)):
                    chunks.append(chunk)
            except ModelyardError as error:
                if not chunks or not is_retryable(error) or self.clock() >= request.deadline:
                    raise  # before the first chunk, open() already used every retry
                last = error
                failed.add(request.attempts[-1].deployment)
                continue
            for chunk in chunks:
                yield chunk
            return
        assert last is not None
        raise last

    async def embed(self, request: Request, models: Sequence[str]) -> tuple[str, str, Embeddings]:
        """Embeddings with the same retries, failover and breakers (no streaming, no hedging)."""
        steps = self._failover(request, models, frozenset(), "no embedding model could serve the request")
        step = next(steps)
        while True:
            if isinstance(step, Pause):
                await asyncio.sleep(step.seconds)
                step = steps.send(None)
                continue
            try:
                return step.model.name, step.deployment, await self._embed_once(request, step.deployment)
            except ModelyardError as error:
                step = steps.send(error)

    async def _embed_once(self, request: Request, deployment: str) -> Embeddings:
        model = self.deployments[deployment][0]
        attempt = Attempt(model=model.name, deployment=deployment, started=self.clock())
        request.attempts.append(attempt)
        limit = max(0.0, min(self.deployments[deployment][1].timeouts.total_s, request.deadline - self.clock()))
        batcher = self.batchers.get(deployment)
        try:
            call = batcher.submit(request.inputs) if batcher else self._backend(deployment).embed(request.inputs)
            async with asyncio.timeout(limit):  # no extra task per call, unlike wait_for (a route embedding is on the request path)
                result = await call
        except TimeoutError:
            error: ModelyardError = UpstreamTimeout(f"deployment {deployment} did not answer within {limit:.1f}s")
        except ModelyardError as exc:
            error = exc
        else:
            attempt.outcome = "ok"
            attempt.usage = Usage(result.prompt_tokens, 0)
            attempt.finish(self.clock())
            self.picker.succeeded(deployment, attempt.busy_s)
            return result
        attempt.fail(error, self.clock())
        self.picker.failed(deployment, error)
        raise error

    def _backend(self, deployment: str) -> Backend:
        backend = self.fleet.backend(deployment)
        if backend is None:
            raise KeyError(f"the runtime has no deployment {deployment!r}")
        return backend

    def start(self) -> None:
        """Background work: polling engine load for ``least_load`` models."""
        self.engine_load.start()

    async def aclose(self) -> None:
        await self.engine_load.aclose()
        for batcher in self.batchers.values():
            await batcher.aclose()

    def describe(self) -> dict[str, object]:
        return self.picker.describe()


def _as_fetched(call: ModelCall, model: ModelConfig, deployment: DeploymentConfig) -> ModelCall:
    """``call`` as ``deployment`` fetches it: whole only where the deployment allows it and no hedge waits on a first token."""
    if call.whole and (deployment.upstream_streaming == "always" or model.hedge.enabled):
        return dataclasses.replace(call, whole=False)
    return call


def _for_model(call: ModelCall, model: ModelConfig) -> ModelCall:
    if call.model == model.name:
        return call
    from dataclasses import replace

    return replace(call, model=model.name)


async def _first_success(tasks: list[asyncio.Task[Opened]], clock: Callable[[], float]) -> Opened:
    """The first task to succeed; the others are cancelled and any stream they opened is closed."""
    pending = set(tasks)
    winner: Opened | None = None
    error: BaseException | None = None
    try:
        while pending and winner is None:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.exception() is not None:
                    error = task.exception()
                elif winner is None:
                    winner = task.result()
                else:
                    await _discard(task.result(), clock())
        if winner is None:
            assert error is not None
            raise error
        return winner
    finally:
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(BaseException):
                await _discard(await task, clock())


async def _discard(loser: Opened, now: float) -> None:
    loser.attempt.outcome = "hedge-lost"
    loser.attempt.finish(now)
    with contextlib.suppress(Exception):
        await loser.rest.aclose()
