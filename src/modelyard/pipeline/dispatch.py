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
import random
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from modelyard.config import DeploymentConfig, FleetConfig, ModelConfig
from modelyard.errors import ContextWindowExceeded, ModelyardError, NotReady, Overloaded, UpstreamTimeout
from modelyard.pipeline.admission import SchedulerGate
from modelyard.pipeline.batcher import EmbeddingBatcher
from modelyard.pipeline.engine_load import EngineLoadPoller
from modelyard.pipeline.fleet import FleetRuntime
from modelyard.pipeline.types import Attempt, Request
from modelyard.pipeline.watchdog import StallGuard
from modelyard.protocol import Chunk, Embeddings, ModelCall, Usage
from modelyard.reliability.breaker import CircuitBreaker
from modelyard.reliability.retry import backoff_s, counts_against_deployment, is_retryable
from modelyard.routing.balancer import DeploymentView, choose

EWMA_ALPHA = 0.2
TTFT_SAMPLES = 200
MAX_SESSIONS = 10_000

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
    """Deployment choice, retries, failover, hedging and breakers for every call."""

    def __init__(self, fleet: FleetRuntime, config: FleetConfig, clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None) -> None:
        self.fleet = fleet
        self.config = config
        self.clock = clock
        self.rng = rng or random.Random()
        self.deployments: dict[str, tuple[ModelConfig, DeploymentConfig]] = {
            d.name: (m, d) for m in config.models for d in m.deployments
        }
        self.breakers = {name: CircuitBreaker(m.breaker, clock) for name, (m, _) in self.deployments.items()}
        self.ewma_ttft: dict[str, float] = {}
        self.ttft_samples: dict[str, deque[float]] = {name: deque(maxlen=TTFT_SAMPLES) for name in self.deployments}
        self.gate = SchedulerGate(config, clock)
        self.batchers = {
            name: EmbeddingBatcher(fleet.deployments[name].backend.embed, d.batching)
            for name, (m, d) in self.deployments.items()
            if m.kind == "embedding" and d.batching.enabled
        }
        self.engine_load = EngineLoadPoller(fleet, config, clock=clock)
        self.sessions: OrderedDict[str, str] = OrderedDict()
        self.affinity_slack = config.scheduling.session_affinity_slack

    # -- choosing -----------------------------------------------------------------
    def _views(self, model: ModelConfig, names: Sequence[str]) -> list[DeploymentView]:
        by_name = {d.name: d for d in model.deployments}
        return [
            DeploymentView(
                name=n,
                outstanding=self.fleet.outstanding.get(n, 0),
                weight=by_name[n].weight,
                ewma_ttft_s=self.ewma_ttft.get(n),
                unit_price=by_name[n].price.input_per_1m + by_name[n].price.output_per_1m + by_name[n].price.replica_hour,
                engine=self.engine_load.load(n),
            )
            for n in names
        ]

    def pick(self, model: ModelConfig, exclude: set[str], session: str | None = None) -> str | None:
        """A healthy deployment not yet tried (or, if all were tried, any healthy one).

        A session sticks to its last deployment (its prefix cache is there) while
        that one's load is within ``session_affinity_slack`` of the least loaded.
        """
        healthy = [d.name for d in model.deployments if self.fleet.is_ready(d.name) and self.breakers[d.name].available()]
        fresh = [n for n in healthy if n not in exclude] or healthy
        while fresh:
            name = self._sticky(session, fresh) or choose(model.strategy, self._views(model, fresh), self.rng)
            if self.breakers[name].allow():
                if session is not None:
                    self.sessions[session] = name
                    self.sessions.move_to_end(session)
                    while len(self.sessions) > MAX_SESSIONS:
                        self.sessions.popitem(last=False)
                return name
            fresh.remove(name)
        return None

    def _sticky(self, session: str | None, candidates: list[str]) -> str | None:
        if session is None:
            return None
        least = min(self.fleet.outstanding.get(n, 0) for n in candidates)
        previous = self.sessions.get(session)
        if previous in candidates and self.fleet.outstanding.get(previous, 0) <= least + self.affinity_slack:
            return previous
        # A new (or moved) session: spread sessions over the least-loaded deployments by hash.
        idle = sorted(n for n in candidates if self.fleet.outstanding.get(n, 0) == least)
        return idle[zlib.crc32(session.encode()) % len(idle)]

    def _untried_available(self, model: ModelConfig, tried: set[str]) -> bool:
        return any(self.fleet.is_ready(d.name) and d.name not in tried and self.breakers[d.name].available() for d in model.deployments)

    def _unavailable(self, model: ModelConfig) -> NotReady:
        waits = [m.breaker.cooldown_s - (self.clock() - b.opened_at) for n, b in self.breakers.items() for m, _ in [self.deployments[n]] if m is model]
        retry = max(1.0, min(waits)) if waits else 5.0
        return NotReady(f"no deployment of model '{model.name}' is available (not ready or circuit open)", retry_after=retry)

    # -- outcomes -------------------------------------------------------------------
    def _succeeded(self, deployment: str, ttft: float) -> None:
        self.breakers[deployment].record_success()
        previous = self.ewma_ttft.get(deployment)
        self.ewma_ttft[deployment] = ttft if previous is None else EWMA_ALPHA * ttft + (1 - EWMA_ALPHA) * previous
        self.ttft_samples[deployment].append(ttft)

    def _failed(self, deployment: str, error: ModelyardError) -> None:
        if counts_against_deployment(error):
            self.breakers[deployment].record_failure()
        else:
            self.breakers[deployment].release_probe()

    def hedge_delay_s(self, model: ModelConfig, deployment: str) -> float | None:
        if not model.hedge.enabled:
            return None
        if model.hedge.after_ms is not None:
            return model.hedge.after_ms / 1000
        samples = sorted(self.ttft_samples[deployment])
        if len(samples) < model.hedge.min_samples:
            return None
        return samples[min(len(samples) - 1, int(0.95 * len(samples)))]

    # -- one attempt ----------------------------------------------------------------
    async def _prime(self, request: Request, model: ModelConfig, deployment: str, call: ModelCall) -> Opened:
        attempt = Attempt(model=model.name, deployment=deployment, started=self.clock())
        request.attempts.append(attempt)
        timeouts = self.deployments[deployment][1].timeouts
        limit = min(timeouts.first_token_s, request.deadline - self.clock())
        stream = self._scheduled(request, deployment, call)
        try:
            async with asyncio.timeout(max(0.0, limit)):  # no extra task per call, unlike wait_for
                first = await stream.__anext__()
        except (TimeoutError, StopAsyncIteration) as exc:
            await stream.aclose()
            error: ModelyardError = UpstreamTimeout(f"deployment {deployment} gave no first token within {limit:.1f}s")
            if isinstance(exc, StopAsyncIteration):
                error = ModelyardError(f"deployment {deployment} ended the stream without a chunk")
            attempt.fail(error, self.clock())
            self._failed(deployment, error)
            raise error from None
        except ModelyardError as error:
            await stream.aclose()
            attempt.fail(error, self.clock())
            self._failed(deployment, error)
            raise
        except asyncio.CancelledError:
            await stream.aclose()
            attempt.outcome = "cancelled"
            attempt.finish(self.clock())
            self.breakers[deployment].release_probe()
            raise
        attempt.ttft_s = self.clock() - attempt.started
        self._succeeded(deployment, attempt.ttft_s)
        return Opened(model.name, deployment, first, stream, attempt)

    async def _scheduled(self, request: Request, deployment: str, call: ModelCall) -> AsyncGenerator[Chunk, None]:
        """The deployment's stream, started only once its scheduler grants a slot."""
        ticket = await self.gate.acquire(deployment, request)
        started = self.clock()
        finished = False
        try:
            async for chunk in self.fleet.generate(deployment, call):
                finished = finished or chunk.finish_reason is not None
                yield chunk
        finally:
            self.gate.release(deployment, ticket, self.clock() - started if finished else None)

    async def _prime_hedged(self, request: Request, model: ModelConfig, deployment: str, call: ModelCall) -> Opened:
        delay = self.hedge_delay_s(model, deployment)
        primary = asyncio.create_task(self._prime(request, model, deployment, call))
        if delay is None:
            return await primary
        done, _ = await asyncio.wait({primary}, timeout=delay)
        if done:
            return primary.result()
        second = self.pick(model, exclude={deployment})
        if second is None or second == deployment:
            return await primary
        backup = asyncio.create_task(self._prime(request, model, second, call))
        return await _first_success([primary, backup])

    # -- the public surface -------------------------------------------------------------
    async def open(self, request: Request, call: ModelCall, models: Sequence[str], avoid: frozenset[str] = frozenset()) -> Opened:
        """Retry and fail over until some deployment yields a first chunk, or raise the last error."""
        last: ModelyardError | None = None
        overflow_window = 0
        for model_name in models:
            model = self.config.model(model_name)
            if model is None or (overflow_window and model.context_window <= overflow_window):
                continue
            tried: set[str] = set(avoid)
            for attempt_no in range(1, model.retry.max_attempts + 1):
                if self.clock() >= request.deadline:
                    raise last or UpstreamTimeout("the request's deadline passed before any deployment answered")
                deployment = self.pick(model, tried, request.session)
                if deployment is None:
                    last = self._unavailable(model)
                    break
                tried.add(deployment)
                try:
                    return await self._prime_hedged(request, model, deployment, _for_model(call, model))
                except ContextWindowExceeded as error:
                    last, overflow_window = error, model.context_window
                    break
                except ModelyardError as error:
                    last = error
                    if not is_retryable(error):
                        raise
                    if isinstance(error, Overloaded) and not self._untried_available(model, tried):
                        break  # shed load honestly: the client gets the 429 and its Retry-After now
                    if attempt_no < model.retry.max_attempts and not self._untried_available(model, tried):
                        # Backing off protects a struggling deployment; moving to a fresh one needs no wait.
                        pause = min(backoff_s(model.retry, attempt_no, error, self.rng), max(0.0, request.deadline - self.clock()))
                        await asyncio.sleep(pause)
        raise last or NotReady("no model could serve the request")

    async def stream(
        self, request: Request, call: ModelCall, models: Sequence[str], on_open: OnOpen | None = None, avoid: frozenset[str] = frozenset()
    ) -> AsyncIterator[Chunk]:
        """The resilient stream of one choice: invisible failover until the first chunk, stall and deadline guards after."""
        opened = await self.open(request, call, models, avoid)
        if on_open is not None:
            on_open(opened.model, opened.deployment)
        stall = self.deployments[opened.deployment][1].timeouts.stall_s
        rest = opened.rest
        guard = StallGuard(stall, request.deadline)
        try:
            chunk = opened.first
            while True:
                if chunk.usage is not None:
                    opened.attempt.usage = chunk.usage
                yield chunk
                if chunk.finish_reason is not None:
                    opened.attempt.outcome = "ok"
                    return
                guard.begin_wait()
                try:
                    chunk = await rest.__anext__()
                except asyncio.CancelledError:
                    if not guard.fired:
                        raise
                    guard.consume_cancel()
                    raise UpstreamTimeout(f"deployment {opened.deployment} stalled for {stall:g}s mid-stream (or the request's deadline passed)") from None
                except StopAsyncIteration:
                    return
                finally:
                    guard.end_wait()
        except ModelyardError as error:
            opened.attempt.fail(error, self.clock())
            self._failed(opened.deployment, error)
            raise
        finally:
            guard.close()
            opened.attempt.finish(self.clock())
            with contextlib.suppress(Exception):
                await rest.aclose()

    async def complete(self, request: Request, call: ModelCall, models: Sequence[str], on_open: OnOpen | None = None) -> AsyncIterator[Chunk]:
        """For a client that sees nothing until the end: a failure mid-answer is retried too."""
        first_model = self.config.model(models[0]) if models else None
        tries = first_model.retry.max_attempts if first_model else 1
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
        last: ModelyardError | None = None
        for model_name in models:
            model = self.config.model(model_name)
            if model is None:
                continue
            tried: set[str] = set()
            for attempt_no in range(1, model.retry.max_attempts + 1):
                deployment = self.pick(model, tried)
                if deployment is None:
                    last = self._unavailable(model)
                    break
                tried.add(deployment)
                attempt = Attempt(model=model.name, deployment=deployment, started=self.clock())
                request.attempts.append(attempt)
                try:
                    limit = max(0.0, min(self.deployments[deployment][1].timeouts.total_s, request.deadline - self.clock()))
                    batcher = self.batchers.get(deployment)
                    call = batcher.submit(request.inputs) if batcher else self.fleet.deployments[deployment].backend.embed(request.inputs)
                    result = await asyncio.wait_for(call, limit)
                except TimeoutError:
                    last = UpstreamTimeout(f"deployment {deployment} did not answer within {limit:.1f}s")
                except ModelyardError as error:
                    last = error
                else:
                    attempt.outcome = "ok"
                    attempt.usage = Usage(result.prompt_tokens, 0)
                    attempt.finish(self.clock())
                    self._succeeded(deployment, attempt.busy_s)
                    return model.name, deployment, result
                attempt.fail(last, self.clock())
                self._failed(deployment, last)
                if not is_retryable(last):
                    raise last
                if attempt_no < model.retry.max_attempts and not self._untried_available(model, tried):
                    await asyncio.sleep(backoff_s(model.retry, attempt_no, last, self.rng))
        raise last or NotReady("no embedding model could serve the request")

    def start(self) -> None:
        """Background work: polling engine load for ``least_load`` models."""
        self.engine_load.start()

    async def aclose(self) -> None:
        await self.engine_load.aclose()
        for batcher in self.batchers.values():
            await batcher.aclose()

    def describe(self) -> dict[str, object]:
        return {
            name: breaker.describe() | {"ewma_ttft_ms": round(self.ewma_ttft[name] * 1000, 2) if name in self.ewma_ttft else None}
            for name, breaker in self.breakers.items()
        }


def _for_model(call: ModelCall, model: ModelConfig) -> ModelCall:
    if call.model == model.name:
        return call
    from dataclasses import replace

    return replace(call, model=model.name)


async def _first_success(tasks: list[asyncio.Task[Opened]]) -> Opened:
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
                    await _discard(task.result())
        if winner is None:
            assert error is not None
            raise error
        return winner
    finally:
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(BaseException):
                await _discard(await task)


async def _discard(loser: Opened) -> None:
    loser.attempt.outcome = "hedge-lost"
    loser.attempt.finish(time.monotonic())
    with contextlib.suppress(Exception):
        await loser.rest.aclose()
