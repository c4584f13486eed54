"""Local GGUF models on llama.cpp's own server, supervised by modelyard.

One engine process per deployment holds one copy of the model and decodes up
to ``parallel`` sequences together (continuous batching) out of one KV cache
(shared by the slots, or split into one stream per slot), reusing cached
prompt prefixes between requests. modelyard does not reimplement the engine:
it launches ``llama_server_launcher`` (llama.cpp's server through the
``xllamacpp`` wheel) as a :class:`SupervisedProcess`,
restarts it when it dies or stops answering, and speaks OpenAI's HTTP API to
it through the ``openai`` adapter's client, so streaming, logprobs, JSON
schema (grammar-constrained), tool calls (the model's chat template) and the
error translation are the same code for a local engine and a remote one.

A request in flight when the engine dies gets :class:`UpstreamError` (502),
and the engine comes back on a new port. A client that goes away closes its
upstream connection, and llama.cpp's server stops that sequence alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp

from modelyard.backends.base import BackendContext, Capabilities, Health, build_options
from modelyard.backends.occupancy import Occupancy
from modelyard.backends.openai_compat import OpenAICompatBackend, OpenAICompatOptions
from modelyard.backends.tool_calls import tool_call_plan, with_tool_calls
from modelyard.config import ConfigError, DeploymentConfig, ModelConfig
from modelyard.errors import NotReady, UpstreamError
from modelyard.fleet import artifacts
from modelyard.fleet.supervisor import ProcessState, SupervisedProcess, SupervisionPolicy
from modelyard.protocol import Chunk, ModelCall

log = logging.getLogger("modelyard.backends")

LAUNCHER_MODULE = "modelyard.backends.llama_server_launcher"
DEFAULT_PARALLEL = 4
# shared: llama.cpp's unified KV cache, where a long request may use what short ones leave free but every
# sequence's attention spans the whole buffer; per_slot: one stream of n_ctx tokens per slot.
KV_CACHE_LAYOUTS = ("shared", "per_slot")
# The engine gets one slot more than the scheduler hands out: a finished
# request's slot is released a moment after its last byte reaches modelyard,
# and a request admitted in that moment must not wait in llama-server's own
# queue (where it could wait for a whole long generation).
SPARE_SLOTS = 1
DEATH_NOTICE_S = 2.0  # after a broken stream, how long to wait for the supervisor to see the engine's death
TOKENIZE_TIMEOUT_S = 10.0
SLOTS_TIMEOUT_S = 1.0


def deferred_slot(slots: list[dict[str, object]], pinned: set[int]) -> int | None:
    """Where a deferrable request goes: the highest-numbered slot that is idle and not already promised
    to another deferrable request (whose task the engine may not have started yet); None when none is."""
    idle = [number for s in slots if isinstance(number := s.get("id"), int) and not s.get("is_processing") and number not in pinned]
    return max(idle) if idle else None


@dataclass(frozen=True, slots=True)
class LlamaServerOptions:
    """Fields of a ``backend: llamacpp_server`` deployment."""

    model_file: str
    parallel: int = DEFAULT_PARALLEL  # slots: sequences decoded together
    n_ctx: int = 4096  # context tokens per slot; the KV cache holds (parallel + spare) x n_ctx
    kv_cache: str = "shared"  # shared: one request may use the whole cache; per_slot: n_ctx each, attention over a sequence's own tokens
    threads: int | None = None  # default: cores shared among all local engines
    step_tokens: int = 64  # prompt tokens per engine step (llama.cpp's n_batch): smaller lets a newcomer's first token out sooner
    decode_threads: int | None = None  # threads for one-token steps; default: threads (SmolLM2 decodes faster on 1)
    tools: bool = False  # the model's chat template offers tools (Qwen2.5, Hermes)
    slot_similarity: float = 0.1  # llama.cpp's slot_prompt_similarity: reuse the slot whose cached prompt matches best
    cache_ram_mib: int = 256  # host RAM keeping prompts evicted from slots reusable
    cache_prompt: bool = True  # false: every request re-reads its whole prompt (for measuring what reuse saves)
    nice: int = 0  # the engine's CPU priority (0-19): a batch-only engine at 10 lets the gateway and interactive engines run first
    start_timeout_s: float = 180.0


class LlamaServerBackend(OpenAICompatBackend):
    """The ``llamacpp_server`` adapter."""

    # llama.cpp's HTTP server closes a kept-alive connection after a few requests,
    # and a request written into one that just closed fails; on loopback a fresh
    # connection per request costs a fraction of a millisecond.
    fresh_connections = True

    @staticmethod
    def slots(deployment: DeploymentConfig) -> int:
        """The engine's slots: requests it decodes at once."""
        parallel = deployment.options.get("parallel", DEFAULT_PARALLEL)
        return parallel if isinstance(parallel, int) and not isinstance(parallel, bool) and parallel > 0 else 1

    @staticmethod
    def local_processes(deployment: DeploymentConfig) -> int:
        """One engine process computes on this machine's cores, whatever its slots."""
        return 1

    def __init__(self, deployment: DeploymentConfig, model: ModelConfig, context: BackendContext) -> None:
        where = f"models.{model.name}.deployments[{model.deployments.index(deployment)}]"
        self.server_options = build_options(LlamaServerOptions, deployment.options, where, context.config_source)
        if self.server_options.parallel < 1:
            raise ConfigError(context.config_source, f"{where}.parallel", "expected an integer >= 1")
        if not 0 <= self.server_options.nice <= 19:
            raise ConfigError(context.config_source, f"{where}.nice", "expected an integer from 0 to 19")
        if self.server_options.n_ctx < 64:
            raise ConfigError(context.config_source, f"{where}.n_ctx", "expected an integer >= 64")
        if self.server_options.kv_cache not in KV_CACHE_LAYOUTS:
            raise ConfigError(context.config_source, f"{where}.kv_cache", f"expected one of {', '.join(KV_CACHE_LAYOUTS)}, got {self.server_options.kv_cache!r}")
        self._warn_if_window_exceeds_cache(model, where)
        http = OpenAICompatOptions(base_url="", upstream_model=model.name, tools=self.server_options.tools, max_connections=4 * self.server_options.parallel)
        self._init(deployment, model, http)
        self.capabilities = Capabilities(chat=model.kind == "chat", completion=True, tools=self.server_options.tools, logprobs=True, json_schema=True)
        self.context = context
        self.process: SupervisedProcess | None = None
        self.occupancy = Occupancy()
        self._pinned: set[int] = set()  # slots given to deferrable requests still in flight

    def request_tokens(self) -> int:
        """The most context one request can hold in this engine: its slot, or the whole shared cache."""
        o = self.server_options
        return o.n_ctx if o.kv_cache == "per_slot" else (o.parallel + SPARE_SLOTS) * o.n_ctx

    def _warn_if_window_exceeds_cache(self, model: ModelConfig, where: str) -> None:
        # The gateway admits (and the context budget trims to) context_window tokens; one request
        # in this engine can use at most its slot (per_slot) or the whole cache (shared).
        limit = self.request_tokens()
        if model.context_window > limit:
            what = "n_ctx (its kv_cache is per_slot)" if self.server_options.kv_cache == "per_slot" else f"whole KV cache ((parallel + {SPARE_SLOTS}) x n_ctx)"
            log.warning(
                "models.%s.context_window (%d) is larger than what one request can hold in %s: %s = %d tokens; "
                "prompts between the two are refused by the engine (context_length_exceeded); set context_window <= %d or raise n_ctx",
                model.name, model.context_window, where, what, limit, limit,
            )

    async def start(self) -> None:
        o = self.server_options
        model_file = artifacts.resolve(o.model_file, self.context.models_dir)
        threads = o.threads or self.context.threads_per_worker
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
        argv = [
            sys.executable, "-m", LAUNCHER_MODULE, "--model-file", str(model_file), "--parallel", str(o.parallel + SPARE_SLOTS),
            "--n-ctx", str(o.n_ctx), "--threads", str(threads), "--slot-similarity", str(o.slot_similarity),
            "--cache-ram-mib", str(o.cache_ram_mib), "--decode-threads", str(o.decode_threads or 0),
            "--n-batch", str(o.step_tokens), "--nice", str(o.nice),
        ] + ([] if o.cache_prompt else ["--no-cache-prompt"]) + (["--kv-split"] if o.kv_cache == "per_slot" else [])
        self.process = SupervisedProcess(f"{self.deployment.name}#engine", argv, env, SupervisionPolicy(start_timeout_s=o.start_timeout_s))
        await self.process.start()
        await super().start()

    def _engine_url(self) -> str:
        process = self.process
        if process is None or process.state != ProcessState.READY:
            raise NotReady(f"deployment {self.deployment.name}: the engine is not running")
        return str(process.ready_info["base_url"])

    def _url(self, path: str) -> str:
        return self._engine_url() + "/v1" + path

    def _metrics_url(self) -> str:
        return self._engine_url() + "/metrics"

    def health(self) -> Health:
        process = self.process
        if process is None:
            return Health(ready=False, detail="not started")
        ready = process.state == ProcessState.READY and self._client is not None
        busy_s, slot_s = self.occupancy.totals()
        engine = process.describe() | {
            "busy": self.in_flight > 0,
            "slots": self.server_options.parallel,
            "busy_slots": self.in_flight,
            "busy_s": round(busy_s, 3),  # seconds with a sequence in flight, since start
            "slot_busy_s": round(slot_s, 3),  # sequence-seconds in flight, since start
        }
        return Health(ready=ready, detail="" if ready else f"engine {process.state.name.lower()}", workers=(engine,))

    async def generate(self, call: ModelCall) -> AsyncIterator[Chunk]:
        if call.tools:
            call, reader = tool_call_plan(call, self.model.name, self.server_options.tools)
            stream: AsyncIterator[Chunk] = with_tool_calls(self._slotted(call), reader)
        else:
            stream = self._slotted(call)
        self.occupancy.started()
        pid = self.process.pid if self.process else None
        try:
            async with contextlib.aclosing(stream) as chunks:  # type: ignore[type-var]
                async for chunk in chunks:
                    yield chunk
        except UpstreamError:
            if await self._engine_died(pid):
                raise UpstreamError(f"deployment {self.deployment.name}: the engine process died during the request") from None
            raise
        finally:
            self.occupancy.ended()

    async def _slotted(self, call: ModelCall) -> AsyncIterator[Chunk]:
        """The engine's stream; deferrable work is pinned to the highest-numbered idle slot.

        llama.cpp's server fills each step's prompt budget (``step_tokens``) slot by slot in
        slot order, so a prompt in a low slot is read before those in higher ones: batch work in
        the top slots leaves the low ones, where the server places other requests first, ahead of it.
        Urgent requests stay unpinned, so the server still places them by cached-prompt similarity.
        """
        slot = deferred_slot(await self._engine_slots(), self._pinned) if call.deferrable else None
        if slot is not None:
            self._pinned.add(slot)
        try:
            async for chunk in self._stream(call, None if slot is None else {"id_slot": slot}):
                yield chunk
        finally:
            if slot is not None:
                self._pinned.discard(slot)

    async def _engine_slots(self) -> list[dict[str, object]]:
        """llama-server's ``/slots`` (id and whether busy per slot); empty when it cannot say quickly."""
        try:
            client = self._client_or_fail()
            async with client.get(self._engine_url() + "/slots", timeout=aiohttp.ClientTimeout(total=SLOTS_TIMEOUT_S)) as response:
                slots = await response.json() if response.status == 200 else []
        except (aiohttp.ClientError, TimeoutError, ValueError, NotReady):
            return []
        return slots if isinstance(slots, list) else []

    async def count_tokens(self, texts: list[str]) -> list[int]:
        """Token counts from the engine's own tokenizer (llama-server's ``/tokenize``), concurrently."""
        client = self._client_or_fail()
        url = self._engine_url() + "/tokenize"

        async def one(text: str) -> int:
            async with client.post(url, json={"content": text, "add_special": False}, timeout=aiohttp.ClientTimeout(total=TOKENIZE_TIMEOUT_S)) as response:
                if response.status != 200:
                    raise UpstreamError(f"deployment {self.deployment.name}: the engine would not tokenize (HTTP {response.status})")
                return len((await response.json())["tokens"])

        try:
            return list(await asyncio.gather(*(one(t) for t in texts)))
        except (aiohttp.ClientError, TimeoutError, KeyError, TypeError, ValueError) as exc:
            raise UpstreamError(f"deployment {self.deployment.name}: cannot tokenize ({type(exc).__name__})") from None

    @property
    def in_flight(self) -> int:
        """Requests this deployment has sent to its engine and not yet finished."""
        return self.occupancy.in_flight

    async def _engine_died(self, pid: int | None) -> bool:
        """Whether the engine that served ``pid`` is gone (waits briefly for the supervisor to notice)."""
        process = self.process
        if process is None or pid is None:
            return False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DEATH_NOTICE_S):
                while process.pid == pid and process.state == ProcessState.READY:
                    await process.wait_state_change()
        return process.pid != pid or process.state != ProcessState.READY

    async def aclose(self) -> None:
        await super().aclose()
        if self.process is not None:
            await self.process.stop()


