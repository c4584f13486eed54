"""The running fleet: one started backend per deployment, plus live counters."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelyard.backends.base import Backend, BackendContext
from modelyard.backends.registry import backend_factory, local_processes
from modelyard.config import FleetConfig
from modelyard.protocol import Chunk, ModelCall

log = logging.getLogger("modelyard.fleet")


@dataclass(frozen=True, slots=True)
class Deployment:
    name: str
    model: str
    backend_name: str
    backend: Backend


def local_worker_count(config: FleetConfig) -> int:
    """Processes that compute on this machine's cores (llama.cpp engines and workers, local embedders)."""
    return sum(local_processes(d) for model in config.models for d in model.deployments)


class FleetRuntime:
    """Builds adapters from the registry, starts and stops them, counts in-flight work."""

    def __init__(self, config: FleetConfig, data_dir: Path) -> None:
        self.config = config
        cores = os.cpu_count() or 1
        context = BackendContext(
            models_dir=data_dir / "models",
            threads_per_worker=max(1, cores // max(1, local_worker_count(config))),
            config_source=config.source,
        )
        self.deployments: dict[str, Deployment] = {}
        for model in config.models:
            for d in model.deployments:
                backend = backend_factory(d.backend)(d, model, context)
                self.deployments[d.name] = Deployment(d.name, model.name, d.backend, backend)
        self.outstanding: dict[str, int] = {name: 0 for name in self.deployments}
        self.started = False

    async def start(self) -> None:
        """Start every deployment; the first failure stops the rest and is raised."""
        try:
            await asyncio.gather(*(d.backend.start() for d in self.deployments.values()))
        except BaseException:
            await self.aclose()
            raise
        self.started = True

    def backend(self, deployment: str) -> Backend | None:
        """The deployment's adapter, or None for a name the fleet does not have."""
        found = self.deployments.get(deployment)
        return found.backend if found is not None else None

    def is_ready(self, deployment: str) -> bool:
        """One deployment's readiness (the dispatcher asks only about the model it routes to)."""
        return self.started and self.deployments[deployment].backend.health().ready

    def ready(self) -> bool:
        """Every model has at least one ready deployment."""
        return self.started and all(any(self.is_ready(d.name) for d in m.deployments) for m in self.config.models)

    def describe(self) -> list[dict[str, Any]]:
        out = []
        for name, d in self.deployments.items():
            health = d.backend.health()
            out.append({
                "deployment": name, "model": d.model, "backend": d.backend_name, "ready": health.ready,
                "detail": health.detail, "outstanding": self.outstanding[name], "workers": list(health.workers),
            })
        return out

    async def generate(self, deployment: str, call: ModelCall) -> AsyncGenerator[Chunk, None]:
        """The deployment's stream, counted as outstanding until it ends."""
        self.outstanding[deployment] += 1
        try:
            stream = self.deployments[deployment].backend.generate(call)
            async with contextlib.aclosing(stream):  # type: ignore[type-var]
                async for chunk in stream:
                    yield chunk
        finally:
            self.outstanding[deployment] -= 1

    async def aclose(self) -> None:
        results = await asyncio.gather(*(d.backend.aclose() for d in self.deployments.values()), return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                log.warning("error while stopping a deployment: %s", result)
        self.started = False
