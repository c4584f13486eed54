"""Local GGUF models in supervised llama.cpp worker processes.

Each worker holds one copy of the model and serves one request at a time; more
workers give more concurrency. Requests wait for an idle worker in a bounded
queue; past it they get 429 with an honest ``Retry-After``. A cancelled
request tells its worker to stop after the current token, and the worker only
returns to the pool once it has actually stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, AsyncGenerator, AsyncIterator

from modelyard.backends.base import BackendContext, Capabilities, Health, build_options
from modelyard.backends.tool_calls import tool_call_plan, with_tool_calls
from modelyard.config import DeploymentConfig, ModelConfig
from modelyard.errors import (
    ContextWindowExceeded,
    InvalidRequest,
    ModelyardError,
    NotReady,
    Overloaded,
    UpstreamError,
    UpstreamTimeout,
)
from modelyard.fleet import artifacts
from modelyard.fleet.supervisor import PROCESS_DIED, ProcessState, SupervisedProcess, SupervisionPolicy
from modelyard.protocol import Chunk, Embeddings, ModelCall, TokenLogprob, Usage

WORKER_MODULE = "modelyard.backends.llama_worker"


@dataclass(frozen=True, slots=True)
class LlamaCppOptions:
    """Fields of a ``backend: llamacpp`` deployment."""

    model_file: str
    workers: int = 1
    threads: int | None = None  # per worker; default: cores shared among all local workers
    n_ctx: int = 4096
    tools: bool = False  # the model's chat template offers tools, answered as <tool_call> JSON (Qwen2.5, Hermes)


class WorkerPool:
    """Hands out idle ready workers, FIFO, with a bounded number of waiters."""

    def __init__(self, workers: list[SupervisedProcess], max_queue: int) -> None:
        self.workers = workers
        self.max_queue = max_queue
        self.busy: set[SupervisedProcess] = set()
        self.waiters: deque[asyncio.Future[SupervisedProcess]] = deque()
        self.service_times: deque[float] = deque(maxlen=32)

    def idle(self) -> list[SupervisedProcess]:
        return [w for w in self.workers if w.state == ProcessState.READY and w not in self.busy]

    def retry_after(self) -> float:
        """Seconds until a place is likely free: queue depth times mean service time per worker."""
        mean = sum(self.service_times) / len(self.service_times) if self.service_times else 2.0
        return max(1.0, round(mean * (len(self.waiters) + 1) / max(1, len(self.workers)), 1))

    async def acquire(self) -> SupervisedProcess:
        if not any(w.state in (ProcessState.READY, ProcessState.RESTARTING, ProcessState.STARTING) for w in self.workers):
            raise NotReady("no worker of this deployment is running")
        idle = self.idle()
        if idle and not self.waiters:
            self.busy.add(idle[0])
            return idle[0]
        if len(self.waiters) >= self.max_queue:
            raise Overloaded("all workers are busy and the queue is full", retry_after=self.retry_after())
        future: asyncio.Future[SupervisedProcess] = asyncio.get_running_loop().create_future()
        self.waiters.append(future)
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(future.result())
            raise
        finally:
            with contextlib.suppress(ValueError):
                self.waiters.remove(future)

    def release(self, worker: SupervisedProcess, service_time: float | None = None) -> None:
        self.busy.discard(worker)
        if service_time is not None:
            self.service_times.append(service_time)
        self.wake()

    def wake(self) -> None:
        """Give idle workers to waiters (also called when a worker becomes ready)."""
        for worker in self.idle():
            while self.waiters:
                future = self.waiters.popleft()
                if not future.done():
                    self.busy.add(worker)
                    future.set_result(worker)
                    break
            else:
                return


class LlamaCppBackend:
    """The ``llamacpp`` adapter."""

    @staticmethod
    def slots(deployment: DeploymentConfig) -> int:
        """One request per worker process."""
        workers = deployment.options.get("workers", 1)
        return workers if isinstance(workers, int) and not isinstance(workers, bool) else 1

    @staticmethod
    def local_processes(deployment: DeploymentConfig) -> int:
        """Each worker computes on this machine's cores."""
        return LlamaCppBackend.slots(deployment)

    def __init__(self, deployment: DeploymentConfig, model: ModelConfig, context: BackendContext) -> None:
        where = f"models.{model.name}.deployments[{model.deployments.index(deployment)}]"
        self.options = build_options(LlamaCppOptions, deployment.options, where, context.config_source)
        self.deployment = deployment
        self.model = model
        self.context = context
        self.capabilities = Capabilities(chat=model.kind == "chat", completion=True, tools=self.options.tools, logprobs=True, json_schema=True)
        self.pool = WorkerPool([], deployment.max_queue)
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if importlib.util.find_spec("llama_cpp") is None:
            raise RuntimeError(
                f"deployment {self.deployment.name}: backend 'llamacpp' needs llama-cpp-python, an optional extra "
                "(make install-legacy, or pip install 'modelyard[legacy]'); backend 'llamacpp_server' needs nothing more"
            )
        model_file = artifacts.resolve(self.options.model_file, self.context.models_dir)
        threads = self.options.threads or self.context.threads_per_worker
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
        argv = [sys.executable, "-m", WORKER_MODULE, "--model-file", str(model_file), "--n-ctx", str(self.options.n_ctx), "--threads", str(threads)]
        policy = SupervisionPolicy()
        workers = [SupervisedProcess(f"{self.deployment.name}#{i}", argv, env, policy) for i in range(self.options.workers)]
        self.pool.workers = workers
        await asyncio.gather(*(w.start() for w in workers))
        self._watch = asyncio.create_task(self._wake_on_ready())

    async def _wake_on_ready(self) -> None:
        """A restarted worker must pick up requests that queued while it was down."""
        while True:
            await asyncio.wait([asyncio.create_task(w.wait_state_change()) for w in self.pool.workers], return_when=asyncio.FIRST_COMPLETED)
            self.pool.wake()

    def health(self) -> Health:
        workers = tuple(w.describe() | {"busy": w in self.pool.busy} for w in self.pool.workers)
        ready = any(w.state == ProcessState.READY for w in self.pool.workers)
        return Health(ready=ready, detail="" if ready else "no ready worker", workers=workers)

    async def generate(self, call: ModelCall) -> AsyncIterator[Chunk]:
        if call.tools:
            call, reader = tool_call_plan(call, self.model.name, self.options.tools)
            stream = with_tool_calls(self._generate(call), reader)
        else:
            stream = self._generate(call)
        async with contextlib.aclosing(stream) as chunks:  # an abandoned request must reach _generate's cleanup now
            async for chunk in chunks:
                yield chunk

    async def _generate(self, call: ModelCall) -> AsyncGenerator[Chunk, None]:
        worker = await self.pool.acquire()
        request_id = uuid.uuid4().hex
        events = worker.subscribe(request_id)
        started = time.monotonic()
        finished = False
        try:
            await worker.send({"op": "generate", "id": request_id, "call": call.to_wire()})
            timeouts = self.deployment.timeouts
            deadline = started + timeouts.total_s
            while True:
                wait = min(timeouts.first_token_s, deadline - time.monotonic())
                try:
                    async with asyncio.timeout(max(0.0, wait)):
                        event = await events.get()
                except TimeoutError:
                    raise UpstreamTimeout(f"deployment {self.deployment.name} produced no token for {wait:.0f}s") from None
                chunk = _to_chunk(event, self.deployment.name)
                if chunk.finish_reason is not None:
                    finished = True
                yield chunk
                if finished:
                    return
        except ConnectionError as exc:
            finished = True  # the worker is gone; nothing to wait for
            raise UpstreamError(f"deployment {self.deployment.name}: {exc}") from None
        except ModelyardError as exc:
            finished = finished or not isinstance(exc, UpstreamTimeout)
            raise
        finally:
            if finished:
                worker.unsubscribe(request_id)
                self.pool.release(worker, time.monotonic() - started)
            else:
                asyncio.get_running_loop().create_task(self._drain(worker, request_id, events, started))

    async def _drain(self, worker: SupervisedProcess, request_id: str, events: asyncio.Queue[dict[str, Any]], started: float) -> None:
        """Cancel an abandoned generation and free the worker once it has really stopped."""
        try:
            with contextlib.suppress(ConnectionError):
                await worker.send({"op": "cancel", "id": request_id})
            with contextlib.suppress(asyncio.TimeoutError):
                while (await asyncio.wait_for(events.get(), 30.0))["ev"] not in ("done", "error", "died"):
                    pass
        finally:
            worker.unsubscribe(request_id)
            self.pool.release(worker, time.monotonic() - started)

    async def embed(self, texts: list[str]) -> Embeddings:
        raise InvalidRequest(f"model {self.model.name!r} is not an embedding model", param="model")

    async def aclose(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        await asyncio.gather(*(w.stop() for w in self.pool.workers), return_exceptions=True)


def _to_chunk(event: dict[str, Any], deployment: str) -> Chunk:
    kind = event["ev"]
    if kind == "chunk":
        logprobs = tuple(
            TokenLogprob(lp["token"], lp["logprob"], tuple((t, v) for t, v in lp["top"])) for lp in event.get("logprobs") or ()
        )
        return Chunk(text=event["text"], logprobs=logprobs)
    if kind == "done":
        usage = event["usage"]
        return Chunk(finish_reason=event["finish_reason"], usage=Usage(usage["prompt_tokens"], usage["completion_tokens"]))
    if event is PROCESS_DIED or kind == "died":
        raise UpstreamError(f"deployment {deployment}: the worker process died during the request")
    message = event.get("message", "worker error")
    if event.get("kind") == "context_window":
        raise ContextWindowExceeded(message, param="messages")
    if event.get("kind") == "invalid":
        raise InvalidRequest(message)
    raise UpstreamError(f"deployment {deployment}: {message}")
