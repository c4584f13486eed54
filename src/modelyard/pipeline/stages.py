"""The pipeline's stages, each a function from the next handler to a handler.

Order (DESIGN.md): authenticate → classify → cache → guard → augment → route →
schedule → call → validate → account. Stages that other issues add slot into
:func:`build_pipeline`'s list; each one stays a few lines.
"""

from __future__ import annotations

import dataclasses

from modelyard.config import FleetConfig
from modelyard.errors import InvalidRequest
from modelyard.pipeline.fleet import FleetRuntime
from modelyard.pipeline.types import WORKLOAD_CLASSES, Handler, Lifecycle, Request, Response, Stage
from modelyard.protocol import ModelCall
from modelyard.routing.router import PromptFeatures, pick_deployment, resolve_model

CLASS_HEADER = "x-modelyard-class"
SESSION_HEADER = "x-modelyard-session"


def classify(next_handler: Handler) -> Handler:
    """Set the workload class (endpoint first, then header) and the session id."""

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
        request.state = Lifecycle.CLASSIFIED
        return await next_handler(request)

    return handle


def _features(request: Request) -> PromptFeatures:
    call = request.call
    if call is None:
        return PromptFeatures(text="")
    parts = [call.prompt]
    for message in call.messages:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(p.get("text", "") for p in content if isinstance(p, dict))
    fmt = (call.response_format or {}).get("type")
    return PromptFeatures(text="\n".join(parts), wants_json=fmt in ("json_object", "json_schema"), wants_tools=bool(call.tools))


def route(fleet: FleetRuntime, config: FleetConfig) -> Stage:
    """Resolve aliases to a model and pick a ready deployment of it."""

    def stage(next_handler: Handler) -> Handler:
        async def handle(request: Request) -> Response:
            decision = resolve_model(request.model, config, _features(request))
            model = config.model(decision.model)
            assert model is not None  # resolve_model only returns fleet models
            expected = "embedding" if request.operation == "embedding" else None
            if expected and model.kind != expected:
                raise InvalidRequest(f"model '{model.name}' is a {model.kind} model, not an embedding model", param="model")
            if not expected and model.kind == "embedding":
                raise InvalidRequest(f"model '{model.name}' is an embedding model; use /v1/embeddings", param="model")
            if request.operation == "chat" and model.kind != "chat":
                raise InvalidRequest(f"model '{model.name}' has no chat template; use /v1/completions", param="model")
            request.served_model = model.name
            request.route_reason = decision.reason
            request.deployment = pick_deployment(model, fleet.ready_map(), fleet.outstanding)
            request.state = Lifecycle.ROUTED
            return await next_handler(request)

        return handle

    return stage


def call_backend(fleet: FleetRuntime) -> Handler:
    """The terminal handler: start the backend call(s) on the routed deployment."""

    async def handle(request: Request) -> Response:
        assert request.deployment is not None and request.served_model is not None
        response = Response(model=request.served_model, deployment=request.deployment, route_reason=request.route_reason)
        request.state = Lifecycle.RUNNING
        if request.operation == "embedding":
            response.embeddings = await fleet.deployments[request.deployment].backend.embed(request.inputs)
            return response
        assert request.call is not None
        call = dataclasses.replace(request.call, model=request.served_model)
        response.streams = [fleet.generate(request.deployment, _nth_choice(call, i)) for i in range(request.n)]
        return response

    return handle


def _nth_choice(call: ModelCall, index: int) -> ModelCall:
    """Choices of one seeded request differ from each other but repeat across requests."""
    if index == 0 or call.sampling.seed is None:
        return call
    return dataclasses.replace(call, sampling=dataclasses.replace(call.sampling, seed=call.sampling.seed + index))


def build_pipeline(fleet: FleetRuntime, config: FleetConfig, extra: list[Stage] | None = None) -> Handler:
    """Compose the stages, outermost first, around the backend call."""
    stages: list[Stage] = [classify, *(extra or []), route(fleet, config)]
    handler = call_backend(fleet)
    for stage in reversed(stages):
        handler = stage(handler)
    return handler
