"""What the pure router needs that takes I/O to get: trained routers from disk and prompt embeddings from the fleet.

Learned routers are loaded when the pipeline is built (a bad file fails
startup, not a request). Intent example vectors are computed on an alias's
first request with the alias's own embedding model, then kept. A prompt's
vector is kept too, per alias and by routing text, for the alias's last
``embedding_cache`` texts: an agent's tool loop re-sends the same user turns,
so its steps after the first route on the kept vector (the same vector, so
the same decision) without running the embedding model, and are not charged
for an embedding they did not use. When the embedding model cannot answer,
routing goes on without a vector and the alias falls back to its rules (the
reason header says so).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

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
            router, header = router_file.load(router_file.resolve(alias.router_file))
        except (OSError, ValueError, KeyError) as exc:
            raise RouterFileError(f"aliases.{alias.name}.router_file: {exc}") from None
        unknown = [m for m in router.models if m not in alias.targets]
        if unknown:
            raise RouterFileError(f"aliases.{alias.name}.router_file: trained for {', '.join(unknown)}, not among the alias's targets ({', '.join(alias.targets)})")
        _check_depth(config, alias.name, alias.embedding_model, header.get("embedding_layers"))
        routers[alias.name] = router
    return routers


def _check_depth(config: FleetConfig, alias: str, embedding_model: str, trained: object) -> None:
    """A router trained on a cut encoder's vectors (``router train --embedding-layers``) must be served by the same cut."""
    model = config.model(embedding_model)
    served = {d.options.get("layers") for d in model.deployments} if model is not None else set()
    if not served or served == {trained}:
        return
    trained_on = "the whole model" if trained is None else f"its first {trained} layers"
    cuts = ", ".join(sorted("none" if s is None else str(s) for s in served))
    raise RouterFileError(f"aliases.{alias}.router_file: trained on vectors from {trained_on}, but {embedding_model}'s deployments "
                          f"embed with layers: {cuts}; give them all the router's depth, or retrain (router train --embedding-layers)")


Vector = npt.NDArray[np.float32]


class VectorCache:
    """The last ``capacity`` vectors by text, least recently used out; each vector read-only, since requests share it."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.vectors: OrderedDict[str, Vector] = OrderedDict()

    def get(self, text: str) -> Vector | None:
        vector = self.vectors.get(text)
        if vector is not None:
            self.vectors.move_to_end(text)
        return vector

    def put(self, text: str, vector: Vector) -> None:
        if self.capacity <= 0:
            return
        vector.flags.writeable = False
        self.vectors[text] = vector
        self.vectors.move_to_end(text)
        while len(self.vectors) > self.capacity:
            self.vectors.popitem(last=False)


class RouteInputs:
    """Per-alias assets for :func:`modelyard.routing.router.resolve_model`, and the prompt embedding."""

    def __init__(self, dispatcher: Dispatcher, learned: dict[str, LearnedRouter]) -> None:
        self.dispatcher = dispatcher
        self.learned = learned
        self.intents: dict[str, IntentIndex] = {}
        self.prompt_vectors: dict[str, VectorCache] = {}  # per alias
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

    async def embed_prompt(self, alias: AliasConfig, prompt: str, request: Request) -> Vector | None:
        """The prompt's vector, of the same text the router was trained on (kept for the alias's next requests)."""
        text = routing_text(prompt)
        cache = self.prompt_vectors.get(alias.name)
        if cache is None:
            cache = self.prompt_vectors[alias.name] = VectorCache(alias.embedding_cache)
        vector = cache.get(text)
        if vector is not None:
            request.route_embedding = "kept"
            return vector
        vectors = await self.embed(alias, [text], request, charge=True)
        if vectors is None:
            return None
        request.route_embedding = "embedded"
        cache.put(text, vectors[0])
        return vectors[0]

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
