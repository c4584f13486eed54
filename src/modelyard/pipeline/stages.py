"""The pipeline's stages, each a function from the next handler to a handler.

Order (DESIGN.md): authenticate → classify → cache → guard → augment → route →
schedule → call → validate → account. Optional stages (cache, context budget,
PII filter) are configured in the fleet file and placed in named slots by
:mod:`modelyard.pipeline.slots`; each built-in one stays a few lines.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from redis.asyncio import Redis

from modelyard.config import FleetConfig
from modelyard.errors import InvalidRequest
from modelyard.pipeline.answer_watch import watch_answers
from modelyard.pipeline.budget import Budgets, budget
from modelyard.pipeline.costing import PriceCatalog
from modelyard.pipeline.dispatch import Dispatcher
from modelyard.pipeline.limits import Limiter, LocalLimiter, limits
from modelyard.pipeline.quality import quality
from modelyard.pipeline.route_inputs import RouteInputs
from modelyard.pipeline.slots import StageEnvironment, build_stages
from modelyard.pipeline.stage_registry import default_registry
from modelyard.pipeline.types import WORKLOAD_CLASSES, Handler, Lifecycle, Request, Response, Stage
from modelyard.protocol import ModelCall
from modelyard.routing.learned import LearnedRouter
from modelyard.routing.router import AliasAssets, PromptFeatures, match_rule, resolve_model, settled_by_words

CLASS_HEADER = "x-modelyard-class"
SESSION_HEADER = "x-modelyard-session"
TIMEOUT_HEADER = "x-modelyard-timeout"
QUALITY_HEADER = "x-modelyard-quality"


def classify(config: FleetConfig, clock: Callable[[], float] = time.monotonic) -> Stage:
    """Set the workload class (endpoint first, then header), the session and the deadline (on ``clock``, the dispatcher's)."""
    cap = config.server.max_request_timeout_s

    def stage(next_handler: Handler) -> Handler:
        async def handle(request: Request) -> Response:
            if request.operation == "embedding":
                request.workload = "embedding"
            elif claimed := request.headers.get(CLASS_HEADER):
                if claimed not in WORKLOAD_CLASSES:
                    raise InvalidRequest(f"{CLASS_HEADER} must be one of {', '.join(WORKLOAD_CLASSES)}", param=CLASS_HEADER)
                request.workload = claimed
            request.session = request.headers.get(SESSION_HEADER) or (request.call.user if request.call else None)
            if request.session and request.workload == "interactive" and request.headers.get(SESSION_HEADER):
                request.workload = "agent"
            request.deadline = clock() + _timeout(request.headers.get(TIMEOUT_HEADER), cap)
            request.state = Lifecycle.CLASSIFIED
            return await next_handler(request)

        return handle

    return stage


def _timeout(header: str | None, cap: float) -> float:
    if header is None:
        return cap
    value = _number(header)
    if not value > 0:
        raise InvalidRequest(f"{TIMEOUT_HEADER} must be a positive number of seconds", param=TIMEOUT_HEADER)
    return min(value, cap)


def _features(request: Request) -> PromptFeatures:
    """What the router sees: the user's text, what the call asks for, and who asks."""
    text, wants_json, wants_tools = _asked(request.call)
    return PromptFeatures(
        text=text, wants_json=wants_json, wants_tools=wants_tools, headers=request.headers, tenant=request.tenant,
        key_id=request.policy.key_id if request.policy else "", quality_target=_quality(request.headers.get(QUALITY_HEADER)),
    )


def _asked(call: ModelCall | None) -> tuple[str, bool, bool]:
    """The prompt and the user turns, whether JSON output is asked for, whether tools are offered."""
    if call is None:
        return "", False, False
    parts = [call.prompt] if call.prompt else []
    parts += [m["content"] for m in call.messages if isinstance(m.get("content"), str) and m.get("role") in ("user", None)]
    fmt = (call.response_format or {}).get("type")
    return "\n".join(parts), fmt in ("json_object", "json_schema"), bool(call.tools)


def _number(header: str) -> float:
    """The header's number; -1 when it is not one (every caller rejects -1)."""
    try:
        return float(header)
    except ValueError:
        return -1.0


def _quality(header: str | None) -> float | None:
    if header is None:
        return None
    value = _number(header)
    if not 0.0 <= value <= 1.0:
        raise InvalidRequest(f"{QUALITY_HEADER} must be a number from 0 (cheapest) to 1 (best predicted quality)", param=QUALITY_HEADER)
    return value


async def _alias_inputs(inputs: RouteInputs, config: FleetConfig, request: Request, features: PromptFeatures) -> tuple[PromptFeatures, dict[str, AliasAssets]]:
    """For an alias that compares embeddings: the prompt's vector and the alias's assets."""
    alias = config.alias(request.model)
    if alias is None or not inputs.needs_embedding(alias) or not features.text or match_rule(alias.rules, features):
        return features, {}  # a rule decides without a vector: no embedding call
    assets = await inputs.assets(alias, request)
    if alias.lexical_first and assets.learned is not None:
        features = dataclasses.replace(features, words=assets.learned.word_view(features.text))
        if settled_by_words(alias, assets.learned, features) is not None:
            request.route_embedding = "settled"  # the words decide: no embedding run, none charged
            return features, {alias.name: assets}
    vector = await inputs.embed_prompt(alias, features.text, request)
    if vector is not None:
        features = dataclasses.replace(features, embedding=vector)
    return features, {alias.name: assets}


def route(config: FleetConfig, inputs: RouteInputs) -> Stage:
    """Resolve aliases to a model and plan it with its fallbacks; cascades keep the rest for later."""

    def stage(next_handler: Handler) -> Handler:
        async def handle(request: Request) -> Response:
            features, assets = await _alias_inputs(inputs, config, request, _features(request))
            decision = resolve_model(request.model, config, features, assets)
            model = config.model(decision.model)
            assert model is not None  # resolve_model only returns fleet models
            if request.operation == "embedding" and model.kind != "embedding":
                raise InvalidRequest(f"model '{model.name}' is a {model.kind} model, not an embedding model", param="model")
            if request.operation != "embedding" and model.kind == "embedding":
                raise InvalidRequest(f"model '{model.name}' is an embedding model; use /v1/embeddings", param="model")
            if request.operation == "chat" and model.kind != "chat":
                raise InvalidRequest(f"model '{model.name}' has no chat template; use /v1/completions", param="model")
            request.served_model = model.name
            request.route_reason = decision.describe()
            request.route_kind = "" if decision.kind == "requested" else decision.kind
            request.predicted_quality = decision.predicted_quality
            request.plan = [model.name, *model.fallbacks]
            request.escalations = list(decision.escalations)
            request.state = Lifecycle.ROUTED
            return await next_handler(request)

        return handle

    return stage


def call_backend(dispatcher: Dispatcher) -> Handler:
    """The terminal handler: one resilient stream per choice, or one embeddings call."""

    async def handle(request: Request) -> Response:
        assert request.served_model is not None
        response = Response(model=request.served_model, deployment="", route_reason=request.route_reason)
        request.state = Lifecycle.RUNNING
        if request.operation == "embedding":
            response.model, response.deployment, response.embeddings = await dispatcher.embed(request, request.plan)
            return response
        assert request.call is not None

        def opened(model: str, deployment: str) -> None:
            response.model, response.deployment = model, deployment
            request.deployment = deployment

        run = dispatcher.stream if request.stream else dispatcher.complete
        response.streams = [run(request, _nth_choice(request.call, i), request.plan, opened if i == 0 else None) for i in range(request.n)]
        return response

    return handle


def _nth_choice(call: ModelCall, index: int) -> ModelCall:
    """Choices of one seeded request differ from each other but repeat across requests."""
    if index == 0 or call.sampling.seed is None:
        return call
    return dataclasses.replace(call, sampling=dataclasses.replace(call.sampling, seed=call.sampling.seed + index))


def build_pipeline(
    dispatcher: Dispatcher, config: FleetConfig, learned: dict[str, LearnedRouter], budgets: Budgets | None = None, extra: list[Stage] | None = None,
    limiter: Limiter | None = None, clock: Callable[[], float] | None = None, redis: Redis | None = None,
) -> Handler:
    """Compose the stages, outermost first, around the backend call (``learned``: :func:`load_learned`'s routers;
    ``budgets`` and ``limiter``: where budgets and rate limits are counted; no budgets, limits in this process by default;
    ``clock``: what deadlines are measured on, the dispatcher's clock by default; ``redis``: where configured stages
    keep shared state, such as the response cache)."""
    clock = clock or dispatcher.clock
    optional = build_stages(config, StageEnvironment(config, dispatcher, redis, clock), default_registry())
    spend = [budget(budgets, PriceCatalog(config))] if budgets is not None else []
    inputs = RouteInputs(dispatcher, learned)
    stages: list[Stage] = [
        classify(config, clock), watch_answers(), limits(limiter or LocalLimiter()), *(extra or []), *optional.slot("before_route"),
        route(config, inputs), *optional.slot("after_route"), *spend, quality(config), *optional.slot("after_call"),
    ]
    handler = call_backend(dispatcher)
    for stage in reversed(stages):
        handler = stage(handler)
    return handler
