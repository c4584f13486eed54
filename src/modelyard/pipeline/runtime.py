"""What the dispatcher needs of a running fleet, as a protocol.

:class:`~modelyard.pipeline.fleet.FleetRuntime` (adapters started from the
registry, in this process) is the one the server uses; anything else that
answers these few questions can stand in for it (a test's scripted fleet,
or another process's), and the dispatcher's routing, retries, hedging,
scheduling and stall guard run unchanged on it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from typing import Protocol

from modelyard.backends.base import Backend, TokenCounter
from modelyard.config import ModelConfig
from modelyard.protocol import Chunk, ModelCall


class Runtime(Protocol):
    """The fleet as the dispatcher sees it."""

    @property
    def outstanding(self) -> Mapping[str, int]:
        """Requests in flight per deployment (the balancer reads them)."""
        ...

    def is_ready(self, deployment: str) -> bool:
        """Whether the deployment can take a request now."""
        ...

    def generate(self, deployment: str, call: ModelCall) -> AsyncGenerator[Chunk, None]:
        """The deployment's stream for ``call``, counted in ``outstanding`` until it ends."""
        ...

    def backend(self, deployment: str) -> Backend | None:
        """The deployment's adapter (embeddings, load polling, token counting), or None for an unknown name."""
        ...


def token_counter(runtime: Runtime, model: ModelConfig) -> TokenCounter | None:
    """The first of ``model``'s deployments whose adapter counts tokens with the model's own tokenizer, if any."""
    for deployment in model.deployments:
        backend = runtime.backend(deployment.name)
        if isinstance(backend, TokenCounter):
            return backend
    return None
