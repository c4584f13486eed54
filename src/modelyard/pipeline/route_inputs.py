"""What the pure router needs that takes I/O to get: trained routers from disk and prompt embeddings from the fleet.

Learned routers are loaded when the pipeline is built (a bad file fails
startup, not a request). Intent example vectors are computed on an alias's
first request with the alias's own embedding model, then kept. When the
embedding model cannot answer, routing goes on without a vector and the alias
falls back to its rules (the reason header says so).
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import numpy.typing as npt

from modelyard.config import AliasConfig, FleetConfig
from modelyard.errors import ModelyardError
from modelyard.pipeline import router_file
from modelyard.pipeline.dispatch import Dispatcher
from modelyard.pipeline.types import Request
from modelyard.routing.learned import LearnedRouter
from modelyard.routing.router import AliasAssets
from modelyard.routing.semantic import IntentIndex, examples_of, normalise
from modelyard.routing.text import routing_text

log = logging.getLogger("modelyard.routing")


class RouterFileError(ValueError):
    """A learned alias's router file is missing, unreadable or trained for other models."""


def load_learned(config: FleetConfig) -> dict[str, LearnedRouter]:
    """Every learned alias's router, checked against the alias's targets."""
    routers = {}
    for alias in config.aliases:
        if alias.strategy != "learned":
            continue
        try:
            router, _ = router_file.load(router_file.resolve(alias.router_file))
        except (OSError, ValueError, KeyError) as exc:
            raise RouterFileError(f"aliases.{alias.name}.router_file: {exc}") from None
        unknown = [m for m in router.models if m not in alias.targets]
        if unknown:
            raise RouterFileError(f"aliases.{alias.name}.router_file: trained for {', '.join(unknown)}, not among the alias's targets ({', '.join(alias.targets)})")
        routers[alias.name] = router
    return routers


class RouteInputs:
    """Per-alias assets for :func:`modelyard.routing.router.resolve_model`, and the prompt embedding."""

    def __init__(self, dispatcher: Dispatcher, learned: dict[str, LearnedRouter]) -> None:
        self.dispatcher = dispatcher
        self.learned = learned
        self.intents: dict[str, IntentIndex] = {}
        self.lock = asyncio.Lock()

    def needs_embedding(self, alias: AliasConfig) -> bool:
        return bool(alias.intents) or alias.name in self.learned

    async def assets(self, alias: AliasConfig, request: Request) -> AliasAssets:
        intents = self.intents.get(alias.name)
        if alias.intents and intents is None:
            async with self.lock:
                intents = self.intents.get(alias.name)
                if intents is None:
                    vectors = await self.embed(alias, examples_of(alias.intents), request)
                    if vectors is not None:
                        intents = self.intents[alias.name] = IntentIndex.build(alias.intents, vectors)
        return AliasAssets(learned=self.learned.get(alias.name), intents=intents)

    async def embed_prompt(self, alias: AliasConfig, prompt: str, request: Request) -> npt.NDArray[np.float32] | None:
        """The prompt's vector, of the same text the router was trained on."""
        vectors = await self.embed(alias, [routing_text(prompt)], request, charge=True)
        return None if vectors is None else vectors[0]

    async def embed(self, alias: AliasConfig, texts: list[str], request: Request, charge: bool = False) -> npt.NDArray[np.float32] | None:
        """Normalised vectors for ``texts`` from the alias's embedding model, or None when it cannot answer.

        With ``charge`` the call's attempts are added to the request's overhead, so its cost is the request's.
        """
        vectors = await embed_for(self.dispatcher, alias.embedding_model, texts, request, "route", charge)
        if vectors is None:
            log.warning("alias %s: cannot embed for routing; routing by rules", alias.name)
        return vectors


async def embed_for(dispatcher: Dispatcher, model: str, texts: list[str], request: Request, purpose: str, charge: bool) -> npt.NDArray[np.float32] | None:
    """Normalised vectors of ``texts`` from ``model`` on the request's behalf (its tenant and deadline), or None when it cannot answer.

    With ``charge`` the call's attempts are added to ``request.overhead``: work done for the request that is not its answer.
    """
    probe = Request(
        operation="embedding", model=model, request_id=f"{request.request_id}:{purpose}",
        inputs=texts, workload="embedding", tenant=request.tenant, deadline=request.deadline,
    )
    try:
        _, _, result = await dispatcher.embed(probe, [model])
    except ModelyardError as exc:
        log.warning("cannot embed for %s with %s: %s", purpose, model, exc.message)
        return None
    finally:
        if charge:
            request.overhead.extend(probe.attempts)
    return normalise(np.asarray(result.vectors, dtype=np.float32))
