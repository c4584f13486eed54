"""The response cache stage: exact answers by canonical request, and (when configured) by meaning.

Exact: the key is the canonical request as served (see
:mod:`modelyard.shaping.cache_keys`) within its scope (the tenant by default).
Semantic: the single user turn is embedded and compared with cached prompts of
the same scope (model, parameters, system prompt, tenant); the nearest is
served when it is similar enough (a static cosine threshold, or the adaptive
model's estimate within a target error) and the polarity guard finds no sign
that the two ask opposite things.

Only finished answers are stored: an error, a stream cut short, an answer with
tool calls or ``n > 1`` never is. Clients skip the cache with
``cache-control: no-cache`` or ``x-modelyard-cache: bypass``. Every request the
stage sees gets ``x-modelyard-cache: hit|miss|bypass``; a hit costs nothing
and records what the answer cost when it was made (``saved_usd``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from modelyard.config import Reader
from modelyard.pipeline.route_inputs import embed_for
from modelyard.pipeline.slots import StageEnvironment
from modelyard.pipeline.streams import replay
from modelyard.pipeline.types import Handler, Request, Response, Stage
from modelyard.protocol import Chunk, Usage
from modelyard.shaping.adaptive import (
    DEFAULT_EXPLORE_RATE,
    DEFAULT_TARGET_ERROR,
    AdaptivePolicy,
    AdaptiveThreshold,
    Candidate,
    answers_agree,
)
from modelyard.shaping.cache_keys import CachePolicy, bypass_reason, exact_key, semantic_scope, semantic_text
from modelyard.shaping.polarity import opposition
from modelyard.store.response_cache import CacheStore, MemoryCacheStore, RedisCacheStore
from modelyard.store.vector_index import Neighbour, VectorIndex

log = logging.getLogger("modelyard.cache")
CACHE_HEADER = "x-modelyard-cache"
DEFAULT_THRESHOLD = 0.996  # bench/cache.py: the static threshold shipped as default (docs/stages.md)


@dataclass(frozen=True, slots=True)
class SemanticOptions:
    embedding_model: str
    threshold: float = DEFAULT_THRESHOLD
    adaptive: AdaptivePolicy | None = None  # None: the static threshold decides


@dataclass(frozen=True, slots=True)
class CacheOptions:
    ttl_s: float = 3600.0
    scope: str = "tenant"  # tenant | fleet
    max_entries: int = 100_000
    policy: CachePolicy = field(default_factory=CachePolicy)
    private_tenants: tuple[str, ...] = ()
    semantic: SemanticOptions | None = None


def parse_options(r: Reader, environment: StageEnvironment) -> CacheOptions:
    d = CacheOptions()
    semantic = _parse_semantic(r.child("semantic"), environment) if r.get("semantic") is not None else None
    return CacheOptions(
        ttl_s=r.number("ttl_s", d.ttl_s, 0.001), scope=r.choice("scope", ("tenant", "fleet"), d.scope),
        max_entries=r.integer("max_entries", d.max_entries),
        policy=CachePolicy(sampled=r.boolean("sampled", False), semantic_multi_turn=r.boolean("semantic_multi_turn", False)),
        private_tenants=r.names("private_tenants"), semantic=semantic,
    )


def _parse_semantic(r: Reader, environment: StageEnvironment) -> SemanticOptions:
    embedders = [m.name for m in environment.config.models if m.kind == "embedding"]
    if not embedders:
        raise r.fail("embedding_model", "a semantic cache needs an embedding model, and the fleet has none")
    model = r.string("embedding_model", embedders[0])
    found = environment.config.model(model)
    if found is None or found.kind != "embedding":
        raise r.fail("embedding_model", f"expected an embedding model of the fleet ({', '.join(embedders) or 'none configured'})")
    threshold = r.number("threshold", DEFAULT_THRESHOLD)
    adaptive = None
    if r.boolean("adaptive", False):
        adaptive = AdaptivePolicy(target_error=r.number("target_error", DEFAULT_TARGET_ERROR), static_threshold=threshold, explore_rate=r.number("explore_rate", DEFAULT_EXPLORE_RATE))
    r.reject_unknown()
    return SemanticOptions(model, threshold, adaptive)


@dataclass(slots=True)
class Lookup:
    """What the lookup found: the entry served, or the nearest candidate refused (kept to label it later)."""

    entry: dict[str, Any] | None = None
    match: str = ""
    text: str | None = None
    vector: npt.NDArray[np.float32] | None = None
    candidate: Neighbour | None = None
    runner_up: float = 0.0  # the next cached prompt's similarity (the adaptive model's margin)
    explored: bool = False  # the adaptive model would have served the candidate; the model answered to label it


class ResponseCache:
    def __init__(self, options: CacheOptions, store: CacheStore, environment: StageEnvironment, rng: random.Random | None = None) -> None:
        self.options, self.store, self.env = options, store, environment
        self.vectors = VectorIndex(384, options.max_entries) if options.semantic else None
        self.adaptive = AdaptiveThreshold(options.semantic.adaptive) if options.semantic and options.semantic.adaptive else None
        self.rng = rng or random.Random()

    def stage(self, next_handler: Handler) -> Handler:
        async def handle(request: Request) -> Response:
            reason = self._bypass(request)
            if reason is not None:
                request.cache = "bypass"
                request.response_headers[CACHE_HEADER] = "bypass"
                request.response_headers[f"{CACHE_HEADER}-reason"] = reason
                return await next_handler(request)
            key = exact_key(request.call, request.served_model or "", self._scope(request))  # type: ignore[arg-type]
            found = await self._lookup(request, key)
            if found.entry is not None:
                return self._hit(request, found)
            request.cache = "miss"
            request.response_headers[CACHE_HEADER] = "miss"
            response = await next_handler(request)
            response.streams = [self._recording(request, response, response.streams[0], key, found)]
            return response

        return handle

    def _bypass(self, request: Request) -> str | None:
        if request.headers.get(CACHE_HEADER) == "bypass" or "no-cache" in request.headers.get("cache-control", ""):
            return "asked by the client"
        if request.tenant in self.options.private_tenants:
            return "private tenant"
        return bypass_reason(request.call, request.n, self.options.policy)

    def _scope(self, request: Request) -> str:
        return f"tenant:{request.tenant}" if self.options.scope == "tenant" else "fleet"

    async def _lookup(self, request: Request, key: str) -> Lookup:
        raw = await self.store.get(key)
        if raw is not None:
            return Lookup(entry=json.loads(raw), match="exact")
        semantic = self.options.semantic
        assert request.call is not None
        text = semantic_text(request.call, self.options.policy) if semantic and self.vectors is not None else None
        if text is None or semantic is None or self.vectors is None:
            return Lookup()
        assert self.env.dispatcher is not None  # a serving pipeline always has one
        vectors = await embed_for(self.env.dispatcher, semantic.embedding_model, [text], request, "cache", charge=True)
        if vectors is None:
            return Lookup()
        scope = semantic_scope(request.call, request.served_model or "", self._scope(request))
        found = Lookup(text=text, vector=vectors[0])
        neighbours = self.vectors.nearest(scope, vectors[0], self.env.clock())
        for i, neighbour in enumerate(neighbours):
            if opposition(text, neighbour.text) is not None:
                continue  # never served, never a useful label: the guard refuses it whatever the model says
            runner_up = neighbours[i + 1].similarity if i + 1 < len(neighbours) else 0.0
            decision = self._decide(neighbour, text, runner_up)
            if decision == "hit":
                raw = await self.store.get(neighbour.key)
                if raw is not None:
                    return Lookup(entry=json.loads(raw), match=f"semantic; similarity={neighbour.similarity:.3f}")
            found.candidate, found.runner_up, found.explored = neighbour, runner_up, decision == "explore"
            break
        return found

    def _decide(self, neighbour: Neighbour, text: str, runner_up: float) -> str:
        semantic = self.options.semantic
        assert semantic is not None
        if self.adaptive is None:
            return "hit" if neighbour.similarity >= semantic.threshold else "miss"
        return self.adaptive.decide(Candidate(neighbour.similarity, text, neighbour.text, runner_up), self.rng.random())

    def _hit(self, request: Request, found: Lookup) -> Response:
        entry = found.entry
        assert entry is not None
        request.cache = "hit"
        request.saved_usd = float(entry.get("cost_usd") or 0.0)
        request.response_headers[CACHE_HEADER] = "hit"
        request.response_headers[f"{CACHE_HEADER}-match"] = found.match
        prompt, completion = entry.get("usage") or (0, 0)
        chunks = [Chunk(text=str(entry["text"])), Chunk(finish_reason=str(entry["finish_reason"]), usage=Usage(int(prompt), int(completion)))]
        model = str(entry["model"])
        return Response(model=model, deployment="cache", route_reason=f"{request.route_reason}; cache hit ({found.match})", streams=[replay(chunks)])

    async def _recording(self, request: Request, response: Response, stream: AsyncIterator[Chunk], key: str, found: Lookup) -> AsyncIterator[Chunk]:
        """Pass the answer through; store it only if it ends normally with no tool calls."""
        chunks: list[Chunk] = []
        async with contextlib.aclosing(stream):  # type: ignore[type-var]
            async for chunk in stream:
                chunks.append(chunk)
                yield chunk
        finish = next((c.finish_reason for c in reversed(chunks) if c.finish_reason), None)
        if finish is None or any(c.tool_calls for c in chunks):
            return
        text = "".join(c.text for c in chunks)
        await self._fill(request, response, key, found, text, finish)

    async def _fill(self, request: Request, response: Response, key: str, found: Lookup, text: str, finish: str) -> None:
        usage = request.usage()
        entry = {
            "model": response.model, "text": text, "finish_reason": finish, "usage": [usage.prompt_tokens, usage.completion_tokens],
            "cost_usd": self.env.prices.answer_cost(request), "prompt": found.text, "created": self.env.wallclock(),
        }
        await self.store.put(key, json.dumps(entry).encode(), self.options.ttl_s)
        if self.vectors is not None and found.text is not None and found.vector is not None:
            scope = semantic_scope(request.call, request.served_model or "", self._scope(request))  # type: ignore[arg-type]
            self.vectors.add(scope, found.vector, key, found.text, self.env.clock() + self.options.ttl_s)
        if self.adaptive is not None and found.candidate is not None and found.text is not None:
            raw = await self.store.get(found.candidate.key)
            if raw is not None:
                cached = str(json.loads(raw).get("text", ""))
                agree = answers_agree(text, cached)
                candidate = Candidate(found.candidate.similarity, found.text, found.candidate.text, found.runner_up)
                self.adaptive.observe(candidate, agree, explored=found.explored)


class ResponseCacheFactory:
    """The ``response_cache`` stage kind."""

    default_slot = "after_route"

    def build(self, options: Reader, environment: StageEnvironment) -> Stage:
        parsed = parse_options(options, environment)
        store: CacheStore = RedisCacheStore(environment.redis) if environment.redis is not None else MemoryCacheStore(parsed.max_entries, environment.clock)
        return ResponseCache(parsed, store, environment).stage
