"""Poll the load engines publish about themselves, for the ``least_load`` strategy.

Only deployments of models balanced by ``least_load`` are polled, and only
adapters that can read their engine's metrics (``poll_load``: the ``openai``
adapter for vLLM, SGLang or llama-server, and ``llamacpp_server``). A reading
older than ``stale_after_s`` is dropped, so a deployment whose metrics stop
answering is judged by modelyard's own in-flight count instead of an old
figure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from modelyard.config import FleetConfig
from modelyard.pipeline.runtime import Runtime
from modelyard.routing.balancer import EngineLoad
from modelyard.tasks import stop_task

log = logging.getLogger("modelyard.engine_load")

POLL_INTERVAL_S = 0.5
STALE_AFTER_S = 3.0


class EngineLoadPoller:
    """Keeps the latest :class:`EngineLoad` of each polled deployment."""

    def __init__(self, fleet: Runtime, config: FleetConfig, interval_s: float = POLL_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self.readers: dict[str, Callable[[], Awaitable[dict[str, float] | None]]] = {}
        for model in config.models:
            if model.strategy != "least_load":
                continue
            for d in model.deployments:
                reader = getattr(fleet.backend(d.name), "poll_load", None)
                if reader is not None:
                    self.readers[d.name] = reader
        self.readings: dict[str, tuple[float, EngineLoad]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.readers and self._task is None:
            self._task = asyncio.create_task(self._run(), name="engine-load-poller")

    def load(self, deployment: str) -> EngineLoad | None:
        """The deployment's last fresh reading, or None."""
        reading = self.readings.get(deployment)
        if reading is None or self.clock() - reading[0] > STALE_AFTER_S:
            return None
        return reading[1]

    async def poll_once(self) -> None:
        names = list(self.readers)
        results = await asyncio.gather(*(self.readers[n]() for n in names), return_exceptions=True)
        now = self.clock()
        for name, result in zip(names, results, strict=True):
            if isinstance(result, dict):
                self.readings[name] = (now, EngineLoad(result["running"], result["waiting"], result["kv_usage"]))
            elif isinstance(result, BaseException):
                log.debug("reading %s's load failed: %s", name, result)

    async def _run(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(self.interval_s)

    def describe(self) -> dict[str, Any]:
        return {name: {"running": load.running, "waiting": load.waiting, "kv_usage": load.kv_usage}
                for name in self.readers if (load := self.load(name)) is not None}

    async def aclose(self) -> None:
        await stop_task(self._task)
        self._task = None
